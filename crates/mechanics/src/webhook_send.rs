//! `mechanics webhook send SOURCE FILE`: delivers a JSON file to a running server exactly as the
//! source's platform would — signed with the source's secret, read from the same environment
//! variable or file the server reads — so a worker can be tried on a sample event end to end
//! without the platform.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use mechanics_proto::domain::{Source, SourceKind};

use crate::client::{Api, ClientArgs, Failure, Result};

/// Largest body sent: far above any platform's delivery, far below what a file mistaken for an
/// event could be.
const MAX_BODY_BYTES: u64 = 25 * 1024 * 1024;

/// `mechanics webhook send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The source's name (`mechanics source list`).
    pub source: String,
    /// The delivery's body: a JSON file, sent byte for byte.
    pub file: PathBuf,
    /// The event name the platform puts in its header: GitHub `X-GitHub-Event` (e.g. `issues`,
    /// `issue_comment`; the action comes from the payload), GitLab `X-Gitlab-Event`. Required for
    /// GitHub; unused by Slack, Telegram and generic sources, whose type is in the body.
    #[arg(long = "event", value_name = "TYPE")]
    pub event: Option<String>,
    /// The delivery id (GitHub `X-GitHub-Delivery`, GitLab `X-Gitlab-Event-UUID`, Standard
    /// Webhooks `webhook-id`) [default: a new one]; sending the same id again is a duplicate.
    #[arg(long, value_name = "ID")]
    pub delivery_id: Option<String>,
}

/// Runs `mechanics webhook send`: exit 0 when the server took the delivery (`202`, or `200` for a
/// duplicate), 1 when it refused it (its answer is printed).
pub fn send(args: &ClientArgs, send: &SendArgs) -> Result<()> {
    let api = Api::new(args)?;
    let body = read_body(&send.file)?;
    let source: Source = api.run(api.client().get_source(&send.source))?.parse()?;
    let spec = &source.spec;
    let secret = mechanics_server::read_webhook_secret(spec).map_err(|err| {
        Failure::usage(format!(
            "cannot sign for the source {:?} here: {err} (set it as the server has it)",
            spec.name
        ))
    })?;
    let event = match (spec.kind, send.event.as_deref()) {
        (SourceKind::Github, None) => {
            return Err(Failure::usage(
                "--event: a GitHub delivery names its event, e.g. --event issues or --event \
                 issue_comment",
            ));
        }
        (_, Some(event)) => event.to_owned(),
        (SourceKind::Gitlab, None) => "Mechanics Test Hook".to_owned(),
        (_, None) => String::new(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let delivery_id = send
        .delivery_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let headers = mechanics_server::webhooks::verify::sign(
        spec.kind,
        &secret,
        &body,
        &event,
        &delivery_id,
        i64::try_from(now).unwrap_or(i64::MAX),
    );
    let (status, answer) = api.run(api.client().deliver_webhook(&spec.name, &headers, body))?;
    let accepted = matches!(status, 200 | 202);
    let text = if api.json {
        format!("{}\n", answer.text.trim_end())
    } else if accepted {
        let id = &answer.value["event_id"];
        let why = match answer.value["duplicate_by"].as_str() {
            _ if answer.value["duplicate"] != true => None,
            Some("body") => {
                Some("the same body arrived in the last 24 hours under another delivery id")
            }
            _ => Some("this delivery id was delivered before"),
        };
        match why {
            Some(why) => format!(
                "{status}: event {id} (a duplicate: {why}; nothing new was done). \
                 To match it again: mechanics event redeliver {id}\n"
            ),
            None => {
                format!("{status}: event {id} stored; follow it with `mechanics event show {id}`\n")
            }
        }
    } else {
        String::new()
    };
    crate::client::out(&text);
    if accepted {
        Ok(())
    } else {
        let message = answer.value["error"]["message"]
            .as_str()
            .map_or_else(|| answer.text.clone(), str::to_owned);
        Err(Failure::failed(format!(
            "the server refused the delivery ({status}): {message}"
        )))
    }
}

/// The file's bytes: a regular JSON file of at most [`MAX_BODY_BYTES`].
fn read_body(path: &std::path::Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|err| Failure::usage(format!("{shown}: {err}")))?;
    if !metadata.is_file() {
        return Err(Failure::usage(format!("{shown}: not a regular file")));
    }
    if metadata.len() > MAX_BODY_BYTES {
        return Err(Failure::usage(format!(
            "{shown}: {} bytes, more than the {MAX_BODY_BYTES} a delivery may have",
            metadata.len()
        )));
    }
    let body = std::fs::read(path).map_err(|err| Failure::usage(format!("{shown}: {err}")))?;
    serde_json::from_slice::<serde_json::Value>(&body)
        .map_err(|err| Failure::usage(format!("{shown}: not JSON: {err}")))?;
    Ok(body)
}
