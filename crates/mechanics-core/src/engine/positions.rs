//! Positions in a transpiled job's error message and console output, mapped back to the original
//! source through the job's [`SourceMap`] (see [`crate::typescript`]).
//!
//! Boa writes a position in the job's module as `unknown at :LINE:COLUMN` (the module has no
//! path) in error messages and in `error.stack`, and a syntax error's as `at line LINE, col
//! COLUMN` (only in the job's error: a console message is not the parser's). The first kind is a
//! position in the *instrumented* JavaScript: instrumentation inserts text but never a line
//! break, so the line is the JavaScript's while the column also counts the inserted text. Such a
//! column is taken back to the JavaScript by instrumenting the module again (the same source
//! gives the same insertions) and aligning the two lines; the identifiers the instrumentation
//! inserts all start with `__mechanics_`, so only their punctuation is left to align. Each
//! position is then written as `worker.ts:LINE:COLUMN`. Text a job logs that happens to read like
//! a runtime position is rewritten too: the two cannot be told apart.

use std::fmt::Write as _;

use super::instrument;
use crate::console::JobOutput;
use crate::typescript::{SourceMap, SourceMapLookup};

/// How Boa names a position in a module without a path.
const RUNTIME_MARKER: &str = "unknown at :";
/// How Boa's parser ends a syntax error's message.
const SYNTAX_MARKER: &str = "at line ";

/// Rewrites the positions in `output`'s error message and console lines, which come from running
/// `javascript`, to positions in the original source of `map`.
pub(crate) fn rewrite(map: &SourceMap, javascript: &str, output: &mut JobOutput) {
    // Most jobs print no position at all: they pay for one scan, not for decoding the map.
    let error = match &mut output.result {
        Err(error) => error.script_message_mut().map(|message| message.as_str()),
        Ok(_) => None,
    };
    let has_position = error
        .is_some_and(|m| m.contains(RUNTIME_MARKER) || m.contains(SYNTAX_MARKER))
        || output
            .console
            .iter()
            .any(|line| line.message.contains(RUNTIME_MARKER));
    if !has_position {
        return;
    }
    let mut rewriter = Rewriter {
        lookup: map.lookup(),
        javascript,
        instrumented: None,
    };
    if let Err(error) = &mut output.result
        && let Some(message) = error.script_message_mut()
        && let Some(rewritten) = rewriter.text(message, true)
    {
        *message = rewritten;
    }
    for line in &mut output.console {
        if let Some(rewritten) = rewriter.text(&line.message, false) {
            line.message = rewritten;
        }
    }
}

struct Rewriter<'a> {
    lookup: SourceMapLookup<'a>,
    javascript: &'a str,
    /// The instrumented module, made on the first runtime position met.
    instrumented: Option<Option<String>>,
}

impl Rewriter<'_> {
    /// `text` with every position it holds rewritten (syntax error positions too if `syntax`),
    /// or `None` if it holds none.
    fn text(&mut self, text: &str, syntax: bool) -> Option<String> {
        let holds_syntax = syntax && text.contains(SYNTAX_MARKER);
        if !holds_syntax && !text.contains(RUNTIME_MARKER) {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        loop {
            let runtime = rest.find(RUNTIME_MARKER);
            let syntax = rest.find(SYNTAX_MARKER).filter(|_| syntax);
            let (at, marker, separator, instrumented) = match (runtime, syntax) {
                (Some(r), Some(s)) if s < r => (s, SYNTAX_MARKER, ", col ", false),
                (Some(r), _) => (r, RUNTIME_MARKER, ":", true),
                (None, Some(s)) => (s, SYNTAX_MARKER, ", col ", false),
                (None, None) => break,
            };
            out.push_str(&rest[..at]);
            let after = &rest[at + marker.len()..];
            let parsed = position(after, separator);
            let original = parsed.and_then(|(line, column, _)| {
                let column = if instrumented {
                    self.javascript_column(line, column)
                } else {
                    column
                };
                let utf16 = utf16_column(line_of(self.javascript, line)?, column);
                self.lookup.original_position(line, utf16)
            });
            match (parsed, original) {
                (Some((_, _, consumed)), Some(original)) => {
                    if !instrumented {
                        out.push_str("at ");
                    }
                    let _ = write!(
                        out,
                        "{}:{}:{}",
                        self.lookup.source(),
                        original.line,
                        original.column
                    );
                    rest = &after[consumed..];
                }
                _ => {
                    out.push_str(marker);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Some(out)
    }

    /// The column (from 1, in characters) of the JavaScript that `column` of the instrumented
    /// module's `line` came from.
    fn javascript_column(&mut self, line: u32, column: u32) -> u32 {
        let javascript = self.javascript;
        let instrumented = self
            .instrumented
            .get_or_insert_with(|| instrument::instrument(javascript, 0).ok().map(|i| i.source));
        let (Some(instrumented), Some(original)) = (
            instrumented.as_deref().and_then(|text| line_of(text, line)),
            line_of(javascript, line),
        ) else {
            return column;
        };
        let target = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        u32::try_from(align(instrumented, original, target) + 1).unwrap_or(column)
    }
}

/// `LINE<separator>COLUMN` at the start of `text`: the two numbers and the bytes they take.
fn position(text: &str, separator: &str) -> Option<(u32, u32, usize)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let line_len = digits(text);
    let rest = text[line_len..].strip_prefix(separator)?;
    let column_len = digits(rest);
    let line = text[..line_len].parse().ok()?;
    let column = rest[..column_len].parse().ok()?;
    Some((line, column, line_len + separator.len() + column_len))
}

/// The text of line `line` (from 1) of `source`, with lines ended as Boa ends them: LF, CR, CRLF,
/// U+2028, U+2029.
fn line_of(source: &str, line: u32) -> Option<&str> {
    let mut start = 0;
    let mut current = 1;
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' if matches!(chars.peek(), Some((_, '\n'))) => {
                chars.next();
                i + 2
            }
            '\r' | '\n' | '\u{2028}' | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        if current == line {
            return Some(&source[start..i]);
        }
        current += 1;
        start = end;
    }
    (current == line).then(|| &source[start..])
}

/// The UTF-16 column (from 1) of the character column `column` (from 1) of `line`.
fn utf16_column(line: &str, column: u32) -> u32 {
    let characters = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
    let units: usize = line.chars().take(characters).map(char::len_utf16).sum();
    u32::try_from(units + 1).unwrap_or(u32::MAX)
}

/// The character index in `original` that character `target` of `instrumented` (the same line
/// with text inserted) stands for. Identifiers starting with `__mechanics_` that `original` does
/// not have at that point are skipped whole; the rest is matched greedily, each character of
/// `instrumented` that is not the next of `original` counting as inserted.
fn align(instrumented: &str, original: &str, target: usize) -> usize {
    let instrumented: Vec<char> = instrumented.chars().collect();
    let original: Vec<char> = original.chars().collect();
    let (mut k, mut j) = (0, 0);
    while k < instrumented.len() {
        let inserted = inserted_identifier(&instrumented[k..], &original[j..]);
        if inserted > 0 {
            if target < k + inserted {
                return j;
            }
            k += inserted;
            continue;
        }
        if k == target {
            return j;
        }
        if original.get(j) == Some(&instrumented[k]) {
            j += 1;
        }
        k += 1;
    }
    j + target.saturating_sub(k)
}

/// The length in characters of the identifier starting `instrumented` if the instrumentation
/// inserted it: it starts with `__mechanics_` and `original` does not start with it; else 0.
fn inserted_identifier(instrumented: &[char], original: &[char]) -> usize {
    const PREFIX: &str = "__mechanics_";
    if instrumented.len() < PREFIX.len()
        || !instrumented
            .iter()
            .zip(PREFIX.chars())
            .all(|(a, b)| *a == b)
    {
        return 0;
    }
    let length = instrumented
        .iter()
        .take_while(|c| c.is_alphanumeric() || **c == '_' || **c == '$')
        .count();
    if original.get(..length) == Some(&instrumented[..length]) {
        return 0;
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_as_boa_ends_them() {
        let source = "a\nb\r\nc\rd\u{2028}e";
        let lines: Vec<_> = (1..=6).map(|n| line_of(source, n)).collect();
        assert_eq!(
            lines,
            [Some("a"), Some("b"), Some("c"), Some("d"), Some("e"), None]
        );
        assert_eq!(line_of("", 1), Some(""));
        assert_eq!(line_of("x\n", 2), Some(""));
    }

    #[test]
    fn instrumented_columns_are_aligned_to_the_javascript() {
        let original = "  return [1].map(x => x.a.b), y;";
        let instrumented =
            "  return [1].map(x => (__mechanics_call_00000000000000ff(), x.a.b)), y;";
        let column_of = |needle: &str, text: &str| text.find(needle).unwrap();
        // `x.a.b` and `y`, found in the instrumented line, stand for themselves in the original.
        for needle in ["x.a.b", "y;", "[1]"] {
            assert_eq!(
                align(instrumented, original, column_of(needle, instrumented)),
                column_of(needle, original),
                "{needle}"
            );
        }
        // Inside an inserted call: where the insertion was made.
        let inside = column_of("call_", instrumented);
        assert_eq!(
            align(instrumented, original, inside),
            column_of("x.a", original)
        );
        // An identifier of the original with the prefix is not skipped.
        let own = "f(__mechanics_mine, 1)";
        assert_eq!(align(own, own, column_of("1)", own)), column_of("1)", own));
        // Past the end of the line, the excess is kept.
        assert_eq!(align("ab", "ab", 5), 5);
    }

    #[test]
    fn runtime_and_syntax_error_positions_are_rewritten() {
        // JavaScript line 1 comes from line 1, line 2 from line 3.
        let map = SourceMap::new("w.ts", "AAAA;AAEA").unwrap();
        let mut rewriter = Rewriter {
            lookup: map.lookup(),
            javascript: "f();\ng();\n",
            instrumented: None,
        };
        assert_eq!(
            rewriter.text(
                "TypeError: x (unknown at :2:1)\n    at f (unknown at :1:1)",
                false
            ),
            Some("TypeError: x (w.ts:3:1)\n    at f (w.ts:1:1)".to_owned())
        );
        assert_eq!(
            rewriter.text("SyntaxError: unexpected token at line 2, col 1", true),
            Some("SyntaxError: unexpected token at w.ts:3:1".to_owned())
        );
        // Only the job's error holds syntax error positions; what does not parse stays.
        assert_eq!(rewriter.text("look at line 2, col 1", false), None);
        assert_eq!(
            rewriter.text("unknown at :x, at line 2", true),
            Some("unknown at :x, at line 2".to_owned())
        );
    }

    #[test]
    fn positions_are_read_with_their_length() {
        assert_eq!(position("12:7)", ":"), Some((12, 7, 4)));
        assert_eq!(position("3, col 10", ", col "), Some((3, 10, 9)));
        assert_eq!(position(":7", ":"), None);
        assert_eq!(position("12:", ":"), None);
    }
}
