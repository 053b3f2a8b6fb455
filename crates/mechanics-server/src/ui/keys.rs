//! The Keys page (admin only): the stored API keys (never their secrets: the store has only
//! their hashes), a form to create one, and Revoke. Both actions go through the API's own
//! [`crate::keys::create`] and [`crate::keys::revoke`], so they are checked and traced as
//! `POST /keys` and `DELETE /keys/{name}` are. A new key's secret is on the answer to its
//! creation only (not stored, never cached: every `/ui` answer is `no-store`).
//!
//! Any other scope gets `403` on the page here and on its forms in [`super::session`], before
//! the CSRF-checked form reaches a handler.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use mechanics_proto::api::{ApiKeyInput, ApiScope};
use serde::Deserialize;

use super::encode;
use super::{Visitor, error_page, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::{ApiResult, Failure, quote};

/// `403` unless the visitor signed in with an `admin` key.
fn refuse_non_admin(visitor: &Visitor) -> Option<Response> {
    (!visitor.may(ApiScope::Admin)).then(|| {
        error_page(
            Some(visitor),
            StatusCode::FORBIDDEN,
            &format!(
                "the Keys page needs the `admin` scope; you signed in with a `{}` key",
                visitor.caller.scope()
            ),
        )
    })
}

/// `GET /ui/keys`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    if let Some(refusal) = refuse_non_admin(&visitor) {
        return refusal;
    }
    let keys = match shared.store.list_api_keys().await {
        Ok(keys) => keys,
        Err(err) => return failure_page(&visitor, &Failure::from(err)),
    };
    let now = shared.clock.now_ms();
    let body = html! {
        h1 { "API keys" }
        p.hint { "The server's configured key (" code { "--api-key" } ") is not listed: it is not stored." }
        @if keys.is_empty() {
            p.empty { "No stored keys." }
        } @else {
            table.keys {
                thead { tr { th { "Name" } th { "Scope" } th { "Created" } th { "Last used" } th { "Expires" } th { "Action" } } }
                tbody {
                    @for key in &keys {
                        tr id={"key-" (key.name)} {
                            td { (key.name) }
                            td.scope { (key.scope) }
                            td { (timestamp(key.created_at)) }
                            td { (key.last_used_at.map(timestamp).unwrap_or_else(|| "never".to_owned())) }
                            td.expires {
                                @match key.expires_at {
                                    Some(at) if at <= now => span.error { "expired " (timestamp(at)) },
                                    Some(at) => (timestamp(at)),
                                    None => "never",
                                }
                            }
                            td {
                                form method="post" action={"/ui/keys/" (encode(&key.name)) "/revoke"} {
                                    (visitor.csrf_field())
                                    button type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create a key" }
        form.create-key method="post" action="/ui/keys" {
            (visitor.csrf_field())
            label for="name" { "Name" }
            input id="name" name="name" required pattern="[A-Za-z0-9._-]{1,64}" autocomplete="off";
            label for="scope" { "Scope" }
            select id="scope" name="scope" {
                @for scope in ApiScope::ALL {
                    option value=(scope.as_str()) selected[*scope == ApiScope::Read] { (scope.as_str()) }
                }
            }
            label for="expires_in_days" { "Expires in (days, empty: never)" }
            input id="expires_in_days" name="expires_in_days" size="5" inputmode="numeric";
            button type="submit" { "Create" }
        }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "API keys", body))
}

/// The create form.
#[derive(Deserialize)]
pub(super) struct CreateForm {
    name: Option<String>,
    scope: Option<String>,
    expires_in_days: Option<String>,
}

/// The key the form describes; `400` naming the field that is wrong.
fn input(form: CreateForm) -> ApiResult<ApiKeyInput> {
    let name = form.name.unwrap_or_default().trim().to_owned();
    if name.is_empty() {
        return Err(Failure::bad_request("name: required").at("name"));
    }
    let scope = form
        .scope
        .unwrap_or_default()
        .parse::<ApiScope>()
        .map_err(|err| Failure::bad_request(format!("scope: {err}")).at("scope"))?;
    let expires_in_secs = match form.expires_in_days.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(days) => {
            let days: u64 = days.parse().map_err(|_| {
                Failure::bad_request(format!(
                    "expires_in_days: {} is not a whole number of days",
                    quote(days)
                ))
                .at("expires_in_days")
            })?;
            // The API bounds the seconds (1 s to ten years) and names its field; this one is
            // the form's.
            let secs = days
                .checked_mul(24 * 3600)
                .filter(|secs| (1..=crate::keys::MAX_EXPIRES_IN_SECS).contains(secs));
            Some(secs.ok_or_else(|| {
                Failure::bad_request(format!(
                    "expires_in_days: must be from 1 to {} (ten years), not {days}",
                    crate::keys::MAX_EXPIRES_IN_SECS / (24 * 3600)
                ))
                .at("expires_in_days")
            })?)
        }
    };
    Ok(ApiKeyInput {
        name,
        scope,
        expires_in_secs,
    })
}

/// `POST /ui/keys`: creates the key and shows its secret, this once.
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Form(form): Form<CreateForm>,
) -> Response {
    if let Some(refusal) = refuse_non_admin(&visitor) {
        return refusal;
    }
    let created = match input(form) {
        Ok(input) => crate::keys::create(&shared, Some(&visitor.caller), input).await,
        Err(failure) => Err(failure),
    };
    let created = match created {
        Ok(created) => created,
        Err(failure) => return failure_page(&visitor, &failure),
    };
    let body = html! {
        h1 { "Key " (created.key.name) " created" }
        p.warning { strong { "Copy the secret now: it is not shown again." } " The server keeps only its hash." }
        dl.summary {
            dt { "Name" } dd { (created.key.name) }
            dt { "Scope" } dd { (created.key.scope) }
            dt { "Expires" } dd { (created.key.expires_at.map(timestamp).unwrap_or_else(|| "never".to_owned())) }
            dt { "Secret" } dd { code #new-secret { (created.secret) } }
        }
        p { a href="/ui/keys" { "Back to the keys" } }
    };
    html_response(StatusCode::OK, layout(Some(&visitor), "Key created", body))
}

/// `POST /ui/keys/{name}/revoke`: revokes it (its sessions end at their next request), then
/// back to the list.
pub(super) async fn revoke(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
) -> Response {
    if let Some(refusal) = refuse_non_admin(&visitor) {
        return refusal;
    }
    match crate::keys::revoke(&shared, Some(&visitor.caller), &name).await {
        Ok(()) => Redirect::to("/ui/keys").into_response(),
        Err(failure) => failure_page(&visitor, &failure),
    }
}
