//! `mechanics key create|list|revoke`: scoped API keys (`/api/v1/keys`, admin only).
//!
//! The secret is printed once, by `create`; the server keeps only its hash, so a lost secret
//! means a new key. `--expires` is checked here before anything is sent.

use mechanics_proto::api::{ApiKeyCreated, ApiKeyInput, ApiKeyList, ApiScope};
use mechanics_proto::domain::HumanDuration;

use crate::client::{Api, ClientArgs, Failure, Result, age, out, table, until};

/// `mechanics key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key and print its secret, once: `read` sees everything, `operate` also
    /// submits, retries and cancels tasks and resets breakers, `admin` does everything
    /// (workers, sources, nodes, keys).
    Create {
        /// The key's name (letters, digits, `.`, `_`, `-`), shown in `/logs`.
        name: String,
        /// What it may do: read, operate or admin.
        #[arg(long, value_parser = parse_scope)]
        scope: ApiScope,
        /// Refuse it after this long (`90d`, `12h`); it never expires without.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List the keys: name, scope, created, last used (within a minute), expires. Never the
    /// secrets.
    List,
    /// Revoke a key: every server refuses it within a second.
    Revoke {
        /// The key's name.
        name: String,
    },
}

fn parse_scope(text: &str) -> std::result::Result<ApiScope, String> {
    text.parse()
}

/// `--expires` in seconds: a duration of at least one second.
fn expires_in_secs(text: &str) -> Result<u64> {
    let duration = HumanDuration::parse(text)
        .map_err(|message| Failure::usage(format!("--expires: {message}")))?;
    match duration.0.as_secs() {
        0 => Err(Failure::usage(format!(
            "--expires: {text:?} is less than a second"
        ))),
        secs => Ok(secs),
    }
}

/// Runs `mechanics key ...`.
pub fn key(args: &ClientArgs, command: &KeyCommand) -> Result<()> {
    // Bad input is reported before anything is sent, even when no server is running.
    let expires = match command {
        KeyCommand::Create {
            expires: Some(text),
            ..
        } => Some(expires_in_secs(text)?),
        _ => None,
    };
    let api = Api::new(args)?;
    match command {
        KeyCommand::Create { name, scope, .. } => {
            let input = ApiKeyInput {
                name: name.clone(),
                scope: *scope,
                expires_in_secs: expires,
            };
            let answer = api.run(api.client().create_key(&input))?;
            api.print(&answer, |answer| {
                let created: ApiKeyCreated = answer.parse()?;
                let expires = created.key.expires_at.map_or_else(
                    || "never expires".to_owned(),
                    |at| format!("expires {}", until(at)),
                );
                Ok(format!(
                    "{}\nkey {} created ({}, {expires}); the secret above is shown only now\n",
                    created.secret, created.key.name, created.key.scope
                ))
            })
        }
        KeyCommand::List => {
            let answer = api.run(api.client().list_keys())?;
            api.print(&answer, |answer| {
                let list: ApiKeyList = answer.parse()?;
                if list.keys.is_empty() {
                    return Ok(
                        "no API keys yet: create one with `mechanics key create NAME --scope read`\n"
                            .to_owned(),
                    );
                }
                let rows = list
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.name.clone(),
                            k.scope.to_string(),
                            age(k.created_at),
                            k.last_used_at.map_or_else(|| "never".to_owned(), age),
                            k.expires_at.map_or_else(|| "never".to_owned(), until),
                        ]
                    })
                    .collect();
                Ok(table(
                    &["NAME", "SCOPE", "CREATED", "LAST USED", "EXPIRES"],
                    rows,
                ))
            })
        }
        KeyCommand::Revoke { name } => {
            api.run(api.client().revoke_key(name))?;
            if !api.json {
                out(&format!("key {name} revoked\n"));
            }
            Ok(())
        }
    }
}
