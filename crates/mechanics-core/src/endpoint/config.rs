//! The configuration of one endpoint, and its validation.
//!
//! Every rule is checked when a [`MechanicsConfig`](crate::job::MechanicsConfig) is built or
//! deserialized, so a job never reaches the network with a configuration that could not work;
//! what is left for call time is only what depends on the values a job passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::template::UrlTemplate;
use crate::MechanicsError;
use crate::job::{JsonObject, fields_of};

/// HTTP method of an endpoint. JSON: `"get"`, `"post"`, ... (any letter case is accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
    /// `HEAD`
    Head,
    /// `OPTIONS`
    Options,
}

impl HttpMethod {
    const ALL: [HttpMethod; 7] = [
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
        HttpMethod::Head,
        HttpMethod::Options,
    ];

    /// The method's name as sent on the wire (`"GET"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Head => "HEAD",
            HttpMethod::Options => "OPTIONS",
        }
    }

    /// Whether a request with this method may carry a body: only `POST`, `PUT` and `PATCH`, the
    /// methods for which RFC 9110 defines body semantics.
    pub fn allows_body(self) -> bool {
        matches!(self, HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch)
    }

    /// The [`http::Method`] for this method.
    pub fn to_http(self) -> http::Method {
        match self {
            HttpMethod::Get => http::Method::GET,
            HttpMethod::Post => http::Method::POST,
            HttpMethod::Put => http::Method::PUT,
            HttpMethod::Patch => http::Method::PATCH,
            HttpMethod::Delete => http::Method::DELETE,
            HttpMethod::Head => http::Method::HEAD,
            HttpMethod::Options => http::Method::OPTIONS,
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for HttpMethod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str().to_ascii_lowercase())
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Any letter case: `"post"` in configs, `"POST"` as on the wire.
        let text = String::deserialize(deserializer)?;
        let lower = text.to_ascii_lowercase();
        variant_named(
            &lower,
            &HttpMethod::ALL,
            |m| m.as_str().to_ascii_lowercase(),
            "HTTP method",
        )
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown HTTP method `{text}`, expected one of get, post, put, patch, delete, \
                     head, options"
            ))
        })
    }
}

/// The variant of `all` whose name is `text`, or an error listing the names. The enums of this
/// module are read from strings only: serde's derive would also take `{ "json": null }`, a shape
/// the documented JSON does not have.
fn variant_named<T: Copy, N: AsRef<str>>(
    text: &str,
    all: &[T],
    name: impl Fn(T) -> N,
    what: &str,
) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v).as_ref() == text)
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|v| name(*v).as_ref().to_owned()).collect();
            format!(
                "unknown {what} `{text}`, expected one of {}",
                names.join(", ")
            )
        })
}

/// Serde for an enum read from and written as its name.
macro_rules! serde_by_name {
    ($type:ty, $what:literal) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                variant_named(&text, &<$type>::ALL, <$type>::as_str, $what)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

/// How a request or response body is written and read.
///
/// | type | JavaScript side | wire |
/// |---|---|---|
/// | `json` | any JSON-convertible value | JSON text, `application/json` |
/// | `utf8` | `string` | UTF-8 text, `text/plain; charset=utf-8` |
/// | `bytes` | `TypedArray \| ArrayBuffer \| DataView` in, `Uint8Array` out | raw bytes, `application/octet-stream` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointBodyType {
    /// JSON text.
    Json,
    /// UTF-8 text.
    Utf8,
    /// Raw bytes.
    Bytes,
}

serde_by_name!(EndpointBodyType, "body type");

impl EndpointBodyType {
    const ALL: [EndpointBodyType; 3] = [
        EndpointBodyType::Json,
        EndpointBodyType::Utf8,
        EndpointBodyType::Bytes,
    ];

    /// The type's JSON name (`"json"`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointBodyType::Json => "json",
            EndpointBodyType::Utf8 => "utf8",
            EndpointBodyType::Bytes => "bytes",
        }
    }

    /// The `Content-Type` sent with a request body of this type when none is configured.
    pub fn default_content_type(self) -> &'static str {
        match self {
            EndpointBodyType::Json => "application/json",
            EndpointBodyType::Utf8 => "text/plain; charset=utf-8",
            EndpointBodyType::Bytes => "application/octet-stream",
        }
    }
}

/// When an endpoint call is retried, and how long it waits in between.
///
/// JSON shape (every field optional, defaults shown): `{ "max_attempts": 1, "base_backoff_ms": 100,
/// "max_backoff_ms": 5000, "max_retry_delay_ms": 30000, "rate_limit_backoff_ms": 1000,
/// "retry_on_io_errors": true, "retry_on_timeout": true, "respect_retry_after": true,
/// "retry_on_status": [429, 500, 502, 503, 504] }`.
///
/// The wait before retry `n` (1-based) is `base_backoff_ms × 2^(n-1)`, capped at
/// `max_backoff_ms`. After a `429` it is the response's `Retry-After` (delta-seconds) when
/// `respect_retry_after` is set and the header is present, else `rate_limit_backoff_ms`. Every
/// wait is capped at `max_retry_delay_ms`, and none outlasts the job's time limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointRetryPolicy {
    /// Attempts in all, the first included (1 to 20; 1 means no retries).
    pub max_attempts: u32,
    /// First backoff, doubled on every further retry.
    pub base_backoff_ms: u64,
    /// Cap on the exponential backoff.
    pub max_backoff_ms: u64,
    /// Cap on any single wait, `Retry-After` included (at least 1).
    pub max_retry_delay_ms: u64,
    /// Wait after a `429` without a usable `Retry-After`.
    pub rate_limit_backoff_ms: u64,
    /// Retry when the connection fails or breaks.
    pub retry_on_io_errors: bool,
    /// Retry when an attempt times out.
    pub retry_on_timeout: bool,
    /// Honour a `429` response's `Retry-After: <seconds>`.
    pub respect_retry_after: bool,
    /// Response statuses that are retried.
    pub retry_on_status: Vec<u16>,
}

impl Default for EndpointRetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            base_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_retry_delay_ms: 30_000,
            rate_limit_backoff_ms: 1_000,
            retry_on_io_errors: true,
            retry_on_timeout: true,
            respect_retry_after: true,
            retry_on_status: vec![429, 500, 502, 503, 504],
        }
    }
}

/// Most attempts a policy may ask for: beyond this, retries stop being resilience and start being
/// load on someone else's server.
const MAX_ATTEMPTS: u32 = 20;

impl EndpointRetryPolicy {
    fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "`retry_policy.max_attempts` must be between 1 and {MAX_ATTEMPTS}, got {}",
                self.max_attempts
            ));
        }
        if self.max_retry_delay_ms == 0 {
            return Err("`retry_policy.max_retry_delay_ms` must be at least 1".to_owned());
        }
        if self.base_backoff_ms > self.max_backoff_ms {
            return Err(format!(
                "`retry_policy.base_backoff_ms` ({}) must not be larger than `max_backoff_ms` ({})",
                self.base_backoff_ms, self.max_backoff_ms
            ));
        }
        if let Some(status) = self
            .retry_on_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(format!(
                "`retry_policy.retry_on_status` holds {status}, which is not an HTTP status \
                 (100 to 599)"
            ));
        }
        Ok(())
    }
}

/// Rules for one `{slot}` of an endpoint's URL template.
///
/// A missing or empty value from JavaScript takes `default` when one is set, else resolves to the
/// empty string. The resolved value's UTF-8 length must lie within `min_bytes..=max_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlParamSpec {
    /// Value used when JavaScript passes none, or an empty one.
    #[serde(default)]
    pub default: Option<String>,
    /// Shortest accepted value, in UTF-8 bytes.
    #[serde(default)]
    pub min_bytes: Option<usize>,
    /// Longest accepted value, in UTF-8 bytes.
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// How a slotted query parameter treats a missing or empty value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlottedQueryMode {
    /// Must resolve to a non-empty value.
    Required,
    /// Must resolve; may be empty.
    RequiredAllowEmpty,
    /// Missing or empty: the parameter is left out.
    Optional,
    /// Missing: left out; provided (even empty): emitted.
    OptionalAllowEmpty,
}

serde_by_name!(SlottedQueryMode, "query mode");

impl SlottedQueryMode {
    const ALL: [SlottedQueryMode; 4] = [
        SlottedQueryMode::Required,
        SlottedQueryMode::RequiredAllowEmpty,
        SlottedQueryMode::Optional,
        SlottedQueryMode::OptionalAllowEmpty,
    ];

    pub(crate) fn allows_empty(self) -> bool {
        matches!(
            self,
            SlottedQueryMode::RequiredAllowEmpty | SlottedQueryMode::OptionalAllowEmpty
        )
    }

    /// The mode's JSON name (`"required_allow_empty"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SlottedQueryMode::Required => "required",
            SlottedQueryMode::RequiredAllowEmpty => "required_allow_empty",
            SlottedQueryMode::Optional => "optional",
            SlottedQueryMode::OptionalAllowEmpty => "optional_allow_empty",
        }
    }
}

/// One query parameter of an endpoint, emitted in list order.
///
/// JSON: `{ "type": "const", "key", "value" }` or `{ "type": "slotted", "key", "slot", "mode"?,
/// "default"?, "min_bytes"?, "max_bytes"? }` (`mode` defaults to `required`, so a forgotten value
/// fails loudly instead of silently dropping the parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum QuerySpec {
    /// A fixed `key=value` pair.
    Const {
        /// Parameter name.
        key: String,
        /// Parameter value.
        value: String,
    },
    /// A pair whose value comes from JavaScript's `options.queries[slot]`.
    Slotted {
        /// Parameter name.
        key: String,
        /// Name of the value in `options.queries`.
        slot: String,
        /// How a missing or empty value is treated.
        #[serde(default = "required_mode")]
        mode: SlottedQueryMode,
        /// Value used when JavaScript passes none. An empty default counts as absent in the
        /// `required` and `optional` modes, and as a value in the `*_allow_empty` modes.
        #[serde(default)]
        default: Option<String>,
        /// Shortest accepted value, in UTF-8 bytes.
        #[serde(default)]
        min_bytes: Option<usize>,
        /// Longest accepted value, in UTF-8 bytes.
        #[serde(default)]
        max_bytes: Option<usize>,
    },
}

fn required_mode() -> SlottedQueryMode {
    SlottedQueryMode::Required
}

impl QuerySpec {
    /// A fixed `key=value` parameter.
    pub fn constant(key: impl Into<String>, value: impl Into<String>) -> Self {
        QuerySpec::Const {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A parameter `key` filled from `options.queries[slot]` under `mode`, without default or
    /// bounds.
    pub fn slotted(
        key: impl Into<String>,
        slot: impl Into<String>,
        mode: SlottedQueryMode,
    ) -> Self {
        QuerySpec::Slotted {
            key: key.into(),
            slot: slot.into(),
            mode,
            default: None,
            min_bytes: None,
            max_bytes: None,
        }
    }
}

/// Checks a slot or placeholder name: ASCII letters, digits and `_`, not empty.
pub(crate) fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "slot name `{name}` is invalid: use ASCII letters, digits and `_` only"
        ));
    }
    Ok(())
}

/// Checks byte-length bounds, and a default against them.
fn check_bounds(
    what: &str,
    min: Option<usize>,
    max: Option<usize>,
    default: Option<&str>,
) -> Result<(), String> {
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err(format!(
            "{what}: `min_bytes` ({min}) must not be larger than `max_bytes` ({max})"
        ));
    }
    if let Some(default) = default {
        check_length(what, "default", default, min, max)?;
    }
    Ok(())
}

/// Checks the UTF-8 length of `value` (described as `which`) against the bounds.
pub(crate) fn check_length(
    what: &str,
    which: &str,
    value: &str,
    min: Option<usize>,
    max: Option<usize>,
) -> Result<(), String> {
    let len = value.len();
    if let Some(min) = min
        && len < min
    {
        return Err(format!(
            "{what}: the {which} is {len} bytes, shorter than `min_bytes` ({min})"
        ));
    }
    if let Some(max) = max
        && len > max
    {
        return Err(format!(
            "{what}: the {which} is {len} bytes, longer than `max_bytes` ({max})"
        ));
    }
    Ok(())
}

/// One HTTP endpoint a job may call through `mechanics:endpoint`.
///
/// The method, the URL (but for its `{slot}` values), the query parameters and the headers are
/// fixed here, out of the job's reach: a job can only fill the slots the configuration opens, and
/// override the headers it allowlists. Header values typically hold credentials, so they are never
/// shown to JavaScript, never printed by `Debug`, and never quoted in errors.
///
/// JSON shape: see `json-schema/mechanics-config.schema.json`; only `method` and `url_template`
/// are required.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JsonObject")]
pub struct HttpEndpoint {
    method: HttpMethod,
    url_template: String,
    url_param_specs: BTreeMap<String, UrlParamSpec>,
    query_specs: Vec<QuerySpec>,
    headers: BTreeMap<String, String>,
    request_body_type: Option<EndpointBodyType>,
    response_body_type: EndpointBodyType,
    response_max_bytes: Option<usize>,
    retry_policy: EndpointRetryPolicy,
    overridable_request_headers: Vec<String>,
    exposed_response_headers: Vec<String>,
    timeout_ms: Option<u64>,
    allow_non_2xx_status: bool,
    follow_redirects: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    method: HttpMethod,
    url_template: String,
    #[serde(default)]
    url_param_specs: BTreeMap<String, JsonObject>,
    #[serde(default)]
    query_specs: Vec<JsonObject>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    request_body_type: Option<EndpointBodyType>,
    #[serde(default)]
    response_body_type: Option<EndpointBodyType>,
    #[serde(default)]
    response_max_bytes: Option<usize>,
    #[serde(default)]
    retry_policy: Option<JsonObject>,
    #[serde(default)]
    overridable_request_headers: Vec<String>,
    #[serde(default)]
    exposed_response_headers: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    allow_non_2xx_status: bool,
    #[serde(default)]
    follow_redirects: bool,
}

impl TryFrom<JsonObject> for HttpEndpoint {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let endpoint = Self::from_raw(fields_of("endpoint", object)?)?;
        endpoint
            .validate()
            .map_err(|message| MechanicsError::RuntimePool(format!("endpoint: {message}")))?;
        Ok(endpoint)
    }
}

impl fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are credentials: show which headers are set, never their values.
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "<redacted>"))
            .collect();
        // Query constants and userinfo in the URL are credentials as often as headers are.
        let query_specs: Vec<String> = self
            .query_specs
            .iter()
            .map(|spec| match spec {
                QuerySpec::Const { key, .. } => format!("const {key}=<redacted>"),
                QuerySpec::Slotted {
                    key, slot, mode, ..
                } => {
                    format!("slotted {key}={{{slot}}} ({})", mode.as_str())
                }
            })
            .collect();
        f.debug_struct("HttpEndpoint")
            .field("method", &self.method)
            .field("url_template", &redact_userinfo(&self.url_template))
            .field("url_param_specs", &self.url_param_specs)
            .field("query_specs", &query_specs)
            .field("headers", &headers)
            .field("request_body_type", &self.request_body_type)
            .field("response_body_type", &self.response_body_type)
            .field("response_max_bytes", &self.response_max_bytes)
            .field("retry_policy", &self.retry_policy)
            .field(
                "overridable_request_headers",
                &self.overridable_request_headers,
            )
            .field("exposed_response_headers", &self.exposed_response_headers)
            .field("timeout_ms", &self.timeout_ms)
            .field("allow_non_2xx_status", &self.allow_non_2xx_status)
            .field("follow_redirects", &self.follow_redirects)
            .finish()
    }
}

/// `url` with any `user:password@` replaced by `<redacted>@`.
fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..].find('/').map_or(url.len(), |at| start + at);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

impl HttpEndpoint {
    /// An endpoint sending `method` requests to `url_template` with `headers`.
    ///
    /// Nothing is checked until the endpoint is put into a
    /// [`MechanicsConfig`](crate::job::MechanicsConfig), which validates it and names it in the
    /// error.
    pub fn new(
        method: HttpMethod,
        url_template: impl Into<String>,
        headers: HashMap<String, String>,
    ) -> Self {
        Self {
            method,
            url_template: url_template.into(),
            url_param_specs: BTreeMap::new(),
            query_specs: Vec::new(),
            headers: headers.into_iter().collect(),
            request_body_type: None,
            response_body_type: EndpointBodyType::Json,
            response_max_bytes: None,
            retry_policy: EndpointRetryPolicy::default(),
            overridable_request_headers: Vec::new(),
            exposed_response_headers: Vec::new(),
            timeout_ms: None,
            allow_non_2xx_status: false,
            follow_redirects: false,
        }
    }

    /// Reads the nested objects of `raw`; each is read from a JSON object only, never from the
    /// array form serde's derive would also accept.
    fn from_raw(raw: RawEndpoint) -> Result<Self, MechanicsError> {
        let url_param_specs = raw
            .url_param_specs
            .into_iter()
            .map(|(name, object)| {
                let spec = fields_of(&format!("endpoint: `url_param_specs.{name}`"), object)?;
                Ok((name, spec))
            })
            .collect::<Result<_, MechanicsError>>()?;
        let query_specs = raw
            .query_specs
            .into_iter()
            .enumerate()
            .map(|(index, object)| fields_of(&format!("endpoint: `query_specs[{index}]`"), object))
            .collect::<Result<_, _>>()?;
        let retry_policy = match raw.retry_policy {
            Some(object) => fields_of("endpoint: `retry_policy`", object)?,
            None => EndpointRetryPolicy::default(),
        };
        Ok(Self {
            method: raw.method,
            url_template: raw.url_template,
            url_param_specs,
            query_specs,
            headers: raw.headers,
            request_body_type: raw.request_body_type,
            response_body_type: raw.response_body_type.unwrap_or(EndpointBodyType::Json),
            response_max_bytes: raw.response_max_bytes,
            retry_policy,
            overridable_request_headers: raw.overridable_request_headers,
            exposed_response_headers: raw.exposed_response_headers,
            timeout_ms: raw.timeout_ms,
            allow_non_2xx_status: raw.allow_non_2xx_status,
            follow_redirects: raw.follow_redirects,
        })
    }

    /// Sets the rules of the `{name}` slot of the URL template.
    #[must_use]
    pub fn with_url_param_spec(mut self, name: impl Into<String>, spec: UrlParamSpec) -> Self {
        self.url_param_specs.insert(name.into(), spec);
        self
    }

    /// Appends a query parameter.
    #[must_use]
    pub fn with_query_spec(mut self, spec: QuerySpec) -> Self {
        self.query_specs.push(spec);
        self
    }

    /// How the request body is written (default `json` for `POST`, `PUT` and `PATCH`).
    #[must_use]
    pub fn with_request_body_type(mut self, body_type: EndpointBodyType) -> Self {
        self.request_body_type = Some(body_type);
        self
    }

    /// How the response body is read (default `json`).
    #[must_use]
    pub fn with_response_body_type(mut self, body_type: EndpointBodyType) -> Self {
        self.response_body_type = body_type;
        self
    }

    /// Largest response body accepted, in bytes (at least 1; default: the pool's
    /// `default_http_response_max_bytes`).
    #[must_use]
    pub fn with_response_max_bytes(mut self, bytes: usize) -> Self {
        self.response_max_bytes = Some(bytes);
        self
    }

    /// When to retry, and how long to wait (default: one attempt).
    #[must_use]
    pub fn with_retry_policy(mut self, policy: EndpointRetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    /// Request headers JavaScript may set through `options.headers` (case-insensitive).
    #[must_use]
    pub fn with_overridable_request_headers(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.overridable_request_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Response headers returned to JavaScript (case-insensitive; keys are lowercased).
    #[must_use]
    pub fn with_exposed_response_headers(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.exposed_response_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Time for one attempt, response body included, in milliseconds (at least 1; default: the
    /// pool's `default_http_timeout_ms`).
    #[must_use]
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Lets non-2xx responses through to JavaScript instead of failing the call.
    #[must_use]
    pub fn with_allow_non_2xx_status(mut self, allow: bool) -> Self {
        self.allow_non_2xx_status = allow;
        self
    }

    /// Follows redirects (at most 10). Off by default; when on, configured and JavaScript headers
    /// are dropped as soon as a redirect leaves the endpoint's origin.
    #[must_use]
    pub fn with_follow_redirects(mut self, follow: bool) -> Self {
        self.follow_redirects = follow;
        self
    }

    /// The request method.
    pub fn method(&self) -> HttpMethod {
        self.method
    }

    /// The URL template.
    pub fn url_template(&self) -> &str {
        &self.url_template
    }

    pub(crate) fn url_param_specs(&self) -> &BTreeMap<String, UrlParamSpec> {
        &self.url_param_specs
    }

    pub(crate) fn query_specs(&self) -> &[QuerySpec] {
        &self.query_specs
    }

    pub(crate) fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// The request body type in effect: the configured one, else `json` when the method takes a
    /// body.
    pub(crate) fn request_body_type(&self) -> Option<EndpointBodyType> {
        self.request_body_type
            .or(self.method.allows_body().then_some(EndpointBodyType::Json))
    }

    pub(crate) fn response_body_type(&self) -> EndpointBodyType {
        self.response_body_type
    }

    pub(crate) fn response_max_bytes(&self) -> Option<usize> {
        self.response_max_bytes
    }

    pub(crate) fn retry_policy(&self) -> &EndpointRetryPolicy {
        &self.retry_policy
    }

    pub(crate) fn overridable_request_headers(&self) -> &[String] {
        &self.overridable_request_headers
    }

    pub(crate) fn exposed_response_headers(&self) -> &[String] {
        &self.exposed_response_headers
    }

    pub(crate) fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }

    pub(crate) fn allow_non_2xx_status(&self) -> bool {
        self.allow_non_2xx_status
    }

    pub(crate) fn follow_redirects(&self) -> bool {
        self.follow_redirects
    }

    /// Checks every rule that does not depend on a call's values. The message names the field;
    /// the caller adds the endpoint's name.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let template = UrlTemplate::parse(&self.url_template)?;
        let placeholders: BTreeSet<&str> = template.placeholders().collect();
        for name in &placeholders {
            if !self.url_param_specs.contains_key(*name) {
                return Err(format!(
                    "`url_template` uses `{{{name}}}` but `url_param_specs` has no entry for it"
                ));
            }
        }
        for (name, spec) in &self.url_param_specs {
            if !placeholders.contains(name.as_str()) {
                return Err(format!(
                    "`url_param_specs` has `{name}`, which `url_template` does not use"
                ));
            }
            check_bounds(
                &format!("`url_param_specs.{name}`"),
                spec.min_bytes,
                spec.max_bytes,
                spec.default.as_deref(),
            )?;
        }
        for (index, spec) in self.query_specs.iter().enumerate() {
            validate_query_spec(index, spec)?;
        }
        validate_headers("headers", self.headers.keys(), true, |name| {
            self.headers.get(name).map(String::as_str)
        })?;
        validate_headers(
            "overridable_request_headers",
            self.overridable_request_headers.iter(),
            false,
            |_| None,
        )?;
        for (field, names) in [
            ("headers", self.headers.keys().collect::<Vec<_>>()),
            (
                "overridable_request_headers",
                self.overridable_request_headers.iter().collect(),
            ),
        ] {
            if let Some(name) = names
                .into_iter()
                .find(|n| TRANSPORT_HEADERS.contains(&n.to_ascii_lowercase().as_str()))
            {
                return Err(format!(
                    "`{field}` names `{name}`, which the HTTP transport sets itself (it would let \
                     a request reach another virtual host or be cut short)"
                ));
            }
        }
        validate_headers(
            "exposed_response_headers",
            self.exposed_response_headers.iter(),
            false,
            |_| None,
        )?;
        if let Some(body_type) = self.request_body_type
            && !self.method.allows_body()
        {
            return Err(format!(
                "`request_body_type` is `{}` but {} requests carry no body",
                body_type.as_str(),
                self.method
            ));
        }
        if self.response_max_bytes == Some(0) {
            return Err("`response_max_bytes` must be at least 1".to_owned());
        }
        if self.timeout_ms == Some(0) {
            return Err("`timeout_ms` must be at least 1".to_owned());
        }
        self.retry_policy.validate()
    }
}

fn validate_query_spec(index: usize, spec: &QuerySpec) -> Result<(), String> {
    let what = format!("`query_specs[{index}]`");
    match spec {
        QuerySpec::Const { key, .. } => {
            if key.is_empty() {
                return Err(format!("{what}: `key` must not be empty"));
            }
        }
        QuerySpec::Slotted {
            key,
            slot,
            mode,
            default,
            min_bytes,
            max_bytes,
        } => {
            if key.is_empty() {
                return Err(format!("{what}: `key` must not be empty"));
            }
            check_slot_name(slot).map_err(|message| format!("{what}: {message}"))?;
            if mode.allows_empty() && min_bytes.is_some_and(|min| min > 0) {
                return Err(format!(
                    "{what}: mode `{}` allows an empty value, which `min_bytes` forbids",
                    mode.as_str()
                ));
            }
            // An empty default is no default in the modes that do not emit empty values.
            let default = default
                .as_deref()
                .filter(|d| mode.allows_empty() || !d.is_empty());
            check_bounds(&what, *min_bytes, *max_bytes, default)?;
        }
    }
    Ok(())
}

/// Headers that frame the message or pick its target: the transport writes them, and neither the
/// configuration nor a job may set them.
const TRANSPORT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
];

/// Checks that every name in `names` is a valid header name and unique ignoring case, and, for
/// configured headers, that each value is a valid header value. Values are never quoted.
fn validate_headers<'a>(
    field: &str,
    names: impl Iterator<Item = &'a String>,
    check_values: bool,
    value_of: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for name in names {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{field}` holds `{name}`, which is not a valid header name"))?;
        if !seen.insert(parsed.as_str().to_owned()) {
            return Err(format!(
                "`{field}` names the header `{parsed}` twice (header names ignore case)"
            ));
        }
        if check_values
            && let Some(value) = value_of(name)
            && HeaderValue::from_str(value).is_err()
        {
            return Err(format!(
                "`{field}`: the value of `{name}` is not a valid header value (control \
                 characters or non-visible bytes)"
            ));
        }
    }
    Ok(())
}
