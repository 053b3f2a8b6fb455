//! Real HTTP servers on 127.0.0.1 for the endpoint tests: each records the requests it receives
//! and answers through a closure, or is a whole axum `Router` for streaming and slow answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::HeaderMap;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    /// The path as sent, still percent-encoded.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// The runtime all fake servers run on, apart from the pool's own.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Serves `router` on a fresh port of 127.0.0.1 until the test process ends.
pub(crate) fn serve_router(router: Router) -> SocketAddr {
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime().spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A server that records every request and answers it with `respond(request, index)`.
pub(crate) struct FakeServer {
    pub(crate) addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeServer {
    pub(crate) fn start(
        respond: impl Fn(&Recorded, usize) -> Response + Send + Sync + 'static,
    ) -> Self {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let log = requests.clone();
        let respond = Arc::new(respond);
        let router = Router::new().fallback(move |request: Request| {
            let log = log.clone();
            let respond = respond.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers,
                    body: body.to_vec(),
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(recorded.clone());
                    log.len() - 1
                };
                respond(&recorded, index)
            }
        });
        Self {
            addr: serve_router(router),
            requests,
        }
    }

    /// A server answering every request with `status` and `body` (as JSON text).
    pub(crate) fn json(status: u16, body: &'static str) -> Self {
        Self::start(move |_, _| response(status, &[("content-type", "application/json")], body))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub(crate) fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests.into_iter().next().unwrap()
    }
}

/// A response with `status`, `headers` and `body`.
pub(crate) fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).unwrap()
}
