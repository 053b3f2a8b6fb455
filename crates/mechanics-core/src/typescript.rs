//! TypeScript worker modules: types removed before a module runs, positions mapped back after.
//!
//! The engine runs JavaScript only. A module written in TypeScript (`.ts`, `.mts`) is transpiled
//! where it enters Mechanics (the server's worker add, `mechanics run`), once, with oxc: the
//! TypeScript transform alone (annotations, interfaces and type-only imports removed; enums,
//! namespaces and parameter properties turned into JavaScript), no downleveling, no JSX. Nothing is
//! type-checked (that is the author's editor's business), but a syntax error is refused with file,
//! line and column, and so are decorators, whose runtime semantics the engine does not offer.
//!
//! The JavaScript comes with a [`SourceMap`]; a job carries it
//! ([`MechanicsJob::with_source_map`](crate::job::MechanicsJob::with_source_map)) so that positions
//! in its error message and console output name the TypeScript file and lines, not the generated
//! JavaScript the author never saw.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use oxc_allocator::Allocator;
use oxc_ast::ast::{Decorator, Program};
use oxc_ast_visit::Visit;
use oxc_codegen::{Codegen, CodegenOptions, CommentOptions};
use oxc_diagnostics::OxcDiagnostic;
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_sourcemap::{JSONSourceMap, Token};
use oxc_span::{GetSpan, SourceType};
use oxc_transformer::{EnvOptions, JsxOptions, Module, TransformOptions, Transformer};
use serde::{Deserialize, Serialize};

use crate::MechanicsError;
use crate::job::{JsonObject, fields_of};
use crate::stack_guard::{self, Unanswered};

/// Whether `file_name` names a TypeScript module (`.ts` or `.mts`, in any letter case): the
/// language of a worker's module follows its file name.
pub fn is_typescript(file_name: &str) -> bool {
    let lower = file_name.to_ascii_lowercase();
    lower.ends_with(".ts") || lower.ends_with(".mts")
}

/// A TypeScript module turned into JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transpiled {
    /// The ES module to run (ES2022 and later syntax is kept as written).
    pub javascript: String,
    /// Where each part of [`javascript`](Self::javascript) came from in the TypeScript source.
    pub source_map: SourceMap,
}

/// Why a worker module cannot run: a syntax error, or a construct Mechanics refuses (for a
/// TypeScript module; a JavaScript one is checked by [`crate::javascript::check`]). Shown as
/// `file:line:column: message`, the form editors and terminals make clickable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct TranspileError {
    file: String,
    line: u32,
    column: u32,
    message: String,
}

impl TranspileError {
    /// The error `message` at `line` and `column` (from 1) of `file`.
    pub(crate) fn new(file: &str, line: u32, column: u32, message: String) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    }

    fn at(file: &str, source: &str, offset: u32, message: String) -> Self {
        let (line, column) = line_and_column(source, offset);
        Self {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    }

    /// The file name given to [`transpile`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line of the error, from 1.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The column of the error, from 1, in characters.
    pub fn column(&self) -> u32 {
        self.column
    }

    /// What is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The message a module with a decorator gets: the engine has no decorator semantics, and
/// TypeScript's legacy ones would silently differ from the standard ones.
const DECORATORS_REFUSED: &str = "decorators are not supported in Mechanics workers; call the \
                                  decorating function yourself instead";

/// Transpiles the TypeScript module `source`; `file_name` names it in errors and in the source
/// map (`summarize.ts:3:7: ...`).
///
/// oxc's parser, semantic analysis, transform and printer recurse on the native stack with no
/// bound of their own, and a module is whatever its author (or an attacker with an API key) sent:
/// deep enough nesting would overflow any stack, and Rust aborts the whole process on that, the
/// coordinator's included. So the work runs on a thread of its own with a large stack under
/// the engine's stack guard ([`crate::stack_guard`]): an overflow parks that thread for good (its
/// stack pages released) and this module is refused, the process unharmed.
pub fn transpile(source: &str, file_name: &str) -> Result<Transpiled, TranspileError> {
    let refused = |message: &str| TranspileError {
        file: file_name.to_owned(),
        line: 1,
        column: 1,
        message: message.to_owned(),
    };
    let (source, file) = (source.to_owned(), file_name.to_owned());
    match stack_guard::on_guarded_thread("mechanics-transpile", move || {
        transpile_here(&source, &file)
    }) {
        Ok(result) => result,
        Err(Unanswered::NoThread) => {
            Err(refused("could not start a thread to transpile the module"))
        }
        Err(Unanswered::TooDeep) => Err(refused(
            "the module nests too deeply to be transpiled (expressions, blocks or types inside \
             each other tens of thousands of levels deep)",
        )),
        Err(Unanswered::Failed) => {
            Err(refused("the transpiler failed unexpectedly on this module"))
        }
    }
}

/// [`transpile`]'s work, on the calling thread.
fn transpile_here(source: &str, file_name: &str) -> Result<Transpiled, TranspileError> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts().with_module(true);
    let parsed = Parser::new(&allocator, source, source_type).parse();
    let error =
        |offset: u32, message: String| TranspileError::at(file_name, source, offset, message);
    if let Some(diagnostic) = parsed.diagnostics.errors().next() {
        return Err(error(offset_of(diagnostic), describe(diagnostic)));
    }
    let mut program = parsed.program;
    if let Some(decorator) = first_decorator(&program) {
        return Err(error(decorator, DECORATORS_REFUSED.to_owned()));
    }
    let semantic = SemanticBuilder::new()
        .with_check_syntax_error(true)
        .with_enum_eval(true)
        .build(&program);
    if let Some(diagnostic) = semantic.diagnostics.errors().next() {
        return Err(error(offset_of(diagnostic), describe(diagnostic)));
    }
    // No `env` transforms: the output keeps the syntax as written. `Module::Esm` refuses the
    // CommonJS forms (`import x = require(...)`, `export =`) a job could not run.
    let options = TransformOptions {
        jsx: JsxOptions::disable(),
        env: EnvOptions {
            module: Module::Esm,
            ..EnvOptions::default()
        },
        ..TransformOptions::default()
    };
    let transformed = Transformer::new(&allocator, Path::new(file_name), &options)
        .build_with_scoping(semantic.semantic.into_scoping(), &mut program);
    // The transform's warnings too: each says the output would not do what the TypeScript
    // means (`export =` in a module, a namespace exporting a `let`).
    if let Some(diagnostic) = transformed.diagnostics.first() {
        return Err(error(offset_of(diagnostic), describe(diagnostic)));
    }
    let generated = Codegen::new()
        .with_options(CodegenOptions {
            comments: CommentOptions::disabled(),
            source_map_path: Some(PathBuf::from(file_name)),
            ..CodegenOptions::default()
        })
        .build(&program);
    let tokens: Vec<Token> = generated
        .map
        .iter()
        .flat_map(|map| map.get_tokens())
        .filter(|token| token.get_source_id() == Some(0))
        .map(|token| {
            Token::new(
                token.get_dst_line(),
                token.get_dst_col(),
                token.get_src_line(),
                token.get_src_col(),
                Some(0),
                None,
            )
        })
        .collect();
    Ok(Transpiled {
        javascript: generated.code,
        source_map: SourceMap {
            source: file_name.to_owned(),
            mappings: encode(file_name, tokens),
        },
    })
}

/// The start of the diagnostic's primary label (or first label), as a byte offset.
fn offset_of(diagnostic: &OxcDiagnostic) -> u32 {
    let labels = &diagnostic.labels;
    labels
        .iter()
        .find(|label| label.primary())
        .or_else(|| labels.first())
        .map_or(0, |label| label.offset())
}

/// The diagnostic's message, with its help when it has one.
fn describe(diagnostic: &OxcDiagnostic) -> String {
    match &diagnostic.help {
        Some(help) => format!("{} ({help})", diagnostic.message),
        None => diagnostic.message.to_string(),
    }
}

/// The offset of the program's first decorator, if it has one.
fn first_decorator(program: &Program<'_>) -> Option<u32> {
    #[derive(Default)]
    struct Finder(Option<u32>);
    impl<'a> Visit<'a> for Finder {
        fn visit_decorator(&mut self, it: &Decorator<'a>) {
            let start = it.span().start;
            if self.0.is_none_or(|first| start < first) {
                self.0 = Some(start);
            }
        }
    }
    let mut finder = Finder::default();
    finder.visit_program(program);
    finder.0
}

/// The 1-based line and column (in characters) of the byte `offset` of `source`. Lines end at
/// LF, CR, CRLF, U+2028 and U+2029, as in ECMAScript.
fn line_and_column(source: &str, offset: u32) -> (u32, u32) {
    let offset = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(source.len());
    let mut line = 1u32;
    let mut column = 1u32;
    let mut chars = source.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if i >= offset {
            break;
        }
        let ends_line = match c {
            '\r' => !matches!(chars.peek(), Some((_, '\n'))),
            '\n' | '\u{2028}' | '\u{2029}' => true,
            _ => false,
        };
        if ends_line {
            line = line.saturating_add(1);
            column = 1;
        } else if c != '\r' {
            column = column.saturating_add(1);
        }
    }
    (line, column)
}

/// The Base64 VLQ `mappings` of `tokens`, whose one source is `source`.
fn encode(source: &str, tokens: Vec<Token>) -> String {
    oxc_sourcemap::SourceMap::new(
        None,
        Vec::new(),
        None,
        vec![Cow::Borrowed(source)],
        Vec::new(),
        tokens.into_boxed_slice(),
        None,
    )
    .to_json()
    .mappings
}

/// Where the parts of a transpiled module came from: the original file's name and, as in a
/// standard source map (version 3) with that one source, the Base64 VLQ `mappings` from
/// positions of the JavaScript to positions of the original (columns in UTF-16 code units).
///
/// JSON shape: `{ "source": string, "mappings": string }`. Both are validated when the map is
/// built or deserialized: a value that exists decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "JsonObject")]
pub struct SourceMap {
    source: String,
    mappings: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceMap {
    source: String,
    mappings: String,
}

impl TryFrom<JsonObject> for SourceMap {
    type Error = MechanicsError;

    fn try_from(object: JsonObject) -> Result<Self, Self::Error> {
        let raw: RawSourceMap = fields_of("source_map", object)?;
        SourceMap::new(raw.source, raw.mappings)
    }
}

/// A position in the original source: 1-based line and column (UTF-16 code units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalPosition {
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub column: u32,
}

impl SourceMap {
    /// A map from the generated JavaScript to `source` (the name shown in positions; not empty,
    /// no control characters), by the Base64 VLQ `mappings` of a version 3 source map with that
    /// one source and no names.
    pub fn new(
        source: impl Into<String>,
        mappings: impl Into<String>,
    ) -> Result<Self, MechanicsError> {
        let map = Self {
            source: source.into(),
            mappings: mappings.into(),
        };
        if map.source.is_empty() || map.source.chars().any(char::is_control) {
            return Err(MechanicsError::RuntimePool(format!(
                "source_map: `source` must be a non-empty file name free of control characters, \
                 got {:?}",
                map.source
            )));
        }
        map.tokens()?;
        Ok(map)
    }

    /// The original file's name, as positions show it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The Base64 VLQ mappings.
    pub fn mappings(&self) -> &str {
        &self.mappings
    }

    /// The decoded mappings, ordered by generated position.
    fn tokens(&self) -> Result<Box<[Token]>, MechanicsError> {
        let json = JSONSourceMap {
            version: 3,
            file: None,
            mappings: self.mappings.clone(),
            source_root: None,
            sources: vec![self.source.clone()],
            sources_content: None,
            names: Vec::new(),
            debug_id: None,
            x_google_ignore_list: None,
        };
        let map = oxc_sourcemap::SourceMap::from_json(json).map_err(|err| {
            MechanicsError::RuntimePool(format!("source_map: `mappings` does not decode: {err}"))
        })?;
        Ok(map.get_tokens().collect())
    }

    /// A lookup over the decoded mappings, for mapping many positions of one text.
    pub fn lookup(&self) -> SourceMapLookup<'_> {
        SourceMapLookup {
            map: self,
            // Validated when the map was built.
            tokens: self.tokens().unwrap_or_default(),
        }
    }
}

/// The decoded form of a [`SourceMap`], made by [`SourceMap::lookup`].
#[derive(Debug)]
pub struct SourceMapLookup<'a> {
    map: &'a SourceMap,
    tokens: Box<[Token]>,
}

impl SourceMapLookup<'_> {
    /// The original file's name.
    pub fn source(&self) -> &str {
        &self.map.source
    }

    /// Where the JavaScript at `line` and `column` (both from 1; the column in UTF-16 code units)
    /// came from: the last mapping at or before it on its line, else the line's first mapping,
    /// else the last mapping of an earlier line. `None` only when nothing before it is mapped.
    pub fn original_position(&self, line: u32, column: u32) -> Option<OriginalPosition> {
        let (line, column) = (line.checked_sub(1)?, column.saturating_sub(1));
        let on_line_start = self.tokens.partition_point(|t| t.get_dst_line() < line);
        let on_line_end = self.tokens.partition_point(|t| t.get_dst_line() <= line);
        let on_line = &self.tokens[on_line_start..on_line_end];
        let at_or_before = on_line.partition_point(|t| t.get_dst_col() <= column);
        let token = match at_or_before.checked_sub(1) {
            Some(index) => on_line[index],
            None => match on_line.first() {
                Some(first) => *first,
                None => *self.tokens[..on_line_start].last()?,
            },
        };
        Some(OriginalPosition {
            line: token.get_src_line() + 1,
            column: token.get_src_col() + 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_characters_and_every_line_terminator() {
        let source = "a\nbé c\r\nd\re\u{2028}f";
        let at = |needle: &str| {
            line_and_column(source, u32::try_from(source.find(needle).unwrap()).unwrap())
        };
        assert_eq!(at("a"), (1, 1));
        assert_eq!(at("c"), (2, 4));
        assert_eq!(at("d"), (3, 1));
        assert_eq!(at("e"), (4, 1));
        assert_eq!(at("f"), (5, 1));
        assert_eq!(line_and_column(source, u32::MAX), (5, 2));
    }

    #[test]
    fn typescript_is_told_by_the_file_name() {
        for name in ["w.ts", "dir/w.mts", "W.TS"] {
            assert!(is_typescript(name), "{name}");
        }
        for name in ["w.js", "w.mjs", "w.tsx", "ts", "w.ts.js"] {
            assert!(!is_typescript(name), "{name}");
        }
    }

    #[test]
    fn a_map_must_decode_and_name_its_source() {
        assert!(SourceMap::new("w.ts", "AAAA;AACA").is_ok());
        assert!(SourceMap::new("w.ts", "").is_ok());
        assert!(SourceMap::new("", "AAAA").is_err());
        assert!(SourceMap::new("w\n.ts", "AAAA").is_err());
        assert!(SourceMap::new("w.ts", "!").is_err());
        // A name index, but the map has no names.
        assert!(SourceMap::new("w.ts", "AAAAA").is_err());
    }

    #[test]
    fn lookups_take_the_nearest_mapping_before_on_the_line() {
        // Line 1: column 0 -> 1:0, column 4 -> 1:10. Line 2: nothing. Line 3: column 2 -> 5:3.
        let map = SourceMap::new("w.ts", "AAAA,IAAU;;EAIP").unwrap();
        let lookup = map.lookup();
        let at = |line, column| {
            lookup
                .original_position(line, column)
                .map(|p| (p.line, p.column))
        };
        assert_eq!(at(1, 1), Some((1, 1)));
        assert_eq!(at(1, 4), Some((1, 1)));
        assert_eq!(at(1, 5), Some((1, 11)));
        assert_eq!(at(1, 99), Some((1, 11)));
        assert_eq!(at(2, 1), Some((1, 11)));
        assert_eq!(at(3, 1), Some((5, 4)));
        assert_eq!(at(3, 3), Some((5, 4)));
        assert_eq!(at(0, 1), None);
    }
}
