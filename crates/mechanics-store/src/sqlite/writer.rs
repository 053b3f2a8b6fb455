//! Group commit: one thread owns the write connection and runs every write operation. It takes
//! whatever operations are queued (up to [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE`
//! transaction, each inside its own savepoint so one operation's error undoes only that
//! operation, commits once, and only then answers the callers. Under concurrency a batch fills
//! while the previous one commits, so the number of commits stays far below the number of
//! writes; alone, a write commits at once (no waiting to fill a batch).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::db_err;
use crate::{StoreError, StoreResult};

/// Most operations committed in one transaction: bounds how long one commit keeps the write lock
/// from other processes (the CLI) and the latency added to the first caller of a batch.
const MAX_BATCH: usize = 512;

/// A write operation queued for the writer thread.
trait WriteOp: Send {
    /// Runs the operation inside the batch's transaction; returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known: `Err` if the batch did not commit.
    fn finish(self: Box<Self>, batch: Result<(), StoreError>);
}

struct Op<F, T> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<F, T> WriteOp for Op<F, T>
where
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let work = self.work.take().expect("a write operation runs once");
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, batch: Result<(), StoreError>) {
        let answer = match (batch, self.result) {
            (Err(err), _) => Err(err),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Closed),
        };
        // The caller may have gone away (its future dropped); the write is committed anyway.
        let _ = self.reply.send(answer);
    }
}

/// The handle callers use to queue writes; dropping it stops the thread after the queued writes.
pub(super) struct Writer {
    sender: Option<Sender<Box<dyn WriteOp>>>,
    thread: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("mechanics-store-writer".into())
            .spawn({
                let commits = Arc::clone(&commits);
                move || run(&conn, &receiver, &commits)
            })?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
            commits,
        })
    }

    /// Queues `work` and waits until its batch is committed (or failed).
    pub(super) async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(Op {
            work: Some(work),
            result: None,
            reply,
        });
        self.sender
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(op)
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Transactions committed so far.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the queued writes and close the connection
        // (checkpointing the WAL); waiting for it means a reopen in this process sees them.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, receiver: &Receiver<Box<dyn WriteOp>>, commits: &AtomicU64) {
    let mut batch: Vec<Box<dyn WriteOp>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = receiver.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(op) => batch.push(op),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let outcome = run_batch(conn, &mut batch);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            // Whatever failed, leave no transaction open for the next batch.
            let _ = conn.execute_batch("ROLLBACK");
        }
        for op in batch.drain(..) {
            op.finish(outcome.clone());
        }
    }
}

/// Runs one batch in one transaction; `Err` means nothing of it is committed.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn WriteOp>]) -> StoreResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(db_err("starting a write transaction"))?;
    for op in batch.iter_mut() {
        savepoint(conn, "SAVEPOINT op")?;
        if !op.run(conn) {
            savepoint(conn, "ROLLBACK TO op")?;
        }
        savepoint(conn, "RELEASE op")?;
    }
    conn.execute_batch("COMMIT")
        .map_err(db_err("committing a write transaction"))
}

fn savepoint(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
        .map_err(db_err("managing a savepoint"))
}
