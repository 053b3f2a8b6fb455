//! The platform calls policies need, with the source's write-back token and the write-back
//! HTTP client: who the token is (its own replies must not start workers), and GitHub team
//! membership.
//!
//! | kind | identity | names |
//! |---|---|---|
//! | github | `GET {api}/user` | `login` |
//! | gitlab | `GET {api}/user` | `username` |
//! | slack | `POST {api}/auth.test` | `user_id`, `bot_id` |
//! | telegram | `GET {api}/bot{token}/getMe` | `result.id`, `result.username` |
//!
//! Team membership: `GET {api}/orgs/{org}/teams/{team}/memberships/{login}`, a member when it
//! answers 200 with `state: active`; on 404 `GET {api}/orgs/{org}/teams/{team}` says whether the
//! login is not a member (200) or the token cannot see the team (404: an error).

use mechanics_proto::domain::{SourceKind, SourceSpec};
use serde_json::Value;

use crate::writeback::WriteBackClient;
use crate::writeback::responders::{api_base, platform};

/// The names the source's token goes by on its platform; `Ok(empty)` for a generic source,
/// which has no identity to ask for. The error says what failed, never with the token.
pub(crate) async fn identity(
    client: &WriteBackClient,
    spec: &SourceSpec,
    token: &str,
) -> Result<Vec<String>, String> {
    let Some(api) = api_base(spec) else {
        return Ok(Vec::new());
    };
    let http = client.for_url(&api);
    let request = match spec.kind {
        SourceKind::Github => http
            .get(format!("{api}/user"))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json"),
        SourceKind::Gitlab => http
            .get(format!("{api}/user"))
            .header("private-token", token),
        SourceKind::Slack => http.post(format!("{api}/auth.test")).bearer_auth(token),
        SourceKind::Telegram => http.get(format!("{api}/bot{token}/getMe")),
        SourceKind::Generic => return Ok(Vec::new()),
    };
    let (status, body) = send(request, spec.kind).await?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "{} answered {status} when asked who the source's token is",
            platform(spec.kind)
        ));
    }
    let strings = |pointers: &[&str]| -> Vec<String> {
        pointers
            .iter()
            .filter_map(|pointer| match body.pointer(pointer)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    };
    let names = match spec.kind {
        SourceKind::Github => strings(&["/login"]),
        SourceKind::Gitlab => strings(&["/username"]),
        SourceKind::Slack => strings(&["/user_id", "/bot_id"]),
        SourceKind::Telegram => strings(&["/result/id", "/result/username"]),
        SourceKind::Generic => Vec::new(),
    };
    if names.is_empty() {
        return Err(format!(
            "{}'s answer about the source's token names no user",
            platform(spec.kind)
        ));
    }
    Ok(names)
}

/// Whether GitHub user `login` is an active member of team `org/team`.
pub(crate) async fn team_member(
    client: &WriteBackClient,
    spec: &SourceSpec,
    token: &str,
    (org, team): (&str, &str),
    login: &str,
) -> Result<bool, String> {
    let api = api_base(spec).ok_or("the source has no API to ask")?;
    let segment = |text: &str| url_segment(text);
    let url = format!(
        "{api}/orgs/{}/teams/{}/memberships/{}",
        segment(org),
        segment(team),
        segment(login)
    );
    let request = client
        .for_url(&url)
        .get(url)
        .bearer_auth(token)
        .header("accept", "application/vnd.github+json");
    let (status, body) = send(request, spec.kind).await?;
    match status {
        200 => Ok(body.get("state").and_then(Value::as_str) == Some("active")),
        // GitHub answers 404 both for a login outside the team and for a team the token cannot
        // see (or that does not exist); only the team's own page tells them apart. Read as "not
        // a member", a typo or a token without `read:org` would silently empty the list.
        404 => {
            let url = format!("{api}/orgs/{}/teams/{}", segment(org), segment(team));
            let request = client
                .for_url(&url)
                .get(url)
                .bearer_auth(token)
                .header("accept", "application/vnd.github+json");
            match send(request, spec.kind).await?.0 {
                200 => Ok(false),
                404 => Err(format!(
                    "GitHub does not show the team @{org}/{team} to the source's token: it does \
                     not exist, or the token lacks access to it (read:org, or membership of the \
                     organization)"
                )),
                status => Err(format!(
                    "GitHub answered {status} when asked about the team @{org}/{team}"
                )),
            }
        }
        _ => Err(format!(
            "GitHub answered {status} when asked whether {login:?} is in @{org}/{team}"
        )),
    }
}

/// `text` percent-encoded for one URL path segment.
fn url_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn send(request: reqwest::RequestBuilder, kind: SourceKind) -> Result<(u16, Value), String> {
    let who = platform(kind);
    // Without the URL: Telegram's carries the token.
    let response = request.send().await.map_err(|err| {
        format!(
            "{who} could not be reached: {}",
            crate::executor::describe(err)
        )
    })?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|err| {
        format!(
            "reading {who}'s answer failed: {}",
            crate::executor::describe(err)
        )
    })?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}
