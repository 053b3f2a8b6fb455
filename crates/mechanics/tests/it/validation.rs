//! Hostile input through the real binary: files that are devices, FIFOs or too large, and API
//! keys that are blank or kept in a file. Every refusal exits 2 at once with a message naming
//! what is wrong, and sends or starts nothing.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Coordinator, code, command, stderr};

/// Runs `command` to its end, failing the test if it takes longer than `limit` (a refusal must
/// not wait on a FIFO or read a device forever).
fn finishes_within(mut command: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the child is ours.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{command:?} still running after {:?}", started.elapsed());
        }
    }
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

#[test]
fn worker_add_refuses_devices_fifos_and_oversized_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let write = |name: &str, bytes: &[u8]| {
        let path = work.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // Checked before anything is sent: port 1 has no server, so exit 3 would mean "sent".
    let add = |file: &str| {
        let mut cmd = command(work);
        cmd.env("MECHANICS_SERVER", "http://127.0.0.1:1")
            .args(["worker", "add", "-f", file]);
        finishes_within(cmd, Duration::from_secs(20))
    };
    let refused = |file: &str, expected: &str| {
        let out = add(file);
        assert_eq!(code(&out), Some(2), "{file}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with(&format!("error: {expected}")),
            "{file}: {}",
            stderr(&out)
        );
    };

    let zero = write("zero.yml", b"name: z\nkind: js\nmodule: /dev/zero\n");
    refused(
        &zero,
        &format!("{zero}: module: /dev/zero is a character device, not a regular file"),
    );
    mkfifo(&work.join("fifo.js"));
    let fifo = write("fifo.yml", b"name: f\nkind: js\nmodule: fifo.js\n");
    refused(
        &fifo,
        &format!(
            "{fifo}: module: {} is a FIFO, not a regular file",
            work.join("fifo.js").display()
        ),
    );
    // One byte over the module limit: refused; at the limit: read and sent (exit 3, no server).
    let mut module = b"export default () => 1;\n//".to_vec();
    module.resize(1024 * 1024 + 1, b'x');
    write("big.js", &module);
    let big = write("big.yml", b"name: big\nkind: js\nmodule: big.js\n");
    refused(
        &big,
        &format!(
            "{big}: module: {} is larger than the limit of 1048576 bytes",
            work.join("big.js").display()
        ),
    );
    module.pop();
    write("big.js", &module);
    assert_eq!(code(&add(&big)), Some(3));

    // The YAML file itself.
    refused(
        "/dev/zero",
        "/dev/zero is a character device, not a regular file",
    );
    let yaml_fifo = work.join("worker.yml");
    mkfifo(&yaml_fifo);
    refused(
        yaml_fifo.to_str().unwrap(),
        &format!("{} is a FIFO, not a regular file", yaml_fifo.display()),
    );
    let mut yaml = b"name: w\nkind: http\nurl: http://127.0.0.1:9\n#".to_vec();
    yaml.resize(256 * 1024 + 1, b'x');
    let huge = write("huge.yml", &yaml);
    refused(
        &huge,
        &format!("{huge} is larger than the limit of 262144 bytes"),
    );
    // A NUL byte in a command is refused by the spec's validation, naming the argument.
    let nul = write(
        "nul.yml",
        b"name: p\nkind: process\ncommand: [\"bot\", \"a\\0b\"]\n",
    );
    refused(
        &nul,
        &format!("{nul}: command[1]: \"a\\0b\" contains a NUL byte"),
    );
}

#[test]
fn serve_refuses_a_blank_api_key_and_takes_one_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = command(dir.path());
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--local-nodes", "1"])
            .arg("--db")
            .arg(dir.path().join("refused.db"))
            .args(args)
            .envs(env.iter().copied());
        finishes_within(cmd, Duration::from_secs(20))
    };
    let refused = |out: Output, expected: &str| {
        assert_eq!(code(&out), Some(2), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "no READY line");
        assert!(
            stderr(&out).starts_with(&format!("error: {expected}")),
            "{}",
            stderr(&out)
        );
    };
    refused(
        serve(&["--api-key", "  "], &[]),
        "--api-key: api_key: the key is blank (2 characters of whitespace)",
    );
    refused(
        serve(&[], &[("MECHANICS_API_KEY", "")]),
        "MECHANICS_API_KEY: api_key: the key is blank",
    );
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-key-4f2a\n").unwrap();
    let key_path = key_file.to_str().unwrap();
    refused(
        serve(&["--api-key", "k", "--api-key-file", key_path], &[]),
        "--api-key-file: api_key_file: api_key (from --api-key) is set too",
    );
    let fifo = dir.path().join("key.fifo");
    mkfifo(&fifo);
    refused(
        serve(&["--api-key-file", fifo.to_str().unwrap()], &[]),
        &format!(
            "--api-key-file: api_key_file: {} is a FIFO, not a regular file",
            fifo.display()
        ),
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    refused(
        serve(&[], &[("MECHANICS_API_KEY_FILE", empty.to_str().unwrap())]),
        "MECHANICS_API_KEY_FILE: api_key_file:",
    );

    // `config show` reads the file too, names it and redacts the key.
    let out = command(dir.path())
        .args(["config", "show", "--api-key-file", key_path])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains(&format!("api_key_file: {key_path}  # --api-key-file")),
        "{shown}"
    );
    assert!(!shown.contains("file-key-4f2a"), "{shown}");

    // Served with the key from the file: the API needs it, and never the line break.
    let server = Coordinator::start(dir.path(), &["--api-key-file", key_path], &[]);
    let client = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = command(dir.path());
        cmd.env("MECHANICS_SERVER", &server.url)
            .args(args)
            .envs(env.iter().copied());
        finishes_within(cmd, Duration::from_secs(30))
    };
    let out = client(&["worker", "list"], &[]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: a valid API key is required")
            && stderr(&out).contains("--api-key-file"),
        "{}",
        stderr(&out)
    );
    let out = client(
        &["worker", "list", "--api-key", "file-key-4f2a\n", "--json"],
        &[],
    );
    assert_eq!(
        code(&out),
        Some(2),
        "a key with a line break cannot be sent"
    );
    for env in [
        &[("MECHANICS_API_KEY", "file-key-4f2a")][..],
        &[("MECHANICS_API_KEY_FILE", key_path)][..],
    ] {
        let out = client(&["worker", "list", "--json"], env);
        assert_eq!(code(&out), Some(0), "{env:?}: {}", stderr(&out));
        assert_eq!(
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
            json!({ "workers": [] })
        );
    }
    let out = client(&["worker", "list", "--api-key-file", key_path], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-key\n").unwrap();
    let out = client(
        &["worker", "list", "--api-key-file", wrong.to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not accepted"), "{}", stderr(&out));
    // The client refuses what the server would: a FIFO, both ways at once.
    let out = client(
        &["worker", "list", "--api-key-file", fifo.to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a FIFO"), "{}", stderr(&out));
    let out = client(
        &["worker", "list", "--api-key-file", key_path],
        &[("MECHANICS_API_KEY", "file-key-4f2a")],
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("are both set"), "{}", stderr(&out));
    assert!(
        !server.stderr().contains("file-key-4f2a"),
        "the key is never logged"
    );
}
