//! `mechanics source add|list|show|rm`: webhook senders (`/api/v1/sources`).
//!
//! A source's YAML names where its secret and write-back token are (`secret_env`, `secret_file`,
//! `token_env`, `token_file`), never their values; the server reads them when a delivery comes.
//! The file is checked here before anything is sent, so a mistake names the file and the field
//! and exits 2 even when no server runs.

use std::path::{Path, PathBuf};

use mechanics_proto::api::SourceList;
use mechanics_proto::domain::{Source, SourceKind, SourceSpec};

use crate::client::{Api, ClientArgs, Result, age, out, table};

/// `mechanics source ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SourceCommand {
    /// Add a source from its YAML spec, or update the source of that name.
    ///
    /// The file holds `name`, `kind` (github, gitlab, slack, telegram, generic), exactly one of
    /// `secret_env`/`secret_file`, at most one of `token_env`/`token_file`, and optionally
    /// `api_base_url`. Deliveries are then taken at `POST /webhooks/NAME`. Errors in the file
    /// name the file and the field and exit 2.
    Add {
        /// The source's YAML spec.
        #[arg(short = 'f', long = "file", value_name = "SOURCE.yml")]
        file: PathBuf,
    },
    /// List the registered sources.
    List,
    /// Show one source: kind, where its secret and token are read from, its webhook path.
    Show {
        /// The source's name.
        name: String,
    },
    /// Remove a source. Its events stay in the database; new deliveries are answered 404.
    Rm {
        /// The source's name.
        name: String,
    },
}

/// Runs `mechanics source ...`.
pub fn source(args: &ClientArgs, command: &SourceCommand) -> Result<()> {
    // Bad input is reported before anything is sent, even when no server is running.
    let spec = match command {
        SourceCommand::Add { file } => Some(load_source(file)?),
        _ => None,
    };
    let api = Api::new(args)?;
    match command {
        SourceCommand::Add { .. } => {
            let spec = spec.expect("read above");
            let answer = api.run(api.client().add_source(&spec))?;
            api.print(&answer, |answer| {
                let source: Source = answer.parse()?;
                let verb = if source.revision == 1 {
                    "added"
                } else {
                    "updated"
                };
                Ok(format!(
                    "source {name} {verb} (revision {}): deliveries go to POST /webhooks/{name}\n",
                    source.revision,
                    name = source.spec.name,
                ))
            })
        }
        SourceCommand::List => {
            let answer = api.run(api.client().list_sources())?;
            api.print(&answer, |answer| {
                let list: SourceList = answer.parse()?;
                if list.sources.is_empty() {
                    return Ok(
                        "no sources yet: add one with `mechanics source add -f source.yml`\n"
                            .to_owned(),
                    );
                }
                let rows = list
                    .sources
                    .iter()
                    .map(|s| {
                        vec![
                            s.spec.name.clone(),
                            kind_name(s.spec.kind).to_owned(),
                            secret(&s.spec),
                            token(&s.spec),
                            s.spec
                                .api_base_url
                                .clone()
                                .unwrap_or_else(|| "-".to_owned()),
                            s.revision.to_string(),
                            age(s.updated_at),
                        ]
                    })
                    .collect();
                Ok(table(
                    &[
                        "NAME", "KIND", "SECRET", "TOKEN", "API", "REVISION", "UPDATED",
                    ],
                    rows,
                ))
            })
        }
        SourceCommand::Show { name } => {
            let answer = api.run(api.client().get_source(name))?;
            api.print(&answer, |answer| {
                let s: Source = answer.parse()?;
                Ok(format!(
                    "name:      {}\nkind:      {}\nwebhook:   POST /webhooks/{}\nsecret:    {}\n\
                     token:     {}\napi:       {}\nrevision:  {}\ncreated:   {}\nupdated:   {}\n",
                    s.spec.name,
                    kind_name(s.spec.kind),
                    s.spec.name,
                    secret(&s.spec),
                    token(&s.spec),
                    s.spec
                        .api_base_url
                        .as_deref()
                        .unwrap_or("the platform's public API"),
                    s.revision,
                    age(s.created_at),
                    age(s.updated_at),
                ))
            })
        }
        SourceCommand::Rm { name } => {
            api.run(api.client().remove_source(name))?;
            if !api.json {
                out(&format!("source {name} removed\n"));
            }
            Ok(())
        }
    }
}

/// Reads a source file: the YAML spec, checked.
pub fn load_source(path: &Path) -> Result<SourceSpec> {
    crate::client::load_spec(
        path,
        "source spec (name, kind, secret_env, ...)",
        SourceSpec::validate,
    )
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Github => "github",
        SourceKind::Gitlab => "gitlab",
        SourceKind::Slack => "slack",
        SourceKind::Telegram => "telegram",
        SourceKind::Generic => "generic",
    }
}

/// Where a reference is read from: `env:NAME`, `file:PATH` or `-`.
fn reference(env: Option<&str>, file: Option<&str>) -> String {
    match (env, file) {
        (Some(name), _) => format!("env:{name}"),
        (None, Some(path)) => format!("file:{path}"),
        (None, None) => "-".to_owned(),
    }
}

fn secret(spec: &SourceSpec) -> String {
    reference(spec.secret_env.as_deref(), spec.secret_file.as_deref())
}

fn token(spec: &SourceSpec) -> String {
    reference(spec.token_env.as_deref(), spec.token_file.as_deref())
}
