//! Sign-in, sessions and the CSRF check.
//!
//! `/ui/login` takes an API key once, checks it as the API does ([`crate::keys`]) and answers
//! with a session cookie: a random token (32 bytes) that names an in-memory session holding the
//! caller (the key's name and scope, never the key) and a CSRF token. The cookie is `HttpOnly`
//! (no script reads it), `SameSite=Strict` (no other site's page sends it), `Path=/ui`, and
//! `Secure` when the request came over TLS (`X-Forwarded-Proto: https` from the proxy in front).
//! A session lasts [`SESSION_TTL_MS`] or until its key expires, whichever is first, and ends at
//! once when the key is revoked. Sessions live in this server's memory: a restart, or another
//! server behind the same address, asks for the key again.
//!
//! Sign-in attempts are limited per client address ([`LOGIN_RATE`]), in the store's token
//! buckets (shared by every server on a PostgreSQL database): past the burst, every `POST
//! /ui/login` from that address, with a right key or a wrong one, is answered `429` with
//! `Retry-After` until a token is back. This slows the form, not guessing as such: the API takes
//! a key in every request without such a limit, so what keeps keys from being guessed is their
//! length (stored keys are random; a configured `--api-key` must be as long to be as safe).
//! The address is the connection's peer: behind a reverse proxy every visitor shares the
//! proxy's, and its limit; over IPv6 each address counts alone.
//!
//! On a server with no key at all (the open API), every visitor gets a session of their own
//! without signing in, so that forms still carry a CSRF token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::Engine;
use maud::html;
use mechanics_proto::api::ApiScope;
use mechanics_store::{Take, TokenRate, Tokens};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Visitor, error_page, html_response, layout};
use crate::Shared;
use crate::keys::Caller;

/// The session cookie's name.
pub(super) const COOKIE: &str = "mechanics_session";
/// The longest a session lasts (8 hours): a working day, then the key again.
pub(super) const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// The most sessions a server keeps: past it, the one closest to its end is dropped.
const MAX_SESSIONS: usize = 10_000;
/// Sign-in attempts per client address: 10 at once, then one every 6 s (10 a minute).
pub(super) const LOGIN_RATE: TokenRate = TokenRate {
    per_second: 1.0 / 6.0,
    burst: 10,
};

/// A signed-in browser.
#[derive(Clone)]
struct Session {
    caller: Caller,
    expires_at: i64,
    csrf: String,
}

/// The sessions of this server, by token.
#[derive(Default)]
pub(crate) struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `caller` until `until`; its token.
    fn open(&self, caller: Caller, until: i64, now: i64) -> Result<(String, Session), StatusCode> {
        let session = Session {
            caller,
            expires_at: until.min(now.saturating_add(SESSION_TTL_MS)),
            csrf: random_token()?,
        };
        let token = random_token()?;
        let mut sessions = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires_at > now);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(t, _)| t.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(token.clone(), session.clone());
        Ok((token, session))
    }

    /// The session of `token`, unless it has ended.
    fn get(&self, token: &str, now: i64) -> Option<Session> {
        let mut sessions = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(token) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    fn close(&self, token: &str) {
        let mut sessions = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(token);
    }
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> Result<String, StatusCode> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The session token the browser sent, if any.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| token)
}

/// The `Set-Cookie` value of a session `token` that ends in `max_age_ms` (0: delete it).
fn cookie(token: &str, max_age_ms: i64, headers: &HeaderMap) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let value = format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        (max_age_ms / 1000).max(0),
        if secure { "; Secure" } else { "" }
    );
    // A token is base64: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The scope a `POST` under `/ui` needs: signing out needs none beyond a session; creating and
/// revoking keys needs `admin`; every other action (a task's, a node's Reset, a worker's Run
/// test) needs `operate`, as in the API.
fn needed_scope(path: &str) -> ApiScope {
    if path == "/ui/logout" {
        ApiScope::Read
    } else if path == "/ui/keys" || path.starts_with("/ui/keys/") {
        ApiScope::Admin
    } else {
        ApiScope::Operate
    }
}

/// Most bytes of a form read to find its CSRF token (a replay's payload included).
const MAX_FORM_BYTES: usize = crate::api::MAX_BODY_BYTES;

/// In front of every page but the sign-in and the assets: finds the session (or, on an open
/// server, makes one), sends a visitor without one to `/ui/login`, and refuses a `POST` whose
/// CSRF token is missing or wrong, or whose session's scope is too small, with `403`.
pub(super) async fn require(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let now = shared.clock.now_ms();
    let store = shared.store.as_ref();
    let mut session = presented_token(request.headers()).and_then(|token| {
        shared
            .ui
            .sessions
            .get(token, now)
            .map(|s| (token.to_owned(), s))
    });
    if let Some((token, current)) = &session {
        match shared.keys.valid_until(store, &current.caller, now).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                shared.ui.sessions.close(token);
                session = None;
            }
            Err(err) => {
                return error_page(
                    None,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the database is busy, try again: {err}"),
                );
            }
        }
    }
    let mut new_cookie = None;
    let session = match session {
        Some((_, session)) => session,
        None => match shared.keys.valid_until(store, &Caller::Anyone, now).await {
            Ok(Some(until)) => match shared.ui.sessions.open(Caller::Anyone, until, now) {
                Ok((token, session)) => {
                    new_cookie = Some(cookie(&token, session.expires_at - now, request.headers()));
                    session
                }
                Err(status) => return error_page(None, status, "no randomness for a session"),
            },
            _ if request.method() == Method::GET => {
                let next = request
                    .uri()
                    .path_and_query()
                    .map_or("/ui/tasks", |p| p.as_str());
                let target = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", next)
                    .finish();
                return Redirect::to(&format!("/ui/login?{target}")).into_response();
            }
            _ => {
                return error_page(
                    None,
                    StatusCode::UNAUTHORIZED,
                    "sign in first: your session has ended",
                );
            }
        },
    };
    let visitor = Visitor {
        caller: session.caller.clone(),
        csrf: session.csrf.clone(),
    };
    let mut request = request;
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return error_page(
                Some(&visitor),
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the form is larger than the limit of {MAX_FORM_BYTES} bytes"),
            );
        };
        let sent = form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == "csrf")
            .map(|(_, value)| value.into_owned());
        let matches =
            sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes())));
        if !matches {
            return error_page(
                Some(&visitor),
                StatusCode::FORBIDDEN,
                "this form did not come from this dashboard session (its CSRF token is missing \
                 or wrong); reload the page and try again",
            );
        }
        let needed = needed_scope(parts.uri.path());
        if !visitor.may(needed) {
            return error_page(
                Some(&visitor),
                StatusCode::FORBIDDEN,
                &format!(
                    "this action needs the `{needed}` scope; you signed in with a `{}` key",
                    session.caller.scope()
                ),
            );
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    shared.keys.record_use(&shared.store, &session.caller, now);
    request.extensions_mut().insert(visitor);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Where to go after signing in: a `/ui` path of this server, nothing else (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with("/ui") && !next.starts_with("//") && !next.contains('\\') =>
        {
            next
        }
        _ => "/ui/tasks",
    }
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`: the form.
pub(super) async fn login_page(Query(query): Query<LoginQuery>) -> Response {
    login_form(StatusCode::OK, safe_next(query.next.as_deref()), None)
}

fn login_form(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    html_response(
        status,
        layout(
            None,
            "Sign in",
            html! {
                h1 { "Sign in" }
                @if let Some(problem) = problem {
                    p.error { (problem) }
                }
                form.login method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next);
                    label for="key" { "API key" }
                    input id="key" name="key" type="password" autocomplete="off" required autofocus;
                    button type="submit" { "Sign in" }
                }
                p.hint { "A key from " code { "mechanics key create" } " or the server's configured key. \
                    It is checked once; the browser keeps only a session cookie." }
            },
        ),
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    key: String,
    next: Option<String>,
}

/// `POST /ui/login`: within the address's [`LOGIN_RATE`], checks the key as the API would, and
/// starts a session on success.
pub(super) async fn login(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let now = shared.clock.now_ms();
    let bucket = format!("ui-login:{}", peer.ip());
    match shared
        .store
        .take_tokens(&bucket, LOGIN_RATE, Take::IfFree, now)
        .await
    {
        Ok(Tokens::Granted(_)) => {}
        Ok(Tokens::NotBefore(at)) => {
            let seconds = u64::try_from((at - now).max(1)).unwrap_or(1).div_ceil(1000);
            let mut response = login_form(
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(&format!(
                    "too many sign-in attempts from your address; try again in {seconds} s"
                )),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        // Without the bucket no attempt is counted: refuse rather than allow unlimited tries.
        Err(err) => {
            return login_form(
                StatusCode::SERVICE_UNAVAILABLE,
                &next,
                Some(&format!("the database is busy, try again: {err}")),
            );
        }
    }
    let mut presented = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(form.key.trim()) else {
        return login_form(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("that is not an API key"),
        );
    };
    presented.insert("x-api-key", value);
    let caller = match shared
        .keys
        .identify(shared.store.as_ref(), &presented, now)
        .await
    {
        Ok(caller) => caller,
        Err(failure) => {
            let (status, message) = failure.status_and_message();
            return login_form(status, &next, Some(message));
        }
    };
    let until = match shared
        .keys
        .valid_until(shared.store.as_ref(), &caller, now)
        .await
    {
        Ok(Some(until)) => until,
        _ => {
            return login_form(
                StatusCode::UNAUTHORIZED,
                &next,
                Some("that API key is not valid"),
            );
        }
    };
    let (token, session) = match shared.ui.sessions.open(caller, until, now) {
        Ok(opened) => opened,
        Err(status) => return error_page(None, status, "no randomness for a session"),
    };
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&token, session.expires_at - now, &headers),
    );
    response
}

/// `POST /ui/logout`: ends the session (the CSRF token was checked by [`require`]).
pub(super) async fn logout(
    State(shared): State<Arc<Shared>>,
    Extension(_visitor): Extension<Visitor>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = presented_token(&headers) {
        shared.ui.sessions.close(token);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, &headers));
    response
}
