//! Source instrumentation that lets the engine stop any JavaScript loop or call chain.
//!
//! Boa offers no interrupt: a running `while (true) {}` never returns control to the host, and its
//! own loop limit counts per call frame. So before a module is compiled, the engine inserts a
//! *guard* at every place where JavaScript can repeat work: each loop iteration and each function
//! entry. A guard is `(--budget>0||(budget=tick()))`: it counts down a budget held in a
//! module-scope binding, and only when that runs out calls a native *tick*, which counts loop
//! iterations over the whole job, looks at the clock and the memory budget, throws an uncatchable
//! error when a limit is hit, and otherwise answers the next budget. Loops and calls have a budget
//! and a tick each. A native call at every iteration cost fib(25) 1.5x and a plain loop 3x; the
//! decrement costs a few VM instructions.
//!
//! Insertion points come from the spans of Boa's own parse of the module, so they are exact
//! positions of tokens, never guesses from scanning text:
//! - a braced function body gets `guard;` right after its `{`;
//! - a concise arrow body `x => expr` becomes `x => (guard, expr)`;
//! - a loop condition or `for` update `cond` becomes `guard, cond`, which is a valid `Expression`
//!   with the same value wherever `cond` was one.
//!
//! The names of the ticks and budgets carry a random suffix chosen after the source is known and
//! proved absent from it, so no code in the module can name a budget: the budgets are `var`s of
//! the module's own scope (declared on a line appended to the module), which nothing but an
//! identifier written in the source reaches; they are not properties of the global object, and
//! no `with` (a syntax error in a module), getter or prototype lies on the way to them. A job can
//! still *read* the names, in `Function.prototype.toString` of its own functions, but only code
//! compiled from a string could use one, and the host refuses to compile strings (`eval`, every
//! `Function` constructor): that refusal is what the budgets' safety rests on. The ticks are
//! read-only, non-configurable globals; calling one by name only charges the job sooner. A
//! `for (;;)` loop with neither a condition nor an update has no span inside its head; it gets
//! `for (init; guard;)` at a position found by scanning the text, accepted only after a re-parse
//! proves every such insertion became the condition of a bare loop. Should the scan ever fail that
//! proof, those loops stay bounded by Boa's per-frame loop limit alone (see ARCHITECTURE.md).
//!
//! The same pass rewrites namespace imports and dynamic `import()` so that Boa never creates a
//! module namespace object: Boa 0.22 never frees one (its cached bindings are hidden from the
//! garbage collector), so each would leak the job's whole realm. `import * as ns from "m"`
//! becomes a named import of the namespace object our synthetic modules export themselves
//! ([`modules::NAMESPACE_EXPORT`]), and `import(x)` becomes a call of a native method that
//! resolves to the same object.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use boa_ast::declaration::{ExportDeclaration, ImportDeclaration, ImportKind, ReExportKind};
use boa_ast::expression::operator::assign::AssignTarget;
use boa_ast::expression::operator::binary::{BinaryOp, LogicalOp};
use boa_ast::expression::{Expression, Identifier, ImportCall, ImportPhase};
use boa_ast::function::{ArrowFunction, AsyncArrowFunction, FunctionBody};
use boa_ast::scope::Scope;
use boa_ast::statement::iteration::{DoWhileLoop, ForInLoop, ForLoop, ForOfLoop, WhileLoop};
use boa_ast::visitor::{VisitWith, Visitor};
use boa_ast::{LinearPosition, Position, Span, Spanned};
use boa_ast::{Statement, StatementListItem};
use boa_interner::Interner;
use boa_parser::{Parser, Source};

use crate::modules;

/// A module rewritten with tick calls, and the names of its two tick functions.
#[derive(Debug)]
pub(crate) struct Instrumented {
    /// The instrumented source to compile.
    pub(crate) source: String,
    /// Global called on every loop iteration.
    pub(crate) loop_tick: String,
    /// Global called on every function entry.
    pub(crate) call_tick: String,
    /// Global object whose `import` method serves the module's dynamic `import()` calls.
    pub(crate) import_object: String,
}

/// Why a module could not be instrumented.
#[derive(Debug)]
pub(crate) enum InstrumentError {
    /// The module does not parse; the message is Boa's.
    Syntax(String),
    /// The module uses a construct the sandbox does not allow; the message says which and why.
    Unsupported(String),
}

/// Parses `source` as a module and inserts tick calls. `suffix` makes the tick names unique; the
/// caller picks a random one.
pub(crate) fn instrument(source: &str, suffix: u64) -> Result<Instrumented, InstrumentError> {
    let (module, rewritten) = parse_as_engine(source, suffix).map_err(|error| {
        InstrumentError::Syntax(format!(
            "SyntaxError: {} at line {}, col {}",
            error.message, error.line, error.column
        ))
    })?;
    let source = rewritten.as_deref().unwrap_or(source);

    let mut suffix = suffix;
    let names = loop {
        let names = Names::new(suffix);
        if names.all().iter().all(|name| !source.contains(name)) {
            break names;
        }
        suffix = suffix.wrapping_mul(6364136223846793005).wrapping_add(1);
    };
    let Names {
        loop_tick,
        call_tick,
        import_object,
        loop_budget,
        call_budget,
    } = names;
    let loop_guard = guard(&loop_budget, &loop_tick);
    let call_guard = guard(&call_budget, &call_tick);

    let lines = LineIndex::new(source);
    let mut finder = InsertionFinder {
        source,
        lines: &lines,
        insertions: Vec::new(),
        loop_call: format!("{loop_guard}, "),
        call_stmt: format!("{call_guard};"),
        call_open: format!("({call_guard}, "),
        import_call: format!("{import_object}."),
        bare_for_loops: 0,
        iterable_loops: Vec::new(),
        loop_ticks: 0,
    };
    if let ControlFlow::Break(message) = finder.visit_module(&module) {
        return Err(InstrumentError::Unsupported(message));
    }

    // Ticks placed from the AST's spans are exact. The two kinds placed by scanning text (bare
    // `for (;;)` heads, and the bodies of `for...of`/`for...in` loops) are accepted only if a
    // re-parse proves each landed where it belongs; otherwise they are left out, and those loops
    // are bounded by Boa's per-frame loop limit alone.
    let expected = Expected {
        bare_for_loops: finder.bare_for_loops,
        iterable_bodies: finder.iterable_loops.len(),
    };
    let mut scanned = Vec::new();
    let heads = if expected.bare_for_loops > 0 {
        bare_for_heads(source)
    } else {
        Vec::new()
    };
    // One candidate per bare loop, or none: an extra candidate can only be text inside a literal.
    if heads.len() == expected.bare_for_loops {
        scanned.extend(heads.into_iter().map(|offset| Insertion {
            offset,
            opens: true,
            text: loop_guard.clone(),
            replaces: 0,
        }));
    }
    for &(iterable_start, body) in &finder.iterable_loops {
        if let Some(insertion) = iterable_body_tick(source, iterable_start, body, &loop_guard) {
            scanned.push(insertion);
        }
    }
    let ast_placed_loop_ticks = finder.loop_ticks;
    let all_scanned = scanned.len() == expected.bare_for_loops + expected.iterable_bodies;
    let mut out = if scanned.is_empty() || !all_scanned {
        apply(source, finder.insertions)
    } else {
        let mut insertions = finder.insertions.clone();
        insertions.extend(scanned);
        let candidate = apply(source, insertions);
        if verify(
            &candidate,
            &loop_tick,
            &loop_budget,
            ast_placed_loop_ticks,
            expected,
        ) {
            candidate
        } else {
            apply(source, finder.insertions)
        }
    };
    // The budgets are declared last, on a line of their own, so no position in the module moves.
    // `var` rather than `let`: a hoisted function called before the declaration is reached sees
    // `undefined`, which fails the guard's test and calls the tick, instead of a TDZ error.
    let _ = write!(out, "\n;var {loop_budget}, {call_budget};\n");
    Ok(Instrumented {
        source: out,
        loop_tick,
        call_tick,
        import_object,
    })
}

/// The identifiers the instrumentation adds to a module, all with one suffix.
struct Names {
    loop_tick: String,
    call_tick: String,
    import_object: String,
    /// Module-scope binding counting down the loop iterations left before the next loop tick.
    loop_budget: String,
    /// Module-scope binding counting down the function entries left before the next call tick.
    call_budget: String,
}

impl Names {
    fn new(suffix: u64) -> Self {
        Self {
            loop_tick: format!("__mechanics_loop_{suffix:016x}"),
            call_tick: format!("__mechanics_call_{suffix:016x}"),
            import_object: format!("__mechanics_import_{suffix:016x}"),
            loop_budget: format!("__mechanics_loops_left_{suffix:016x}"),
            call_budget: format!("__mechanics_calls_left_{suffix:016x}"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.loop_tick,
            &self.call_tick,
            &self.import_object,
            &self.loop_budget,
            &self.call_budget,
        ]
    }
}

/// The countdown guard placed at a tick point: `(--budget>0||(budget=tick()))`. The common case
/// is a decrement and a comparison in the VM; only when the budget runs out does it call the
/// native tick, which checks the limits and answers the next budget (at least 1, so the guard is
/// truthy as the whole condition of a bare `for (;;)`). `undefined`, `NaN` or anything not above
/// zero calls the tick, so a budget never initialised, or left at zero by a tick that threw,
/// cannot skip a check.
fn guard(budget: &str, tick: &str) -> String {
    format!("(--{budget}>0||({budget}={tick}()))")
}

/// Parses `source` as the engine runs it: the module, and the rewritten text when it needed one.
///
/// Boa 0.22 does not parse `export default async () => ...` (nor `async x => ...`), which is
/// valid JavaScript. When a module fails to parse, each such declaration is tried in turn as
/// `const <name> = async ...` with `export { <name> as default };` appended; the first rewrite
/// that parses is used. Only a module that failed to parse is rewritten, so valid modules are
/// never touched, and text inside strings or comments cannot be chosen (rewriting it would not
/// fix the parse).
///
/// When nothing parses, the error is that of the parse that got furthest (Boa stops a module at
/// such an arrow, which is not the author's mistake; a rewrite gets to the real one), at its
/// position in the module as written: a rewrite changes text only where it replaced it and
/// appends a line at the end. Each text is parsed once.
fn parse_as_engine(
    source: &str,
    suffix: u64,
) -> Result<(boa_ast::Module, Option<String>), SyntaxError> {
    let parse = |text: &str| {
        Parser::new(Source::from_bytes(text))
            .parse_module(&Scope::new_global(), &mut Interner::default())
    };
    let original = match parse(source) {
        Ok(module) => return Ok((module, None)),
        Err(err) => err,
    };
    let mut furthest = error_offset(source, &original);
    let mut message = error_message(&original);
    for rewrite in async_arrow_rewrites(source, suffix) {
        let err = match parse(&rewrite.text) {
            Ok(module) => return Ok((module, Some(rewrite.text))),
            Err(err) => err,
        };
        let at = error_offset(&rewrite.text, &err);
        let back = if at < rewrite.start {
            at
        } else if at < rewrite.start + rewrite.replacement {
            rewrite.start
        } else {
            (at - rewrite.replacement + rewrite.replaced).min(source.len())
        };
        if back > furthest {
            furthest = back;
            message = error_message(&err);
        }
    }
    let (line, column) = LineIndex::new(source).position(source, furthest);
    Err(SyntaxError {
        line,
        column,
        message,
    })
}

/// One `export default async <arrow>` of a module rewritten as [`parse_as_engine`] tries it.
struct AsyncArrowRewrite {
    /// The whole rewritten module.
    text: String,
    /// Where the replaced `export default async` starts (the same offset in both texts).
    start: usize,
    /// The byte length of `export default async` as written.
    replaced: usize,
    /// The byte length of what replaced it (`const <name> = async`).
    replacement: usize,
}

/// Every rewrite of an arrow-like `export default async` in `source`, in order.
fn async_arrow_rewrites(source: &str, suffix: u64) -> impl Iterator<Item = AsyncArrowRewrite> {
    let name = format!("__mechanics_default_{suffix:016x}");
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = source[from..].find("export") {
            let start = from + found;
            from = start + "export".len();
            let Some(after_async) = skip_words(&source[start..], &["export", "default", "async"])
            else {
                continue;
            };
            let rest = source[start + after_async..].trim_start();
            let arrow_like = rest.starts_with('(')
                || rest
                    .chars()
                    .next()
                    .is_some_and(|c| c == '_' || c == '$' || c.is_alphabetic())
                    && !rest.starts_with("function");
            if !arrow_like {
                continue;
            }
            let replacement = format!("const {name} = async");
            return Some(AsyncArrowRewrite {
                text: format!(
                    "{}{replacement}{}\n;export {{ {name} as default }};\n",
                    &source[..start],
                    &source[start + after_async..]
                ),
                start,
                replaced: after_async,
                replacement: replacement.len(),
            });
        }
        None
    })
}

/// Why a module does not parse, at a position in the module as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// The line, from 1.
    pub(crate) line: u32,
    /// The column, from 1, in characters.
    pub(crate) column: u32,
    /// What the parser said, without the position.
    pub(crate) message: String,
}

/// Why `source` does not parse as the engine reads it (with the `export default async` rewrite,
/// see [`parse_as_engine`]), at its position in the module as written; `None` when it parses.
pub(crate) fn syntax_error(source: &str) -> Option<SyntaxError> {
    parse_as_engine(source, 0).err()
}

/// The byte offset in `text` where Boa's `err` happened; the end for an abrupt end (and for an
/// error with no position).
fn error_offset(text: &str, err: &boa_parser::Error) -> usize {
    use boa_parser::Error;
    let position = match err {
        Error::Expected { span, .. } | Error::Unexpected { span, .. } => Some(span.start()),
        Error::General { position, .. } => Some(*position),
        Error::Lex {
            err: boa_parser::lexer::Error::Syntax(_, position),
        } => Some(*position),
        _ => None,
    };
    position
        .and_then(|position| LineIndex::new(text).offset(text, position))
        .unwrap_or(text.len())
}

/// Boa's message for `err` without its `at line L, col C`.
fn error_message(err: &boa_parser::Error) -> String {
    use boa_parser::Error;
    match err {
        Error::Expected {
            expected, found, ..
        } => {
            let expected: Vec<String> = expected.iter().map(|token| format!("'{token}'")).collect();
            format!("expected {}, got '{found}'", expected.join(" or "))
        }
        Error::Unexpected { found, message, .. } => {
            format!("unexpected token '{found}', {message}")
        }
        Error::General { message, .. } => message.to_string(),
        Error::Lex {
            err: boa_parser::lexer::Error::Syntax(message, _),
        } => message.to_string(),
        Error::AbruptEnd => "unexpected end of the module".to_owned(),
        other => other.to_string(),
    }
}

/// The byte length of `words` at the start of `text`, separated by whitespace, or `None`.
fn skip_words(text: &str, words: &[&str]) -> Option<usize> {
    let mut offset = 0;
    for (i, word) in words.iter().enumerate() {
        let rest = &text[offset..];
        let trimmed = if i == 0 { rest } else { rest.trim_start() };
        if i > 0 && trimmed.len() == rest.len() {
            return None;
        }
        offset += rest.len() - trimmed.len();
        if !trimmed.starts_with(word) {
            return None;
        }
        offset += word.len();
    }
    Some(offset)
}

fn apply(source: &str, mut insertions: Vec<Insertion>) -> String {
    // Stable order by position; at one position closing parentheses go before openings.
    insertions.sort_by_key(|i| (i.offset, i.opens));
    let extra: usize = insertions.iter().map(|i| i.text.len()).sum();
    let mut out = String::with_capacity(source.len() + extra);
    let mut copied = 0;
    for insertion in &insertions {
        out.push_str(&source[copied..insertion.offset]);
        out.push_str(&insertion.text);
        copied = insertion.offset + insertion.replaces;
    }
    out.push_str(&source[copied..]);
    out
}

/// Offsets just after the first `;` of every `for ( init ; ; )` head, found by scanning the text.
///
/// The scan can be fooled by unusual code, so its result is only used after [`verify`] has
/// re-parsed the instrumented module and confirmed that each insertion became the condition of
/// one of the module's bare `for` loops and nothing else.
fn bare_for_heads(source: &str) -> Vec<usize> {
    let mut heads = Vec::new();
    for token in Tokens::new(source.as_bytes(), 0) {
        if let Token::Word(start, end) = token
            && &source[start..end] == "for"
            && let Some(offset) = bare_head(source.as_bytes(), end)
        {
            heads.push(offset);
        }
    }
    heads
}

/// A significant token of the text scan: a word (identifier, keyword or number) or one byte of
/// punctuation. Whitespace, comments and literals are skipped.
#[derive(Debug, Clone, Copy)]
enum Token {
    Word(usize, usize),
    Punct(usize, u8),
}

/// The text scan: yields [`Token`]s, skipping comments, strings, templates and (by the usual
/// heuristic of what may precede one) regular expressions.
struct Tokens<'a> {
    bytes: &'a [u8],
    at: usize,
    regex_allowed: bool,
}

impl<'a> Tokens<'a> {
    fn new(bytes: &'a [u8], at: usize) -> Self {
        Self {
            bytes,
            at,
            regex_allowed: true,
        }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let bytes = self.bytes;
        while self.at < bytes.len() {
            let i = self.at;
            if let Some(next) = skip_trivia_or_literal(bytes, i, self.regex_allowed) {
                // A comment leaves the state as it was; a literal is an operand.
                let comment = bytes[i] == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'*'));
                if !comment {
                    self.regex_allowed = false;
                }
                self.at = next;
                continue;
            }
            let b = bytes[i];
            if b.is_ascii_whitespace() {
                self.at += 1;
                continue;
            }
            if is_ident(b) {
                let mut end = i;
                while end < bytes.len() && is_ident(bytes[end]) {
                    end += 1;
                }
                self.at = end;
                self.regex_allowed = matches!(
                    &bytes[i..end],
                    b"return"
                        | b"typeof"
                        | b"instanceof"
                        | b"in"
                        | b"of"
                        | b"new"
                        | b"delete"
                        | b"void"
                        | b"throw"
                        | b"case"
                        | b"do"
                        | b"else"
                        | b"yield"
                        | b"await"
                );
                return Some(Token::Word(i, end));
            }
            self.at += 1;
            self.regex_allowed = !matches!(b, b')' | b']' | b'}');
            return Some(Token::Punct(i, b));
        }
        None
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// If a comment, string, template or regular expression starts at `i`, the offset after it.
fn skip_trivia_or_literal(bytes: &[u8], i: usize, regex_allowed: bool) -> Option<usize> {
    let b = bytes[i];
    let next = bytes.get(i + 1).copied();
    let end_of = |from: usize, close: u8| {
        let mut j = from;
        while j < bytes.len() {
            match bytes[j] {
                b'\\' => j += 2,
                c if c == close => return j + 1,
                _ => j += 1,
            }
        }
        bytes.len()
    };
    match (b, next) {
        (b'/', Some(b'/')) => Some(
            bytes[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(bytes.len(), |p| i + p),
        ),
        (b'/', Some(b'*')) => Some(
            bytes[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(bytes.len(), |p| i + 2 + p + 2),
        ),
        (b'\'' | b'"' | b'`', _) => Some(end_of(i + 1, b)),
        (b'/', _) if regex_allowed => {
            let mut j = i + 1;
            let mut in_class = false;
            while j < bytes.len() && bytes[j] != b'\n' {
                match bytes[j] {
                    b'\\' => j += 1,
                    b'[' => in_class = true,
                    b']' => in_class = false,
                    b'/' if !in_class => return Some(j + 1),
                    _ => {}
                }
                j += 1;
            }
            Some(j)
        }
        _ => None,
    }
}

/// After the keyword `for` ending at `i`: the offset after the first `;` if the head is
/// `( init ; ; )` with nothing but whitespace and comments after that `;`.
fn bare_head(bytes: &[u8], i: usize) -> Option<usize> {
    let open = skip_blank(bytes, i)?;
    if bytes.get(open) != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    for token in Tokens::new(bytes, open + 1) {
        match token {
            Token::Punct(_, b'(' | b'[' | b'{') => depth += 1,
            Token::Punct(_, b')' | b']' | b'}') => depth = depth.checked_sub(1)?,
            Token::Punct(at, b';') if depth == 0 => {
                let second = skip_blank(bytes, at + 1)?;
                if bytes.get(second) != Some(&b';') {
                    return None;
                }
                let close = skip_blank(bytes, second + 1)?;
                return (bytes.get(close) == Some(&b')')).then_some(at + 1);
            }
            _ => {}
        }
    }
    None
}

/// The text-placed ticks a module should end up with.
#[derive(Debug, Clone, Copy)]
struct Expected {
    bare_for_loops: usize,
    iterable_bodies: usize,
}

/// The tick for the body of the `for...of`/`for...in` loop whose iterable starts at
/// `iterable_start`: the head ends at the first `)` that closes more than it opens.
fn iterable_body_tick(
    source: &str,
    iterable_start: usize,
    body: LoopBody,
    loop_guard: &str,
) -> Option<Insertion> {
    let bytes = source.as_bytes();
    let head_end = closing_paren(bytes, iterable_start)?;
    let body_start = skip_blank(bytes, head_end)?;
    match body {
        LoopBody::Block => (bytes.get(body_start) == Some(&b'{')).then(|| Insertion {
            offset: body_start + 1,
            opens: true,
            text: format!("{loop_guard};"),
            replaces: 0,
        }),
        LoopBody::Expression => Some(Insertion {
            offset: body_start,
            opens: true,
            text: format!("{loop_guard}, "),
            replaces: 0,
        }),
    }
}

/// The offset after the first `)` from `from` on that closes more than it opens.
fn closing_paren(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    for token in Tokens::new(bytes, from) {
        match token {
            Token::Punct(at, b')') if depth == 0 => return Some(at + 1),
            Token::Punct(_, b'(' | b'[' | b'{') => depth += 1,
            Token::Punct(_, b')' | b']' | b'}') => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    None
}

/// The offset of the next token after whitespace and comments.
fn skip_blank(bytes: &[u8], mut j: usize) -> Option<usize> {
    loop {
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        match (bytes.get(j), bytes.get(j + 1)) {
            (Some(b'/'), Some(b'/' | b'*')) => j = skip_trivia_or_literal(bytes, j, false)?,
            _ => return Some(j),
        }
    }
}

/// Re-parses `instrumented` and checks that every text-placed tick became what it should: each
/// bare `for` loop has the loop's [`guard`] as its condition, each `for...of`/`for...in` body
/// starts with it, and the module holds exactly as many tick calls as were inserted (so none
/// landed inside a string, template or regular expression).
fn verify(
    instrumented: &str,
    tick: &str,
    budget: &str,
    ast_placed: usize,
    expected: Expected,
) -> bool {
    struct Check<'a> {
        interner: &'a Interner,
        tick: &'a str,
        budget: &'a str,
        calls: usize,
        ticked_bare: usize,
        bare: usize,
        ticked_bodies: usize,
    }
    impl Check<'_> {
        fn is_tick(&self, expression: &Expression) -> bool {
            matches!(expression, Expression::Call(call)
                if call.args().is_empty()
                    && matches!(call.function(), Expression::Identifier(id)
                        if self.interner.resolve_expect(id.sym()).to_string() == self.tick))
        }

        /// Whether `expression` is `(--budget>0||(budget=tick()))`.
        fn is_guard(&self, expression: &Expression) -> bool {
            let Expression::Parenthesized(outer) = expression else {
                return false;
            };
            let Expression::Binary(or) = outer.expression() else {
                return false;
            };
            if or.op() != BinaryOp::Logical(LogicalOp::Or) {
                return false;
            }
            let Expression::Parenthesized(inner) = or.rhs() else {
                return false;
            };
            matches!(inner.expression(), Expression::Assign(assign)
                if self.is_tick(assign.rhs())
                    && matches!(assign.lhs(), AssignTarget::Identifier(id)
                        if self.interner.resolve_expect(id.sym()).to_string() == self.budget))
        }

        fn body_ticks(&self, body: &Statement) -> bool {
            match body {
                Statement::Block(block) => matches!(
                    block.statement_list().statements().first(),
                    Some(StatementListItem::Statement(first))
                        if matches!(&**first, Statement::Expression(e) if self.is_guard(e))
                ),
                Statement::Expression(Expression::Binary(binary)) => {
                    binary.op() == BinaryOp::Comma && self.is_guard(binary.lhs())
                }
                _ => false,
            }
        }
    }
    impl<'ast> Visitor<'ast> for Check<'_> {
        type BreakTy = ();
        fn visit_expression(&mut self, node: &'ast Expression) -> ControlFlow<()> {
            if self.is_tick(node) {
                self.calls += 1;
            }
            node.visit_with(self)
        }
        fn visit_for_loop(&mut self, node: &'ast ForLoop) -> ControlFlow<()> {
            match (node.condition(), node.final_expr()) {
                (Some(condition), None) if self.is_guard(condition) => self.ticked_bare += 1,
                (None, None) => self.bare += 1,
                _ => {}
            }
            node.visit_with(self)
        }
        fn visit_for_of_loop(&mut self, node: &'ast ForOfLoop) -> ControlFlow<()> {
            if self.body_ticks(node.body()) {
                self.ticked_bodies += 1;
            }
            node.visit_with(self)
        }
        fn visit_for_in_loop(&mut self, node: &'ast ForInLoop) -> ControlFlow<()> {
            if self.body_ticks(node.body()) {
                self.ticked_bodies += 1;
            }
            node.visit_with(self)
        }
    }
    let mut interner = Interner::default();
    let Ok(module) = Parser::new(Source::from_bytes(instrumented))
        .parse_module(&Scope::new_global(), &mut interner)
    else {
        return false;
    };
    let mut check = Check {
        interner: &interner,
        tick,
        budget,
        calls: 0,
        ticked_bare: 0,
        bare: 0,
        ticked_bodies: 0,
    };
    let _ = check.visit_module(&module);
    check.bare == 0
        && check.ticked_bare == expected.bare_for_loops
        && check.ticked_bodies == expected.iterable_bodies
        && check.calls == ast_placed + expected.bare_for_loops + expected.iterable_bodies
}

#[derive(Clone)]
struct Insertion {
    offset: usize,
    /// `false` for a closing parenthesis, so it sorts before an opening at the same offset.
    opens: bool,
    text: String,
    /// Bytes of the source from `offset` that `text` replaces (0 for a pure insertion).
    replaces: usize,
}

struct InsertionFinder<'a> {
    source: &'a str,
    lines: &'a LineIndex,
    insertions: Vec<Insertion>,
    loop_call: String,
    call_stmt: String,
    call_open: String,
    /// Put before the `import` of a dynamic `import(...)`, making it a call of our own method.
    import_call: String,
    /// `for` loops with neither a condition nor an update (`for (;;)`): the AST gives no position
    /// inside their head, see [`bare_for_heads`].
    bare_for_loops: usize,
    /// `for...of` and `for...in` loops: where their iterable starts, and their body's form.
    iterable_loops: Vec<(usize, LoopBody)>,
    /// Loop ticks placed from spans (conditions and updates).
    loop_ticks: usize,
}

/// The body of a `for...of` or `for...in` loop, as far as placing its tick goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopBody {
    /// `{ ... }`: the tick goes right after the `{`.
    Block,
    /// An expression statement: it becomes `tick(), expression`.
    Expression,
}

impl InsertionFinder<'_> {
    fn insert(&mut self, position: Position, opens: bool, text: String) {
        if let Some(offset) = self.lines.offset(self.source, position) {
            self.insertions.push(Insertion {
                offset,
                opens,
                text,
                replaces: 0,
            });
        }
    }

    /// `x => expr` becomes `x => (tick(), expr)`. The closing parenthesis goes at the end of the
    /// arrow function's source text, which Boa records exactly (for `Function.prototype.toString`);
    /// expression spans can end early (a computed member access ends before its `]`).
    fn concise_body(&mut self, body: &FunctionBody, end: LinearPosition) {
        let start = body.span().start();
        let braced = self
            .lines
            .offset(self.source, start)
            .is_none_or(|offset| self.source[offset..].starts_with('{'));
        if braced {
            return;
        }
        let bounds = body.statements().iter().fold(None, |acc, item| {
            let mut collector = BoundsCollector::default();
            let _ = item.visit_with(&mut collector);
            ExpressionBounds::merge(acc, collector.bounds)
        });
        let Some(bounds) = bounds else {
            return;
        };
        // Neither end is exact on its own: an expression's span can stop before a closing `]`,
        // and the arrow's linear span stops early after a template or regular expression
        // literal. The later of the two is the end of the body.
        let (Some(span_end), Some(linear_end)) = (
            self.lines.offset(self.source, bounds.end),
            utf16_offset(self.source, end.pos()),
        ) else {
            return;
        };
        let open = self.call_open.clone();
        self.insert(bounds.start, true, open);
        self.insertions.push(Insertion {
            offset: span_end.max(linear_end),
            opens: false,
            text: ")".to_owned(),
            replaces: 0,
        });
    }

    /// `tick(), ` before the first token of a loop condition or update expression.
    fn tick_expression(&mut self, expression: &Expression) {
        if let Some(bounds) = ExpressionBounds::of(expression) {
            let text = self.loop_call.clone();
            self.insert(bounds.start, true, text);
            self.loop_ticks += 1;
        }
    }

    /// Records a `for...of`/`for...in` loop whose body can take a tick.
    fn iterable_loop(&mut self, iterable: &Expression, body: &Statement) {
        let form = match body {
            Statement::Block(_) => LoopBody::Block,
            Statement::Expression(_) => LoopBody::Expression,
            _ => return,
        };
        if let Some(start) = ExpressionBounds::of(iterable)
            .and_then(|bounds| self.lines.offset(self.source, bounds.start))
        {
            self.iterable_loops.push((start, form));
        }
    }
}

impl<'ast> Visitor<'ast> for InsertionFinder<'_> {
    type BreakTy = String;

    fn visit_function_body(&mut self, body: &'ast FunctionBody) -> ControlFlow<String> {
        let start = body.span().start();
        let braced = self
            .lines
            .offset(self.source, start)
            .is_some_and(|offset| self.source[offset..].starts_with('{'));
        if braced && let Some(offset) = self.lines.offset(self.source, start) {
            self.insertions.push(Insertion {
                offset: offset + 1,
                opens: true,
                text: self.call_stmt.clone(),
                replaces: 0,
            });
        }
        body.visit_with(self)
    }

    fn visit_arrow_function(&mut self, node: &'ast ArrowFunction) -> ControlFlow<String> {
        self.concise_body(node.body(), node.linear_span().end());
        node.visit_with(self)
    }

    fn visit_async_arrow_function(
        &mut self,
        node: &'ast AsyncArrowFunction,
    ) -> ControlFlow<String> {
        self.concise_body(node.body(), node.linear_span().end());
        node.visit_with(self)
    }

    fn visit_while_loop(&mut self, node: &'ast WhileLoop) -> ControlFlow<String> {
        self.tick_expression(node.condition());
        node.visit_with(self)
    }

    fn visit_do_while_loop(&mut self, node: &'ast DoWhileLoop) -> ControlFlow<String> {
        self.tick_expression(node.cond());
        node.visit_with(self)
    }

    fn visit_for_loop(&mut self, node: &'ast ForLoop) -> ControlFlow<String> {
        if let Some(condition) = node.condition() {
            self.tick_expression(condition);
        } else if let Some(update) = node.final_expr() {
            self.tick_expression(update);
        } else {
            self.bare_for_loops += 1;
        }
        node.visit_with(self)
    }

    fn visit_for_of_loop(&mut self, node: &'ast ForOfLoop) -> ControlFlow<String> {
        self.iterable_loop(node.iterable(), node.body());
        node.visit_with(self)
    }

    fn visit_for_in_loop(&mut self, node: &'ast ForInLoop) -> ControlFlow<String> {
        self.iterable_loop(node.target(), node.body());
        node.visit_with(self)
    }

    fn visit_import_declaration(&mut self, node: &'ast ImportDeclaration) -> ControlFlow<String> {
        if let ImportKind::Namespaced { binding } = node.kind() {
            self.namespace_import(binding)?;
        }
        node.visit_with(self)
    }

    fn visit_export_declaration(&mut self, node: &'ast ExportDeclaration) -> ControlFlow<String> {
        if let ExportDeclaration::ReExport {
            kind: ReExportKind::Namespaced { name: Some(_) },
            ..
        } = node
        {
            return ControlFlow::Break(
                "`export * as name from ...` is not supported; re-export the default instead"
                    .to_owned(),
            );
        }
        node.visit_with(self)
    }

    fn visit_import_call(&mut self, node: &'ast ImportCall) -> ControlFlow<String> {
        let offset = self.lines.offset(self.source, node.span().start());
        let evaluation = matches!(node.phase(), ImportPhase::Evaluation);
        match offset {
            Some(offset) if evaluation && self.source[offset..].starts_with("import") => {
                self.insertions.push(Insertion {
                    offset,
                    opens: true,
                    text: self.import_call.clone(),
                    replaces: 0,
                });
            }
            _ => {
                return ControlFlow::Break(
                    "this form of `import()` is not supported; use `await \
                     import(\"mechanics:...\")` or a static import"
                        .to_owned(),
                );
            }
        }
        node.visit_with(self)
    }
}

impl InsertionFinder<'_> {
    /// `import * as ns from "mechanics:x"` becomes `import { __mechanics_namespace as ns } from
    /// ...`: the module offers a namespace object of its own under that export, because Boa 0.22
    /// never frees a real module namespace object (its cached bindings are hidden from the
    /// garbage collector), so each one would leak the job's whole realm. The `* as` before the
    /// binding is found by scanning back from the binding's exact position; should that fail
    /// (a comment in between), the import is refused rather than left to leak.
    fn namespace_import(&mut self, binding: &Identifier) -> ControlFlow<String> {
        let refused = || {
            ControlFlow::Break(
                "this namespace import could not be read; write it as `import * as name from \
                 \"mechanics:...\"` with nothing but spaces between `*`, `as` and the name"
                    .to_owned(),
            )
        };
        let span = binding.span();
        let (Some(start), Some(end)) = (
            self.lines.offset(self.source, span.start()),
            self.lines.offset(self.source, span.end()),
        ) else {
            return refused();
        };
        let before = self.source[..start].trim_end_matches(char::is_whitespace);
        let Some(before) = before.strip_suffix("as") else {
            return refused();
        };
        let spaced = before.len() > before.trim_end_matches(char::is_whitespace).len();
        let before = before.trim_end_matches(char::is_whitespace);
        let Some(star) = before.strip_suffix('*').map(str::len) else {
            return refused();
        };
        if !spaced {
            return refused();
        }
        self.insertions.push(Insertion {
            offset: star,
            opens: true,
            text: format!("{{ {} as ", modules::NAMESPACE_EXPORT),
            replaces: start - star,
        });
        self.insertions.push(Insertion {
            offset: end,
            opens: false,
            text: " }".to_owned(),
            replaces: 0,
        });
        ControlFlow::Continue(())
    }
}

/// The first and last source positions covered by an expression tree.
///
/// Boa's span of a call expression covers only its argument list, so the bounds are the minimum
/// start and maximum end over every sub-expression, which are the first and last tokens.
#[derive(Debug, Clone, Copy)]
struct ExpressionBounds {
    start: Position,
    end: Position,
}

impl ExpressionBounds {
    fn of(expression: &Expression) -> Option<Self> {
        let mut collector = BoundsCollector::default();
        let _ = collector.visit_expression(expression);
        collector.bounds
    }

    fn merge(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Self {
                start: min_position(a.start, b.start),
                end: max_position(a.end, b.end),
            }),
            (a, b) => a.or(b),
        }
    }
}

fn key(p: Position) -> (u32, u32) {
    (p.line_number(), p.column_number())
}

fn min_position(a: Position, b: Position) -> Position {
    if key(a) <= key(b) { a } else { b }
}

fn max_position(a: Position, b: Position) -> Position {
    if key(a) >= key(b) { a } else { b }
}

#[derive(Default)]
struct BoundsCollector {
    bounds: Option<ExpressionBounds>,
}

impl<'ast> Visitor<'ast> for BoundsCollector {
    type BreakTy = ();

    fn visit_expression(&mut self, node: &'ast Expression) -> ControlFlow<()> {
        let span: Span = node.span();
        self.bounds = ExpressionBounds::merge(
            self.bounds,
            Some(ExpressionBounds {
                start: span.start(),
                end: span.end(),
            }),
        );
        node.visit_with(self)
    }
}

/// The byte offset of the UTF-16 code unit index `units`, as Boa counts linear positions.
fn utf16_offset(source: &str, units: usize) -> Option<usize> {
    let mut seen = 0;
    for (offset, c) in source.char_indices() {
        if seen == units {
            return Some(offset);
        }
        seen += c.len_utf16();
    }
    (seen == units).then_some(source.len())
}

/// Maps Boa's (line, column) positions to byte offsets. Boa counts columns in code points and
/// ends lines at LF, CR, CRLF, LS and PS.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\r' => {
                    if let Some((_, '\n')) = chars.peek() {
                        chars.next();
                        starts.push(i + 2);
                    } else {
                        starts.push(i + 1);
                    }
                }
                '\n' => starts.push(i + 1),
                '\u{2028}' | '\u{2029}' => starts.push(i + c.len_utf8()),
                _ => {}
            }
        }
        Self { starts }
    }

    fn offset(&self, source: &str, position: Position) -> Option<usize> {
        let line = usize::try_from(position.line_number())
            .ok()?
            .checked_sub(1)?;
        let column = usize::try_from(position.column_number())
            .ok()?
            .checked_sub(1)?;
        let start = *self.starts.get(line)?;
        let rest = &source[start..];
        match rest.char_indices().nth(column) {
            Some((i, _)) => Some(start + i),
            None if rest.chars().count() == column => Some(source.len()),
            None => None,
        }
    }

    /// The line and column (from 1, in characters) of byte `offset` of `source`.
    fn position(&self, source: &str, offset: usize) -> (u32, u32) {
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts[line - 1];
        let column = source
            .get(start..offset)
            .map_or(0, |text| text.chars().count());
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECLARATIONS: &str = "\n;var __mechanics_loops_left_0000000000000000, \
                                __mechanics_calls_left_0000000000000000;\n";

    /// The instrumented module with each guard written as a bare `L()` (loops) or `C()` (calls)
    /// and the budgets' declaration line left out.
    fn rewrite(source: &str) -> String {
        let out = instrument(source, 0).expect("instruments").source;
        let out = out
            .strip_suffix(DECLARATIONS)
            .unwrap_or_else(|| panic!("budgets declared on a last line of their own: {out}"));
        out.replace(
            &guard(
                "__mechanics_loops_left_0000000000000000",
                "__mechanics_loop_0000000000000000",
            ),
            "L()",
        )
        .replace(
            &guard(
                "__mechanics_calls_left_0000000000000000",
                "__mechanics_call_0000000000000000",
            ),
            "C()",
        )
    }

    #[test]
    fn guards_count_down_a_module_scope_budget_and_call_the_tick_when_it_runs_out() {
        let out = instrument("function f() { while (x) ; }", 0).unwrap();
        assert_eq!(
            out.source,
            "function f() {(--__mechanics_calls_left_0000000000000000>0||\
             (__mechanics_calls_left_0000000000000000=__mechanics_call_0000000000000000())); \
             while ((--__mechanics_loops_left_0000000000000000>0||\
             (__mechanics_loops_left_0000000000000000=__mechanics_loop_0000000000000000())), x) ; }\
             \n;var __mechanics_loops_left_0000000000000000, \
             __mechanics_calls_left_0000000000000000;\n"
        );
        assert_eq!(out.loop_tick, "__mechanics_loop_0000000000000000");
        assert_eq!(out.call_tick, "__mechanics_call_0000000000000000");
        // A module ending in a line comment still gets its declarations on a line of their own.
        assert!(rewrite("export default 1 // done").ends_with("// done"));
    }

    #[test]
    fn every_function_kind_and_loop_gets_a_tick() {
        assert_eq!(
            rewrite("export default (a) => a"),
            "export default (a) => (C(), a)"
        );
        assert_eq!(
            rewrite("function f(x) { return 1 }"),
            "function f(x) {C(); return 1 }"
        );
        assert_eq!(
            rewrite("while (/re/g.test(s)) {}"),
            "while (L(), /re/g.test(s)) {}"
        );
        assert_eq!(rewrite("while (-x) {}"), "while (L(), -x) {}");
        assert_eq!(rewrite("do {} while ((a, b))"), "do {} while (L(), (a, b))");
        assert_eq!(
            rewrite("for (let i = 0; i < 3; i++) {}"),
            "for (let i = 0; L(), i < 3; i++) {}"
        );
        assert_eq!(rewrite("for (;; i++) {}"), "for (;; L(), i++) {}");
        assert_eq!(
            rewrite("for (;;) {} for (let i = 0 ; /* c */ ; ) { s = 'for (;;)'; r = /;;\\)/ }"),
            "for (;L();) {} for (let i = 0 ;L() /* c */ ; ) { s = 'for (;;)'; r = /;;\\)/ }"
        );
        assert_eq!(
            rewrite("const f = x => f(x, 1)(2);"),
            "const f = x => (C(), f(x, 1)(2));"
        );
        assert_eq!(
            rewrite("class A { m() { } get g() { return 1 } static { while (1) ; } }"),
            "class A { m() {C(); } get g() {C(); return 1 } static {C(); while (L(), 1) ; } }"
        );
        assert_eq!(
            rewrite("let s = 'é😀'; async function* g() { yield s }"),
            "let s = 'é😀'; async function* g() {C(); yield s }"
        );
        assert_eq!(
            rewrite("a\r\nwhile\u{2028}(b) ;"),
            "a\r\nwhile\u{2028}(L(), b) ;"
        );
    }

    #[test]
    fn namespace_imports_become_named_imports_of_the_namespace_export() {
        let ns = |source: &str| {
            let out = instrument(source, 0).unwrap().source;
            out.strip_suffix(DECLARATIONS).unwrap_or(&out).to_owned()
        };
        assert_eq!(
            ns("import * as b from 'mechanics:base64'"),
            "import { __mechanics_namespace as b } from 'mechanics:base64'"
        );
        assert_eq!(
            ns("import d,*  as\n b from 'x'"),
            "import d,{ __mechanics_namespace as b } from 'x'"
        );
        // A comment between `*`, `as` and the name defeats the scan: refused, never left to leak.
        assert!(matches!(
            instrument("import * /* c */ as b from 'x'", 0),
            Err(InstrumentError::Unsupported(_))
        ));
        assert!(matches!(
            instrument("export * as b from 'mechanics:base64'", 0),
            Err(InstrumentError::Unsupported(_))
        ));
        assert!(instrument("export * from 'mechanics:hex'", 0).is_ok());
    }

    #[test]
    fn dynamic_imports_become_calls_of_the_import_object() {
        let out = instrument("export default () => import('mechanics:hex')", 0).unwrap();
        assert!(
            out.source
                .contains("__mechanics_import_0000000000000000.import('mechanics:hex')"),
            "{}",
            out.source
        );
        assert_eq!(out.import_object, "__mechanics_import_0000000000000000");
        // Inside the argument, ticks are still placed.
        assert_eq!(
            rewrite("export default () => import((() => 'a')())"),
            "export default () => (C(), __mechanics_import_0000000000000000.import((() => (C(), 'a'))()))"
        );
    }

    #[test]
    fn async_arrow_default_exports_are_rewritten_only_when_boa_rejects_them() {
        let out = rewrite("export default async (a) => a\n");
        assert!(
            out.starts_with("const __mechanics_default_0000000000000000 = async (a) => (C(), a)"),
            "{out}"
        );
        assert!(out.ends_with(";export { __mechanics_default_0000000000000000 as default };\n"));
        let out = rewrite("// export default async (x)\nexport default async x => x");
        assert!(
            out.starts_with("// export default async (x)\nconst "),
            "{out}"
        );
        assert_eq!(
            rewrite("export default async function f() {}"),
            "export default async function f() {C();}"
        );
        assert!(matches!(
            instrument("export default async (a) => {", 0),
            Err(InstrumentError::Syntax(_))
        ));
    }

    #[test]
    fn a_syntax_error_is_placed_where_it_is_also_past_an_async_arrow_default_export() {
        let at = |source: &str| syntax_error(source).map(|e| (e.line, e.column));
        assert_eq!(at("export default async (a) => a\n"), None);
        assert_eq!(
            at("export default function () {\n  let x = ;\n}\n"),
            Some((2, 11))
        );
        // Boa stops at the arrow itself; the rewrite gets to the real mistake, and its position
        // is the one in the module as written (the rewritten line is longer).
        let broken = "export default async (arg) => { const a = ; };\n";
        assert_eq!(at(broken), Some((1, 43)));
        assert_eq!(
            at("// export default async (x)\nexport default async (arg) => {\n  return ];\n};\n"),
            Some((3, 10))
        );
        // An unfinished module ends where it ends, not in the appended export.
        assert_eq!(at("export default async (a) => {\n  f(a"), Some((2, 6)));
        let message = syntax_error(broken).unwrap().message;
        assert!(!message.contains("line"), "{message}");
        assert!(matches!(
            instrument(broken, 0),
            Err(InstrumentError::Syntax(m)) if m.ends_with("at line 1, col 43")
        ));
    }

    #[test]
    fn bare_for_scan_is_not_fooled_by_division_or_strings() {
        assert_eq!(
            rewrite("let x = 4 / 2; for (;;) { break } const t = \"for (a; ; )\";"),
            "let x = 4 / 2; for (;L();) { break } const t = \"for (a; ; )\";"
        );
    }

    #[test]
    fn tick_names_never_collide_with_the_source() {
        let source = "const __mechanics_loop_0000000000000000 = 1; while (x) ;";
        let out = instrument(source, 0).expect("instruments");
        assert_ne!(out.loop_tick, "__mechanics_loop_0000000000000000");
        assert!(out.source.contains(&format!("={}()", out.loop_tick)));
        // A source naming a budget gets other names for all of them: it cannot reach its budget.
        let source = "var __mechanics_loops_left_0000000000000000 = 1e9; while (x) ;";
        let out = instrument(source, 0).expect("instruments");
        assert_ne!(out.loop_tick, "__mechanics_loop_0000000000000000");
        let budget = out.loop_tick.replace("_loop_", "_loops_left_");
        assert!(
            out.source.contains(&format!("(--{budget}>0||")),
            "{}",
            out.source
        );
    }
}
