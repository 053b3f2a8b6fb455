//! `mechanics logs`: the server's pipeline trace (`GET /api/v1/logs`), oldest first, as a table
//! or, with `--json`, the API's answer (with `--follow`, one entry per line). A `console` entry
//! (an attempt that wrote console output) reads as a summary: how many lines, how many errors
//! and warnings, and the last one; `mechanics task show` prints them all.
//!
//! `--follow` prints the newest page, then asks every second for entries newer than the last
//! one printed (paging back with the cursor when more than a page arrived in between).

use std::time::Duration;

use mechanics_proto::api::LogList;
use mechanics_proto::domain::LogEntry;
use serde_json::Value;

use crate::client::{Api, ClientArgs, Failure, Result, out, page_limit, shorten, table};

/// The filters of `mechanics logs`; each is the `GET /logs` parameter of the same name.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Only entries of this event.
    #[arg(long, value_name = "ID")]
    event: Option<i64>,
    /// Only entries of this task.
    #[arg(long, value_name = "ID")]
    task: Option<i64>,
    /// Only entries of this worker.
    #[arg(long, value_name = "NAME")]
    worker: Option<String>,
    /// Only this pipeline step: submit, dispatch, console, retry, dead_letter, rate_limit,
    /// recover, webhook, match, policy, write_back, ...
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// Only this outcome: ok, fail, skip, retry or deny.
    #[arg(long, value_name = "OUTCOME")]
    outcome: Option<String>,
    /// Only entries since then: a duration back from now (90s, 15m, 1h, 24h, 7d) or an
    /// RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only this trace (`event-N` for an event and everything it caused, `task-N` for an API
    /// task).
    #[arg(long, value_name = "TRACE")]
    trace: Option<String>,
    /// How many of the newest entries to show (at most 1000).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: u32,
    /// Keep printing new entries as they come, every second, until interrupted.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    client: ClientArgs,
}

impl LogsArgs {
    /// Whether `--json` was given (errors are then printed as JSON too).
    pub(crate) fn json(&self) -> bool {
        self.client.json
    }

    /// Refuses an `--action` or `--outcome` the server does not know (exit 2, no request):
    /// the server would refuse it too, and a typo must not look like an empty trace.
    fn check_filters(&self) -> Result<()> {
        use mechanics_server::trace_log::ACTIONS;
        if let Some(action) = &self.action
            && !ACTIONS.contains(&action.as_str())
        {
            return Err(Failure::usage(format!(
                "--action: {action:?} is not one of: {}",
                ACTIONS.join(", ")
            )));
        }
        if let Some(outcome) = &self.outcome {
            outcome
                .parse::<mechanics_proto::domain::LogOutcome>()
                .map_err(|err| Failure::usage(format!("--outcome: {err}")))?;
        }
        Ok(())
    }
    /// The query string of these filters, with `cursor` when paging.
    fn query(&self, cursor: Option<i64>) -> String {
        let mut url = reqwest::Url::parse("http://mechanics.invalid/logs")
            .unwrap_or_else(|err| unreachable!("a constant URL parses: {err}"));
        {
            let mut pairs = url.query_pairs_mut();
            let numbers = [
                ("event", self.event),
                ("task", self.task),
                ("cursor", cursor),
            ];
            for (key, value) in numbers {
                if let Some(value) = value {
                    pairs.append_pair(key, &value.to_string());
                }
            }
            let texts = [
                ("worker", &self.worker),
                ("action", &self.action),
                ("outcome", &self.outcome),
                ("since", &self.since),
                ("trace", &self.trace),
            ];
            for (key, value) in texts {
                if let Some(value) = value {
                    pairs.append_pair(key, value);
                }
            }
            pairs.append_pair("limit", &self.limit.to_string());
        }
        format!("/logs?{}", url.query().unwrap_or_default())
    }
}

/// Runs `mechanics logs`.
pub fn logs(args: &LogsArgs) -> Result<()> {
    page_limit(args.limit)?;
    args.check_filters()?;
    let api = Api::new(&args.client)?;
    let answer = api.get(&args.query(None))?;
    let page: LogList = answer.parse()?;
    if !args.follow {
        return api.print(&answer, |_| Ok(render(&page.entries, true)));
    }
    let mut last = page.entries.first().map_or(0, |e| e.id);
    print_entries(&api, &page.entries, true);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let fresh = newer_than(&api, args, last)?;
        if let Some(newest) = fresh.first() {
            last = newest.id;
            print_entries(&api, &fresh, false);
        }
    }
}

/// Entries with an id above `last`, newest first, following the cursor back to it.
fn newer_than(api: &Api, args: &LogsArgs, last: i64) -> Result<Vec<LogEntry>> {
    let mut fresh = Vec::new();
    let mut cursor = None;
    loop {
        let page: LogList = api.get(&args.query(cursor))?.parse()?;
        let reached = page.entries.iter().any(|e| e.id <= last);
        fresh.extend(page.entries.into_iter().filter(|e| e.id > last));
        match page.next_cursor {
            Some(next) if !reached => cursor = Some(next),
            _ => return Ok(fresh),
        }
    }
}

/// Prints `entries` (newest first) oldest first: JSON lines with `--json`, else table rows.
fn print_entries(api: &Api, entries: &[LogEntry], header: bool) {
    if api.json {
        let mut text = String::new();
        for entry in entries.iter().rev() {
            if let Ok(line) = serde_json::to_string(entry) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        out(&text);
    } else if !entries.is_empty() || header {
        out(&render(entries, header));
    }
}

/// A table of `entries` (given newest first), oldest first.
fn render(entries: &[LogEntry], header: bool) -> String {
    if entries.is_empty() && header {
        return "no log entries match\n".to_owned();
    }
    let rows = entries
        .iter()
        .rev()
        .map(|e| {
            let r = &e.record;
            let what = match (&r.error, &r.detail) {
                (Some(error), _) => error.clone(),
                (None, Some(detail)) if r.action == "console" => {
                    console_summary(detail).unwrap_or_else(|| detail.to_string())
                }
                (None, Some(detail)) => detail.to_string(),
                (None, None) => String::new(),
            };
            vec![
                e.id.to_string(),
                utc(r.ts),
                r.trace_id.clone().unwrap_or_default(),
                r.action.clone(),
                r.outcome.to_string(),
                r.task_id.map(|t| t.to_string()).unwrap_or_default(),
                r.worker.clone().unwrap_or_default(),
                r.attempt.map(|a| a.to_string()).unwrap_or_default(),
                shorten(&what, 80),
            ]
        })
        .collect();
    let text = table(
        &[
            "ID",
            "TIME",
            "TRACE",
            "ACTION",
            "OUTCOME",
            "TASK",
            "WORKER",
            "ATTEMPT",
            "ERROR/DETAIL",
        ],
        rows,
    );
    if header {
        text
    } else {
        // Following: the header was printed with the first page.
        text.split_once('\n')
            .map_or(text.clone(), |(_, rest)| rest.to_owned())
    }
}

/// A `console` entry's detail in words: `3 lines (1 error, 1 warning), last: error: boom`.
fn console_summary(detail: &Value) -> Option<String> {
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut text = plural(detail.get("lines")?.as_u64()?, "line");
    let counts: Vec<String> = [("errors", "error"), ("warnings", "warning")]
        .into_iter()
        .filter_map(|(key, word)| {
            let n = detail.get(key)?.as_u64().filter(|n| *n > 0)?;
            Some(plural(n, word))
        })
        .collect();
    if !counts.is_empty() {
        text.push_str(&format!(" ({})", counts.join(", ")));
    }
    if let Some(last) = detail.get("last").and_then(Value::as_str) {
        text.push_str(&format!(", last: {last}"));
    }
    Some(text)
}

/// Unix ms as `2026-01-31 12:00:00Z` (UTC, to the second).
fn utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        logs: LogsArgs,
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_769_860_800_250), "2026-01-31 12:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn a_console_entry_reads_as_a_summary() {
        let detail = serde_json::json!({
            "lines": 3, "errors": 1, "warnings": 0, "last": "error: connection reset",
        });
        assert_eq!(
            console_summary(&detail).unwrap(),
            "3 lines (1 error), last: error: connection reset"
        );
        let one = serde_json::json!({ "lines": 1, "errors": 0, "warnings": 1, "last": "warn: x" });
        assert_eq!(
            console_summary(&one).unwrap(),
            "1 line (1 warning), last: warn: x"
        );
        assert_eq!(console_summary(&serde_json::json!({ "other": 1 })), None);
    }

    #[test]
    fn filters_become_the_query() {
        let cli = Cli::parse_from([
            "logs",
            "--task",
            "7",
            "--worker",
            "a b",
            "--since",
            "1h",
            "--outcome",
            "fail",
        ]);
        assert_eq!(
            cli.logs.query(Some(40)),
            "/logs?task=7&cursor=40&worker=a+b&outcome=fail&since=1h&limit=50"
        );
    }
}
