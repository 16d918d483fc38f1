//! Topics and patterns: parsed once at the edge, then carried as validated newtypes.
//!
//! A **topic** is a non-empty sequence of dot-separated, non-empty segments
//! (`sensors.kitchen.temp`). A **pattern** is a topic whose segments may also be `*`
//! (exactly one segment) or, as the last segment only, `>` (one or more segments).
//!
//! Segments are UTF-8 without whitespace or control characters, and the characters `*`
//! and `>` appear only as whole wildcard segments of a pattern: `a*b` is rejected rather
//! than silently treated as a literal, because a user who typed it meant a wildcard.
//!
//! Both types hold their text as [`Bytes`], so a topic decoded from a frame is a slice of
//! the read buffer and is never copied on the way to a subscriber.

use std::fmt;

use bytes::Bytes;

use crate::limits::{MAX_TOPIC_DEPTH, MAX_TOPIC_LEN};

/// What is wrong with a topic or pattern. The `Display` text names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The string is empty.
    #[error("is empty: a topic needs at least one segment, e.g. `sensors.temp`")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// More than [`MAX_TOPIC_DEPTH`] segments.
    #[error("has more than {max} segments")]
    TooDeep { max: usize },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("has an empty segment at position {position} (leading, trailing or double dot)")]
    EmptySegment { position: usize },
    /// Whitespace or a control character.
    #[error("contains {ch:?} in segment {position}; whitespace and control characters are not allowed")]
    InvalidChar { ch: char, position: usize },
    /// A wildcard in a topic that is published to.
    #[error("contains the wildcard `{segment}`; wildcards are only allowed when subscribing")]
    WildcardInTopic { segment: String },
    /// `*` or `>` inside a longer segment, such as `a*`.
    #[error("segment {position} `{segment}` mixes a wildcard with other characters; `*` and `>` must stand alone")]
    PartialWildcard { segment: String, position: usize },
    /// `>` somewhere other than the last segment.
    #[error("has `>` at segment {position}; `>` may only be the last segment")]
    GtNotLast { position: usize },
    /// Not valid UTF-8.
    #[error("is not valid UTF-8")]
    NotUtf8,
}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A literal segment, matched byte for byte.
    Literal(&'a [u8]),
    /// `*`: exactly one segment.
    Star,
    /// `>`: one or more trailing segments (always the last segment).
    Gt,
}

/// Defines a validated name type over `Bytes`: construction through `validate`, text
/// access, and the formatting traits. The three name kinds differ only in what they allow
/// and in the methods each adds below.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, wildcards: $wild:expr, what: $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Bytes);

        impl $name {
            #[doc = concat!("Validates `raw` as a ", $what, " without copying it.")]
            ///
            /// # Errors
            /// [`TopicError`] naming the first problem found.
            pub fn from_bytes(raw: Bytes) -> Result<Self, TopicError> {
                validate(&raw, $wild)?;
                Ok($name(raw))
            }

            #[doc = concat!("As [`", stringify!($name), "::from_bytes`], without the check when `raw` holds the same")]
            /// bytes as `last`, the name this returned before (which passed it): a stream of
            /// messages mostly repeats one name, and comparing is cheaper than checking.
            /// `last` becomes the name returned.
            ///
            /// # Errors
            /// [`TopicError`] naming the first problem found; `last` is then unchanged.
            pub fn from_bytes_like(raw: Bytes, last: &mut Option<Self>) -> Result<Self, TopicError> {
                match last {
                    Some(known) if known.0 == raw => Ok($name(raw)),
                    _ => {
                        let name = Self::from_bytes(raw)?;
                        *last = Some(name.clone());
                        Ok(name)
                    }
                }
            }

            /// Validates and copies a string.
            ///
            /// # Errors
            /// [`TopicError`] naming the first problem found.
            pub fn new(s: &str) -> Result<Self, TopicError> {
                Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
            }

            /// The name's bytes (valid UTF-8).
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The name's buffer, to put in a frame by reference (a clone is a refcount).
            pub fn to_bytes(&self) -> Bytes {
                self.0.clone()
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                // Invariant: validated as UTF-8 at construction, so the fallback is unreachable.
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }
    };
}

name_type!(
    /// A validated topic: no wildcards. Cheap to clone (a refcounted slice).
    Topic, wildcards: false, what: "topic"
);
name_type!(
    /// A validated subscription pattern. Cheap to clone.
    Pattern, wildcards: true, what: "pattern"
);
name_type!(
    /// A validated procedure name (`math.add`): the same rules as a topic, no wildcards.
    Procedure, wildcards: false, what: "procedure name"
);

impl Topic {
    /// Checks that `s` is a valid topic without building one (no allocation): for callers
    /// that only need the bytes afterwards, such as a client encoding a publish.
    ///
    /// # Errors
    /// [`TopicError`] naming the first problem found.
    pub fn check(s: &str) -> Result<(), TopicError> {
        validate(s.as_bytes(), false)
    }

    /// The topic as a refcounted buffer.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// The topic's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'.')
    }
}

impl Procedure {
    /// Checks that `s` is a valid procedure name without building one (no allocation): for
    /// a client encoding a call.
    ///
    /// # Errors
    /// [`TopicError`] naming the first problem found.
    pub fn check(s: &str) -> Result<(), TopicError> {
        validate(s.as_bytes(), false)
    }
}

impl Pattern {
    /// The pattern's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.0.split(|b| *b == b'.').map(|s| match s {
            b"*" => Segment::Star,
            b">" => Segment::Gt,
            lit => Segment::Literal(lit),
        })
    }

    /// Whether the pattern has no wildcard (and so matches exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.segments().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether every topic that `other` matches is also matched by `self`: the check that a
    /// subscription to `other` stays within a permission to subscribe to `self`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut mine = self.segments();
        let mut theirs = other.segments();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                // `>` takes one or more segments: whatever `other` has left (at least one).
                (Some(Segment::Gt), Some(_)) => return true,
                (Some(Segment::Star), Some(Segment::Star | Segment::Literal(_))) => {}
                (Some(Segment::Literal(a)), Some(Segment::Literal(b))) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether `topic` matches this pattern. A direct, trie-free check, used for tests and
    /// for one-off checks such as permissions; routing uses [`crate::trie::SubTrie`].
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_name(topic.as_bytes())
    }

    /// Whether a valid topic or procedure name, given as bytes, matches this pattern.
    pub fn matches_name(&self, name: &[u8]) -> bool {
        let mut t = name.split(|b| *b == b'.');
        for seg in self.segments() {
            match seg {
                Segment::Gt => return t.next().is_some(),
                Segment::Star => {
                    if t.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if t.next() != Some(l) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }
}

fn validate(raw: &[u8], wildcards: bool) -> Result<(), TopicError> {
    // Every publish validates its topic, at both ends: an ASCII topic is checked in one
    // pass over its bytes. Anything else, and every invalid name (to report the first
    // error in the documented order), takes the full path below.
    if raw.len() <= MAX_TOPIC_LEN && valid_ascii(raw, wildcards) {
        return Ok(());
    }
    validate_slow(raw, wildcards)
}

/// Whether `raw` is a valid ASCII name. `false` for non-ASCII bytes too: the caller then
/// applies the full Unicode rules.
fn valid_ascii(raw: &[u8], wildcards: bool) -> bool {
    let (mut depth, mut seg_len, mut wild_in_seg, mut gt_seen) = (1usize, 0usize, 0usize, false);
    for &b in raw {
        match b {
            b'.' => {
                // A segment ended: non-empty, and a wildcard only as the whole segment.
                if seg_len == 0 || (wild_in_seg > 0 && seg_len != 1) || gt_seen {
                    return false;
                }
                depth += 1;
                seg_len = 0;
                wild_in_seg = 0;
                continue;
            }
            b'*' | b'>' => {
                if !wildcards {
                    return false;
                }
                wild_in_seg += 1;
                if b == b'>' {
                    gt_seen = true;
                }
            }
            // ASCII control characters and whitespace; non-ASCII goes the slow way.
            0..=b' ' | 0x7f..=0xff => return false,
            _ => {}
        }
        seg_len += 1;
    }
    seg_len > 0 && (wild_in_seg == 0 || seg_len == 1) && depth <= MAX_TOPIC_DEPTH
}

fn validate_slow(raw: &[u8], wildcards: bool) -> Result<(), TopicError> {
    if raw.is_empty() {
        return Err(TopicError::Empty);
    }
    if raw.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: raw.len(), max: MAX_TOPIC_LEN });
    }
    let text = std::str::from_utf8(raw).map_err(|_| TopicError::NotUtf8)?;
    let count = text.split('.').count();
    if count > MAX_TOPIC_DEPTH {
        return Err(TopicError::TooDeep { max: MAX_TOPIC_DEPTH });
    }
    for (position, seg) in text.split('.').enumerate() {
        if seg.is_empty() {
            return Err(TopicError::EmptySegment { position });
        }
        if let Some(ch) = seg.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(TopicError::InvalidChar { ch, position });
        }
        let wild = seg == "*" || seg == ">";
        if wild && !wildcards {
            return Err(TopicError::WildcardInTopic { segment: seg.to_owned() });
        }
        if !wild && seg.contains(['*', '>']) {
            return Err(TopicError::PartialWildcard { segment: seg.to_owned(), position });
        }
        if seg == ">" && position + 1 != count {
            return Err(TopicError::GtNotLast { position });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass ASCII check agrees with the full rules on every input.
        #[test]
        fn ascii_fast_path_agrees(raw in "[a-c.*> \\t\u{7f}\u{e9}]{0,12}", wildcards: bool) {
            let slow = validate_slow(raw.as_bytes(), wildcards).is_ok();
            prop_assert_eq!(validate(raw.as_bytes(), wildcards).is_ok(), slow);
            if valid_ascii(raw.as_bytes(), wildcards) {
                prop_assert!(slow);
            }
        }

        /// Skipping the check for a name equal to a known one accepts exactly what the
        /// check accepts: the known name passed it, and anything else is still checked.
        #[test]
        fn from_bytes_like_agrees_with_from_bytes(
            raw in "[a-c.* ]{0,8}",
            known in "[a-c]{1,3}(\\.[a-c]{1,3}){0,2}",
            same: bool,
        ) {
            // Half the time the very name known, the equal path.
            let raw = if same { known.clone() } else { raw };
            let mut last = Topic::new(&known).ok();
            let like = Topic::from_bytes_like(Bytes::from(raw.clone()), &mut last);
            let checked = Topic::from_bytes(Bytes::from(raw));
            // `last` follows what was returned, and stays when nothing was.
            match &checked {
                Ok(t) => prop_assert_eq!(last.as_ref(), Some(t)),
                Err(_) => prop_assert_eq!(last, Topic::new(&known).ok()),
            }
            prop_assert_eq!(like, checked);
        }
    }

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn valid_topics() {
        for s in ["a", "a.b.c", "sensors.kitchen.temp", "ünï.cödé", "a-b_c.D9"] {
            assert!(Topic::new(s).is_ok(), "{s}");
            assert_eq!(Topic::check(s), Ok(()));
        }
        assert_eq!(Topic::check("a..b"), Topic::new("a..b").map(|_| ()));
    }

    #[test]
    fn invalid_topics_say_why() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a..b"), Err(TopicError::EmptySegment { position: 1 }));
        assert_eq!(Topic::new(".a"), Err(TopicError::EmptySegment { position: 0 }));
        assert_eq!(Topic::new("a."), Err(TopicError::EmptySegment { position: 1 }));
        assert_eq!(Topic::new("a b"), Err(TopicError::InvalidChar { ch: ' ', position: 0 }));
        assert_eq!(Topic::new("a.\n"), Err(TopicError::InvalidChar { ch: '\n', position: 1 }));
        assert!(matches!(Topic::new("a.*"), Err(TopicError::WildcardInTopic { .. })));
        assert!(matches!(Topic::new("a.>"), Err(TopicError::WildcardInTopic { .. })));
        assert!(matches!(Topic::new("a*"), Err(TopicError::PartialWildcard { .. })));
        assert!(matches!(Topic::new(&"a".repeat(MAX_TOPIC_LEN + 1)), Err(TopicError::TooLong { .. })));
        let deep = vec!["a"; MAX_TOPIC_DEPTH + 1].join(".");
        assert_eq!(Topic::new(&deep), Err(TopicError::TooDeep { max: MAX_TOPIC_DEPTH }));
        assert_eq!(Topic::from_bytes(Bytes::from_static(b"\xff")), Err(TopicError::NotUtf8));
        let msg = Topic::new("a..b").unwrap_err().to_string();
        assert!(msg.contains("empty segment"), "{msg}");
    }

    #[test]
    fn patterns() {
        for s in ["*", ">", "a.*", "a.>", "*.b.>", "a.*.c"] {
            assert!(Pattern::new(s).is_ok(), "{s}");
        }
        assert_eq!(Pattern::new("a.>.c"), Err(TopicError::GtNotLast { position: 1 }));
        assert!(matches!(Pattern::new("a.b*"), Err(TopicError::PartialWildcard { .. })));
        assert!(matches!(Pattern::new("a.>>"), Err(TopicError::PartialWildcard { .. })));
        assert!(p("a.b").is_literal());
        assert!(!p("a.*").is_literal());
    }

    #[test]
    fn coverage() {
        assert!(p("a.>").covers(&p("a.b")));
        assert!(p("a.>").covers(&p("a.*.c")));
        assert!(p("a.>").covers(&p("a.>")));
        assert!(!p("a.>").covers(&p("a")));
        assert!(!p("a.>").covers(&p(">")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(!p("a.*").covers(&p("a.>")));
        assert!(!p("a.b").covers(&p("a.*")));
        assert!(p(">").covers(&p("*.x.>")));
        assert!(!p("*").covers(&p("a.b")));
    }

    proptest::proptest! {
        /// `covers` agrees with its definition on every topic over a small alphabet.
        #[test]
        fn covers_means_every_match_is_a_match(
            a in "(x|y|\\*)(\\.(x|y|\\*)){0,2}(\\.>)?",
            b in "(x|y|\\*)(\\.(x|y|\\*)){0,2}(\\.>)?",
        ) {
            let (a, b) = (p(&a), p(&b));
            // Topics of up to 5 segments over {x, y, z}: one more than the longest pattern
            // before its `>`, enough to tell every pair apart.
            let mut topics = vec![String::new()];
            let mut all = Vec::new();
            for _ in 0..5 {
                topics = topics.iter().flat_map(|t| ["x", "y", "z"].map(|s| if t.is_empty() { s.to_string() } else { format!("{t}.{s}") })).collect();
                all.extend(topics.clone());
            }
            let by_definition = all.iter().map(|s| t(s)).all(|topic| !b.matches(&topic) || a.matches(&topic));
            proptest::prop_assert_eq!(a.covers(&b), by_definition, "{} covers {}", a, b);
        }
    }

    #[test]
    fn direct_matching() {
        assert!(p("a.b").matches(&t("a.b")));
        assert!(!p("a.b").matches(&t("a.b.c")));
        assert!(!p("a.b").matches(&t("a")));
        assert!(p("a.*").matches(&t("a.b")));
        assert!(!p("a.*").matches(&t("a")));
        assert!(!p("a.*").matches(&t("a.b.c")));
        assert!(p("a.>").matches(&t("a.b")));
        assert!(p("a.>").matches(&t("a.b.c")));
        assert!(!p("a.>").matches(&t("a")));
        assert!(p(">").matches(&t("x")));
        assert!(p("*.b.>").matches(&t("x.b.y.z")));
        assert!(!p("*.b.>").matches(&t("x.c.y")));
    }
}
