//! Answers under [`MAX_RESULT_BYTES`]: what a tool's or a resource's answer weighs, and a task
//! or an event too big for one, trimmed of its big fields instead of refused (a refused
//! `submit_task` would be submitted again by an assistant that never saw the task's id).

use serde_json::{Value, json};

use super::{ENVELOPE_BYTES, MAX_RESULT_BYTES, SUMMARY_BYTES};

/// Whether `value` fits in a tool's answer. It is sent twice: as structured content, and as the
/// same JSON in a text block for the clients that show the model only text; and the summary
/// comes with it.
pub(super) fn fits_tool_answer(value: &Value) -> bool {
    tool_answer_bytes(value) + SUMMARY_BYTES + ENVELOPE_BYTES <= MAX_RESULT_BYTES
}

/// The bytes `value` takes in a tool's answer: its JSON, and that JSON again as a string.
pub(super) fn tool_answer_bytes(value: &Value) -> usize {
    let text = value.to_string();
    text.len() + escaped_len(&text)
}

/// Whether `text` fits as the contents of a resource.
pub(super) fn fits_resource(text: &str) -> bool {
    escaped_len(text) + ENVELOPE_BYTES <= MAX_RESULT_BYTES
}

/// The length of `text` as a JSON string, its quotes and escapes included.
fn escaped_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// What kind of record is trimmed: it says where the record is read in full.
#[derive(Debug, Clone, Copy)]
pub(super) enum Record {
    Task,
    Event,
}

impl Record {
    pub(super) fn read_in_full(self, id: &Value) -> String {
        match self {
            Record::Task => {
                format!("GET /api/v1/tasks/{id} or `mechanics task show {id} --json`")
            }
            Record::Event => {
                format!("GET /api/v1/events/{id} or `mechanics event show {id} --json`")
            }
        }
    }
}

/// What [`trim`] did.
#[derive(Debug, PartialEq)]
pub(super) enum Trimmed {
    /// It fitted as it was.
    Whole,
    /// These fields were cut; the note says which, how big and where to read them.
    Cut(String),
    /// Even without every big field it does not fit.
    TooBig,
}

/// The longest start of a cut error that is kept: enough to see what failed.
const ERROR_KEPT_CHARS: usize = 2000;

/// Trims the task or event at `at` in `root` (a JSON pointer, "" for `root` itself) until
/// `fits(root)`: its payload, result and console (and those of an event's tasks) become a marker
/// `{"$trimmed": {"bytes", "read_in_full"}}`, the biggest first; only if that is not enough its
/// errors are cut to their start. Id, state, worker and attempts stay.
pub(super) fn trim(
    root: &mut Value,
    at: &str,
    record: Record,
    fits: impl Fn(&Value) -> bool,
) -> Trimmed {
    if fits(root) {
        return Trimmed::Whole;
    }
    let Some(target) = root.pointer(at) else {
        return Trimmed::TooBig;
    };
    let how = record.read_in_full(&target["id"]);
    let tasks = target["workers"].as_array().map_or(0, Vec::len);
    let nested =
        |field: &'static str| (0..tasks).map(move |i| format!("/workers/{i}/task/{field}"));
    let big: Vec<String> = ["/payload", "/result", "/console"]
        .map(String::from)
        .into_iter()
        .chain(nested("payload"))
        .chain(nested("result"))
        .collect();
    let attempts = target["attempts"].as_array().map_or(0, Vec::len);
    let errors: Vec<String> = std::iter::once("/error".to_owned())
        .chain((0..attempts).map(|i| format!("/attempts/{i}/error")))
        .chain(nested("error"))
        .collect();
    let mut cut = Vec::new();
    for (group, is_error) in [(big, false), (errors, true)] {
        let mut sized: Vec<(usize, String)> = group
            .into_iter()
            .filter_map(|field| {
                let value = root.pointer(&format!("{at}{field}"))?;
                (!value.is_null()).then(|| (value.to_string().len(), field))
            })
            .collect();
        sized.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, field) in sized {
            let Some(slot) = root.pointer_mut(&format!("{at}{field}")) else {
                continue;
            };
            *slot = if is_error {
                let start: String = slot
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(ERROR_KEPT_CHARS)
                    .collect();
                Value::String(format!("{start}… [cut: {bytes} bytes in all]"))
            } else {
                json!({ "$trimmed": { "bytes": bytes, "read_in_full": how } })
            };
            cut.push(format!("{} ({bytes} bytes)", &field[1..]));
            if fits(root) {
                return Trimmed::Cut(format!(
                    "cut to stay under {MAX_RESULT_BYTES} bytes: {}; read it in full with {how}",
                    cut.join(", ")
                ));
            }
        }
    }
    Trimmed::TooBig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_len_is_the_length_of_the_json_string() {
        for text in ["", "plain", "a \"quoted\" \\ path\n", "\u{1}\u{1f}é€😀"] {
            assert_eq!(
                escaped_len(text),
                serde_json::to_string(text).unwrap().len()
            );
        }
    }

    #[test]
    fn the_biggest_fields_go_first_and_the_rest_stays() {
        let mut task = json!({
            "id": 7, "state": "completed", "worker": "w", "attempts": [{ "error": "e" }],
            "payload": "p".repeat(1000), "result": "r".repeat(300), "console": [], "error": "x",
        });
        let fits = |value: &Value| value.to_string().len() < 800;
        let Trimmed::Cut(note) = trim(&mut task, "", Record::Task, fits) else {
            panic!("{task}")
        };
        assert!(note.contains("payload (1002 bytes)"), "{note}");
        assert!(!note.contains("result"), "{note}");
        assert_eq!(task["payload"]["$trimmed"]["bytes"], 1002);
        assert!(
            task["payload"]["$trimmed"]["read_in_full"]
                .as_str()
                .unwrap()
                .contains("/api/v1/tasks/7")
        );
        assert_eq!(task["result"], "r".repeat(300));
        assert_eq!((&task["id"], &task["error"]), (&json!(7), &json!("x")));

        let mut page = json!({ "tasks": [{ "id": 1, "error": "y".repeat(5000) }] });
        let fits = |value: &Value| value.to_string().len() < 3000;
        assert!(matches!(
            trim(&mut page, "/tasks/0", Record::Task, fits),
            Trimmed::Cut(_)
        ));
        assert!(
            page["tasks"][0]["error"]
                .as_str()
                .unwrap()
                .ends_with("[cut: 5002 bytes in all]")
        );
        assert_eq!(
            trim(&mut page, "/tasks/0", Record::Task, |_| false),
            Trimmed::TooBig
        );
    }
}
