//! JavaScript worker modules checked where they enter Mechanics (the server's worker add, the
//! CLI before it sends one), so that a syntax error is refused then, with its line and column,
//! and not found by the first task.

use crate::engine;
use crate::stack_guard::{self, Unanswered};
use crate::typescript::TranspileError;

/// Checks that the JavaScript module `source` parses as the engine will read it (including the
/// engine's rewrite of `export default async () => ...`, which Boa cannot parse as written);
/// `file_name` names it in the error (`summarize.js:3:7: ...`). Nothing runs: the module is only
/// parsed, on a thread of its own under the stack guard, since a module nested deeply enough
/// would overflow any parser's stack.
pub fn check(source: &str, file_name: &str) -> Result<(), TranspileError> {
    let refused = |message: &str| TranspileError::new(file_name, 1, 1, message.to_owned());
    let owned = source.to_owned();
    match stack_guard::on_guarded_thread("mechanics-check", move || engine::syntax_error(&owned)) {
        Ok(None) => Ok(()),
        Ok(Some(error)) => Err(TranspileError::new(
            file_name,
            error.line,
            error.column,
            error.message,
        )),
        Err(Unanswered::NoThread) => Err(refused("could not start a thread to check the module")),
        Err(Unanswered::TooDeep) => Err(refused(
            "the module nests too deeply to be parsed (expressions or blocks inside each other \
             tens of thousands of levels deep)",
        )),
        Err(Unanswered::Failed) => Err(refused("the parser failed unexpectedly on this module")),
    }
}
