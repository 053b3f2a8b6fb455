//! `mechanics logs`: the server's pipeline trace (`GET /api/v1/logs`), oldest first, as a table
//! or, with `--json`, the API's answer (with `--follow`, one entry per line). A `console` entry
//! (an attempt that wrote console output) reads as a summary: how many lines, how many errors
//! and warnings, and the last one; `mechanics task show` prints them all.
//!
//! `--follow` prints the newest page, then asks every second for entries newer than the last
//! one printed (paging back with the cursor when more than a page arrived in between). Its
//! columns have fixed widths, so the rows of every batch line up under the one header. When the
//! server goes away (a restart) it says so on stderr and keeps asking; once a server answers
//! again it goes on after the last entry printed, so nothing is printed twice or skipped.

use std::io::Write;
use std::time::Duration;

use mechanics_client::LogFilter;
use mechanics_proto::api::LogList;
use mechanics_proto::domain::LogEntry;
use serde_json::Value;

use mechanics_client::ClientError;

use crate::client::{Api, ClientArgs, Failure, Result, out, page_limit, shorten, table_at_least};

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
    /// These filters as the client takes them, with `cursor` when paging.
    fn filter(&self, cursor: Option<i64>) -> LogFilter {
        LogFilter {
            event: self.event,
            task: self.task,
            worker: self.worker.clone(),
            action: self.action.clone(),
            outcome: self.outcome.clone(),
            since: self.since.clone(),
            trace: self.trace.clone(),
            limit: Some(self.limit),
            cursor,
        }
    }
}

/// Runs `mechanics logs`.
pub fn logs(args: &LogsArgs) -> Result<()> {
    page_limit(args.limit)?;
    args.check_filters()?;
    let api = Api::new(&args.client)?;
    let answer = api.run(api.client().query_logs(&args.filter(None)))?;
    let page = answer.parse()?;
    if !args.follow {
        return api.print(&answer, |_| Ok(render(&page.entries, true, &[])));
    }
    let mut last = page.entries.first().map_or(0, |e| e.id);
    print_entries(&api, &page.entries, true);
    let mut lost = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let fresh = match newer_than(&api, args, last) {
            Ok(fresh) => fresh,
            Err(err @ (ClientError::NoServer { .. } | ClientError::Transport { .. })) => {
                if !lost {
                    lost = true;
                    note(&format!(
                        "{}; trying again every second (Ctrl-C stops)\n",
                        Failure::from(err).message
                    ));
                }
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if lost {
            lost = false;
            note(&format!(
                "the server at {} answers again\n",
                api.client().server()
            ));
        }
        if let Some(newest) = fresh.first() {
            last = newest.id;
            print_entries(&api, &fresh, false);
        }
    }
}

/// A line on stderr, between the entries on stdout.
fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// Entries with an id above `last`, newest first, following the cursor back to it.
fn newer_than(api: &Api, args: &LogsArgs, last: i64) -> mechanics_client::Result<Vec<LogEntry>> {
    let mut fresh = Vec::new();
    let mut cursor = None;
    loop {
        let page: LogList = api
            .try_run(api.client().query_logs(&args.filter(cursor)))?
            .parse()?;
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
        out(&render(entries, header, &FOLLOW_WIDTHS));
    }
}

/// The least width of each column but the last when following: wide enough for the usual
/// ids, the times, trace ids (`event-N`, 16 hex digits), every action and outcome, and worker
/// names, so that every batch lines up under the header printed first.
const FOLLOW_WIDTHS: [usize; 8] = [8, 20, 16, 15, 7, 8, 20, 7];

/// A table of `entries` (given newest first), oldest first, its columns at least `widths` wide.
fn render(entries: &[LogEntry], header: bool, widths: &[usize]) -> String {
    if entries.is_empty() && header {
        return "no log entries match\n".to_owned();
    }
    let rows = entries
        .iter()
        .rev()
        .map(|e| {
            let r = &e.record;
            let what = match (&r.error, &r.detail) {
                (Some(error), _) => shorten(error, 80),
                (None, Some(detail)) => detail_text(&r.action, detail),
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
                what,
            ]
        })
        .collect();
    let text = table_at_least(
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
        widths,
    );
    if header {
        text
    } else {
        // Following: the header was printed with the first page.
        text.split_once('\n')
            .map_or(text.clone(), |(_, rest)| rest.to_owned())
    }
}

/// The ERROR/DETAIL cell of an entry without an error: a `console` or `match` entry's detail in
/// words (a match's reasons in full: they answer "why did my bot not react?"), any other detail
/// as JSON with its times as times, cut to 80 characters.
fn detail_text(action: &str, detail: &Value) -> String {
    let words = match action {
        "console" => console_summary(detail),
        "match" => match_summary(detail),
        _ => None,
    };
    words.unwrap_or_else(|| shorten(&with_times(detail).to_string(), 80))
}

/// A `match` entry's detail in words: `issues: matched a, b; c: event type "issues" is not in
/// [push]; d: repository.full_name: want "acme/web", got "acme/app"`.
fn match_summary(detail: &Value) -> Option<String> {
    let mut text = detail.get("event_type")?.as_str()?.to_owned();
    match detail.get("workers").and_then(Value::as_array) {
        Some(workers) => {
            let names: Vec<&str> = workers.iter().filter_map(Value::as_str).collect();
            text.push_str(&format!(": matched {}", names.join(", ")));
        }
        None => text.push_str(": no worker matched"),
    }
    for (worker, why) in detail
        .get("not_matched")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        text.push_str(&format!("; {worker}: {}", why.as_str().unwrap_or("-")));
    }
    Some(text)
}

/// `detail` with the unix-ms times it holds (`until`, `fire_time`, `*_at`, `*_time`) as RFC
/// 3339 times: the API keeps them numbers, people read them as times.
fn with_times(detail: &Value) -> Value {
    let mut detail = detail.clone();
    for (key, value) in detail.as_object_mut().into_iter().flatten() {
        let is_time = key == "until" || key.ends_with("_at") || key.ends_with("_time");
        if let (true, Some(ms)) = (is_time, value.as_i64()) {
            *value = Value::String(crate::client::rfc3339(ms));
        }
    }
    detail
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

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_769_860_800_250), "2026-01-31 12:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn times_in_a_detail_read_as_times_and_other_numbers_stay() {
        let retry = serde_json::json!({
            "next_run_at": 951_782_400_000_i64, "delay_ms": 1500, "tries": 2,
        });
        assert_eq!(
            detail_text("retry", &retry),
            r#"{"delay_ms":1500,"next_run_at":"2000-02-29T00:00:00.000Z","tries":2}"#
        );
        let times = serde_json::json!({ "until": 1_769_860_800_250_i64, "fire_time": 0 });
        assert_eq!(
            detail_text("cron", &times),
            r#"{"fire_time":"1970-01-01T00:00:00.000Z","until":"2026-01-31T12:00:00.250Z"}"#
        );
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
}
