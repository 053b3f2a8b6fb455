//! The README's command blocks that can run on this machine, run as written: each ```sh block
//! right after the line `<!-- readme-test: runs against a server -->` runs in `bash -eu -o
//! pipefail` from the repository's root, in README order, against one real `mechanics serve` on
//! a free port with an API key (`MECHANICS_SERVER`, `MECHANICS_API_KEY`), with this build's
//! `mechanics` first on `PATH`. A block that
//! fails (any command's exit status but 0) fails the test with its output. Blocks that need a
//! platform, a secret, a second machine or a fixed port stay unmarked.

use std::path::Path;

use crate::support::{BIN, Coordinator, scrubbed};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const MARKER: &str = "<!-- readme-test: runs against a server -->";
/// The server's configured (admin) key, which the blocks' commands send.
const KEY: &str = "readme-admin-key";

/// The marked blocks: (line of the block's first command, 1-based; its text).
fn marked_blocks(readme: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.trim() != MARKER {
            continue;
        }
        let opening = lines.get(index + 1).map(|l| l.trim());
        assert_eq!(
            opening,
            Some("```sh"),
            "README.md line {}: the marker must be followed by a ```sh block",
            index + 1
        );
        let body: Vec<&str> = lines[index + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .copied()
            .collect();
        blocks.push((index + 3, body.join("\n")));
    }
    blocks
}

#[test]
fn marked_blocks_are_found_with_their_lines() {
    let text = format!("intro\n{MARKER}\n```sh\necho one\necho two\n```\n```sh\nno\n```\n");
    assert_eq!(
        marked_blocks(&text),
        vec![(4, "echo one\necho two".to_owned())]
    );
}

#[test]
fn the_readmes_marked_command_blocks_run_as_written() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    // The quick start, API keys, worker test, TypeScript and `run --node` blocks at least: a
    // marker lost in an edit must not make the test pass by running nothing.
    assert!(blocks.len() >= 5, "only {} marked blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let server = Coordinator::start(dir.path(), &["--api-key", KEY], &[]);
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (line, block) in blocks {
        let out = scrubbed("bash", &server.home)
            .args(["-eu", "-o", "pipefail", "-c", &block])
            .current_dir(REPO)
            .env("PATH", &path)
            .env("MECHANICS_SERVER", &server.url)
            .env("MECHANICS_API_KEY", KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README.md line {line}: the block failed ({}):\n{block}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the blocks did is on the server: the quick start's and the TypeScript task ran.
    let tasks = server.tasks();
    let completed: Vec<&str> = tasks
        .values()
        .filter(|task| task["state"] == "completed")
        .filter_map(|task| task["worker"].as_str())
        .collect();
    assert!(
        completed.contains(&"hello") && completed.contains(&"summary"),
        "{tasks:?}"
    );
}
