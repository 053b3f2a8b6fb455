//! The public edge of `mechanics serve` under attack, through the real binary on 127.0.0.1:
//! stalled uploads, slowloris, idle connections under a low descriptor limit, secret files that
//! are FIFOs or devices. Each attack is bounded in size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Coordinator, code, stderr};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

const MB: u64 = 1024 * 1024;

/// This test process may hold a few hundred sockets at once.
fn raise_own_descriptor_limit() {
    let _ = mechanics_edge::raise_open_files_limit();
}

/// `GET /healthz` on a fresh connection: how long the answer took, and whether it was a 200.
fn healthz(addr: SocketAddr) -> (Duration, bool) {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (started.elapsed(), false);
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    (started.elapsed(), answer.starts_with("HTTP/1.1 200"))
}

/// The status code of a raw HTTP answer, if there was one.
fn status_of(answer: &[u8]) -> Option<u16> {
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

#[test]
fn two_hundred_stalled_five_megabyte_uploads_keep_memory_bounded_and_it_returns() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(
        dir.path(),
        &["--header-timeout", "3s"],
        &[("GH_SECRET", "s3cret")],
    );
    let source = dir.path().join("source.yml");
    std::fs::write(&source, "name: gh\nkind: github\nsecret_env: GH_SECRET\n").unwrap();
    server.ok(&["source", "add", "-f", source.to_str().unwrap()]);
    let (pid, addr) = (server.pid(), server.addr());
    for _ in 0..5 {
        assert!(healthz(addr).1);
    }
    let baseline = rss(pid);

    let peak = Arc::new(AtomicU64::new(baseline));
    let attacking = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, attacking) = (peak.clone(), attacking.clone());
        std::thread::spawn(move || {
            while attacking.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Half to a source that does not exist (refused from the path), half to a real one with a
    // signature header (bodies read, under the budget): each announces 5,242,781 bytes, sends
    // all but the last and waits.
    const LENGTH: usize = 5_242_781;
    let attackers: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/webhooks/nonexistent-source"
                } else {
                    "/webhooks/gh"
                };
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     X-GitHub-Event: issues\r\nX-GitHub-Delivery: d-{i}\r\n\
                     X-Hub-Signature-256: sha256=00\r\nContent-Length: {LENGTH}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < LENGTH - 1 {
                    let n = chunk.len().min(LENGTH - 1 - sent);
                    if stream.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                status_of(&answer)
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for attacker in attackers {
        *statuses.entry(attacker.join().unwrap()).or_default() += 1;
    }
    attacking.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // Unknown source: 404 before a byte of the body; a real source: 503 past the 64 MiB budget,
    // or 408 for the bodies that stalled.
    assert_eq!(statuses.get(&Some(404)), Some(&100), "{statuses:?}");
    assert!(
        statuses.get(&Some(503)).is_some_and(|n| *n >= 50),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&Some(408)).is_some_and(|n| *n >= 1),
        "{statuses:?}"
    );
    assert!(
        peak < baseline + 150 * MB,
        "RSS went from {} MB to {} MB",
        baseline / MB,
        peak / MB
    );
    // The memory goes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rss(pid);
        if now <= baseline + 100 * MB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {} MB (baseline {} MB)",
            now / MB,
            baseline / MB
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(healthz(addr).1);
}

#[test]
fn three_hundred_slowloris_connections_are_closed_while_healthz_keeps_answering() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &["--header-timeout", "2s"], &[]);
    let addr = server.addr();
    let opened = Instant::now();
    let mut streams: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            stream
        })
        .collect();
    let trickler = std::thread::spawn(move || {
        // One header byte per connection every 300 ms; a connection counts as closed once the
        // server ended it (EOF or an error on read or write).
        let mut closed_at = vec![None; streams.len()];
        while closed_at.iter().any(Option::is_none) && opened.elapsed() < Duration::from_secs(20) {
            for (stream, closed) in streams.iter_mut().zip(closed_at.iter_mut()) {
                if closed.is_some() {
                    continue;
                }
                let mut buf = [0u8; 64];
                let ended = match stream.read(&mut buf) {
                    Ok(_) => true,
                    Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
                } || matches!(stream.write(b"x"), Err(err) if err.kind() != std::io::ErrorKind::WouldBlock);
                if ended {
                    *closed = Some(opened.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        closed_at
    });
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let (took, ok) = healthz(addr);
        assert!(ok, "/healthz did not answer during the attack");
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_at = trickler.join().unwrap();
    latencies.sort();
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(200),
        "{latencies:?}"
    );
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "{latencies:?}"
    );
    // Every trickling connection was closed by the header timeout (2 s), however busy it was.
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} slowloris connections were never closed");
    let last = closed_at.iter().flatten().max().unwrap();
    assert!(
        *last < Duration::from_secs(8),
        "the last closed after {last:?}"
    );
    assert!(
        *last >= Duration::from_millis(1500),
        "closed before the timeout: {last:?}"
    );
}

#[test]
fn under_a_low_descriptor_limit_idle_connections_kill_no_node_and_js_tasks_run() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start_with(dir.path(), &[], &[], |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: only `setrlimit`, which is async-signal-safe, runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 150,
                    rlim_max: 150,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    server.ok(&[
        "worker",
        "add",
        "-f",
        &format!("{REPO}/examples/hello-worker/worker.yml"),
    ]);
    let addr = server.addr();
    // 400 idle connections, far more than the 75 a 150-descriptor process can afford.
    let idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let out = server.cli(&[
        "task",
        "submit",
        "hello",
        "--payload",
        r#"{"name":"Ada"}"#,
        "--wait",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}\n{}", stderr(&out), server.stderr());
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "completed", "{task}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the task took {:?}",
        started.elapsed()
    );
    let nodes = server.json(&["node", "list"]);
    let node = &nodes["nodes"][0];
    assert_eq!(node["state"], "running", "{nodes}");
    assert_eq!(node["deaths"], 0, "{nodes}");
    assert_eq!(node["breaker"], "closed", "{nodes}");
    let log = server.stderr();
    assert!(
        log.contains("max_connections lowered"),
        "the lowered cap is logged: {log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
    drop(idle);
}

#[test]
fn fifo_and_device_secret_files_are_refused_and_deliveries_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &[], &[]);
    let fifo = dir.path().join("secret.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    for (name, path) in [
        ("viafifo", fifo.to_str().unwrap()),
        ("viazero", "/dev/zero"),
    ] {
        let spec = dir.path().join(format!("{name}.yml"));
        std::fs::write(
            &spec,
            format!("name: {name}\nkind: gitlab\nsecret_file: {path}\n"),
        )
        .unwrap();
        let started = Instant::now();
        let out = server.cli(&["source", "add", "-f", spec.to_str().unwrap()]);
        assert_ne!(code(&out), Some(0));
        let err = stderr(&out);
        assert!(err.contains("not a regular file"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A source whose file vanishes later is unavailable, not blocking: the delivery is answered
    // at once with 503, and the sender learns nothing about the file.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "t0ken\n").unwrap();
    let spec = dir.path().join("gl.yml");
    std::fs::write(
        &spec,
        format!(
            "name: gl\nkind: gitlab\nsecret_file: {}\n",
            secret.display()
        ),
    )
    .unwrap();
    server.ok(&["source", "add", "-f", spec.to_str().unwrap()]);
    let deliver = |token: &str| {
        let body = r#"{"object_kind":"issue"}"#;
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = format!(
            "POST /webhooks/gl HTTP/1.1\r\nHost: x\r\nX-Gitlab-Token: {token}\r\n\
             X-Gitlab-Event: Issue Hook\r\nX-Gitlab-Event-UUID: u-1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let answer = deliver("t0ken");
    assert_eq!(status_of(answer.as_bytes()), Some(202), "{answer}");
    // The file becomes a FIFO; SIGHUP reads the secrets again.
    std::fs::remove_file(&secret).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&secret)
        .status()
        .unwrap();
    assert!(status.success());
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let answer = deliver("t0ken");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a delivery waited"
        );
        if status_of(answer.as_bytes()) == Some(503) {
            assert!(!answer.contains("secret.txt"), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the FIFO was never noticed: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.stderr().contains("not a regular file"));
}
