//! `GET /api/v1/instances`: the servers using the database, as their heartbeats record them.

use std::time::{SystemTime, UNIX_EPOCH};

use mechanics_proto::api::{Instance, InstanceList};
use mechanics_server::instances::{HEARTBEAT_INTERVAL, MISSED_BEATS};
use mechanics_store::Store;

use crate::support::TestServer;

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lists_itself_and_the_servers_heard_from_within_three_beats() {
    let mut server =
        TestServer::start_with(Some("k3y-instances"), tempfile::tempdir().unwrap()).await;
    let (status, body) = server.call("GET", "/api/v1/instances", None).await;
    assert_eq!(status, 200, "{body}");
    let list: InstanceList = serde_json::from_value(body).unwrap();
    let [me] = list.instances.as_slice() else {
        panic!("exactly this server: {list:?}");
    };
    assert_eq!(me.address, server.base);
    assert_eq!(me.version, env!("CARGO_PKG_VERSION"));
    assert!(me.started_at <= me.last_seen, "{me:?}");
    assert!((now_ms() - me.last_seen).abs() < 60_000, "{me:?}");

    // Two other servers on the database: one last heard from just within the window, one
    // silent for longer than three beats.
    let window = i64::try_from((HEARTBEAT_INTERVAL * MISSED_BEATS).as_millis()).unwrap();
    let other = |id: &str, last_seen: i64| Instance {
        id: id.to_owned(),
        address: format!("http://{id}.example:21212"),
        version: "0.0.1".to_owned(),
        started_at: last_seen - 60_000,
        last_seen,
    };
    // Five seconds of margin for a slow request between this write and the listing: a window
    // shorter than three beats by more than that leaves it out.
    let recent = other("recent", now_ms() - window + 5_000);
    let silent = other("silent", now_ms() - window - 1_000);
    for instance in [&recent, &silent] {
        server
            .store
            .heartbeat(instance, instance.last_seen)
            .await
            .unwrap();
    }
    let (status, body) = server.call("GET", "/api/v1/instances", None).await;
    assert_eq!(status, 200, "{body}");
    let list: InstanceList = serde_json::from_value(body).unwrap();
    let mut ids: Vec<&str> = list.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![me.id.as_str(), "recent"];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{list:?}");
    assert!(list.instances.contains(&recent), "{list:?}");

    // Authenticated like the rest of the API.
    server.api_key = None;
    let (status, body) = server.call("GET", "/api/v1/instances", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    // A clean stop removes the server; the others are theirs to remove.
    let me = me.id.clone();
    let store = server.store.clone();
    server.stop().await;
    let left = store.list_instances(0).await.unwrap();
    assert!(left.iter().all(|i| i.id != me), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
}
