//! A real PostgreSQL server for the tests that need one: the throwaway cluster that
//! `scripts/test.sh` starts, a fresh database per test ([`TestDatabase`]), and restarting the
//! server under a running test ([`restart_server`]).
//!
//! Restarting the server breaks every connection of every test using it, so the two exclude each
//! other within a test process: [`TestDatabase::create`] holds a shared claim on the server for
//! the database's lifetime, and [`TestDatabase::create_exclusive`] (for a test that restarts it)
//! waits until no other database of this process is alive and keeps new ones waiting until it is
//! dropped. Test binaries run one after another, so one process is what matters.
//!
//! Only std: the SQL goes through `psql` (the one beside `pg_ctl`, else from `PATH`, else the
//! newest in `/usr/lib/postgresql/*/bin`). A test that needs the server fails when it is missing;
//! none is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The server's URL, `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
pub const URL_ENV: &str = "MECHANICS_TEST_POSTGRES_URL";
/// The `pg_ctl` of the server's PostgreSQL version.
pub const PG_CTL_ENV: &str = "MECHANICS_TEST_PG_CTL";
/// The server's data directory (its log is `log` in it).
pub const PG_DATA_ENV: &str = "MECHANICS_TEST_PG_DATA";

/// How long [`TestDatabase::create`] keeps trying while the server does not answer (it may be
/// restarting under another test).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// The URL of the test PostgreSQL server (`MECHANICS_TEST_POSTGRES_URL`), connected to its
/// `postgres` database.
///
/// # Panics
/// When the variable is not set: the test needs a PostgreSQL server, and `scripts/test.sh`
/// starts one.
pub fn server_url() -> String {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "this test needs a PostgreSQL server: set {URL_ENV} to its URL \
             (postgres://USER@HOST:PORT/DB), or run the tests with scripts/test.sh, which starts \
             a throwaway one"
        ),
    }
}

/// A fresh, uniquely named database on the test server, dropped (with `FORCE`, so open
/// connections do not keep it) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    /// The claim on the server held for the database's lifetime; released on drop, after the
    /// database is dropped.
    claim: Option<Claim>,
}

/// Who is using the server in this process: databases of [`TestDatabase::create`] (shared), or
/// one of [`TestDatabase::create_exclusive`] (alone, as its test restarts the server).
///
/// A lock of our own rather than [`std::sync::RwLock`]: its guards are not `Send`, and a
/// `TestDatabase` must be free to move between threads (async tests, helpers). Writers are
/// preferred: once an exclusive claim waits, new shared claims wait behind it, so a steady
/// stream of tests cannot starve the test that restarts the server.
#[derive(Debug)]
struct ServerUse {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

static SERVER_USE: Mutex<ServerUse> = Mutex::new(ServerUse {
    shared: 0,
    exclusive: false,
    exclusive_waiting: 0,
});
static SERVER_USE_CHANGED: Condvar = Condvar::new();

/// A claim on the test server, released when dropped.
#[derive(Debug)]
enum Claim {
    Shared,
    Exclusive,
}

fn server_use() -> MutexGuard<'static, ServerUse> {
    // A test that panicked while holding the mutex left the counts consistent (no code between
    // the lock and the update can panic).
    SERVER_USE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Claim {
    fn take(exclusive: bool) -> Claim {
        let mut state = server_use();
        if exclusive {
            state.exclusive_waiting += 1;
            while state.exclusive || state.shared > 0 {
                state = SERVER_USE_CHANGED
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.exclusive_waiting -= 1;
            state.exclusive = true;
            Claim::Exclusive
        } else {
            while state.exclusive || state.exclusive_waiting > 0 {
                state = SERVER_USE_CHANGED
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.shared += 1;
            Claim::Shared
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut state = server_use();
        match self {
            Claim::Shared => state.shared -= 1,
            Claim::Exclusive => state.exclusive = false,
        }
        drop(state);
        SERVER_USE_CHANGED.notify_all();
    }
}

impl TestDatabase {
    /// Creates a new empty database, `mechanics_test_<pid>_<counter>_<nanos>`, on the server at
    /// [`server_url`].
    ///
    /// # Panics
    /// When the server is missing (see [`server_url`]) or the database cannot be created; a
    /// server that does not answer is retried for up to 30 s (it may be restarting).
    ///
    /// While it lives, [`TestDatabase::create_exclusive`] in this process waits (its test
    /// restarts the server, which would break this database's connections); while an exclusive
    /// database lives or waits, this waits. A test must therefore not hold a database of either
    /// kind when it asks for an exclusive one: it would wait for itself.
    pub fn create() -> TestDatabase {
        Self::create_claimed(Claim::take(false))
    }

    /// [`TestDatabase::create`] for a test that restarts the server ([`restart_server`]): it
    /// waits until no other [`TestDatabase`] of this process is alive, and no new one is created
    /// until it is dropped, so that the restart breaks no other test's connections. (Tests in
    /// other processes are not covered: `cargo test` runs test binaries one after another.)
    pub fn create_exclusive() -> TestDatabase {
        Self::create_claimed(Claim::take(true))
    }

    fn create_claimed(claim: Claim) -> TestDatabase {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let server = server_url();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "mechanics_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let started = Instant::now();
        let mut retried = false;
        loop {
            let output = psql(&server, &format!("CREATE DATABASE \"{name}\""));
            if output.status.success() {
                break;
            }
            // psql exits with 2 when it cannot connect or loses the connection; a restart in
            // progress ends soon.
            if output.status.code() == Some(2) && started.elapsed() < CONNECT_PATIENCE {
                retried = true;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            // The connection was lost after an earlier attempt had committed: the name is ours.
            if retried && String::from_utf8_lossy(&output.stderr).contains("already exists") {
                break;
            }
            panic!(
                "cannot create the test database {name} on {server} ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let url = with_database(&server, &name);
        TestDatabase {
            url,
            name,
            claim: Some(claim),
        }
    }

    /// The URL of this database: the server's host, port and user, with this database's name.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql` on this database with `psql` and returns what it printed, unaligned and
    /// without headers (`a|b` per row, rows on separate lines), trimmed; panics on an error.
    pub fn query(&self, sql: &str) -> String {
        let output = Command::new(psql_path())
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run psql: {err}"));
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Failures are ignored: the cluster is a throwaway, and a panic here would hide the
        // test's own failure.
        if let Ok(server) = std::env::var(URL_ENV) {
            let _ = psql(
                server.trim(),
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
            );
        }
        // Only now may a test that restarts the server go ahead.
        drop(self.claim.take());
    }
}

/// Restarts the test server (`pg_ctl restart -m fast -w`, as the `postgres` OS user when this
/// process is root) and returns once it accepts connections again, on the same port and with the
/// same settings (`pg_ctl` reuses those of the last start). Connections open across the restart
/// are broken.
///
/// # Panics
/// When `MECHANICS_TEST_PG_CTL` or `MECHANICS_TEST_PG_DATA` is not set (`scripts/test.sh` sets
/// both), or with `pg_ctl`'s output when the restart fails.
pub fn restart_server() {
    let pg_ctl = required_env(PG_CTL_ENV);
    let data = required_env(PG_DATA_ENV);
    let log = Path::new(&data).join("log");
    // `-l`: without it the restarted server would write to (and hold open) our pipes.
    let args = [
        pg_ctl.as_str(),
        "-D",
        data.as_str(),
        "-l",
        log.to_str().expect("a UTF-8 data directory"),
        "-m",
        "fast",
        "-w",
        "restart",
    ];
    let mut command = as_postgres_user(&args);
    let output = command
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {pg_ctl}: {err}"));
    assert!(
        output.status.success(),
        "pg_ctl restart failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value of `name`, or a panic saying that `scripts/test.sh` sets it.
fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "this test needs the test PostgreSQL server's {name}; scripts/test.sh starts the \
             server and sets it"
        ),
    }
}

/// A command running `args` as the `postgres` OS user when this process is root (PostgreSQL's
/// programs refuse to run the server as root), else as ourselves.
fn as_postgres_user(args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let mut command = Command::new(args[0]);
        command.args(&args[1..]);
        return command;
    }
    if let Some(runuser) = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
        let mut command = Command::new(runuser);
        command.args(["-u", "postgres", "--"]).args(args);
        return command;
    }
    let script = args
        .iter()
        .map(|arg| shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("su");
    command.args(["postgres", "-s", "/bin/sh", "-c", &script]);
    command
}

/// `arg` quoted for `sh`.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Runs one SQL command with `psql` on `url`, stopping at the first error.
fn psql(url: &str, sql: &str) -> Output {
    Command::new(psql_path())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run psql: {err}"))
}

/// `psql`: the one beside `MECHANICS_TEST_PG_CTL` (the server's version), else from `PATH`, else
/// the newest in `/usr/lib/postgresql/*/bin`.
fn psql_path() -> PathBuf {
    let beside_pg_ctl = std::env::var_os(PG_CTL_ENV)
        .and_then(|pg_ctl| Some(Path::new(&pg_ctl).parent()?.join("psql")))
        .filter(|path| path.is_file());
    let newest_installed = || {
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let psql = entry.path().join("bin/psql");
                psql.is_file().then_some((version, psql))
            })
            .max()
            .map(|(_, psql)| psql)
    };
    beside_pg_ctl
        .or_else(|| find_program("psql", &[]))
        .or_else(newest_installed)
        .unwrap_or_else(|| {
            panic!(
                "psql not found (in PATH or /usr/lib/postgresql/*/bin): the tests that need \
                 PostgreSQL need its client; scripts/test.sh installs it"
            )
        })
}

/// `name` in a directory of `PATH`, else in one of `extra`.
fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `url` with its database (the path) replaced by `database`; any query string is kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
