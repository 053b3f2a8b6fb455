//! Webhook sources. A source holds only *references* to its secrets (an environment variable or
//! a file name), never their values: the server resolves them when it needs them.

use serde::{Deserialize, Serialize};

use super::{
    SpecError, refuse_control, refuse_nul, validate_env_name, validate_http_url, validate_name,
};

/// The platform a source's webhooks come from; it decides verification, dedup id, event type
/// and write-back (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Slack (`X-Slack-Signature`).
    Slack,
    /// Telegram (`X-Telegram-Bot-Api-Secret-Token`).
    Telegram,
    /// Any sender of Standard Webhooks.
    Generic,
}

/// A webhook sender as the user registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `[a-z0-9-]{1,64}`; the webhook URL is `POST /webhooks/{name}`.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    pub name: String,
    /// The platform.
    pub kind: SourceKind,
    /// Environment variable holding the webhook secret (preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the webhook secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Environment variable holding the write-back token; without a token there is no write-back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the write-back token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The platform's API base (GitHub Enterprise, self-hosted GitLab, tests); the platform's
    /// public API when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// generic: the dotted payload path of the event's actor (`sender.id`), for worker
    /// policies; the other kinds know where their platform puts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_path: Option<String>,
}

impl SourceSpec {
    /// Checks the name, that exactly one secret reference is given, at most one token
    /// reference, and the URL.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        check_reference("secret", &self.secret_env, &self.secret_file, true)?;
        check_reference("token", &self.token_env, &self.token_file, false)?;
        if let Some(url) = &self.api_base_url {
            validate_http_url("api_base_url", url)?;
        }
        if let Some(path) = &self.actor_path {
            if self.kind != SourceKind::Generic {
                return Err(SpecError::new(
                    "actor_path",
                    "only for generic sources: the other kinds' actor is where their platform \
                     puts it",
                ));
            }
            if path.split('.').any(|segment| segment.trim().is_empty()) {
                return Err(SpecError::new(
                    "actor_path",
                    format!("{path:?} is not a dotted payload path such as \"sender.id\""),
                ));
            }
            refuse_control("actor_path", path)?;
        }
        Ok(())
    }
}

/// Checks a secret reference pair `{what}_env` / `{what}_file`: at most one (exactly one when
/// `required`), a valid variable name or a non-empty path.
pub(super) fn check_reference(
    what: &str,
    env: &Option<String>,
    file: &Option<String>,
    required: bool,
) -> Result<(), SpecError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(SpecError::new(
            format!("{what}_file"),
            format!("give {what}_env or {what}_file, not both"),
        )),
        (None, None) if required => Err(SpecError::new(
            format!("{what}_env"),
            format!("required (or {what}_file): the {what} is read from it"),
        )),
        (Some(name), None) => validate_env_name(&format!("{what}_env"), name),
        (None, Some(path)) if path.is_empty() => {
            Err(SpecError::new(format!("{what}_file"), "must not be empty"))
        }
        (None, Some(path)) => refuse_nul(&format!("{what}_file"), path, "a file path"),
        _ => Ok(()),
    }
}

/// A registered source as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    /// The spec as added.
    pub spec: SourceSpec,
    /// 1 on add, +1 on every update.
    pub revision: i64,
    /// Unix ms of the first add.
    pub created_at: i64,
    /// Unix ms of the last update.
    pub updated_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> Result<SourceSpec, String> {
        let spec: SourceSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_source_needs_exactly_one_secret_reference_and_never_a_value() {
        check(json!({ "name": "gh", "kind": "github", "secret_env": "GH_SECRET", "token_env": "GH_TOKEN" }))
            .unwrap();
        check(json!({ "name": "tg", "kind": "telegram", "secret_file": "/run/secrets/tg" }))
            .unwrap();
        let err = check(json!({ "name": "gh", "kind": "github" })).unwrap_err();
        assert!(err.starts_with("secret_env: required"), "{err}");
        let err =
            check(json!({ "name": "gh", "kind": "github", "secret_env": "A", "secret_file": "f" }))
                .unwrap_err();
        assert!(
            err.starts_with("secret_file: give secret_env or secret_file, not both"),
            "{err}"
        );
        let err =
            check(json!({ "name": "gh", "kind": "github", "secret": "hunter2" })).unwrap_err();
        assert!(err.contains("unknown field `secret`"), "{err}");
        let err = check(json!({ "name": "gh", "kind": "github", "secret_env": "not a name" }))
            .unwrap_err();
        assert!(
            err.starts_with("secret_env: \"not a name\" is not an environment variable name"),
            "{err}"
        );
        let err = check(
            json!({ "name": "gh", "kind": "github", "secret_env": "S", "api_base_url": "x" }),
        )
        .unwrap_err();
        assert!(err.starts_with("api_base_url:"), "{err}");
    }

    #[test]
    fn nul_bytes_in_file_references_and_control_characters_in_urls_are_refused() {
        let err = check(json!({ "name": "gh", "kind": "github", "secret_file": "/run/s\0" }))
            .unwrap_err();
        assert_eq!(
            err,
            "secret_file: \"/run/s\\0\" contains a NUL byte (at byte 6), which a file path \
             cannot carry"
        );
        let err = check(
            json!({ "name": "gh", "kind": "github", "secret_env": "S", "token_file": "t\0" }),
        )
        .unwrap_err();
        assert!(
            err.starts_with("token_file: \"t\\0\" contains a NUL byte"),
            "{err}"
        );
        let err =
            check(json!({ "name": "g\0h", "kind": "github", "secret_env": "S" })).unwrap_err();
        assert!(
            err.starts_with("name: \"g\\0h\" is not a valid name"),
            "{err}"
        );
        for name in ["A=B", "A\0"] {
            let err =
                check(json!({ "name": "gh", "kind": "github", "secret_env": name })).unwrap_err();
            assert!(
                err.starts_with("secret_env: ")
                    && err.contains("is not an environment variable name"),
                "{name:?}: {err}"
            );
        }
        let err = check(json!({ "name": "gh", "kind": "github", "secret_env": "S",
            "api_base_url": "https://ghe.example\0.com" }))
        .unwrap_err();
        assert!(
            err.starts_with("api_base_url: ") && err.contains("control character"),
            "{err}"
        );
    }
}
