//! The encoding of [`Message`]s, carried as the body of a `DHT` frame on a mesh link.
//!
//! ```text
//! message  = type:varint fields
//! contact  = id:32 family:u8(4|6) ip:4|16 port:u16
//! record   = key:32 publisher:32 ttl_ms:varint value_len:varint value
//! 1 PING  2 PONG  3 FIND_NODE target:32  4 NODES n:varint contact*n
//! 5 FIND_VALUE key:32  6 VALUE n:varint record*n m:varint contact*m
//! 7 STORE record  8 STORED ok:u8  9 NOTIFY record
//! ```
//!
//! Counts and sizes are bounded ([`MAX_CONTACTS`], [`MAX_RECORDS`], [`MAX_VALUE`]) so a
//! hostile peer cannot make a decoder allocate much; anything malformed is a
//! [`WireError`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Contact, Message, NodeId, WireRecord};
use crate::varint;

/// Most contacts in one message.
pub const MAX_CONTACTS: usize = 64;
/// Most records in one message.
pub const MAX_RECORDS: usize = 256;
/// Largest record value.
pub const MAX_VALUE: usize = 4096;

/// Why a DHT message (or a failure detector's, `crate::failure::wire`) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated message ({0})")]
    Truncated(&'static str),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("{field}: {got} exceeds the limit of {max}")]
    TooMany { field: &'static str, got: u64, max: usize },
    #[error("bad address family {0}")]
    BadFamily(u8),
    #[error("{0} trailing bytes after a message")]
    Trailing(usize),
}

mod ty {
    pub const PING: u64 = 1;
    pub const PONG: u64 = 2;
    pub const FIND_NODE: u64 = 3;
    pub const NODES: u64 = 4;
    pub const FIND_VALUE: u64 = 5;
    pub const VALUE: u64 = 6;
    pub const STORE: u64 = 7;
    pub const STORED: u64 = 8;
    pub const NOTIFY: u64 = 9;
}

/// Appends `msg`. Lists longer than the limits are cut to them (an engine never builds
/// those; a decoder would refuse them).
pub fn encode(msg: &Message, out: &mut BytesMut) {
    match msg {
        Message::Ping => varint::encode(ty::PING, out),
        Message::Pong => varint::encode(ty::PONG, out),
        Message::FindNode { target } => {
            varint::encode(ty::FIND_NODE, out);
            out.put_slice(&target.0);
        }
        Message::Nodes { contacts } => {
            varint::encode(ty::NODES, out);
            put_contacts(contacts, out);
        }
        Message::FindValue { key } => {
            varint::encode(ty::FIND_VALUE, out);
            out.put_slice(&key.0);
        }
        Message::Value { records, contacts } => {
            varint::encode(ty::VALUE, out);
            let records = &records[..records.len().min(MAX_RECORDS)];
            varint::encode(records.len() as u64, out);
            for r in records {
                put_record(r, out);
            }
            put_contacts(contacts, out);
        }
        Message::Store { record } => {
            varint::encode(ty::STORE, out);
            put_record(record, out);
        }
        Message::Stored { ok } => {
            varint::encode(ty::STORED, out);
            out.put_u8(u8::from(*ok));
        }
        Message::Notify { record } => {
            varint::encode(ty::NOTIFY, out);
            put_record(record, out);
        }
    }
}

/// Decodes one whole message from `src` (all of it).
///
/// # Errors
/// [`WireError`] for anything malformed or over the limits.
pub fn decode(mut src: Bytes) -> Result<Message, WireError> {
    let r = &mut src;
    let msg = match get_varint(r, "type")? {
        ty::PING => Message::Ping,
        ty::PONG => Message::Pong,
        ty::FIND_NODE => Message::FindNode { target: get_id(r, "target")? },
        ty::NODES => Message::Nodes { contacts: get_contacts(r)? },
        ty::FIND_VALUE => Message::FindValue { key: get_id(r, "key")? },
        ty::VALUE => {
            let n = get_count(r, "records", MAX_RECORDS)?;
            let mut records = Vec::with_capacity(n);
            for _ in 0..n {
                records.push(get_record(r)?);
            }
            Message::Value { records, contacts: get_contacts(r)? }
        }
        ty::STORE => Message::Store { record: get_record(r)? },
        ty::NOTIFY => Message::Notify { record: get_record(r)? },
        ty::STORED => {
            if !r.has_remaining() {
                return Err(WireError::Truncated("ok"));
            }
            Message::Stored { ok: r.get_u8() != 0 }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    if r.has_remaining() {
        return Err(WireError::Trailing(r.remaining()));
    }
    Ok(msg)
}

fn put_contacts(contacts: &[Contact], out: &mut BytesMut) {
    let contacts = &contacts[..contacts.len().min(MAX_CONTACTS)];
    varint::encode(contacts.len() as u64, out);
    for c in contacts {
        put_contact(c, out);
    }
}

/// Appends one `contact` (also used by the failure detector's messages).
pub(crate) fn put_contact(c: &Contact, out: &mut BytesMut) {
    out.put_slice(&c.id.0);
    match c.addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(c.addr.port());
}

fn put_record(r: &WireRecord, out: &mut BytesMut) {
    out.put_slice(&r.key.0);
    out.put_slice(&r.publisher.0);
    varint::encode(u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX).min(varint::MAX), out);
    let value = &r.value[..r.value.len().min(MAX_VALUE)];
    varint::encode(value.len() as u64, out);
    out.put_slice(value);
}

pub(crate) fn get_varint(r: &mut Bytes, field: &'static str) -> Result<u64, WireError> {
    let (v, n) = varint::decode(r).ok_or(WireError::Truncated(field))?;
    r.advance(n);
    Ok(v)
}

fn get_count(r: &mut Bytes, field: &'static str, max: usize) -> Result<usize, WireError> {
    let n = get_varint(r, field)?;
    if n > max as u64 {
        return Err(WireError::TooMany { field, got: n, max });
    }
    // Cannot truncate: n <= max, a usize.
    Ok(n as usize)
}

fn take<const N: usize>(r: &mut Bytes, field: &'static str) -> Result<[u8; N], WireError> {
    if r.remaining() < N {
        return Err(WireError::Truncated(field));
    }
    let mut a = [0u8; N];
    r.copy_to_slice(&mut a);
    Ok(a)
}

pub(crate) fn get_id(r: &mut Bytes, field: &'static str) -> Result<NodeId, WireError> {
    take::<32>(r, field).map(NodeId)
}

fn get_contacts(r: &mut Bytes) -> Result<Vec<Contact>, WireError> {
    let n = get_count(r, "contacts", MAX_CONTACTS)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get_contact(r)?);
    }
    Ok(out)
}

/// Reads one contact (see [`put_contact`]).
pub(crate) fn get_contact(r: &mut Bytes) -> Result<Contact, WireError> {
    let id = get_id(r, "contact id")?;
    let [family] = take::<1>(r, "address family")?;
    let ip = match family {
        4 => IpAddr::V4(Ipv4Addr::from(take::<4>(r, "ipv4")?)),
        6 => IpAddr::V6(Ipv6Addr::from(take::<16>(r, "ipv6")?)),
        f => return Err(WireError::BadFamily(f)),
    };
    let port = u16::from_be_bytes(take::<2>(r, "port")?);
    Ok(Contact { id, addr: SocketAddr::new(ip, port) })
}

fn get_record(r: &mut Bytes) -> Result<WireRecord, WireError> {
    let key = get_id(r, "record key")?;
    let publisher = get_id(r, "record publisher")?;
    let ttl = Duration::from_millis(get_varint(r, "ttl")?);
    let len = get_count(r, "value", MAX_VALUE)?;
    if r.remaining() < len {
        return Err(WireError::Truncated("value"));
    }
    Ok(WireRecord { key, publisher, ttl, value: r.split_to(len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn contact() -> impl Strategy<Value = Contact> {
        (any::<[u8; 32]>(), any::<bool>(), any::<[u8; 16]>(), any::<u16>()).prop_map(|(id, v4, ip, port)| {
            let ip =
                if v4 { IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])) } else { IpAddr::V6(Ipv6Addr::from(ip)) };
            Contact { id: NodeId(id), addr: SocketAddr::new(ip, port) }
        })
    }

    fn record() -> impl Strategy<Value = WireRecord> {
        (any::<[u8; 32]>(), any::<[u8; 32]>(), 0u64..1 << 40, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(k, p, ttl, v)| WireRecord {
                key: NodeId(k),
                publisher: NodeId(p),
                ttl: Duration::from_millis(ttl),
                value: v.into(),
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(Message::Ping),
            Just(Message::Pong),
            any::<[u8; 32]>().prop_map(|t| Message::FindNode { target: NodeId(t) }),
            proptest::collection::vec(contact(), 0..30).prop_map(|contacts| Message::Nodes { contacts }),
            any::<[u8; 32]>().prop_map(|k| Message::FindValue { key: NodeId(k) }),
            (proptest::collection::vec(record(), 0..5), proptest::collection::vec(contact(), 0..5))
                .prop_map(|(records, contacts)| Message::Value { records, contacts }),
            record().prop_map(|record| Message::Store { record }),
            any::<bool>().prop_map(|ok| Message::Stored { ok }),
            record().prop_map(|record| Message::Notify { record }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_and_every_cut_is_an_error(msg in message()) {
            let mut out = BytesMut::new();
            encode(&msg, &mut out);
            let bytes = out.freeze();
            prop_assert_eq!(decode(bytes.clone()), Ok(msg));
            for cut in 0..bytes.len() {
                prop_assert!(decode(bytes.slice(..cut)).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Bytes::from(raw));
        }
    }

    #[test]
    fn counts_over_the_limit_are_refused_before_allocating() {
        let mut out = BytesMut::new();
        varint::encode(ty::NODES, &mut out);
        varint::encode(1 << 40, &mut out);
        assert!(matches!(decode(out.freeze()), Err(WireError::TooMany { field: "contacts", .. })));
    }
}
