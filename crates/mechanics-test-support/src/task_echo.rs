//! The path of the `task-echo` binary (`src/bin/task-echo.rs`): the worker that container
//! workers' test images run.
//!
//! A suite of another crate cannot ask Cargo for this crate's binaries (`CARGO_BIN_EXE_*` names
//! only a package's own), and a nested `cargo build` would wait for the lock of the running
//! build or rebuild this crate's dependencies elsewhere. `task-echo` needs nothing but `std`, so
//! the first call compiles it with `rustc` alone, in a second or so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Compiles `task-echo` once per process and returns its path; panics with the compiler's
/// output when that fails.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out_dir = crate_dir.join("../../target/task-echo");
            std::fs::create_dir_all(&out_dir).expect("the target directory is writable");
            // Unique per process: suites of several crates may compile it at once.
            let out = out_dir.join(format!("task-echo-{}", std::process::id()));
            // The rustc of the toolchain whose Cargo built this crate.
            let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
            let rustc = if rustc.exists() {
                rustc
            } else {
                PathBuf::from("rustc")
            };
            let output = Command::new(rustc)
                .args(["--edition", "2024", "-O", "--crate-name", "task_echo"])
                .arg(crate_dir.join("src/bin/task-echo.rs"))
                .arg("-o")
                .arg(&out)
                .output()
                .expect("rustc runs");
            assert!(
                output.status.success(),
                "compiling task-echo failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            out
        })
        .clone()
}
