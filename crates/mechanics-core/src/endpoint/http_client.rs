//! The transport under `mechanics:endpoint`: one HTTP exchange, without retries or redirects.
//!
//! The pool takes an [`EndpointHttpClient`] at construction
//! ([`MechanicsPoolConfig::with_endpoint_http_client`](crate::MechanicsPoolConfig::with_endpoint_http_client)),
//! or builds a [`ReqwestEndpointHttpClient`]. Retries, redirects, timeouts and the response-size
//! limit's error are handled above the transport, so every transport gets them; a transport only
//! has to stop reading once the body passes [`EndpointHttpRequest::response_max_bytes`].
//!
//! [`EndpointHttpClient::execute`] runs on the pool's Tokio runtime.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use url::Url;

use super::config::HttpMethod;

/// Request and response headers.
pub type EndpointHttpHeaders = http::HeaderMap;

/// A request body, already serialized according to the endpoint's `request_body_type`.
#[derive(Clone, PartialEq, Eq)]
pub enum EndpointHttpRequestBody {
    /// JSON text.
    Json(Vec<u8>),
    /// UTF-8 text.
    Utf8(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl EndpointHttpRequestBody {
    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            EndpointHttpRequestBody::Json(bytes) | EndpointHttpRequestBody::Bytes(bytes) => bytes,
            EndpointHttpRequestBody::Utf8(text) => text.as_bytes(),
        }
    }
}

impl fmt::Debug for EndpointHttpRequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, len) = match self {
            EndpointHttpRequestBody::Json(b) => ("Json", b.len()),
            EndpointHttpRequestBody::Utf8(t) => ("Utf8", t.len()),
            EndpointHttpRequestBody::Bytes(b) => ("Bytes", b.len()),
        };
        write!(f, "{kind}({len} bytes)")
    }
}

/// One HTTP request to send.
#[derive(Clone)]
pub struct EndpointHttpRequest {
    /// The method.
    pub method: HttpMethod,
    /// The full URL, query included.
    pub url: Url,
    /// Every header to send; the transport adds only what framing needs (`Host`,
    /// `Content-Length`) and reqwest's `Accept: */*`.
    pub headers: EndpointHttpHeaders,
    /// The body, if any.
    pub body: Option<EndpointHttpRequestBody>,
    /// Largest response body to read: a transport must stop reading, and fail with
    /// [`EndpointHttpError::BodyTooLarge`], as soon as the body passes it.
    pub response_max_bytes: usize,
}

impl fmt::Debug for EndpointHttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values, query values and even paths (webhook URLs) may be credentials: only the
        // host and header names are shown.
        let names: Vec<&str> = self.headers.keys().map(http::HeaderName::as_str).collect();
        f.debug_struct("EndpointHttpRequest")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("headers", &names)
            .field("body", &self.body)
            .field("response_max_bytes", &self.response_max_bytes)
            .finish()
    }
}

/// A response whose body was read in full.
#[derive(Debug, Clone)]
pub struct EndpointHttpResponse {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: EndpointHttpHeaders,
    /// The body.
    pub body: Vec<u8>,
}

/// Why an exchange failed. Messages never hold header values or URLs, which may carry
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointHttpError {
    /// The exchange did not finish in time.
    #[error("the request timed out")]
    Timeout,
    /// Connecting, sending or receiving failed.
    #[error("the connection failed: {0}")]
    Io(String),
    /// The response body passed the size limit; reading stopped there.
    #[error("the response body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// The request could not be built.
    #[error("the request is invalid: {0}")]
    InvalidRequest(String),
}

/// A boxed future returned by [`EndpointHttpClient::execute`].
pub type EndpointHttpFuture<'a> =
    Pin<Box<dyn Future<Output = Result<EndpointHttpResponse, EndpointHttpError>> + Send + 'a>>;

/// Sends one HTTP request and reads its response. It must not follow redirects, and must stop
/// reading a body as soon as it passes [`EndpointHttpRequest::response_max_bytes`].
pub trait EndpointHttpClient: fmt::Debug + Send + Sync {
    /// Performs the exchange. Runs on the pool's Tokio runtime.
    fn execute(&self, request: EndpointHttpRequest) -> EndpointHttpFuture<'_>;
}

/// The default transport: [`reqwest`] with rustls.
#[derive(Debug, Clone)]
pub struct ReqwestEndpointHttpClient {
    client: reqwest::Client,
}

impl ReqwestEndpointHttpClient {
    /// Wraps `client`. Build it with `redirect(reqwest::redirect::Policy::none())`: redirects
    /// are followed above the transport, only for endpoints that allow them, and without
    /// credentials across origins; a client that follows them itself bypasses those rules.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// A client with rustls (the ring provider), no redirects, and no connection pooling limits.
    pub fn with_defaults() -> Result<Self, EndpointHttpError> {
        // Another part of the process may have installed a provider already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| EndpointHttpError::InvalidRequest(describe(err)))?;
        Ok(Self::new(client))
    }
}

impl EndpointHttpClient for ReqwestEndpointHttpClient {
    fn execute(&self, request: EndpointHttpRequest) -> EndpointHttpFuture<'_> {
        Box::pin(async move {
            let mut builder = self
                .client
                .request(request.method.to_http(), request.url)
                .headers(request.headers);
            if let Some(body) = request.body {
                builder = builder.body(match body {
                    EndpointHttpRequestBody::Json(bytes)
                    | EndpointHttpRequestBody::Bytes(bytes) => bytes,
                    EndpointHttpRequestBody::Utf8(text) => text.into_bytes(),
                });
            }
            let mut response = builder.send().await.map_err(classify)?;
            let limit = request.response_max_bytes;
            // A declared length over the limit fails before a byte of the body is read.
            if response
                .content_length()
                .is_some_and(|len| len > limit as u64)
            {
                return Err(EndpointHttpError::BodyTooLarge { limit });
            }
            let status = response.status().as_u16();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > limit {
                    return Err(EndpointHttpError::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(EndpointHttpResponse {
                status,
                headers,
                body,
            })
        })
    }
}

fn classify(err: reqwest::Error) -> EndpointHttpError {
    if err.is_timeout() {
        EndpointHttpError::Timeout
    } else if err.is_builder() {
        EndpointHttpError::InvalidRequest(describe(err))
    } else {
        EndpointHttpError::Io(describe(err))
    }
}

/// The error and its causes, without the URL (its query may hold a credential).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
