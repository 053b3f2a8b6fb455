//! The edge through real TCP on 127.0.0.1: timeouts, the connection cap, the body rate, and
//! the JSON shape of the refusals hyper and the edge make before any handler runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};
use mechanics_edge::{EdgeLimits, is_body_too_slow, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Edge {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start(limits: EdgeLimits) -> Edge {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        )
        .route(
            "/upload",
            post(|body: Result<Bytes, BytesRejection>| async move {
                match body {
                    Ok(bytes) => (StatusCode::OK, format!("{} bytes", bytes.len())),
                    Err(err) if is_body_too_slow(&err) => {
                        (StatusCode::REQUEST_TIMEOUT, "too slow".to_owned())
                    }
                    Err(err) => (StatusCode::BAD_REQUEST, err.to_string()),
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    Edge { addr, stop, task }
}

fn limits(header_ms: u64, idle_ms: u64) -> EdgeLimits {
    EdgeLimits {
        max_connections: 64,
        header_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        min_body_rate: 1024,
    }
}

/// Reads until the peer closes (or 10 s pass, which fails the test): what was read, and when.
async fn read_to_close(stream: &mut TcpStream) -> (String, Instant) {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the edge never closed the connection");
    (String::from_utf8_lossy(&out).into_owned(), Instant::now())
}

/// One request on a fresh connection; the whole answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await.0
}

fn body_json(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).unwrap_or_else(|err| panic!("not JSON ({err}): {answer}"))
}

#[tokio::test]
async fn a_silent_or_trickling_client_is_closed_at_the_header_timeout() {
    let edge = start(limits(400, 5_000)).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(edge.addr).await.unwrap();
    let mut trickling = TcpStream::connect(edge.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        // A byte every 50 ms: activity, but never a complete head.
        for byte in b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if trickling.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        read_to_close(&mut trickling).await
    });
    let (_, closed) = read_to_close(&mut silent).await;
    let waited = closed - opened;
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let (answer, closed) = trickle.await.unwrap();
    assert!(answer.is_empty(), "{answer}");
    assert!(
        closed - opened < Duration::from_secs(3),
        "{:?}",
        closed - opened
    );
    // Meanwhile, and afterwards, a prompt client is served.
    let answer = exchange(
        edge.addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = edge.stop.send(());
    edge.task.await.unwrap();
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_during_a_slow_answer() {
    let edge = start(limits(400, 800)).await;
    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    // The handler takes 1.5 s, longer than both timeouts: a request in progress has no clock.
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answered = Instant::now();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
    let (rest, closed) = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    let idle = closed - answered;
    // The idle timeout, not the (shorter) header timeout, ends a kept-alive connection.
    assert!(
        idle >= Duration::from_millis(700) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    let _ = edge.stop.send(());
    edge.task.await.unwrap();
}

#[tokio::test]
async fn at_the_connection_limit_an_idle_connection_makes_room_and_busy_ones_never_do() {
    let edge = start(EdgeLimits {
        max_connections: 2,
        ..limits(5_000, 30_000)
    })
    .await;
    let mut oldest = TcpStream::connect(edge.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut newer = TcpStream::connect(edge.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Both slots hold connections that send nothing: the one waiting longest is closed for the
    // newcomer, long before any timeout.
    let opened = Instant::now();
    let answer = exchange(
        edge.addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "{:?}",
        opened.elapsed()
    );
    let (rest, closed) = read_to_close(&mut oldest).await;
    assert!(
        rest.is_empty() && closed - opened < Duration::from_secs(2),
        "{rest}"
    );
    // The newer idle one was still open: it answers a request.
    newer
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut newer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Two requests in progress fill the listener: a third connection waits for one to end.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = Instant::now();
    let answer = exchange(
        edge.addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        opened.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        opened.elapsed()
    );
    for mut stream in busy {
        let (answer, _) = read_to_close(&mut stream).await;
        assert!(
            answer.ends_with("done"),
            "a busy connection was cut off: {answer}"
        );
    }
    let _ = edge.stop.send(());
    edge.task.await.unwrap();
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_and_a_steady_one_is_read() {
    let edge = start(limits(500, 5_000)).await;
    let mut stalled = TcpStream::connect(edge.addr).await.unwrap();
    let started = Instant::now();
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // All but the last byte, then nothing.
    stalled.write_all(&[b'a'; 99_999]).await.unwrap();
    let (answer, ended) = read_to_close(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        ended - started < Duration::from_secs(4),
        "{:?}",
        ended - started
    );

    let mut steady = TcpStream::connect(edge.addr).await.unwrap();
    steady
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // 4,000 bytes in 1.6 s: 2,500 B/s, above the minimum rate, with pauses below the timeout.
    for _ in 0..8 {
        steady.write_all(&[b'b'; 500]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (answer, _) = read_to_close(&mut steady).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("4000 bytes"),
        "{answer}"
    );
    let _ = edge.stop.send(());
    edge.task.await.unwrap();
}

#[tokio::test]
async fn refusals_before_any_handler_have_the_json_error_shape() {
    let edge = start(limits(2_000, 5_000)).await;
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        // Over the edge's URI limit, under hyper's.
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10_000)).into_bytes(),
            "414",
            "uri_too_long",
        ),
        // Over hyper's own URI limit (64 KiB): hyper refuses, the edge rewrites the answer.
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            "4",
            "",
        ),
        (
            format!(
                "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(40_000)
            )
            .into_bytes(),
            "431",
            "headers_too_large",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400", "bad_request"),
    ];
    for (request, status, code) in cases {
        let answer = exchange(edge.addr, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{}",
            &answer[..answer.len().min(200)]
        );
        let json = body_json(&answer);
        let got = json["error"]["code"].as_str().unwrap();
        if code.is_empty() {
            assert!(
                got == "uri_too_long" || got == "headers_too_large",
                "{json}"
            );
        } else {
            assert_eq!(got, code, "{json}");
        }
        assert!(
            json["error"]["message"].as_str().unwrap().len() < 200,
            "{json}"
        );
    }
    let _ = edge.stop.send(());
    edge.task.await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_progress_and_closes_idle_connections() {
    let edge = start(limits(5_000, 30_000)).await;
    let mut idle = TcpStream::connect(edge.addr).await.unwrap();
    idle.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut busy = TcpStream::connect(edge.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = edge.stop.send(());
    let (answer, _) = read_to_close(&mut busy).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
    let (rest, _) = read_to_close(&mut idle).await;
    assert!(rest.is_empty(), "{rest}");
    tokio::time::timeout(Duration::from_secs(5), edge.task)
        .await
        .expect("serve returns once its connections are closed")
        .unwrap();
}

/// CPU time this process has used, user and system.
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    // In a child process, which may exhaust its own descriptors.
    if !mechanics_test_support::in_child_process() {
        mechanics_test_support::passes_in_a_child_process(
            "out_of_descriptors_the_accept_loop_backs_off_and_recovers",
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let edge = start(limits(5_000, 5_000)).await;
        let mut files = mechanics_test_support::exhaust_descriptors();
        // One descriptor for the client: the kernel completes its handshake, and the server,
        // with none left, cannot accept it.
        files.pop();
        let mut client = TcpStream::connect(edge.addr).await.unwrap();
        let before = cpu_time();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spent = cpu_time() - before;
        // Backing off, the loop sleeps: a spinning one would burn the whole second.
        assert!(
            spent < Duration::from_millis(300),
            "{spent:?} of CPU in 1 s"
        );
        drop(files);
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let _ = edge.stop.send(());
        edge.task.await.unwrap();
    });
}
