//! Integration tests of `mechanics-store`: the backend-independent conformance suite
//! (`conformance`), run here on SQLite files, and SQLite-only tests (`sqlite`: migrations,
//! pragmas, crash safety, group commit).

mod conformance;
mod sqlite;

use mechanics_proto::domain::{SourceSpec, WorkerSpec};
use mechanics_store::SqliteStore;
use serde_json::json;
use tempfile::TempDir;

/// A fresh store on a real file in a temporary directory (removed when the `TempDir` drops).
fn temp_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("mechanics.db")).unwrap();
    (dir, store)
}

/// A valid js worker spec named `name`.
fn js_worker(name: &str) -> WorkerSpec {
    serde_json::from_value(json!({
        "name": name, "kind": "js", "module": "./w.js",
        "triggers": [{ "webhook": { "source": "gh", "events": ["issues.opened"] } }, { "api": true }]
    }))
    .unwrap()
}

/// A valid GitHub source spec named `name`.
fn github_source(name: &str) -> SourceSpec {
    serde_json::from_value(json!({ "name": name, "kind": "github", "secret_env": "GH_SECRET" }))
        .unwrap()
}
