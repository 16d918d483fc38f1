//! A realm's catalog: every procedure with a descriptor, ordered by procedure name, paged
//! by cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::uri_template::Template;
use super::{tool_name, Descriptor, Kind};

/// A realm's catalog: procedure → the descriptors its providers registered (tools,
/// resources, resource templates, prompts: one kind per descriptor).
///
/// Each provider is identified by a `u64` key chosen by the caller (a node numbers its
/// registrations). The descriptor shown for a procedure is the one of its oldest live
/// registration, so a restarted replica with an edited description does not flip what
/// agents see while older replicas still serve the old one.
#[derive(Debug, Default)]
pub struct Catalog {
    tools: BTreeMap<String, Vec<(u64, Descriptor)>>,
    version: u64,
    /// Resources' URIs → the procedures showing a resource of that URI (usually one).
    by_uri: HashMap<String, BTreeSet<String>>,
    /// Procedures showing a resource template.
    templates: BTreeSet<String>,
    /// Changes by kind ([`Kind::index`]), so a change of prompts announces prompts only.
    kind_versions: [u64; 4],
}

impl Catalog {
    /// Adds a provider's descriptor. Returns whether what agents see changed.
    pub fn insert(&mut self, procedure: &str, key: u64, tool: Descriptor) -> bool {
        let entry = self.tools.entry(procedure.to_owned()).or_default();
        entry.push((key, tool));
        let changed = entry.len() == 1;
        if changed {
            self.version += 1;
            self.reindex(procedure, None);
        }
        changed
    }

    /// Removes a provider's descriptor. Returns whether what agents see changed.
    pub fn remove(&mut self, procedure: &str, key: u64) -> bool {
        let Some(entry) = self.tools.get_mut(procedure) else { return false };
        let Some(i) = entry.iter().position(|(k, _)| *k == key) else { return false };
        let old = entry.remove(i);
        let changed = match entry.first() {
            None => {
                self.tools.remove(procedure);
                true
            }
            Some((_, now)) => i == 0 && now != &old.1,
        };
        if changed {
            self.version += 1;
            self.reindex(procedure, Some(&old.1));
        }
        changed
    }

    /// Replaces every entry under `key` (one provider's, or one remote node's, set) with
    /// `entries`. Returns whether what agents see changed.
    pub fn replace_key(&mut self, key: u64, entries: Vec<(String, Descriptor)>) -> bool {
        let mut affected: Vec<String> =
            self.tools.iter().filter(|(_, v)| v.iter().any(|(k, _)| *k == key)).map(|(p, _)| p.clone()).collect();
        affected.extend(entries.iter().map(|(p, _)| p.clone()));
        affected.sort();
        affected.dedup();
        let before: Vec<Option<Descriptor>> = affected.iter().map(|p| self.get(p).cloned()).collect();
        for p in &affected {
            if let Some(v) = self.tools.get_mut(p) {
                v.retain(|(k, _)| *k != key);
                if v.is_empty() {
                    self.tools.remove(p);
                }
            }
        }
        for (p, t) in entries {
            self.tools.entry(p).or_default().push((key, t));
        }
        let mut changed = false;
        for (p, b) in affected.iter().zip(before) {
            if self.get(p) != b.as_ref() {
                changed = true;
                self.reindex(p, b.as_ref());
            }
        }
        if changed {
            self.version += 1;
        }
        changed
    }

    /// For each procedure, its first entry whose key satisfies `pick` (say, this node's
    /// own registrations), in procedure order.
    pub fn entries_where(&self, mut pick: impl FnMut(u64) -> bool) -> Vec<(&str, &Descriptor)> {
        self.tools.iter().filter_map(|(p, v)| v.iter().find(|(k, _)| pick(*k)).map(|(_, t)| (p.as_str(), t))).collect()
    }

    /// Keeps the URI and template indexes in step after what `procedure` shows changed
    /// from `before`.
    fn reindex(&mut self, procedure: &str, before: Option<&Descriptor>) {
        if let Some(b) = before {
            self.kind_versions[b.kind().index()] += 1;
        }
        if let Some(uri) = before.and_then(Descriptor::uri) {
            if let Some(set) = self.by_uri.get_mut(uri) {
                set.remove(procedure);
                if set.is_empty() {
                    self.by_uri.remove(uri);
                }
            }
        }
        self.templates.remove(procedure);
        let Some(now) = self.tools.get(procedure).and_then(|v| v.first()).map(|(_, d)| d) else { return };
        self.kind_versions[now.kind().index()] += 1;
        if let Some(uri) = now.uri() {
            self.by_uri.entry(uri.to_owned()).or_default().insert(procedure.to_owned());
        } else if now.kind() == Kind::ResourceTemplate {
            self.templates.insert(procedure.to_owned());
        }
    }

    /// The tool or prompt (`kind`) whose MCP name ([`tool_name`]) is `name`, among those
    /// `visible` admits.
    pub fn named(&self, kind: Kind, name: &str, mut visible: impl FnMut(&str) -> bool) -> Option<(&str, &Descriptor)> {
        let mut wanted = |p: &str, d: &Descriptor| d.kind() == kind && tool_name(p) == name && visible(p);
        // The common case: a reversible name, whose procedure is found directly.
        let direct = name.replace("__", ".");
        if let Some((p, d)) = self.tools.get_key_value(&direct).and_then(|(p, v)| Some((p, &v.first()?.1))) {
            if wanted(p, d) {
                return Some((p.as_str(), d));
            }
        }
        self.tools.iter().filter_map(|(p, v)| Some((p.as_str(), &v.first()?.1))).find(|(p, d)| wanted(p, d))
    }

    /// The resource of URI `uri` (the first in procedure order that `visible` admits).
    pub fn resource(&self, uri: &str, mut visible: impl FnMut(&str) -> bool) -> Option<(&str, &Descriptor)> {
        let procedure = self.by_uri.get(uri)?.iter().find(|p| visible(p))?;
        self.tools.get_key_value(procedure).and_then(|(p, v)| Some((p.as_str(), &v.first()?.1)))
    }

    /// The resource template whose `uriTemplate` is exactly `template`.
    pub fn template(&self, template: &str, mut visible: impl FnMut(&str) -> bool) -> Option<(&str, &Descriptor)> {
        self.templates
            .iter()
            .filter_map(|p| self.tools.get_key_value(p).and_then(|(p, v)| Some((p.as_str(), &v.first()?.1))))
            .find(|(p, d)| d.uri_template() == Some(template) && visible(p))
    }

    /// The first resource template (in procedure order, among those `visible` admits) that
    /// `uri` is an expansion of, and the values of its variables.
    #[allow(clippy::type_complexity)]
    pub fn template_for(
        &self,
        uri: &str,
        mut visible: impl FnMut(&str) -> bool,
    ) -> Option<(&str, &Descriptor, Vec<(String, String)>)> {
        self.templates.iter().find_map(|p| {
            let (p, v) = self.tools.get_key_value(p)?;
            let d = &v.first()?.1;
            let values = Template::parse(d.uri_template()?)?.matches(uri)?;
            visible(p).then_some((p.as_str(), d, values))
        })
    }

    /// Counts changes of each kind (indexed by [`Kind::index`]): equal counts mean equal
    /// lists of that kind.
    pub fn kind_versions(&self) -> [u64; 4] {
        self.kind_versions
    }

    /// Counts changes; equal versions mean an equal catalog.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of entries (procedures with at least one descriptor).
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether the catalog is empty.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The descriptor shown for `procedure`.
    pub fn get(&self, procedure: &str) -> Option<&Descriptor> {
        self.tools.get(procedure).and_then(|v| v.first()).map(|(_, t)| t)
    }

    /// Entries after `cursor` (all when empty), in procedure order, for which `visible`
    /// holds: at most `max_items`, and no more than `max_bytes` of descriptors (but always
    /// one, if any is left). Returns them and the cursor of the next page (`None` at the
    /// end).
    pub fn page<'a>(
        &'a self,
        cursor: &str,
        max_items: usize,
        max_bytes: usize,
        mut visible: impl FnMut(&str, &Descriptor) -> bool,
    ) -> (Vec<(&'a str, &'a Descriptor)>, Option<String>) {
        use std::ops::Bound;
        let start = if cursor.is_empty() { Bound::Unbounded } else { Bound::Excluded(cursor) };
        let mut out: Vec<(&'a str, &'a Descriptor)> = Vec::new();
        let mut bytes = 0;
        for (name, entries) in self.tools.range::<str, _>((start, Bound::Unbounded)) {
            let Some((_, tool)) = entries.first() else { continue };
            if !visible(name, tool) {
                continue;
            }
            bytes += name.len() + tool.encoded().len();
            if !out.is_empty() && (out.len() >= max_items || bytes > max_bytes) {
                let next = out.last().map(|(n, _)| (*n).to_owned());
                return (out, next);
            }
            out.push((name.as_str(), tool));
        }
        (out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: &str) -> Descriptor {
        Descriptor::parse(serde_json::json!({ "description": d }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn catalog_oldest_wins_and_pages() {
        let mut c = Catalog::default();
        assert!(c.insert("b.x", 1, desc("one")));
        assert!(!c.insert("b.x", 2, desc("two")));
        assert_eq!(c.get("b.x").unwrap().description(), "one");
        // The oldest leaves: the next one shows, which is a change.
        assert!(c.remove("b.x", 1));
        assert_eq!(c.get("b.x").unwrap().description(), "two");
        assert!(!c.remove("b.x", 1));
        for p in ["a", "c", "d", "e"] {
            c.insert(p, 9, desc(p));
        }
        let (page, next) = c.page("", 2, usize::MAX, |_, _| true);
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), ["a", "b.x"]);
        let (page, next) = c.page(&next.unwrap(), 2, usize::MAX, |n, _| n != "d");
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), ["c", "e"]);
        assert_eq!(next, None);
        // A byte budget smaller than one descriptor still yields one per page.
        let (page, next) = c.page("", 10, 1, |_, _| true);
        assert_eq!((page.len(), next.as_deref()), (1, Some("a")));
        // A remote node's set replaces as a whole.
        let remote = 1 << 63;
        assert!(c.replace_key(remote, vec![("r.one".into(), desc("r1")), ("a".into(), desc("shadowed"))]));
        assert_eq!(c.get("a").unwrap().description(), "a", "the older local entry still shows");
        assert_eq!(c.entries_where(|k| k < remote).len(), 5);
        assert!(!c.replace_key(remote, vec![("r.one".into(), desc("r1")), ("a".into(), desc("shadowed"))]));
        assert!(c.replace_key(remote, vec![]));
        assert!(c.get("r.one").is_none());
        let v = c.version();
        assert!(c.remove("b.x", 2));
        assert!(c.version() > v);
        assert!(c.get("b.x").is_none());
    }

    #[test]
    fn resources_templates_and_prompts_are_found_by_uri_and_name() {
        let d = |v: serde_json::Value| Descriptor::parse(v.to_string().as_bytes()).unwrap();
        let mut c = Catalog::default();
        c.insert("docs.readme", 1, d(serde_json::json!({"kind": "resource", "uri": "file:///README.md"})));
        c.insert(
            "docs.page",
            1,
            d(serde_json::json!({"kind": "resourceTemplate", "uriTemplate": "file:///pages/{n}"})),
        );
        c.insert("p.hello", 1, d(serde_json::json!({"kind": "prompt", "description": "greets"})));
        c.insert("t.hello", 1, desc("a tool"));
        assert_eq!(c.resource("file:///README.md", |_| true).map(|(p, _)| p), Some("docs.readme"));
        assert_eq!(c.resource("file:///README.md", |p| p != "docs.readme"), None, "invisible: not found");
        let (p, _, vars) = c.template_for("file:///pages/7", |_| true).unwrap();
        assert_eq!((p, vars), ("docs.page", vec![("n".to_owned(), "7".to_owned())]));
        assert!(c.template_for("file:///other/7", |_| true).is_none());
        assert_eq!(c.template("file:///pages/{n}", |_| true).map(|(p, _)| p), Some("docs.page"));
        assert_eq!(c.named(Kind::Prompt, "p__hello", |_| true).map(|(p, _)| p), Some("p.hello"));
        assert!(c.named(Kind::Tool, "p__hello", |_| true).is_none(), "a prompt is not a tool");
        assert_eq!(c.named(Kind::Tool, "t__hello", |_| true).map(|(p, _)| p), Some("t.hello"));
        let prompts = c.page("", 10, usize::MAX, |_, d| d.kind() == Kind::Prompt).0;
        assert_eq!(prompts.iter().map(|p| p.0).collect::<Vec<_>>(), ["p.hello"]);
        // The indexes follow what is shown: a second provider of another URI does not move it,
        // the first one leaving does.
        c.insert("docs.readme", 2, d(serde_json::json!({"kind": "resource", "uri": "file:///NEW.md"})));
        assert!(c.resource("file:///NEW.md", |_| true).is_none());
        c.remove("docs.readme", 1);
        assert!(c.resource("file:///README.md", |_| true).is_none());
        assert_eq!(c.resource("file:///NEW.md", |_| true).map(|(p, _)| p), Some("docs.readme"));
        let remote = 1 << 63;
        c.replace_key(remote, vec![("r.x".into(), d(serde_json::json!({"kind": "resource", "uri": "r://x"})))]);
        assert_eq!(c.resource("r://x", |_| true).map(|(p, _)| p), Some("r.x"));
        c.replace_key(remote, vec![]);
        assert!(c.resource("r://x", |_| true).is_none());
        c.remove("docs.page", 1);
        assert!(c.template_for("file:///pages/7", |_| true).is_none());
    }
}
