//! Verification of a delivery per source kind (DESIGN §3), and what each kind's delivery says:
//! its dedup id and its event type.
//!
//! Every comparison with a secret is constant-time: HMACs through `Mac::verify_slice`, shared
//! tokens through `subtle`. Signatures are checked on the raw body, before it is parsed, so an
//! unauthenticated sender never reaches the JSON parser or the database.

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use mechanics_proto::domain::SourceKind;
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a signed timestamp (Slack, Standard Webhooks) may be from the server's clock.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// Why a delivery is refused as unauthenticated (`401`). The messages name the header, never the
/// secret or the expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A header the kind requires is absent or not text.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The signature or token does not match.
    #[error("the {0} header does not match: the signature or token is wrong")]
    Mismatch(&'static str),
    /// The signed timestamp is too far from now (a replay, or a clock far off).
    #[error("the {0} header is more than 5 minutes from the server's time")]
    Stale(&'static str),
}

type HmacSha256 = Hmac<Sha256>;

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Denied> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(Denied::Missing(name))
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// Checks a delivery of `kind` against `secret` at `now_secs` (unix seconds).
pub fn verify(
    kind: SourceKind,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<(), Denied> {
    match kind {
        SourceKind::Github => {
            const NAME: &str = "x-hub-signature-256";
            let value = header(headers, NAME)?;
            let expected = value
                .strip_prefix("sha256=")
                .and_then(decode_hex)
                .ok_or(Denied::Mismatch(NAME))?;
            let mut mac = mac(secret);
            mac.update(body);
            mac.verify_slice(&expected)
                .map_err(|_| Denied::Mismatch(NAME))
        }
        SourceKind::Gitlab => shared_token(headers, "x-gitlab-token", secret),
        SourceKind::Telegram => shared_token(headers, "x-telegram-bot-api-secret-token", secret),
        SourceKind::Slack => {
            const SIGNATURE: &str = "x-slack-signature";
            const TIMESTAMP: &str = "x-slack-request-timestamp";
            let signature = header(headers, SIGNATURE)?;
            let timestamp = header(headers, TIMESTAMP)?;
            check_timestamp(timestamp, now_secs, TIMESTAMP)?;
            let expected = signature
                .strip_prefix("v0=")
                .and_then(decode_hex)
                .ok_or(Denied::Mismatch(SIGNATURE))?;
            let mut mac = mac(secret);
            mac.update(b"v0:");
            mac.update(timestamp.as_bytes());
            mac.update(b":");
            mac.update(body);
            mac.verify_slice(&expected)
                .map_err(|_| Denied::Mismatch(SIGNATURE))
        }
        SourceKind::Generic => {
            const SIGNATURE: &str = "webhook-signature";
            let id = header(headers, "webhook-id")?;
            let timestamp = header(headers, "webhook-timestamp")?;
            let signatures = header(headers, SIGNATURE)?;
            check_timestamp(timestamp, now_secs, "webhook-timestamp")?;
            let key = standard_webhooks_key(secret);
            // The header may carry several space-separated signatures (during key rotation);
            // one valid `v1` signature is enough.
            let any = signatures
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|b64| BASE64.decode(b64).ok())
                .any(|expected| {
                    let mut mac = mac(&key);
                    mac.update(id.as_bytes());
                    mac.update(b".");
                    mac.update(timestamp.as_bytes());
                    mac.update(b".");
                    mac.update(body);
                    mac.verify_slice(&expected).is_ok()
                });
            if any {
                Ok(())
            } else {
                Err(Denied::Mismatch(SIGNATURE))
            }
        }
    }
}

/// What can be checked before the body is read: every header `kind` requires is present, a
/// signed timestamp is recent, and a shared token (GitLab, Telegram) matches. A sender that
/// fails here never gets its body read.
pub fn verify_headers(
    kind: SourceKind,
    secret: &[u8],
    headers: &HeaderMap,
    now_secs: i64,
) -> Result<(), Denied> {
    match kind {
        SourceKind::Github => header(headers, "x-hub-signature-256").map(drop),
        SourceKind::Gitlab => shared_token(headers, "x-gitlab-token", secret),
        SourceKind::Telegram => shared_token(headers, "x-telegram-bot-api-secret-token", secret),
        SourceKind::Slack => {
            header(headers, "x-slack-signature")?;
            let timestamp = header(headers, "x-slack-request-timestamp")?;
            check_timestamp(timestamp, now_secs, "x-slack-request-timestamp")
        }
        SourceKind::Generic => {
            header(headers, "webhook-id")?;
            header(headers, "webhook-signature")?;
            let timestamp = header(headers, "webhook-timestamp")?;
            check_timestamp(timestamp, now_secs, "webhook-timestamp")
        }
    }
}

fn shared_token(headers: &HeaderMap, name: &'static str, secret: &[u8]) -> Result<(), Denied> {
    let given = header(headers, name)?;
    if bool::from(given.as_bytes().ct_eq(secret)) {
        Ok(())
    } else {
        Err(Denied::Mismatch(name))
    }
}

fn check_timestamp(text: &str, now_secs: i64, name: &'static str) -> Result<(), Denied> {
    let ts: i64 = text.parse().map_err(|_| Denied::Mismatch(name))?;
    // `abs_diff`: a sender controls `ts`, and `i64::MIN` must not overflow a subtraction.
    if now_secs.abs_diff(ts) > TIMESTAMP_TOLERANCE_SECS.unsigned_abs() {
        return Err(Denied::Stale(name));
    }
    Ok(())
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` followed by base64 is the spec's form
/// and is decoded; any other secret is used as its bytes.
fn standard_webhooks_key(secret: &[u8]) -> Vec<u8> {
    secret
        .strip_prefix(b"whsec_")
        .and_then(|b64| BASE64.decode(b64).ok())
        .unwrap_or_else(|| secret.to_vec())
}

/// The Standard Webhooks `webhook-signature` value for a message: `v1,base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}"))`, with `secret` read as [`verify`] reads it. Write-back uses it
/// to sign http callbacks.
pub fn standard_webhooks_signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(&standard_webhooks_key(secret));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The headers `kind`'s platform would send with `body` signed by `secret` at `now_secs`, for
/// `mechanics webhook send`: what [`verify`] and [`describe`] read. `event_type` is the header's
/// part of the type (GitHub `issues`; the action comes from the payload), `delivery_id` the id the
/// platform would give (Slack and Telegram carry theirs in the body).
pub fn sign(
    kind: SourceKind,
    secret: &[u8],
    body: &[u8],
    event_type: &str,
    delivery_id: &str,
    now_secs: i64,
) -> Vec<(&'static str, String)> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match kind {
        SourceKind::Github => {
            let hex = hex_mac(secret, &[body]);
            vec![
                ("x-hub-signature-256", format!("sha256={hex}")),
                ("x-github-event", event_type.to_owned()),
                ("x-github-delivery", delivery_id.to_owned()),
            ]
        }
        SourceKind::Gitlab => vec![
            ("x-gitlab-token", text(secret)),
            ("x-gitlab-event", event_type.to_owned()),
            ("x-gitlab-event-uuid", delivery_id.to_owned()),
        ],
        SourceKind::Slack => {
            let hex = hex_mac(secret, &[format!("v0:{now_secs}:").as_bytes(), body]);
            vec![
                ("x-slack-request-timestamp", now_secs.to_string()),
                ("x-slack-signature", format!("v0={hex}")),
            ]
        }
        SourceKind::Telegram => vec![("x-telegram-bot-api-secret-token", text(secret))],
        SourceKind::Generic => vec![
            ("webhook-id", delivery_id.to_owned()),
            ("webhook-timestamp", now_secs.to_string()),
            (
                "webhook-signature",
                standard_webhooks_signature(secret, delivery_id, now_secs, body),
            ),
        ],
    }
}

/// HMAC-SHA256 of `parts` in a row under `key`, in lowercase hex (GitHub's and Slack's form).
fn hex_mac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = mac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether someone who captured one delivery of `kind` can send it again under a new delivery
/// id that still passes [`verify`]: true when neither the signature nor the id's place covers
/// the id. GitHub signs only the body and carries the id in the unsigned `X-GitHub-Delivery`;
/// GitLab signs nothing (a shared token) and carries it in `X-Gitlab-Event-UUID`. Slack's
/// `event_id` is in the signed body and Standard Webhooks sign `webhook-id`, both with a
/// timestamp checked to 5 minutes; Telegram's `update_id` is in the body, so a new id is a new
/// body. The kinds that say true are deduplicated on their body as well.
pub fn delivery_id_is_forgeable(kind: SourceKind) -> bool {
    // No wildcard: a new kind must decide.
    match kind {
        SourceKind::Github | SourceKind::Gitlab => true,
        SourceKind::Slack | SourceKind::Telegram | SourceKind::Generic => false,
    }
}

/// What a verified delivery is: its dedup id and its event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Unique per source: a redelivery carries the same id.
    pub delivery_id: String,
    /// `issues.opened`, `message`, ...
    pub event_type: String,
}

/// Reads the dedup id and event type of a delivery of `kind` (DESIGN §3's table); the error
/// says what is missing (`400`).
pub fn describe(
    kind: SourceKind,
    headers: &HeaderMap,
    payload: &Value,
) -> Result<Delivery, String> {
    let text_header = |name: &'static str| {
        header(headers, name)
            .map(str::to_owned)
            .map_err(|_| format!("the {name} header is missing"))
    };
    let with_action = |base: String, action: Option<&Value>| match action.and_then(Value::as_str) {
        Some(action) if !action.is_empty() => format!("{base}.{action}"),
        _ => base,
    };
    match kind {
        SourceKind::Github => Ok(Delivery {
            delivery_id: text_header("x-github-delivery")?,
            event_type: with_action(text_header("x-github-event")?, payload.get("action")),
        }),
        SourceKind::Gitlab => {
            let object_kind = payload
                .get("object_kind")
                .and_then(Value::as_str)
                .ok_or("the payload has no \"object_kind\"")?;
            Ok(Delivery {
                delivery_id: text_header("x-gitlab-event-uuid")?,
                event_type: with_action(
                    object_kind.to_owned(),
                    payload.pointer("/object_attributes/action"),
                ),
            })
        }
        SourceKind::Slack => {
            let event_id = payload
                .get("event_id")
                .and_then(Value::as_str)
                .ok_or("the payload has no \"event_id\"")?;
            let event_type = payload
                .pointer("/event/type")
                .or_else(|| payload.get("type"))
                .and_then(Value::as_str)
                .ok_or("the payload has no \"event.type\"")?;
            Ok(Delivery {
                delivery_id: event_id.to_owned(),
                event_type: event_type.to_owned(),
            })
        }
        SourceKind::Telegram => {
            let update_id = payload
                .get("update_id")
                .and_then(Value::as_i64)
                .ok_or("the update has no numeric \"update_id\"")?;
            // An update has exactly one field besides its id: its kind.
            let event_type = payload
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "update_id"))
                .ok_or("the update has no content besides \"update_id\"")?;
            Ok(Delivery {
                delivery_id: update_id.to_string(),
                event_type: event_type.clone(),
            })
        }
        SourceKind::Generic => Ok(Delivery {
            delivery_id: text_header("webhook-id")?,
            event_type: payload
                .get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .unwrap_or("generic")
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn what_sign_writes_is_what_verify_accepts_for_every_kind() {
        let body = br#"{"update_id":1,"event_id":"E1","message":{}}"#;
        for kind in [
            SourceKind::Github,
            SourceKind::Gitlab,
            SourceKind::Slack,
            SourceKind::Telegram,
            SourceKind::Generic,
        ] {
            let signed = sign(kind, b"s3cret", body, "issues", "d-1", 1_700_000_000);
            let map = headers(
                &signed
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(
                verify(kind, b"s3cret", &map, body, 1_700_000_000),
                Ok(()),
                "{kind:?}"
            );
            assert!(
                verify(kind, b"other", &map, body, 1_700_000_000).is_err(),
                "{kind:?}: a wrong secret"
            );
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn github_documented_vector() {
        // The example of GitHub's "Validating webhook deliveries" page.
        let secret = b"It's a Secret to Everybody";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("x-hub-signature-256", sig)]);
        assert_eq!(
            verify(SourceKind::Github, secret, &h, b"Hello, World!", 0),
            Ok(())
        );
        assert_eq!(
            verify(SourceKind::Github, b"wrong", &h, b"Hello, World!", 0),
            Err(Denied::Mismatch("x-hub-signature-256"))
        );
        assert_eq!(
            verify(SourceKind::Github, secret, &h, b"Hello, World?", 0),
            Err(Denied::Mismatch("x-hub-signature-256"))
        );
        assert_eq!(
            verify(SourceKind::Github, secret, &HeaderMap::new(), b"", 0),
            Err(Denied::Missing("x-hub-signature-256"))
        );
    }

    #[test]
    fn standard_webhooks_documented_vector() {
        // The example of the Standard Webhooks specification.
        let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let sig = standard_webhooks_signature(secret, id, ts, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &format!("v1,bm90IGl0 {sig}")),
        ]);
        assert_eq!(
            verify(SourceKind::Generic, secret, &h, body, ts + 10),
            Ok(())
        );
        assert_eq!(
            verify(SourceKind::Generic, secret, &h, body, ts + 301),
            Err(Denied::Stale("webhook-timestamp"))
        );
    }

    #[test]
    fn event_types_and_dedup_ids_per_kind() {
        let gh = headers(&[("x-github-delivery", "d1"), ("x-github-event", "issues")]);
        let d = describe(SourceKind::Github, &gh, &json!({ "action": "opened" })).unwrap();
        assert_eq!(
            (d.delivery_id.as_str(), d.event_type.as_str()),
            ("d1", "issues.opened")
        );
        let push = describe(SourceKind::Github, &gh, &json!({ "ref": "main" })).unwrap();
        assert_eq!(push.event_type, "issues");
        let tg = describe(
            SourceKind::Telegram,
            &HeaderMap::new(),
            &json!({ "update_id": 7, "message": { "text": "hi" } }),
        )
        .unwrap();
        assert_eq!(
            (tg.delivery_id.as_str(), tg.event_type.as_str()),
            ("7", "message")
        );
        let gl = describe(
            SourceKind::Gitlab,
            &headers(&[("x-gitlab-event-uuid", "u1")]),
            &json!({ "object_kind": "issue", "object_attributes": { "action": "open" } }),
        )
        .unwrap();
        assert_eq!(gl.event_type, "issue.open");
        let err = describe(SourceKind::Slack, &HeaderMap::new(), &json!({})).unwrap_err();
        assert!(err.contains("event_id"), "{err}");
        let generic = describe(
            SourceKind::Generic,
            &headers(&[("webhook-id", "m1")]),
            &json!({ "data": 1 }),
        )
        .unwrap();
        assert_eq!(generic.event_type, "generic");
    }
}
