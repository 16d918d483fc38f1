//! A realm's catalog: every procedure with a descriptor, ordered by procedure name, paged
//! by cursor.

use std::collections::BTreeMap;

use super::Descriptor;

/// A realm's tools: procedure → the descriptors its providers registered.
///
/// Each provider is identified by a `u64` key chosen by the caller (a node numbers its
/// registrations). The descriptor shown for a procedure is the one of its oldest live
/// registration, so a restarted replica with an edited description does not flip what
/// agents see while older replicas still serve the old one.
#[derive(Debug, Default)]
pub struct Catalog {
    tools: BTreeMap<String, Vec<(u64, Descriptor)>>,
    version: u64,
}

impl Catalog {
    /// Adds a provider's descriptor. Returns whether what agents see changed.
    pub fn insert(&mut self, procedure: &str, key: u64, tool: Descriptor) -> bool {
        let entry = self.tools.entry(procedure.to_owned()).or_default();
        entry.push((key, tool));
        let changed = entry.len() == 1;
        if changed {
            self.version += 1;
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
        let changed = affected.iter().zip(before).any(|(p, b)| self.get(p) != b.as_ref());
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

    /// Counts changes; equal versions mean an equal catalog.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of tools (procedures with at least one descriptor).
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

    /// Tools after `cursor` (all when empty), in procedure order, for which `visible`
    /// holds: at most `max_items`, and no more than `max_bytes` of descriptors (but always
    /// one, if any is left). Returns them and the cursor of the next page (`None` at the
    /// end).
    pub fn page<'a>(
        &'a self,
        cursor: &str,
        max_items: usize,
        max_bytes: usize,
        mut visible: impl FnMut(&str) -> bool,
    ) -> (Vec<(&'a str, &'a Descriptor)>, Option<String>) {
        use std::ops::Bound;
        let start = if cursor.is_empty() { Bound::Unbounded } else { Bound::Excluded(cursor) };
        let mut out: Vec<(&'a str, &'a Descriptor)> = Vec::new();
        let mut bytes = 0;
        for (name, entries) in self.tools.range::<str, _>((start, Bound::Unbounded)) {
            let Some((_, tool)) = entries.first() else { continue };
            if !visible(name) {
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
        let (page, next) = c.page("", 2, usize::MAX, |_| true);
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), ["a", "b.x"]);
        let (page, next) = c.page(&next.unwrap(), 2, usize::MAX, |n| n != "d");
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), ["c", "e"]);
        assert_eq!(next, None);
        // A byte budget smaller than one descriptor still yields one per page.
        let (page, next) = c.page("", 10, 1, |_| true);
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
}
