//! Whole-process checks, each run in a child process of this test binary so that other tests'
//! descriptors, children and signal handlers cannot disturb them.

use std::io::Read;
use std::time::Duration;

use mechanics_runtime::{
    BreakerConfig, NodeState, ProcessNode, RestartPolicy, Runtime, ShutdownHandle, Supervisor,
    SupervisorConfig,
};

use crate::{in_child, run_in_child};

/// Descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Live or unreaped children of this process (any thread's).
fn children() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| {
            let path = task.unwrap().path().join("children");
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// Waits for the child test and returns its stdout, failing with its output if it failed.
fn finish(child: std::process::Child) -> String {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn a_thousand_restarts_leave_descriptors_and_children_at_baseline() {
    if !in_child() {
        let stdout = finish(run_in_child(
            "resources::a_thousand_restarts_leave_descriptors_and_children_at_baseline",
            &[],
        ));
        assert!(stdout.contains("restarts 1000"), "{stdout}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = SupervisorConfig {
            restart_policy: RestartPolicy::Always { delay: Duration::ZERO },
            health_check_interval: Duration::ZERO,
            breaker: BreakerConfig { max_crashes_in_window: u32::MAX, ..BreakerConfig::default() },
            ..SupervisorConfig::default()
        };
        let sup = Supervisor::new(config, ShutdownHandle::new());
        // Warm up: the first child sets up Tokio's SIGCHLD handling, which keeps descriptors open.
        sup.add_with_policy("warm-up", ProcessNode::new("true"), RestartPolicy::Never).unwrap();
        let mut warm_up = sup.watch("warm-up").unwrap();
        warm_up.wait_for(|s| s.state == NodeState::Exited).await.unwrap();
        let (fds_before, children_before) = (open_fds(), children());

        sup.add("crashy", ProcessNode::new("sh").args(["-c", "exit 1"])).unwrap();
        let mut watch = sup.watch("crashy").unwrap();
        let mut max_children = 0;
        let bounded = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                max_children = max_children.max(children());
                if watch.borrow().restarts >= 1000 {
                    break;
                }
                watch.changed().await.unwrap();
            }
        });
        bounded.await.expect("1000 restarts within 2 minutes");
        let last = sup.stop("crashy").await.unwrap();
        assert_eq!(last.last_exit.unwrap().status, "exit status: 1");
        // Children are reaped as they exit; give Tokio's reaper a moment for the last one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (open_fds(), children()) != (fds_before, children_before) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (fds_after, children_after) = (open_fds(), children());
        #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
        {
            println!(
                "\nrestarts {} fds {fds_before}->{fds_after} children {children_before}->{children_after} max-children-seen {max_children}",
                last.restarts.min(1000)
            );
        }
        assert_eq!(fds_after, fds_before, "descriptors leaked");
        assert_eq!(children_after, children_before, "children left behind");
        assert!(max_children <= children_before + 1, "more than one child at once: {max_children}");
    });
}

#[test]
fn sigterm_stops_the_runtime_and_kills_its_children() {
    if !in_child() {
        let dir =
            std::env::temp_dir().join(format!("mechanics-runtime-{}-sigterm", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut child = run_in_child(
            "resources::sigterm_stops_the_runtime_and_kills_its_children",
            &[("MECHANICS_TEST_PID_FILE", pid_file.to_str().unwrap())],
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let grandchild: i32 = loop {
            let announced = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse().ok());
            if let Some(pid) = announced {
                break pid;
            }
            if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the child runtime did not start its node: {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // SAFETY: signalling our own child process, which has not been waited for yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let stdout = finish(child);
        assert!(stdout.contains("stopped by signal"), "{stdout}");
        assert!(
            !std::path::Path::new(&format!("/proc/{grandchild}")).exists(),
            "the node's child survived"
        );
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let rt = Runtime::builder().build();
        let node = ProcessNode::new("sh")
            .args(["-c", "echo READY $$; exec sleep 60"])
            .ready_timeout(Duration::from_secs(30));
        let mut address = node.address();
        rt.supervisor().add("sleeper", node).unwrap();
        let run = rt.run();
        tokio::pin!(run);
        let pid = tokio::select! {
            // Polling `run` first installs the signal handlers before the parent can signal.
            biased;
            _ = &mut run => panic!("the runtime ended before its node started"),
            announced = address.wait_for(Option::is_some) => announced.unwrap().clone().unwrap(),
        };
        std::fs::write(std::env::var("MECHANICS_TEST_PID_FILE").unwrap(), &pid).unwrap();
        run.await.unwrap();
        let snapshot = rt.supervisor().snapshot("sleeper").unwrap();
        assert_eq!(snapshot.state, NodeState::Stopped);
        #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
        {
            println!("\nstopped by signal");
        }
    });
}

/// Whether process `pid` is gone: no longer listed, or a zombie (whose parent, possibly init,
/// has not reaped it yet).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn sigkill_of_the_supervising_process_kills_its_children() {
    if !in_child() {
        let dir =
            std::env::temp_dir().join(format!("mechanics-runtime-{}-sigkill", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut child = run_in_child(
            "resources::sigkill_of_the_supervising_process_kills_its_children",
            &[("MECHANICS_TEST_PID_FILE", pid_file.to_str().unwrap())],
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "the child supervisor did not start its node"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!is_dead(grandchild));
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_dead(grandchild) {
            assert!(
                std::time::Instant::now() < deadline,
                "the node's child outlived its killed supervisor"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let supervisor = Supervisor::new(SupervisorConfig::default(), ShutdownHandle::new());
        let node = ProcessNode::new("sh")
            .args(["-c", "echo READY $$; exec sleep 60"])
            .ready_timeout(Duration::from_secs(30));
        let mut address = node.address();
        supervisor.add("sleeper", node).unwrap();
        let pid = address
            .wait_for(Option::is_some)
            .await
            .unwrap()
            .clone()
            .unwrap();
        std::fs::write(std::env::var("MECHANICS_TEST_PID_FILE").unwrap(), &pid).unwrap();
        // Wait to be killed.
        std::future::pending::<()>().await;
    });
}
