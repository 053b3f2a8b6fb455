//! Command-line interface.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mechanics_core::job::{MechanicsConfig, MechanicsExecutionLimits, MechanicsJob};
use mechanics_core::{MechanicsError, MechanicsPool, MechanicsPoolConfig};
use serde_json::Value;

/// Mechanics: a self-hosted automation server that runs sandboxed JavaScript workers.
#[derive(Debug, Parser)]
#[command(name = "mechanics", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one JavaScript module in the sandbox and print its JSON result.
    ///
    /// The module's default export is called with the argument; its (awaited) return value is
    /// printed as JSON on stdout. On failure `error: <kind>: <message>` goes to stderr and the exit
    /// status is 1 (2 for usage errors such as an unreadable file or invalid JSON).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The ES module to run (its default export is called).
    module: PathBuf,
    /// The argument passed to the default export, as JSON.
    #[arg(long, value_name = "JSON", default_value = "null")]
    arg: String,
    /// A file holding the job's MechanicsConfig as JSON.
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    /// A file holding MechanicsExecutionLimits as JSON (any subset of the fields).
    #[arg(long, value_name = "LIMITS.json")]
    limits: Option<PathBuf>,
    /// Print errors as a JSON object `{"kind", "message"}` on stderr.
    #[arg(long)]
    json_errors: bool,
}

/// Parses the command line and runs the command; returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
    }
}

/// Exit status for a job that failed.
const EXIT_FAILED: u8 = 1;
/// Exit status for bad usage: unreadable files, invalid JSON, invalid limits.
const EXIT_USAGE: u8 = 2;

fn run(args: &RunArgs) -> ExitCode {
    let job = match load_job(args) {
        Ok(job) => job,
        Err(err) => {
            report(args.json_errors, "usage", &format!("{err:#}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = MechanicsPool::new(MechanicsPoolConfig::default().with_worker_count(1))
        .and_then(|pool| pool.run(job));
    match result {
        Ok(value) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{value}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            report_error(args.json_errors, &err);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn load_job(args: &RunArgs) -> anyhow::Result<MechanicsJob> {
    let source = std::fs::read_to_string(&args.module)
        .with_context(|| format!("cannot read module {}", args.module.display()))?;
    let arg: Value = serde_json::from_str(&args.arg).context("--arg is not valid JSON")?;
    let config: MechanicsConfig = match &args.config {
        Some(path) => read_json(path, "--config")?,
        None => MechanicsConfig::default(),
    };
    let job = MechanicsJob::new(source, arg, config)
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("invalid module {}", args.module.display()))?;
    Ok(match &args.limits {
        Some(path) => job.with_limits(read_json::<MechanicsExecutionLimits>(path, "--limits")?),
        None => job,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, flag: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{flag}: invalid {}", path.display()))
}

fn report_error(json: bool, err: &MechanicsError) {
    report(json, err.kind().as_str(), &err.to_string());
}

fn report(json: bool, kind: &str, message: &str) {
    let mut stderr = std::io::stderr().lock();
    if json {
        let _ = writeln!(
            stderr,
            "{}",
            serde_json::json!({ "kind": kind, "message": message })
        );
    } else {
        let _ = writeln!(stderr, "error: {kind}: {message}");
    }
}
