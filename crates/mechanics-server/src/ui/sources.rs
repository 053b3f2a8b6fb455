//! The Sources page: every webhook source with its kind, where its secret and write-back token
//! are read from (the variable's or file's name: a source stores only that, and the page never
//! reads the value), the webhook rate limit every source shares, and its recent deliveries,
//! each source linking to the Events list filtered by it.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use mechanics_proto::domain::SourceSpec;
use mechanics_store::EventFilter;

use super::encode;
use super::{Visitor, failure_page, html_response, layout, timestamp};
use crate::Shared;
use crate::api::ApiResult;

/// How many of a source's newest events are read to count its last hour: past it the page
/// says "at least", so the count stays one indexed page per source however busy it is.
const COUNTED_EVENTS: u32 = 100;
/// The window of the recent count.
const HOUR_MS: i64 = 60 * 60 * 1000;

/// `env GH_SECRET` or `file /run/secrets/gh`.
fn location(env: Option<&str>, file: Option<&str>) -> String {
    match (env, file) {
        (Some(name), _) => format!("env {name}"),
        (None, Some(path)) => format!("file {path}"),
        (None, None) => "none".to_owned(),
    }
}

/// A source's deliveries: how many arrived in the last hour, and when the last one did.
struct Recent {
    last_hour: usize,
    more: bool,
    latest: Option<i64>,
}

async fn recent(shared: &Shared, spec: &SourceSpec, now: i64) -> ApiResult<Recent> {
    let page = shared
        .store
        .list_events(&EventFilter {
            source: Some(spec.name.clone()),
            limit: Some(COUNTED_EVENTS),
            ..EventFilter::default()
        })
        .await?;
    let last_hour = page
        .items
        .iter()
        .filter(|event| event.received_at > now - HOUR_MS)
        .count();
    Ok(Recent {
        last_hour,
        more: last_hour == page.items.len() && page.next_cursor.is_some(),
        latest: page.items.first().map(|event| event.received_at),
    })
}

/// `GET /ui/sources`.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(visitor): Extension<Visitor>,
) -> Response {
    match body(&shared).await {
        Ok(body) => html_response(StatusCode::OK, layout(Some(&visitor), "Sources", body)),
        Err(failure) => failure_page(&visitor, &failure),
    }
}

async fn body(shared: &Shared) -> ApiResult<Markup> {
    let sources = shared.store.list_sources().await?;
    let now = shared.clock.now_ms();
    let mut recents = Vec::with_capacity(sources.len());
    for source in &sources {
        recents.push(recent(shared, &source.spec, now).await?);
    }
    let rate = shared.integrations.rate;
    Ok(html! {
        h1 { "Sources" }
        p.hint {
            "Each source's webhooks are admitted at " (rate.per_second) "/s, burst " (rate.burst)
            " (the server's " code { "webhook_rate_limit" } "). A source holds only where its \
            secret is read from, never the secret."
        }
        @if sources.is_empty() {
            p.empty { "No sources yet: " code { "mechanics source add" } " adds one." }
        } @else {
            table.sources {
                thead {
                    tr {
                        th { "Source" } th { "Kind" } th { "Secret from" } th { "Token from" }
                        th { "Webhook URL" } th { "Events, last hour" } th { "Latest event" }
                    }
                }
                tbody {
                    @for (source, recent) in sources.iter().zip(&recents) {
                        @let spec = &source.spec;
                        tr id={"source-" (spec.name)} {
                            td { a href={"/ui/events?source=" (encode(&spec.name))} { (spec.name) } }
                            td { (kind(spec)) }
                            td.secret { (location(spec.secret_env.as_deref(), spec.secret_file.as_deref())) }
                            td.token { (location(spec.token_env.as_deref(), spec.token_file.as_deref())) }
                            td { code { "/webhooks/" (spec.name) } }
                            td.recent { @if recent.more { "at least " } (recent.last_hour) }
                            td { (recent.latest.map(timestamp).unwrap_or_else(|| "never".to_owned())) }
                        }
                    }
                }
            }
        }
    })
}

/// The kind as specs write it (`github`).
fn kind(spec: &SourceSpec) -> String {
    serde_json::to_value(spec.kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}
