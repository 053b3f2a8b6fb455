//! Refusals the edge answers itself, in the shape every Mechanics error has:
//! `{ "error": { "code", "message" } }`.

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};

use crate::limits::{MAX_HEADER_BYTES, MAX_URI_BYTES};

/// The JSON error body.
fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

/// A refusal as a response.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(error_json(code, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `414` or `431` for a request whose URI or headers are larger than this edge answers; `None`
/// for the rest.
pub(crate) fn refuse_oversized_head<B>(request: &Request<B>) -> Option<Response<Body>> {
    let uri = request.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return Some(refusal(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!("the request URI is {uri} bytes, more than the limit of {MAX_URI_BYTES}"),
        ));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request headers are {headers} bytes, more than the limit of {MAX_HEADER_BYTES}"
            ),
        ));
    }
    None
}

/// Our answer, as raw HTTP/1.1 bytes, in place of the one hyper wrote in `head` for a request
/// it could not parse; `None` if `head` is not the start of such an answer.
pub(crate) fn replace_hyper_answer(head: &[u8]) -> Option<Vec<u8>> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (status, code, message) = match status {
        b"414" => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is longer than the limit of {MAX_URI_BYTES} bytes"),
        ),
        b"431" => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are larger than the limit of {MAX_HEADER_BYTES} bytes, or \
                 more than 100"
            ),
        ),
        b"505" => (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "http_version_not_supported",
            "only HTTP/1.0 and HTTP/1.1 are served".to_owned(),
        ),
        b"400" => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request is not valid HTTP/1.1".to_owned(),
        ),
        _ => return None,
    };
    let body = error_json(code, &message);
    let reason = status.canonical_reason().unwrap_or("");
    Some(
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_u16(),
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_are_replaced_only_when_they_are_refusals() {
        let replaced =
            replace_hyper_answer(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        let text = String::from_utf8(replaced).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "uri_too_long");
        assert!(replace_hyper_answer(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(replace_hyper_answer(b"{\"a\":1}").is_none());
        assert!(replace_hyper_answer(b"HTTP/1.1 4").is_none());
    }
}
