//! 256-bit identifiers and the XOR metric.

use std::fmt;

/// A node's identity in the mesh, and the key space records live in: 256 bits. A node's
/// id is the SHA-256 of its public key (computed by the node crate, which owns the keys),
/// so it cannot choose where in the key space it sits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

/// A record key: the same space as node ids (`SHA-256("realm/procedure")`, …).
pub type Key = NodeId;

/// XOR distance between two ids, compared as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 32]);

impl NodeId {
    /// The key a label and its parts name: SHA-256 over `label`, then each part preceded
    /// by a NUL (`label\0part\0part…`). The encoding is part of the mesh protocol: every
    /// node derives the same key for the same record.
    pub fn derive(label: &[u8], parts: &[&[u8]]) -> Key {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(label);
        for part in parts {
            h.update(b"\0");
            h.update(part);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&h.finalize());
        NodeId(id)
    }

    /// The distance to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The k-bucket `other` falls in, seen from `self`: 255 for the farthest half of the
    /// space, 0 for the one id differing only in the last bit; `None` for `self`.
    pub fn bucket_of(&self, other: &NodeId) -> Option<usize> {
        self.distance(other).bucket()
    }

    /// An id from 64 random bits stretched over 256 (simulations and refresh targets;
    /// real node ids are key hashes).
    pub fn from_rng(rng: &mut crate::balance::Rng) -> NodeId {
        let mut id = [0u8; 32];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        NodeId(id)
    }

    /// A random id at bucket `bucket` from `self`: same bits above `bucket`, the bit at
    /// `bucket` flipped, random below. Used to refresh a bucket by looking it up.
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut crate::balance::Rng) -> NodeId {
        let random = NodeId::from_rng(rng);
        let mut id = self.0;
        let bucket = bucket.min(255);
        for bit in 0..256 {
            // Bit numbering: 255 is the most significant bit of byte 0.
            let (byte, mask) = ((255 - bit) / 8, 0x80u8 >> ((255 - bit) % 8));
            if bit == bucket {
                id[byte] ^= mask;
            } else if bit < bucket {
                id[byte] = (id[byte] & !mask) | (random.0[byte] & mask);
            }
        }
        NodeId(id)
    }
}

impl Distance {
    /// Index of the highest set bit (255 = most significant), `None` for zero.
    pub fn bucket(&self) -> Option<usize> {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                return Some(255 - (i * 8 + b.leading_zeros() as usize));
            }
        }
        None
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// The first 8 bytes in hex: enough to tell nodes apart in logs.
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Rng;
    use proptest::prelude::*;

    fn id(bytes: [u8; 32]) -> NodeId {
        NodeId(bytes)
    }

    #[test]
    fn buckets_count_from_the_top_bit() {
        let zero = id([0; 32]);
        let mut far = [0u8; 32];
        far[0] = 0x80;
        assert_eq!(zero.bucket_of(&id(far)), Some(255));
        let mut near = [0u8; 32];
        near[31] = 1;
        assert_eq!(zero.bucket_of(&id(near)), Some(0));
        assert_eq!(zero.bucket_of(&zero), None);
    }

    /// Derived keys are a wire format: pinned to SHA-256 of `label\0part\0part`.
    #[test]
    fn derived_keys_are_pinned() {
        let k = NodeId::derive(b"fovea/interest/v1", &[b"r", b"a"]);
        // printf 'fovea/interest/v1\0r\0a' | sha256sum
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "6c3c3e07c5c474f06b3c67bc946d9763c41da303a0a1e8a3058eaff23c26f572");
        assert_ne!(NodeId::derive(b"x", &[b"ab"]), NodeId::derive(b"x", &[b"a", b"b"]));
    }

    proptest! {
        #[test]
        fn xor_is_a_metric(a: [u8; 32], b: [u8; 32], c: [u8; 32]) {
            let (a, b, c) = (id(a), id(b), id(c));
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&a), Distance([0; 32]));
            // Unidirectional: for a given distance there is exactly one id.
            if a.distance(&b) == a.distance(&c) {
                prop_assert_eq!(b, c);
            }
        }

        #[test]
        fn random_in_bucket_lands_in_that_bucket(seed: u64, base: [u8; 32], bucket in 0usize..256) {
            let mut rng = Rng::new(seed);
            let me = id(base);
            prop_assert_eq!(me.bucket_of(&me.random_in_bucket(bucket, &mut rng)), Some(bucket));
        }
    }
}
