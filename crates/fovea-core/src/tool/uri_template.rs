//! Matching URIs against RFC 6570 URI templates, the way MCP's resource templates name the
//! resources they serve (`file:///{path}`, `db://{table}/rows{?limit}`).
//!
//! MCP only ever expands templates the other way (an agent fills one in to read it), so a
//! node needs the inverse: which template a URI came from, and the values of its
//! variables. Expansion is not injective in general (`{a}{b}` splits `xy` two ways); this
//! picks the first split that matches, trying shorter values first, which is what a
//! provider's own router would do. Values are percent-decoded.
//!
//! Supported: every operator of levels 1–3 (`{var}`, `{+var}`, `{#var}`, `{.var}`,
//! `{/var}`, `{;var}`, `{?var}`, `{&var}`) with one or more variables; the level 4
//! modifiers (`:n`, `*`) are accepted and matched like the plain variable.

use std::collections::HashSet;

/// Most expressions one template may hold.
pub const MAX_EXPRESSIONS: usize = 16;

/// Most steps one match may take: a hostile URI against a template of many adjacent
/// expressions could otherwise cost (expressions × length²) steps. Past it, no match.
const MAX_STEPS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Expr { op: Option<char>, vars: Vec<String> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `template`; `None` when it is not a valid RFC 6570 template (unbalanced
    /// braces, empty or malformed variable names, more than [`MAX_EXPRESSIONS`]).
    pub fn parse(template: &str) -> Option<Template> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}')?;
                    let body = &rest[1..end];
                    let (op, list) = match body.chars().next()? {
                        c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(c), &body[1..]),
                        _ => (None, body),
                    };
                    let mut vars = Vec::new();
                    for spec in list.split(',') {
                        let name = spec.trim_end_matches('*');
                        let name = name.split_once(':').map_or(name, |(n, len)| {
                            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                                ""
                            } else {
                                n
                            }
                        });
                        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '%';
                        if name.is_empty() || !name.chars().all(valid) {
                            return None;
                        }
                        vars.push(name.to_owned());
                    }
                    parts.push(Part::Expr { op, vars });
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    if rest[..end].contains('}') {
                        return None;
                    }
                    parts.push(Part::Literal(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let expressions = parts.iter().filter(|p| matches!(p, Part::Expr { .. })).count();
        (expressions <= MAX_EXPRESSIONS).then_some(Template { parts })
    }

    /// Whether the template has no expressions (it names one URI).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The variables' values when `uri` is an expansion of this template, in template
    /// order; `None` when it is not.
    pub fn matches(&self, uri: &str) -> Option<Vec<(String, String)>> {
        let mut run = Run { failed: HashSet::new(), steps: 0 };
        let mut found = Vec::new();
        self.match_from(0, uri, 0, &mut run, &mut found).then_some(found)
    }

    /// Matches `parts[k..]` against `uri[i..]`, remembering failed (k, i) pairs so that
    /// consecutive expressions cost polynomial, not exponential, time.
    fn match_from(&self, k: usize, uri: &str, i: usize, run: &mut Run, found: &mut Vec<(String, String)>) -> bool {
        let Some(part) = self.parts.get(k) else { return i == uri.len() };
        run.steps += 1;
        if run.steps > MAX_STEPS || run.failed.contains(&(k, i)) {
            return false;
        }
        let rest = &uri[i..];
        let ok = match part {
            Part::Literal(lit) => {
                rest.starts_with(lit.as_str()) && self.match_from(k + 1, uri, i + lit.len(), run, found)
            }
            Part::Expr { op, vars } => {
                let (prefix, stops): (&str, &[char]) = match op {
                    None => ("", &['/', '?', '#', '&', '=']),
                    Some('+') => ("", &[]),
                    Some('#') => ("#", &[]),
                    Some('.') => (".", &['/', '?', '#']),
                    Some('/') => ("/", &['?', '#']),
                    Some(';') => (";", &['/', '?', '#']),
                    Some('?') => ("?", &['#']),
                    _ => ("&", &['#']),
                };
                // An expression whose variables are all undefined expands to nothing; only
                // where a prefix shows it is there can it be told apart from an empty value.
                let mark = found.len();
                if !prefix.is_empty() && self.match_from(k + 1, uri, i, run, found) {
                    return true;
                }
                found.truncate(mark);
                let Some(body) = rest.strip_prefix(prefix) else {
                    run.failed.insert((k, i));
                    return false;
                };
                let start = i + prefix.len();
                let limit = body.find(stops).unwrap_or(body.len());
                // Shorter values first; each end is a char boundary.
                for (end, _) in body[..limit].char_indices().skip(1).chain(std::iter::once((limit, ' '))) {
                    if let Some(values) = split_values(*op, vars, &body[..end]) {
                        found.extend(values);
                        if self.match_from(k + 1, uri, start + end, run, found) {
                            return true;
                        }
                        found.truncate(mark);
                    }
                }
                false
            }
        };
        if !ok {
            run.failed.insert((k, i));
        }
        ok
    }
}

/// One match's memory: (part, position) pairs known not to match, and the steps taken.
struct Run {
    failed: HashSet<(usize, usize)>,
    steps: usize,
}

/// The variables' values in one expression's expansion `text` (after its prefix).
fn split_values(op: Option<char>, vars: &[String], text: &str) -> Option<Vec<(String, String)>> {
    if text.is_empty() {
        return None;
    }
    let separator = match op {
        Some('.') => '.',
        Some('/') => '/',
        Some(';') => ';',
        Some('?' | '&') => '&',
        _ => ',',
    };
    let items: Vec<&str> = text.split(separator).collect();
    if items.len() > vars.len() {
        // More items than variables: an exploded or list value of the last variable.
        if separator != ',' || vars.len() != 1 {
            return None;
        }
    }
    let named = matches!(op, Some(';' | '?' | '&'));
    let mut out = Vec::with_capacity(items.len());
    if named {
        for item in items {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            if !vars.iter().any(|v| v == name) {
                return None;
            }
            out.push((name.to_owned(), decode(value)?));
        }
    } else if vars.len() == 1 {
        out.push((vars[0].clone(), decode(text)?));
    } else {
        for (name, value) in vars.iter().zip(items) {
            out.push((name.clone(), decode(value)?));
        }
    }
    Some(out)
}

/// Percent-decodes `s`; `None` for a malformed escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(template: &str, uri: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(uri)
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(p.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect())
    }

    #[test]
    fn simple_variables_stop_at_slashes() {
        assert_eq!(m("test://template/{id}/data", "test://template/123/data"), pairs(&[("id", "123")]));
        assert_eq!(m("test://template/{id}/data", "test://template/1/2/data"), None);
        assert_eq!(m("test://template/{id}/data", "test://template//data"), None);
        assert_eq!(m("file:///{name}", "file:///a%20b"), pairs(&[("name", "a b")]));
        assert_eq!(m("x://{a}-{b}", "x://1-2-3"), pairs(&[("a", "1"), ("b", "2-3")]));
        assert_eq!(m("x://{a,b}", "x://1,2"), pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!(m("x://fixed", "x://fixed"), pairs(&[]));
        assert_eq!(m("x://fixed", "x://fixedx"), None);
    }

    #[test]
    fn operators() {
        assert_eq!(m("file:///{+path}", "file:///a/b/c.txt"), pairs(&[("path", "a/b/c.txt")]));
        assert_eq!(m("db://t{/table,id}", "db://t/users/7"), pairs(&[("table", "users"), ("id", "7")]));
        assert_eq!(
            m("db://rows{?limit,offset}", "db://rows?limit=5&offset=10"),
            pairs(&[("limit", "5"), ("offset", "10")])
        );
        assert_eq!(m("db://rows{?limit}", "db://rows"), pairs(&[]));
        assert_eq!(m("db://rows{?limit}", "db://rows?other=1"), None);
        assert_eq!(m("doc://x{#section}", "doc://x#intro"), pairs(&[("section", "intro")]));
        assert_eq!(m("img://{name}{.ext}", "img://cat.png"), pairs(&[("name", "cat"), ("ext", "png")]));
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in ["x://{", "x://}", "x://{}", "x://{a b}", "x://{a:}", "x://{a:x}", "x://{{a}}"] {
            assert!(Template::parse(bad).is_none(), "{bad}");
        }
        assert!(Template::parse("x://{a:3}/{b*}").is_some());
        let many = format!("x://{}", "{a}".repeat(MAX_EXPRESSIONS + 1));
        assert!(Template::parse(&many).is_none());
        assert!(Template::parse("x://plain").unwrap().is_literal());
    }

    #[test]
    fn consecutive_expressions_stay_cheap() {
        let t = Template::parse(&format!("x://{}!", "{a}".repeat(MAX_EXPRESSIONS))).unwrap();
        assert!(t.matches(&format!("x://{}", "y".repeat(2000))).is_none());
    }

    proptest! {
        #[test]
        fn matching_never_panics(t in "[a-z:/{}+#.?&,=*%0-9]{0,40}", u in "\\PC{0,60}") {
            if let Some(t) = Template::parse(&t) {
                let _ = t.matches(&u);
            }
        }

        #[test]
        fn an_expansion_matches_back(id in "[a-zA-Z0-9_-]{1,20}", rest in "[a-z0-9/]{0,20}") {
            let t = Template::parse("res://items/{id}/{+rest}").unwrap();
            let uri = format!("res://items/{id}/{rest}");
            let got = t.matches(&uri);
            if rest.is_empty() {
                prop_assert!(got.is_none() || got.as_ref().is_some_and(|v| v[0].1 == id));
            } else {
                prop_assert_eq!(got, Some(vec![("id".to_owned(), id), ("rest".to_owned(), rest)]));
            }
        }
    }
}
