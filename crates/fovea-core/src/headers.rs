//! Message headers: a small ordered list of `name: value` text pairs, as NATS users expect.
//!
//! [`Headers`] holds the encoded block itself (a `Bytes` slice of the frame it arrived in),
//! so routing a message with headers copies nothing and allocates nothing; the pairs are
//! decoded only when someone reads them.
//!
//! Block layout: `count:varint` then `count` × (`name:str`, `value:str`), where `str` is
//! `len:varint` + UTF-8 bytes. Names are non-empty. No headers encode as the single byte 0.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{MAX_HEADERS, MAX_HEADERS_LEN};
use crate::varint;

/// Why a header block or a header pair was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// More than [`MAX_HEADERS`] pairs.
    #[error("more than {max} headers")]
    TooMany { max: usize },
    /// The encoded block is over [`MAX_HEADERS_LEN`] bytes.
    #[error("headers take more than {max} bytes")]
    TooLong { max: usize },
    /// A header name is empty or contains whitespace, a control character or `:`.
    #[error("invalid header name {name:?}: use a non-empty name without spaces, control characters or ':'")]
    InvalidName { name: String },
    /// A value contains a control character (line breaks included).
    #[error("invalid value for header {name:?}: control characters are not allowed")]
    InvalidValue { name: String },
    /// The block does not parse (truncated, bad UTF-8, trailing bytes).
    #[error("malformed header block")]
    Malformed,
}

/// An immutable, validated header block. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Bytes);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Bytes::new())
    }

    /// Builds a block from pairs, validating names, values and limits.
    ///
    /// # Errors
    /// [`HeaderError`] for the first pair or limit that fails.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, HeaderError> {
        let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        if pairs.is_empty() {
            return Ok(Headers::new());
        }
        if pairs.len() > MAX_HEADERS {
            return Err(HeaderError::TooMany { max: MAX_HEADERS });
        }
        let mut out = BytesMut::new();
        varint::encode(pairs.len() as u64, &mut out);
        for (name, value) in pairs {
            check_pair(name, value)?;
            for s in [name, value] {
                varint::encode(s.len() as u64, &mut out);
                out.put_slice(s.as_bytes());
            }
            if out.len() > MAX_HEADERS_LEN {
                return Err(HeaderError::TooLong { max: MAX_HEADERS_LEN });
            }
        }
        Ok(Headers(out.freeze()))
    }

    /// Validates an encoded block (from the wire) without copying it. `block` must be
    /// exactly the block: trailing bytes are an error.
    ///
    /// # Errors
    /// [`HeaderError`] if the block is malformed or over a limit.
    pub fn from_encoded(block: Bytes) -> Result<Self, HeaderError> {
        if block.len() > MAX_HEADERS_LEN {
            return Err(HeaderError::TooLong { max: MAX_HEADERS_LEN });
        }
        // Every slice below is taken with `get`: `pos` only grows by lengths that `read_str`
        // checked, but the decoder must not rely on that to stay panic-free.
        let (count, mut pos) = varint::decode(&block).ok_or(HeaderError::Malformed)?;
        if count as usize > MAX_HEADERS {
            return Err(HeaderError::TooMany { max: MAX_HEADERS });
        }
        for _ in 0..count {
            let (name, n) = block.get(pos..).and_then(read_str).ok_or(HeaderError::Malformed)?;
            pos += n;
            let (value, n) = block.get(pos..).and_then(read_str).ok_or(HeaderError::Malformed)?;
            pos += n;
            check_pair(name, value)?;
        }
        if pos != block.len() {
            return Err(HeaderError::Malformed);
        }
        if count == 0 {
            return Ok(Headers::new());
        }
        Ok(Headers(block))
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let block = &self.0[..];
        let (count, mut pos) = varint::decode(block).unwrap_or((0, 0));
        (0..count).map_while(move |_| {
            // Invariant: the block was validated at construction, so these reads succeed.
            let (name, n) = read_str(block.get(pos..)?)?;
            pos += n;
            let (value, n) = read_str(block.get(pos..)?)?;
            pos += n;
            Some((name, value))
        })
    }

    /// The first value of `name` (names compare exactly).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Bytes this block takes in a frame.
    pub fn encoded_len(&self) -> usize {
        self.0.len().max(1)
    }

    /// Appends the block as it goes in a frame.
    pub fn write(&self, out: &mut impl BufMut) {
        if self.0.is_empty() {
            out.put_u8(0);
        } else {
            out.put_slice(&self.0);
        }
    }
}

fn check_pair(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
        return Err(HeaderError::InvalidName { name: name.to_owned() });
    }
    if value.chars().any(char::is_control) {
        return Err(HeaderError::InvalidValue { name: name.to_owned() });
    }
    Ok(())
}

fn read_str(src: &[u8]) -> Option<(&str, usize)> {
    let (len, n) = varint::decode(src)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    let s = std::str::from_utf8(src.get(n..end)?).ok()?;
    Some((s, end))
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Headers::from_pairs([("trace-id", "abc"), ("n", "")]).unwrap();
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("trace-id", "abc"), ("n", "")]);
        assert_eq!(h.get("n"), Some(""));
        let mut buf = Vec::new();
        h.write(&mut buf);
        assert_eq!(Headers::from_encoded(Bytes::from(buf)).unwrap(), h);
        assert_eq!(Headers::from_encoded(Bytes::from_static(&[0])).unwrap(), Headers::new());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(Headers::from_pairs([("a b", "x")]), Err(HeaderError::InvalidName { .. })));
        assert!(matches!(Headers::from_pairs([("", "x")]), Err(HeaderError::InvalidName { .. })));
        assert!(matches!(Headers::from_pairs([("a", "x\ny")]), Err(HeaderError::InvalidValue { .. })));
        assert_eq!(Headers::from_encoded(Bytes::from_static(&[1, 1])), Err(HeaderError::Malformed));
        assert_eq!(Headers::from_encoded(Bytes::from_static(&[0, 0])), Err(HeaderError::Malformed));
        assert_eq!(
            Headers::from_encoded(Bytes::from_static(&[0x40, 0x41])),
            Err(HeaderError::TooMany { max: MAX_HEADERS })
        );
    }
}
