//! One `endpoint(name, options)` call: building the request from the configuration and the job's
//! values ([`HttpEndpoint::prepare`]), then sending it with timeouts, retries and redirects
//! ([`perform`]) and shaping the response for JavaScript.
//!
//! Nothing here touches JavaScript values; the `mechanics:endpoint` module converts on both sides.
//! Error messages name the endpoint and the field at fault, never a header value or a URL: both
//! may carry credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::config::{
    EndpointBodyType, EndpointRetryPolicy, HttpEndpoint, HttpMethod, QuerySpec, SlottedQueryMode,
    check_length,
};
use super::http_client::{
    EndpointHttpClient, EndpointHttpError, EndpointHttpHeaders, EndpointHttpRequest,
    EndpointHttpRequestBody, EndpointHttpResponse,
};
use super::template::UrlTemplate;

/// Sent unless the configuration or the job sets its own `User-Agent`.
const DEFAULT_USER_AGENT: &str = concat!("mechanics/", env!("CARGO_PKG_VERSION"));

/// Redirects followed by one call, for endpoints that follow redirects at all.
const MAX_REDIRECTS: usize = 10;

/// Pool-wide values an endpoint falls back on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointDefaults {
    pub(crate) timeout: Duration,
    pub(crate) response_max_bytes: usize,
}

/// What a job passed to `endpoint(name, options)`, read out of JavaScript.
#[derive(Debug, Default)]
pub(crate) struct CallInput {
    pub(crate) url_params: Vec<(String, String)>,
    pub(crate) queries: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<EndpointHttpRequestBody>,
}

/// A request ready to send, with the rules that govern its exchange.
#[derive(Debug)]
pub(crate) struct PreparedCall {
    name: String,
    request: EndpointHttpRequest,
    policy: EndpointRetryPolicy,
    timeout: Duration,
    allow_non_2xx_status: bool,
    follow_redirects: bool,
    response_body_type: EndpointBodyType,
    exposed_response_headers: Vec<HeaderName>,
    /// Headers that the configuration or the job set: dropped when a redirect leaves the origin.
    credential_headers: Vec<HeaderName>,
}

/// A response body as JavaScript will see it.
#[derive(Debug, PartialEq)]
pub(crate) enum ResponseBody {
    /// The body was empty.
    Empty,
    Json(Value),
    Text(String),
    Bytes(Vec<u8>),
}

/// The result of a call: `{ body, headers, status, ok }`, its body still raw. The body is parsed
/// by [`CallResult::parse_body`] on the job's own thread, so the job's memory accounting pays for
/// the parsed value (the transport thread is shared by every job).
#[derive(Debug)]
pub(crate) struct CallResult {
    pub(crate) name: String,
    pub(crate) status: u16,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
    body_type: EndpointBodyType,
}

impl CallResult {
    /// The body in the endpoint's response body type; the error names the endpoint.
    pub(crate) fn parse_body(&mut self) -> Result<ResponseBody, String> {
        let body = std::mem::take(&mut self.body);
        if body.is_empty() {
            return Ok(ResponseBody::Empty);
        }
        let fail = |message: String| format!("endpoint `{}`: {message}", self.name);
        Ok(match self.body_type {
            EndpointBodyType::Json => ResponseBody::Json(
                serde_json::from_slice(&body)
                    .map_err(|err| fail(format!("the response body is not valid JSON: {err}")))?,
            ),
            EndpointBodyType::Utf8 => ResponseBody::Text(
                String::from_utf8(body)
                    .map_err(|err| fail(format!("the response body is not valid UTF-8: {err}")))?,
            ),
            EndpointBodyType::Bytes => ResponseBody::Bytes(body),
        })
    }
}

impl PreparedCall {
    /// The largest response body this call may buffer.
    pub(crate) fn response_max_bytes(&self) -> usize {
        self.request.response_max_bytes
    }

    /// The request body's heap size, if any.
    pub(crate) fn body_capacity(&self) -> usize {
        match &self.request.body {
            Some(EndpointHttpRequestBody::Json(b) | EndpointHttpRequestBody::Bytes(b)) => {
                b.capacity()
            }
            Some(EndpointHttpRequestBody::Utf8(t)) => t.capacity(),
            None => 0,
        }
    }
}

impl HttpEndpoint {
    /// Builds the request for one call named `name` from this (validated) endpoint and the job's
    /// values. The error names the offending value.
    pub(crate) fn prepare(
        &self,
        name: &str,
        input: CallInput,
        defaults: EndpointDefaults,
    ) -> Result<PreparedCall, String> {
        let fail = |message: String| format!("endpoint `{name}`: {message}");
        let url_params = self.resolve_url_params(input.url_params).map_err(fail)?;
        let query = self.resolve_queries(input.queries).map_err(fail)?;
        let template = UrlTemplate::parse(self.url_template()).map_err(fail)?;
        let url = template.render(&url_params, &query).map_err(fail)?;

        // `read_body` refuses this before a request is built; kept for Rust callers.
        if input.body.is_some() && !self.method().allows_body() {
            return Err(fail(format!(
                "{} requests carry no body; leave `body` out (RFC 9110 defines bodies only for \
                 POST, PUT and PATCH)",
                self.method()
            )));
        }
        let (headers, credential_headers) = self
            .layer_headers(input.headers, input.body.is_some())
            .map_err(fail)?;
        let timeout = self
            .timeout_ms()
            .map_or(defaults.timeout, Duration::from_millis);
        let response_max_bytes = self
            .response_max_bytes()
            .unwrap_or(defaults.response_max_bytes);
        let exposed_response_headers = self
            .exposed_response_headers()
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        Ok(PreparedCall {
            name: name.to_owned(),
            request: EndpointHttpRequest {
                method: self.method(),
                url,
                headers,
                body: input.body,
                response_max_bytes,
            },
            policy: self.retry_policy().clone(),
            timeout,
            allow_non_2xx_status: self.allow_non_2xx_status(),
            follow_redirects: self.follow_redirects(),
            response_body_type: self.response_body_type(),
            exposed_response_headers,
            credential_headers,
        })
    }

    fn resolve_url_params(
        &self,
        given: Vec<(String, String)>,
    ) -> Result<BTreeMap<String, String>, String> {
        let specs = self.url_param_specs();
        let mut given: BTreeMap<String, String> = given.into_iter().collect();
        if let Some(unknown) = given.keys().find(|k| !specs.contains_key(*k)) {
            return Err(format!(
                "`urlParams.{unknown}` is not a slot of this endpoint (slots: {})",
                list(specs.keys())
            ));
        }
        let mut resolved = BTreeMap::new();
        for (slot, spec) in specs {
            let value = match given.remove(slot).filter(|v| !v.is_empty()) {
                Some(value) => value,
                None => spec.default.clone().unwrap_or_default(),
            };
            check_length(
                &format!("`urlParams.{slot}`"),
                "value",
                &value,
                spec.min_bytes,
                spec.max_bytes,
            )?;
            resolved.insert(slot.clone(), value);
        }
        Ok(resolved)
    }

    fn resolve_queries(
        &self,
        given: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>, String> {
        let given: BTreeMap<String, String> = given.into_iter().collect();
        let slots: BTreeSet<&str> = self
            .query_specs()
            .iter()
            .filter_map(|spec| match spec {
                QuerySpec::Slotted { slot, .. } => Some(slot.as_str()),
                QuerySpec::Const { .. } => None,
            })
            .collect();
        if let Some(unknown) = given.keys().find(|k| !slots.contains(k.as_str())) {
            return Err(format!(
                "`queries.{unknown}` is not a query slot of this endpoint (slots: {})",
                list(slots.iter())
            ));
        }
        let mut pairs = Vec::new();
        for spec in self.query_specs() {
            match spec {
                QuerySpec::Const { key, value } => pairs.push((key.clone(), value.clone())),
                QuerySpec::Slotted {
                    key,
                    slot,
                    mode,
                    default,
                    min_bytes,
                    max_bytes,
                } => {
                    let default = default
                        .as_ref()
                        .filter(|d| mode.allows_empty() || !d.is_empty());
                    let value = given.get(slot).or(default);
                    let emitted = match (mode, value) {
                        (SlottedQueryMode::Required, Some(v)) if !v.is_empty() => v,
                        (SlottedQueryMode::Required, _) => {
                            return Err(format!(
                                "`queries.{slot}` is required and must not be empty"
                            ));
                        }
                        (SlottedQueryMode::RequiredAllowEmpty, Some(v)) => v,
                        (SlottedQueryMode::RequiredAllowEmpty, None) => {
                            return Err(format!("`queries.{slot}` is required"));
                        }
                        (SlottedQueryMode::Optional, Some(v)) if !v.is_empty() => v,
                        (SlottedQueryMode::OptionalAllowEmpty, Some(v)) => v,
                        (SlottedQueryMode::Optional | SlottedQueryMode::OptionalAllowEmpty, _) => {
                            continue;
                        }
                    };
                    check_length(
                        &format!("`queries.{slot}`"),
                        "value",
                        emitted,
                        *min_bytes,
                        *max_bytes,
                    )?;
                    pairs.push((key.clone(), emitted.clone()));
                }
            }
        }
        Ok(pairs)
    }

    /// Auto defaults, then configured headers, then the job's allowlisted overrides; each layer
    /// replaces the one below. Returns the headers and the names that count as credentials.
    fn layer_headers(
        &self,
        overrides: Vec<(String, String)>,
        has_body: bool,
    ) -> Result<(EndpointHttpHeaders, Vec<HeaderName>), String> {
        let mut headers = EndpointHttpHeaders::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
        if has_body && let Some(body_type) = self.request_body_type() {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(body_type.default_content_type()),
            );
        }
        let mut credentials = Vec::new();
        for (name, value) in self.headers() {
            // Validated with the configuration; a failure here would be a bug, reported plainly.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header `{name}` has an invalid name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("header `{name}` has an invalid value"))?;
            headers.insert(name.clone(), value);
            credentials.push(name);
        }
        let allowed: BTreeSet<String> = self
            .overridable_request_headers()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let mut seen = BTreeSet::new();
        for (name, value) in overrides {
            let lower = name.to_ascii_lowercase();
            if !allowed.contains(&lower) {
                return Err(format!(
                    "`headers.{name}` may not be set by the job (overridable headers: {})",
                    list(allowed.iter())
                ));
            }
            if !seen.insert(lower) {
                return Err(format!(
                    "`headers` sets `{name}` twice (header names ignore case)"
                ));
            }
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`headers.{name}` is not a valid header name"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!("`headers.{name}` is not a valid header value (control characters?)")
            })?;
            headers.insert(header.clone(), value);
            credentials.push(header);
        }
        Ok((headers, credentials))
    }
}

fn list<'a>(names: impl Iterator<Item = &'a (impl AsRef<str> + ?Sized + 'a)>) -> String {
    let names: Vec<&str> = names.map(AsRef::as_ref).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Sends `call` through `client`, retrying and following redirects as configured, and shapes the
/// response. Runs on the pool's Tokio runtime.
pub(crate) async fn perform(
    call: PreparedCall,
    client: Arc<dyn EndpointHttpClient>,
) -> Result<CallResult, CallError> {
    let fail = |message: String| CallError {
        message: format!("endpoint `{}`: {message}", call.name),
        transport: false,
    };
    let origin = call.request.url.origin();
    let mut request = call.request.clone();
    let mut attempt: u32 = 1;
    let mut redirects = 0;
    loop {
        let outcome =
            match tokio::time::timeout(call.timeout, client.execute(request.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => Err(EndpointHttpError::Timeout),
            };
        let retry_allowed = attempt < call.policy.max_attempts;
        match outcome {
            Ok(response) => {
                if call.follow_redirects
                    && let Some(next) = redirect(&request, &response)
                {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(fail(format!("more than {MAX_REDIRECTS} redirects")));
                    }
                    request = next.map_err(fail)?;
                    if request.url.origin() != origin {
                        for name in &call.credential_headers {
                            request.headers.remove(name);
                        }
                    }
                    continue;
                }
                if retry_allowed && call.policy.retry_on_status.contains(&response.status) {
                    tokio::time::sleep(retry_delay(&call.policy, attempt, Some(&response))).await;
                    attempt += 1;
                    continue;
                }
                return finish(&call, response).map_err(fail);
            }
            Err(error) => {
                let retryable = match error {
                    EndpointHttpError::Timeout => call.policy.retry_on_timeout,
                    EndpointHttpError::Io(_) => call.policy.retry_on_io_errors,
                    _ => false,
                };
                if retry_allowed && retryable {
                    tokio::time::sleep(retry_delay(&call.policy, attempt, None)).await;
                    attempt += 1;
                    continue;
                }
                let transport =
                    matches!(error, EndpointHttpError::Timeout | EndpointHttpError::Io(_));
                let error = match error {
                    EndpointHttpError::Timeout => format!(
                        "the request timed out after {} ms",
                        call.timeout.as_millis()
                    ),
                    other => other.to_string(),
                };
                let tries = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(CallError {
                    transport,
                    ..fail(format!("{error}{tries}"))
                });
            }
        }
    }
}

/// Why an endpoint call failed, as the job sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    /// What happened, naming the endpoint; never a configured secret.
    pub(crate) message: String,
    /// The service could not be reached (refused, timed out, name not resolved, connection
    /// broken) even after the endpoint's own retries: a later attempt of the job may succeed.
    pub(crate) transport: bool,
}

/// The request that follows a redirect response, if `response` is one with a `Location`.
fn redirect(
    request: &EndpointHttpRequest,
    response: &EndpointHttpResponse,
) -> Option<Result<EndpointHttpRequest, String>> {
    if !matches!(response.status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers.get(LOCATION)?;
    Some((|| {
        let location = location
            .to_str()
            .map_err(|_| "a redirect's `Location` is not valid text".to_owned())?;
        let url = request
            .url
            .join(location)
            .map_err(|err| format!("a redirect's `Location` is not a valid URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "a redirect points to a `{}` URL; only http and https are followed",
                url.scheme()
            ));
        }
        let mut next = request.clone();
        next.url = url;
        // 303 always, and 301/302 after a POST (as every client does), continue with a GET.
        let to_get = response.status == 303
            || (matches!(response.status, 301 | 302) && request.method == HttpMethod::Post);
        if to_get && request.method != HttpMethod::Head {
            next.method = HttpMethod::Get;
            next.body = None;
            next.headers.remove(CONTENT_TYPE);
        }
        Ok(next)
    })())
}

/// The wait before the retry that follows failed attempt `attempt` (1-based).
pub(crate) fn retry_delay(
    policy: &EndpointRetryPolicy,
    attempt: u32,
    response: Option<&EndpointHttpResponse>,
) -> Duration {
    let exponential = 1u64
        .checked_shl(attempt.saturating_sub(1))
        .map_or(u64::MAX, |factor| {
            policy.base_backoff_ms.saturating_mul(factor)
        })
        .min(policy.max_backoff_ms);
    let ms = match response {
        Some(response) if response.status == 429 => {
            let retry_after = policy
                .respect_retry_after
                .then(|| retry_after_seconds(&response.headers))
                .flatten();
            match retry_after {
                Some(seconds) => seconds.saturating_mul(1000),
                None if policy.rate_limit_backoff_ms > 0 => policy.rate_limit_backoff_ms,
                None => exponential,
            }
        }
        _ => exponential,
    };
    Duration::from_millis(ms.min(policy.max_retry_delay_ms))
}

/// `Retry-After` as delta-seconds; an HTTP date is not honoured.
fn retry_after_seconds(headers: &EndpointHttpHeaders) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

fn finish(call: &PreparedCall, response: EndpointHttpResponse) -> Result<CallResult, String> {
    let ok = (200..300).contains(&response.status);
    if !ok && !call.allow_non_2xx_status {
        let reason = http::StatusCode::from_u16(response.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map(|r| format!(" {r}"))
            .unwrap_or_default();
        return Err(format!(
            "the server answered {}{reason} (set `allow_non_2xx_status` to handle such responses \
             in the job)",
            response.status
        ));
    }
    let mut headers = BTreeMap::new();
    for name in &call.exposed_response_headers {
        let values: Vec<String> = response
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if !values.is_empty() {
            headers.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    Ok(CallResult {
        name: call.name.clone(),
        status: response.status,
        headers,
        body: response.body,
        body_type: call.response_body_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&str>) -> EndpointHttpResponse {
        let mut headers = EndpointHttpHeaders::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        }
        EndpointHttpResponse {
            status,
            headers,
            body: Vec::new(),
        }
    }

    fn policy() -> EndpointRetryPolicy {
        EndpointRetryPolicy {
            max_attempts: 20,
            base_backoff_ms: 100,
            max_backoff_ms: 1_000,
            max_retry_delay_ms: 5_000,
            rate_limit_backoff_ms: 750,
            ..EndpointRetryPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_without_overflow() {
        let p = policy();
        let delays: Vec<u128> = (1..=6)
            .map(|n| retry_delay(&p, n, Some(&response(503, None))).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(
            retry_delay(&p, u32::MAX, None),
            Duration::from_millis(1_000)
        );
        let huge = EndpointRetryPolicy {
            base_backoff_ms: u64::MAX,
            max_backoff_ms: u64::MAX,
            ..p
        };
        assert_eq!(retry_delay(&huge, 3, None), Duration::from_millis(5_000));
    }

    #[test]
    fn retry_after_on_429_is_honoured_and_capped() {
        let p = policy();
        assert_eq!(
            retry_delay(&p, 1, Some(&response(429, Some("2")))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(&p, 1, Some(&response(429, Some("3600")))),
            Duration::from_millis(5_000),
            "capped by max_retry_delay_ms"
        );
        // An HTTP date, or no header: the rate-limit backoff.
        for header in [Some("Wed, 21 Oct 2015 07:28:00 GMT"), None] {
            assert_eq!(
                retry_delay(&p, 1, Some(&response(429, header))),
                Duration::from_millis(750)
            );
        }
        let ignore = EndpointRetryPolicy {
            respect_retry_after: false,
            ..policy()
        };
        assert_eq!(
            retry_delay(&ignore, 1, Some(&response(429, Some("2")))),
            Duration::from_millis(750)
        );
        // Retry-After only counts on a 429.
        assert_eq!(
            retry_delay(&p, 1, Some(&response(503, Some("2")))),
            Duration::from_millis(100)
        );
    }
}
