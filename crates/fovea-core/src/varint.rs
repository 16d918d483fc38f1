//! QUIC variable-length integers (RFC 9000 §16), the only integer encoding on the wire.
//!
//! The two high bits of the first byte give the length (1, 2, 4 or 8 bytes); the rest is
//! the value, big-endian. Values go up to 2^62 − 1. We reuse QUIC's encoding so that a
//! client author in another language already has it from their QUIC library.

use bytes::BufMut;

/// Largest value a varint can hold: 2^62 − 1.
pub const MAX: u64 = (1 << 62) - 1;

/// How many bytes [`encode`] writes for `v`.
///
/// Values above [`MAX`] cannot be encoded; callers keep their values within it (every
/// length and id in this crate is far below it).
pub const fn size(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` in its shortest form.
///
/// # Panics
/// Never for `v <= MAX`; a larger value is a bug in the caller, caught by a debug assertion
/// and truncated to 62 bits in release builds.
#[inline]
pub fn encode(v: u64, out: &mut impl BufMut) {
    debug_assert!(v <= MAX, "varint out of range: {v}");
    let (word, n) = to_word(v);
    match n {
        1 => out.put_u8(word as u8),
        2 => out.put_u16(word as u16),
        4 => out.put_u32(word as u32),
        _ => out.put_u64(word),
    }
}

/// `v` in its shortest form without a buffer: the encoding is the low `n` bytes of the
/// word, big-endian, and `n` is returned with it. Lets a caller gather several varints in
/// a register and append them together.
#[inline]
pub fn to_word(v: u64) -> (u64, usize) {
    let v = v & MAX;
    let n = size(v);
    let tag = match n {
        1 => 0,
        2 => 0x4000,
        4 => 0x8000_0000,
        _ => 0xc000_0000_0000_0000,
    };
    (tag | v, n)
}

/// Reads one varint from the front of `src`.
///
/// Returns the value and the number of bytes it took, or `None` if `src` is too short to
/// hold the whole integer (the caller needs more bytes). Never panics. Non-minimal
/// encodings are accepted, as RFC 9000 requires.
#[inline]
pub fn decode(src: &[u8]) -> Option<(u64, usize)> {
    let first = *src.first()?;
    let len = 1usize << (first >> 6);
    let bytes = src.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 Appendix A.1
        assert_eq!(decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]), Some((151_288_809_941_952_652, 8)));
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(decode(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode(&[0x25]), Some((37, 1)));
        assert_eq!(decode(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(decode(&[0x40]), None);
        assert_eq!(decode(&[]), None);
    }

    proptest! {
        #[test]
        fn round_trip(v in 0..=MAX) {
            let mut buf = Vec::new();
            encode(v, &mut buf);
            prop_assert_eq!(buf.len(), size(v));
            prop_assert_eq!(decode(&buf), Some((v, buf.len())));
            let (word, n) = to_word(v);
            prop_assert_eq!(&word.to_be_bytes()[8 - n..], &buf[..]);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..10)) {
            let _ = decode(&bytes);
        }
    }
}
