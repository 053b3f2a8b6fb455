//! The web dashboard at `/ui`: server-rendered HTML (maud, checked at compile time and escaped
//! by default), one small script and one style sheet embedded in the binary, no CDN.
//!
//! Pages read without JavaScript: every filter is a query parameter, every action a plain form
//! that answers with a redirect. The script ([`SCRIPT`]) only adds to that: it refreshes what
//! is not finished every [`LIVE_INTERVAL_MS`] while the tab is visible, submits a task's actions
//! without leaving the page, and checks a replay's JSON before it is sent.
//!
//! The invariants, each guarded by a test in `tests/it/ui.rs`:
//! - the API key is typed once into `/ui/login` and never reaches a page, a URL or the browser:
//!   the browser holds only a random session token in an `HttpOnly`, `SameSite=Strict` cookie
//!   ([`session`]), valid while the key is (a revoked or expired key ends its sessions);
//! - every `POST` carries the session's CSRF token, checked before any handler runs;
//! - a session has its key's scope: `read` sees no action buttons, and its `POST`s are `403`;
//! - every answer carries a Content-Security-Policy that allows no inline script or style and no
//!   other origin ([`CONTENT_SECURITY_POLICY`]).

mod events;
mod keys;
mod logs;
mod nodes;
mod overview;
mod session;
mod sources;
mod tasks;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use mechanics_proto::api::ApiScope;

use crate::Shared;
use crate::api::Failure;

pub(crate) use session::Sessions;
pub(crate) use tasks::BulkJobs;

/// How often the script refreshes what is not finished, in ms (also in [`SCRIPT`]).
pub const LIVE_INTERVAL_MS: u64 = 2000;

/// Every page's policy: scripts, styles and fetches from this server only, nothing inline, no
/// frames, forms only to this server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's script, ours, embedded in the binary.
const SCRIPT: &str = include_str!("../../assets/ui.js");
/// The dashboard's style sheet.
const STYLE: &str = include_str!("../../assets/ui.css");

/// The dashboard's in-memory state: sessions and bulk actions.
#[derive(Default)]
pub(crate) struct UiState {
    pub(crate) sessions: Sessions,
    pub(crate) bulk: BulkJobs,
}

/// Who is looking at a page: the session's caller and its CSRF token (set by
/// [`session::require`] for every page behind the sign-in).
#[derive(Clone)]
pub(crate) struct Visitor {
    caller: crate::keys::Caller,
    csrf: String,
}

impl Visitor {
    /// Whether the visitor may do what needs `scope` (action buttons are shown only then).
    pub(crate) fn may(&self, scope: ApiScope) -> bool {
        self.caller.scope() >= scope
    }

    /// The hidden CSRF field every state-changing form carries.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// The `/ui` routes, with their own error pages (HTML, not the API's JSON), the sign-in in
/// front of every page but the sign-in page and the assets, and the security headers on all.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let pages = Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/rows", get(tasks::rows))
        .route("/ui/tasks/bulk", post(tasks::bulk))
        .route("/ui/tasks/{id}", get(tasks::page))
        .route("/ui/tasks/{id}/live", get(tasks::live))
        .route("/ui/tasks/{id}/retry", post(tasks::retry))
        .route("/ui/tasks/{id}/cancel", post(tasks::cancel))
        .route("/ui/tasks/{id}/replay", post(tasks::replay))
        .route("/ui/bulk/{id}", get(tasks::bulk_progress))
        .route("/ui/events", get(events::list))
        .route("/ui/events/{id}", get(events::page))
        .route("/ui/nodes", get(nodes::page))
        .route("/ui/nodes/{name}/reset", post(nodes::reset))
        .route("/ui/workers", get(workers::list))
        .route("/ui/workers/{name}", get(workers::page))
        .route("/ui/workers/{name}/test", post(workers::test))
        .route("/ui/sources", get(sources::list))
        .route("/ui/logs", get(logs::list))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/{name}/revoke", post(keys::revoke))
        .route("/ui/logout", post(session::logout))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            session::require,
        ));
    Router::new()
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/assets/ui.js", get(script))
        .route("/ui/assets/ui.css", get(style))
        .merge(pages)
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(shared)
}

/// The policy and its companions on every `/ui` answer; no page is cached (they show live
/// state, and some show what only a signed-in visitor may see).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Each binary has its own assets; an hour spares reloads within a session.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// A whole page: the navigation (with the sign-out form when signed in) around `body`.
pub(crate) fn layout(visitor: Option<&Visitor>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Mechanics" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body {
                header {
                    nav {
                        strong { "Mechanics" }
                        a href="/ui" { "Overview" }
                        a href="/ui/tasks" { "Tasks" }
                        a href="/ui/events" { "Events" }
                        a href="/ui/workers" { "Workers" }
                        a href="/ui/sources" { "Sources" }
                        a href="/ui/nodes" { "Nodes" }
                        a href="/ui/logs" { "Logs" }
                        @if visitor.is_some_and(|v| v.may(ApiScope::Admin)) {
                            a href="/ui/keys" { "Keys" }
                        }
                    }
                    @if let Some(visitor) = visitor {
                        form.signout method="post" action="/ui/logout" {
                            span.who { (visitor.caller.label()) " · " (visitor.caller.scope()) }
                            (visitor.csrf_field())
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An HTML page as an answer.
pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        markup.into_string(),
    )
        .into_response()
}

/// A refusal or an error as a page: its status, and the message in a `p.error`.
pub(crate) fn error_page(visitor: Option<&Visitor>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html_response(
        status,
        layout(
            visitor,
            title,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.error { (message) }
                p { a href="/ui/tasks" { "Back to the tasks" } }
            },
        ),
    )
}

/// An API failure (a store error, a bad id, a conflict) as a page.
pub(crate) fn failure_page(visitor: &Visitor, failure: &Failure) -> Response {
    let (status, message) = failure.status_and_message();
    error_page(Some(visitor), status, message)
}

/// Unix ms as `2026-12-04 17:31:41Z`.
pub(crate) fn timestamp(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// `text` as one URL path segment or query value.
pub(super) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
