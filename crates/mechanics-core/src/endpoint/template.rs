//! URL templates: `https://api.example.com/users/{user_id}/messages`.
//!
//! Placeholders may only stand in the path, and each value is percent-encoded as (part of) a
//! single path segment: a value can never change the scheme, the host, the port, the number of
//! path segments, or add a query or a fragment. `.` and `..` segments made from a value are
//! refused, because URL parsers resolve them (even percent-encoded) and would climb the path.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use super::config::check_slot_name;

/// Everything but RFC 3986's unreserved characters is encoded, `/`, `?`, `#` and `%` included.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Slot(String),
}

/// A parsed URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlTemplate {
    pieces: Vec<Piece>,
}

impl UrlTemplate {
    /// Parses and checks `template`: an absolute `http` or `https` URL without query or fragment,
    /// whose `{name}` placeholders are unique, validly named, and all in the path.
    pub(crate) fn parse(template: &str) -> Result<Self, String> {
        if template.contains(['?', '#']) {
            return Err(
                "`url_template` must not contain a query or a fragment: use `query_specs` for \
                 query parameters"
                    .to_owned(),
            );
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err("`url_template` has a `}` without a matching `{`".to_owned());
                }
                Some(at) => {
                    if at > 0 {
                        pieces.push(Piece::Literal(rest[..at].to_owned()));
                    }
                    let after = &rest[at + 1..];
                    let end = after.find('}').ok_or_else(|| {
                        "`url_template` has a `{` without a matching `}`".to_owned()
                    })?;
                    let name = &after[..end];
                    check_slot_name(name).map_err(|m| format!("`url_template`: {m}"))?;
                    if pieces.contains(&Piece::Slot(name.to_owned())) {
                        return Err(format!(
                            "`url_template` uses the placeholder `{{{name}}}` twice; placeholder \
                             names must be unique"
                        ));
                    }
                    pieces.push(Piece::Slot(name.to_owned()));
                    rest = &after[end + 1..];
                }
            }
        }
        let template = Self { pieces };
        template.check_shape()?;
        Ok(template)
    }

    /// The placeholder names, in template order.
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Slot(name) => Some(name.as_str()),
            Piece::Literal(_) => None,
        })
    }

    fn check_shape(&self) -> Result<(), String> {
        // The authority is literal text between `scheme://` and the first `/`: checking the text
        // (not only the parsed URL) matters, because URL parsers also accept `http:/{x}/` and
        // `http:///{x}/`, where a placeholder would become the host.
        let Some(Piece::Literal(head)) = self.pieces.first() else {
            return Err("`url_template` must start with http:// or https://".to_owned());
        };
        let lower = head.to_ascii_lowercase();
        let after_scheme = ["http://", "https://"]
            .iter()
            .find(|scheme| lower.starts_with(**scheme))
            .map(|scheme| &head[scheme.len()..])
            .ok_or_else(|| "`url_template` must start with http:// or https://".to_owned())?;
        if self.pieces.len() > 1 && !after_scheme.contains('/') {
            let name = self.placeholders().next().unwrap_or_default();
            return Err(format!(
                "`url_template`: the placeholder `{{{name}}}` is not in the path; placeholders \
                 may not change the scheme, host or port"
            ));
        }
        if after_scheme.starts_with('/') || after_scheme.is_empty() {
            return Err("`url_template` has no host after the scheme".to_owned());
        }
        if self
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Literal(l) if l.contains('\\')))
        {
            return Err("`url_template` must not contain a backslash".to_owned());
        }
        // With every slot filled by a plain letter, the template must be a valid absolute URL
        // whose path the parser keeps as written (nothing to normalise in the literal parts).
        let sample = self.render_raw(|_| "x".to_owned());
        let url = Url::parse(&sample)
            .map_err(|err| format!("`url_template` is not a valid absolute URL: {err}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err("`url_template` has no host".to_owned());
        }
        if url.path() != path_of(&sample) {
            return Err(format!(
                "`url_template`'s path is not in normal form (the URL parser turns it into {:?}): \
                 write it that way",
                url.path()
            ));
        }
        Ok(())
    }

    fn render_raw(&self, mut value_of: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => out.push_str(literal),
                Piece::Slot(name) => out.push_str(&value_of(name)),
            }
        }
        out
    }

    /// The URL with every placeholder replaced by its percent-encoded value, and `query` appended
    /// form-encoded. `values` holds a value for every placeholder.
    pub(crate) fn render(
        &self,
        values: &BTreeMap<String, String>,
        query: &[(String, String)],
    ) -> Result<Url, String> {
        let rendered = self.render_raw(|name| {
            utf8_percent_encode(values.get(name).map_or("", String::as_str), SEGMENT).to_string()
        });
        // A segment that a value filled with dots only would be resolved as `.` or `..`.
        let mut segment_has_slot = false;
        let mut segment = String::new();
        let check = |segment: &str, has_slot: bool| {
            if has_slot && (segment == "." || segment == "..") {
                Err(format!(
                    "the URL parameters would make a `{segment}` path segment, which is not allowed"
                ))
            } else {
                Ok(())
            }
        };
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => {
                    for ch in literal.chars() {
                        if ch == '/' {
                            check(&segment, segment_has_slot)?;
                            segment.clear();
                            segment_has_slot = false;
                        } else {
                            segment.push(ch);
                        }
                    }
                }
                Piece::Slot(name) => {
                    segment_has_slot = true;
                    segment.push_str(values.get(name).map_or("", String::as_str));
                }
            }
        }
        check(&segment, segment_has_slot)?;
        let mut url =
            Url::parse(&rendered).map_err(|err| format!("the URL does not parse: {err}"))?;
        // The net under the checks above: if the parser changed the path (a `%2e` in the template
        // next to a value of `.`, say), a value changed the path's structure.
        if url.path() != path_of(&rendered) {
            return Err(
                "the URL parameters would change the URL's path structure, which is not allowed"
                    .to_owned(),
            );
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }
}

/// The path of an absolute `http(s)://authority/path` text, as written (`/` when empty).
fn path_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(url, |at| &url[at + 3..]);
    match after_scheme.find('/') {
        Some(at) => &after_scheme[at..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
        let values = values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        UrlTemplate::parse(template)?
            .render(&values, &[])
            .map(String::from)
    }

    #[test]
    fn values_stay_inside_their_path_segment() {
        let t = "http://127.0.0.1:1/users/{id}/messages";
        for (value, expected) in [
            ("u-1", "http://127.0.0.1:1/users/u-1/messages"),
            ("../admin", "http://127.0.0.1:1/users/..%2Fadmin/messages"),
            (
                "a/b?x=1#f",
                "http://127.0.0.1:1/users/a%2Fb%3Fx%3D1%23f/messages",
            ),
            ("%2e%2e", "http://127.0.0.1:1/users/%252e%252e/messages"),
            ("@evil.com", "http://127.0.0.1:1/users/%40evil.com/messages"),
            ("é ", "http://127.0.0.1:1/users/%C3%A9%20/messages"),
        ] {
            assert_eq!(render(t, &[("id", value)]).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn a_value_completing_an_encoded_dot_segment_is_refused() {
        for (template, value) in [("http://h/a/%2e{x}/b", "."), ("http://h/a/{x}%2E/b", ".")] {
            let err = render(template, &[("x", value)]).unwrap_err();
            assert!(err.contains("path structure"), "{template}: {err}");
        }
        assert_eq!(
            render("http://h/a/%2e{x}/b", &[("x", "y")]).unwrap(),
            "http://h/a/%2ey/b"
        );
    }

    #[test]
    fn dot_segments_from_values_are_refused() {
        let t = "http://127.0.0.1:1/users/{id}";
        assert!(render(t, &[("id", "..")]).unwrap_err().contains("`..`"));
        assert!(render(t, &[("id", ".")]).unwrap_err().contains("`.`"));
        // Part of a longer segment, dots are harmless.
        assert_eq!(
            render("http://h/u-{id}", &[("id", "..")]).unwrap(),
            "http://h/u-.."
        );
    }

    #[test]
    fn placeholders_outside_the_path_are_refused() {
        for template in [
            "http://{host}/x",
            "http://api.{tenant}.com/x",
            "http://h:{port}/x",
            "{scheme}://h/x",
            "http:/{x}/p",
            "http:///{x}/p",
            "http://user:{pw}@h/x",
        ] {
            let err = UrlTemplate::parse(template).unwrap_err();
            assert!(
                err.contains("not in the path")
                    || err.contains("must start with http")
                    || err.contains("no host"),
                "{template}: {err}"
            );
        }
    }

    #[test]
    fn malformed_templates_are_refused() {
        for (template, needle) in [
            ("http://h/x?y=1", "query"),
            ("http://h/x#f", "fragment"),
            ("http://h/{a", "without a matching `}`"),
            ("http://h/a}", "without a matching `{`"),
            ("http://h/{a}/{a}", "twice"),
            ("http://h/{a-b}", "ASCII letters"),
            ("http://h/{}", "ASCII letters"),
            ("ftp://h/x", "http:// or https://"),
            ("/relative/{a}", "http:// or https://"),
            ("http://h/a\\{x}/b", "backslash"),
            ("http://h/a/./{x}", "normal form"),
            ("http://h/a b/{x}", "normal form"),
        ] {
            let err = UrlTemplate::parse(template).unwrap_err();
            assert!(err.contains(needle), "{template}: {err}");
        }
    }
}
