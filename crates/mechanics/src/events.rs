//! `mechanics event list|show|redeliver`: the received events, and for one event what became of
//! it per worker — matched or why not, the policy's decision, the task and the write-back —
//! which answers "why didn't my bot react?" in one command.

use mechanics_proto::api::{EventDetail, EventList, Redeliver, WebhookAccepted};
use mechanics_proto::domain::EventState;

use mechanics_client::EventFilter;

use crate::client::{
    Api, ClientArgs, Result, age, page_limit, rfc3339, shorten, state_filter, table,
};

/// `mechanics event ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EventCommand {
    /// List received events, newest first.
    List {
        /// Only events of this source.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// Only events in this state: received, matched, dispatched, completed,
        /// write_back_failed, failed, skipped, ignored.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Only events of this type (e.g. issues.opened).
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// At most this many, 1 to 1000.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Continue a listing after this id (the `next_cursor` of the previous page).
        #[arg(long, value_name = "ID")]
        cursor: Option<i64>,
    },
    /// Show one event: source, type, actor, delivery id, state and last error, and per worker
    /// with a trigger on its source whether it matched (or why not), the policy's decision, its
    /// task and the write-back.
    Show {
        /// The event's id.
        id: i64,
    },
    /// Deliver an event again, as a new event matched as if it had just arrived (to try a
    /// changed worker, filter or policy on a real delivery).
    Redeliver {
        /// The event's id.
        id: i64,
        /// Names this redelivery: the same key again gives the same new event, so a retried
        /// command delivers once [default: a new redelivery each time].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
}

/// Runs `mechanics event ...`.
pub fn event(args: &ClientArgs, command: &EventCommand) -> Result<()> {
    let api = Api::new(args)?;
    match command {
        EventCommand::List {
            source,
            state,
            event_type,
            limit,
            cursor,
        } => {
            let state = state_filter::<EventState>(state.as_deref())?;
            let filter = EventFilter {
                source: source.clone(),
                state,
                event_type: event_type.clone(),
                limit: limit.map(page_limit).transpose()?,
                cursor: *cursor,
            };
            let answer = api.run(api.client().list_events(&filter))?;
            api.print(&answer, |answer| {
                let list: EventList = answer.parse()?;
                if list.events.is_empty() {
                    return Ok("no events\n".to_owned());
                }
                let rows = list
                    .events
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.to_string(),
                            e.source.clone(),
                            e.event_type.clone(),
                            e.state.to_string(),
                            age(e.received_at),
                            e.error
                                .as_deref()
                                .map(|e| shorten(e, 60))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                let mut text = table(
                    &["ID", "SOURCE", "TYPE", "STATE", "RECEIVED", "ERROR"],
                    rows,
                );
                if let Some(next) = list.next_cursor {
                    text.push_str(&format!("more: pass --cursor {next}\n"));
                }
                Ok(text)
            })
        }
        EventCommand::Show { id } => {
            let answer = api.run(api.client().get_event(*id))?;
            api.print(&answer, |answer| Ok(show(&answer.parse()?)))
        }
        EventCommand::Redeliver { id, key } => {
            let request = Redeliver { key: key.clone() };
            let answer = api.run(api.client().redeliver_event(*id, &request))?;
            api.print(&answer, |answer| {
                let accepted: WebhookAccepted = answer.parse()?;
                Ok(if accepted.duplicate {
                    format!(
                        "event {id} was already redelivered with this key as event {}\n",
                        accepted.event_id
                    )
                } else {
                    format!(
                        "event {id} redelivered as event {} (follow it: mechanics event show {})\n",
                        accepted.event_id, accepted.event_id
                    )
                })
            })
        }
    }
}

/// The text of `mechanics event show`.
fn show(detail: &EventDetail) -> String {
    let event = &detail.event;
    let mut text = format!(
        "event {}\n  source:      {}\n  type:        {}\n  actor:       {}\n  delivery id: {}\n  state:       {}\n  received:    {}\n",
        event.id,
        event.source,
        event.event_type,
        detail.actor.as_deref().unwrap_or("-"),
        event.delivery_id,
        event.state,
        age(event.received_at),
    );
    if let Some(error) = &event.error {
        text.push_str(&format!("  error:       {error}\n"));
    }
    if let Some(line) = detail.write_back_summary(rfc3339) {
        text.push_str(&format!("  write-back:  {line}\n"));
    }
    if !detail.verdicts {
        // No `match` entry: not matched yet, or its entry was pruned with the trace's old
        // entries; the workers below are then only those that got a task.
        text.push_str(if event.state == EventState::Received {
            "workers: not matched yet\n"
        } else {
            "workers: the verdicts are no longer in the trace (its entries are kept 7 days)\n"
        });
        if detail.workers.is_empty() {
            return text;
        }
    } else if detail.workers.is_empty() {
        text.push_str("workers: none has a webhook trigger on this source\n");
        return text;
    } else {
        text.push_str("workers:\n");
    }
    for worker in &detail.workers {
        let verdict = if worker.matched {
            "matched".to_owned()
        } else {
            format!(
                "not matched: {}",
                worker.not_matched.as_deref().unwrap_or("-")
            )
        };
        text.push_str(&format!("  {}: {verdict}\n", worker.worker));
        if let Some(policy) = &worker.policy {
            match &worker.policy_reason {
                Some(reason) => text.push_str(&format!("    policy: {policy} ({reason})\n")),
                None => text.push_str(&format!("    policy: {policy}\n")),
            }
        }
        if let Some(task) = &worker.task {
            text.push_str(&format!(
                "    task {}: {} (attempt {}){}\n",
                task.id,
                task.state,
                task.runs,
                task.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    text
}
