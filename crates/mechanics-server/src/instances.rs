//! The servers using the database: each `mechanics serve` picks an id at startup and records a
//! heartbeat (id, address, version, started, last seen) before it serves and every
//! [`HEARTBEAT_INTERVAL`] after; `GET /api/v1/instances` lists those heard from within
//! [`MISSED_BEATS`] intervals, so one that died drops off by itself, and one that stops cleanly
//! removes itself.
//!
//! On SQLite the store keeps the heartbeat in memory (one server per file, no query); on
//! PostgreSQL it is a row every server reads.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use mechanics_proto::api::{Instance, InstanceList};
use mechanics_store::Store;

use crate::api::ApiResult;
use crate::{Clock, Shared};

/// How often a server records that it is alive. Short enough that a dead server leaves the list
/// within [`MISSED_BEATS`] × 5 s = 15 s; long enough that the beat is the only query an idle
/// server makes besides its bounded poll.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Heartbeats a server may miss before it is no longer listed: one late beat (a slow database,
/// a paused process) does not make a live server disappear.
pub const MISSED_BEATS: u32 = 3;

/// This server as its first heartbeat records it: a fresh random id, the API's `address`, this
/// build's version, started and last seen `now`.
pub(crate) fn this_instance(address: String, now: i64) -> Instance {
    Instance {
        id: uuid::Uuid::new_v4().to_string(),
        address,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: now,
        last_seen: now,
    }
}

/// Records a heartbeat of `instance` every [`HEARTBEAT_INTERVAL`] until `stop`, then removes it.
/// A failed beat is logged and the next one tried on time: the server keeps working, and is
/// listed again as soon as a beat gets through.
pub(crate) async fn heartbeat_loop(
    store: Arc<dyn Store>,
    clock: Clock,
    mut instance: Instance,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut beats = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_INTERVAL,
        HEARTBEAT_INTERVAL,
    );
    // After a stall, one beat now and the next a full interval later, not a burst.
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = beats.tick() => {}
        }
        let now = clock.now_ms();
        instance.last_seen = now;
        if let Err(err) = store.heartbeat(&instance, now).await {
            tracing::warn!(error = %err, instance = %instance.id, "recording this server's heartbeat failed");
        }
    }
    if let Err(err) = store.remove_instance(&instance.id).await {
        tracing::warn!(
            error = %err,
            instance = %instance.id,
            "removing this server from the instance list failed; it drops off once it has \
             missed its heartbeats"
        );
    }
}

/// `GET /api/v1/instances`: the servers heard from within the last [`MISSED_BEATS`] heartbeat
/// intervals, by id.
#[utoipa::path(get, path = "/instances", tag = "instances", operation_id = "list_instances", summary = "The servers using the database, heard from within three heartbeats", responses((status = 200, description = "The servers", body = InstanceList)))]
pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> ApiResult<axum::Json<InstanceList>> {
    let window = i64::try_from((HEARTBEAT_INTERVAL * MISSED_BEATS).as_millis()).unwrap_or(i64::MAX);
    let seen_since = shared.clock.now_ms().saturating_sub(window);
    let instances = shared.store.list_instances(seen_since).await?;
    Ok(axum::Json(InstanceList { instances }))
}

#[cfg(test)]
mod tests {
    use mechanics_store::SqliteStore;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_beats_every_interval_and_removes_itself_when_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("m.db")).unwrap());
        let clock = Clock::starting_at(1_000_000);
        let instance = this_instance("http://127.0.0.1:21212".to_owned(), clock.now_ms());
        store
            .heartbeat(&instance, instance.started_at)
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let beating = tokio::spawn(heartbeat_loop(
            store.clone(),
            clock,
            instance.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let last_seen = || async { store.list_instances(0).await.unwrap()[0].last_seen };
        tokio::time::sleep(HEARTBEAT_INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(last_seen().await, 1_000_000, "no beat before the interval");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(last_seen().await, 1_005_000);
        tokio::time::sleep(HEARTBEAT_INTERVAL * 2).await;
        assert_eq!(last_seen().await, 1_015_000);
        let listed = store.list_instances(0).await.unwrap();
        assert_eq!(
            listed,
            [Instance {
                last_seen: 1_015_000,
                ..instance.clone()
            }]
        );
        assert_eq!(instance.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(instance.id.len(), 36, "a uuid: {}", instance.id);
        assert_ne!(
            this_instance(String::new(), 0).id,
            instance.id,
            "each server has its own id"
        );

        stop.send(()).unwrap();
        beating.await.unwrap();
        assert!(store.list_instances(0).await.unwrap().is_empty());
    }
}
