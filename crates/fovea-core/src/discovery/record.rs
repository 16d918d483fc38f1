//! The records discovery stores in the DHT, and their keys. Both are part of the mesh
//! protocol (docs/MESH.md): every node must derive the same keys and read the same values.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};

use super::remote::RemoteSub;
use crate::dht::{Contact, Key, NodeId, Record};
use crate::{varint, Pattern};

/// Most plain patterns listed in one interest record, and most queue groups; more plain
/// patterns are summarised as the prefix's catch-all (the receiving node filters anyway).
pub const MAX_PATTERNS: usize = 64;
/// Most bytes of plain patterns listed in one record before the catch-all replaces them.
const MAX_PATTERN_BYTES: usize = 3000;

/// The DHT key of `realm`'s interest records for `prefix`.
pub fn interest_key(realm: &str, prefix: &str) -> Key {
    NodeId::derive(b"fovea/interest/v1", &[realm.as_bytes(), prefix.as_bytes()])
}

/// The DHT key of the provider records of `procedure` in `realm`.
pub fn provider_key(realm: &str, procedure: &str) -> Key {
    NodeId::derive(b"fovea/provider/v1", &[realm.as_bytes(), procedure.as_bytes()])
}

/// A provider record's value: the providing node's mesh address, as text.
pub(super) fn encode_provider(me: Contact) -> Bytes {
    Bytes::from(me.addr.to_string())
}

/// A provider record's node; `None` for a retraction or a malformed value.
pub(super) fn decode_provider(r: &Record) -> Option<Contact> {
    let addr: SocketAddr = std::str::from_utf8(&r.value).ok()?.parse().ok()?;
    Some(Contact { id: r.publisher, addr })
}

/// Interest record value: version (1), mesh address, then the entries: pattern, queue
/// group (empty: plain subscriptions), member count. Plain patterns past [`MAX_PATTERNS`]
/// (or [`MAX_PATTERN_BYTES`]) are summarised as the prefix's catch-all.
pub(super) fn encode_interest(me: Contact, prefix: &str, entries: &[((String, Bytes), usize)]) -> Bytes {
    let mut out = BytesMut::new();
    let addr = me.addr.to_string();
    let plain: Vec<&String> = entries.iter().filter(|((_, g), _)| g.is_empty()).map(|((p, _), _)| p).collect();
    let groups: Vec<&((String, Bytes), usize)> =
        entries.iter().filter(|((_, g), _)| !g.is_empty()).take(MAX_PATTERNS).collect();
    let catch_all: Vec<String> =
        if prefix.is_empty() { vec![">".into()] } else { vec![prefix.to_owned(), format!("{prefix}.>")] };
    let too_many = plain.len() > MAX_PATTERNS || plain.iter().map(|p| p.len()).sum::<usize>() > MAX_PATTERN_BYTES;
    let plain: Vec<&String> = if too_many { catch_all.iter().collect() } else { plain };
    out.extend_from_slice(&[1]);
    put_field(&mut out, addr.as_bytes());
    varint::encode((plain.len() + groups.len()) as u64, &mut out);
    for p in plain {
        put_field(&mut out, p.as_bytes());
        put_field(&mut out, b"");
        varint::encode(1, &mut out);
    }
    for ((p, g), n) in groups {
        put_field(&mut out, p.as_bytes());
        put_field(&mut out, g);
        varint::encode((*n as u64).min(u64::from(u32::MAX)), &mut out);
    }
    out.freeze()
}

fn put_field(out: &mut BytesMut, b: &[u8]) {
    varint::encode(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// An interest record's node and entries; `None` for a retraction (empty value) or a
/// malformed one. Reads at most `2 * MAX_PATTERNS + 2` entries, whatever the count says.
pub(super) fn decode_interest(r: &Record) -> Option<(Contact, Vec<RemoteSub>)> {
    let mut v = r.value.clone();
    if v.first() != Some(&1) {
        return None;
    }
    v.advance(1);
    let field = |v: &mut Bytes| -> Option<Bytes> {
        let (len, n) = varint::decode(v)?;
        v.advance(n);
        let len = usize::try_from(len).ok().filter(|l| *l <= v.len())?;
        Some(v.split_to(len))
    };
    let number = |v: &mut Bytes| -> Option<u64> {
        let (x, n) = varint::decode(v)?;
        v.advance(n);
        Some(x)
    };
    let addr = std::str::from_utf8(&field(&mut v)?).ok()?.parse().ok()?;
    let count = number(&mut v)?;
    let mut subs = Vec::new();
    for _ in 0..count.min(2 * MAX_PATTERNS as u64 + 2) {
        let pattern = Pattern::from_bytes(field(&mut v)?).ok()?;
        let group = field(&mut v)?;
        let n = u32::try_from(number(&mut v)?).unwrap_or(u32::MAX).max(1);
        subs.push(RemoteSub { pattern, group: (!group.is_empty()).then_some((group, n)) });
    }
    Some((Contact { id: r.publisher, addr }, subs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    fn me() -> Contact {
        Contact { id: NodeId([7; 32]), addr: "127.0.0.1:4434".parse().unwrap() }
    }

    fn record(value: Bytes) -> Record {
        Record { key: interest_key("r", "a"), publisher: me().id, value, expires: Instant::now() }
    }

    #[test]
    fn an_interest_record_reads_back_as_written() {
        let entries =
            vec![(("a.b".to_owned(), Bytes::new()), 3), (("a.*".to_owned(), Bytes::from_static(b"workers")), 2)];
        let (contact, subs) = decode_interest(&record(encode_interest(me(), "a", &entries))).unwrap();
        assert_eq!(contact, me());
        assert_eq!(subs.len(), 2);
        assert_eq!((subs[0].pattern.as_str(), subs[0].group.clone()), ("a.b", None));
        assert_eq!(
            (subs[1].pattern.as_str(), subs[1].group.clone()),
            ("a.*", Some((Bytes::from_static(b"workers"), 2)))
        );
    }

    #[test]
    fn many_plain_patterns_become_the_prefix_catch_all() {
        let entries: Vec<_> = (0..=MAX_PATTERNS).map(|i| ((format!("a.p{i}"), Bytes::new()), 1)).collect();
        let (_, subs) = decode_interest(&record(encode_interest(me(), "a", &entries))).unwrap();
        let patterns: Vec<&str> = subs.iter().map(|s| s.pattern.as_str()).collect();
        assert_eq!(patterns, ["a", "a.>"]);
        let (_, subs) = decode_interest(&record(encode_interest(me(), "", &entries))).unwrap();
        assert_eq!(subs.iter().map(|s| s.pattern.as_str()).collect::<Vec<_>>(), [">"]);
    }

    #[test]
    fn a_retraction_or_a_provider_record_is_no_interest() {
        assert!(decode_interest(&record(Bytes::new())).is_none());
        let provider = encode_provider(me());
        assert!(decode_interest(&record(provider.clone())).is_none());
        assert_eq!(decode_provider(&record(provider)), Some(me()));
        assert_eq!(decode_provider(&record(Bytes::new())), None);
    }

    proptest! {
        #[test]
        fn any_value_decodes_without_panicking(value: Vec<u8>) {
            let _ = decode_interest(&record(Bytes::from(value.clone())));
            let _ = decode_provider(&record(Bytes::from(value)));
        }

        #[test]
        fn a_truncated_record_never_reads_as_more_than_was_written(cut in 0usize..64) {
            let entries = vec![(("a.b".to_owned(), Bytes::new()), 1), (("a.c".to_owned(), Bytes::from_static(b"g")), 5)];
            let full = encode_interest(me(), "a", &entries);
            let cut = cut.min(full.len());
            if let Some((_, subs)) = decode_interest(&record(full.slice(..cut))) {
                prop_assert!(subs.len() <= 2);
            }
        }
    }
}
