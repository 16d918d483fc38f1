//! Which QUIC settings a path gets: loopback paths carry larger datagrams.
//!
//! QUIC sends in datagrams no larger than the path's MTU, found by MTU discovery up to a
//! configured bound. quinn's bound is 1 452 bytes (Ethernet's 1 500 minus the IP and UDP
//! headers), which is right for a network and a waste on loopback, whose MTU is 64 KiB:
//! most of a node's and a client's CPU goes to per-datagram work (packet building, AEAD
//! setup, acknowledgement tracking, the kernel's per-datagram path), so bigger datagrams
//! carry the same messages for less. A service next to its node (same host) is the common
//! deployment, so this is not only a benchmark effect. BENCHMARKS.md has what 6 500 bytes
//! buy against 1 452.

use std::net::{IpAddr, SocketAddr};

/// The largest UDP payload fovea sends on a loopback path.
///
/// Why not 64 KiB: quinn gives the kernel up to 10 datagrams per `sendmsg` (segmentation
/// offload, quinn's `MAX_TRANSMIT_SEGMENTS`), and one such send must fit in one UDP
/// datagram of at most 65 507 bytes. At 8 192 bytes quinn's batched sends fail and
/// throughput collapses (measured: 64 B pub/sub 1.4M/s → 130K/s). 6 500 × 10 = 65 000
/// keeps every batch valid. If quinn ever raises its batch size, this must come down
/// (`bench pubsub --size 1024` shows it at once).
pub const LOOPBACK_UDP_PAYLOAD: u16 = 6_500;

// A full batch (quinn's 10 datagrams) fits the largest IPv4 UDP payload, and the size is
// above quinn's network default, or there would be no point.
const _: () = assert!(LOOPBACK_UDP_PAYLOAD as usize * 10 <= 65_507 && LOOPBACK_UDP_PAYLOAD > 1_452);

/// QUIC's smallest UDP payload, where MTU discovery starts.
pub const MIN_UDP_PAYLOAD: u16 = 1_200;

/// The smallest step MTU discovery takes on a loopback path bounded by `upper`: half the
/// way from [`MIN_UDP_PAYLOAD`] (at least quinn's default of 20).
///
/// A loopback path starts at its bound (quinn's `initial_mtu`) and does not search at
/// all: loopback's MTU is 64 KiB on Linux. Discovery stays on only to climb back if
/// black-hole detection ever drops the path to 1 200 bytes (a loopback set to a small MTU),
/// and then in steps of this size.
///
/// Why no probes: every probe is a datagram of the size probed, filled with PADDING
/// frames, and quinn parses padding one byte at a time, as one frame each. With quinn's
/// default step a loopback connection's search from 1 200 to 6 500 sent ~9 probes each
/// way, ~52 KB of padding, and parsing it was half of a node's CPU while clients connected
/// (`perf` on the node of `fovea bench conns`: `process_payload`, `frame::Iter::next` and
/// `VarInt::decode` together ~49% of samples). With this step a search probes the middle
/// (3 850), then the bound (6 500): two probes; if the bound fails the path stays at the
/// middle. Starting at the bound also sizes quinn's per-connection send buffer to one
/// datagram (6 500 bytes), where growing it probe by probe left it at 7 700.
#[must_use]
pub fn loopback_mtu_step(upper: u16) -> u16 {
    (upper.saturating_sub(MIN_UDP_PAYLOAD) / 2).max(20)
}

/// Whether `ip` is a loopback address, including IPv4 loopback seen through an
/// IPv4-mapped IPv6 address (a dual-stack socket reports `::ffff:127.0.0.1`).
#[must_use]
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// One configuration per kind of path, chosen by the peer's address.
#[derive(Clone, Debug)]
pub struct ByPath<T> {
    /// For peers reached over a network: the transport's defaults.
    pub network: T,
    /// For loopback peers: datagrams up to [`LOOPBACK_UDP_PAYLOAD`].
    pub loopback: T,
}

impl<T> ByPath<T> {
    /// The configuration for a peer at `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> &T {
        if is_loopback(peer.ip()) {
            &self.loopback
        } else {
            &self.network
        }
    }

    /// Both configurations through `f`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> ByPath<U> {
        ByPath { network: f(self.network), loopback: f(self.loopback) }
    }
}

impl<A, B> ByPath<(A, B)> {
    /// Splits a pair per path into a pair of per-path configurations.
    pub fn unzip(self) -> (ByPath<A>, ByPath<B>) {
        let ByPath { network: (na, nb), loopback: (la, lb) } = self;
        (ByPath { network: na, loopback: la }, ByPath { network: nb, loopback: lb })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_recognised_in_every_form() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0", "::"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn loopback_mtu_discovery_takes_half_steps() {
        assert_eq!(loopback_mtu_step(LOOPBACK_UDP_PAYLOAD), 2_650);
        assert_eq!(loopback_mtu_step(1_452), 126);
        // Never below quinn's default step, even for a bound at the floor.
        assert_eq!(loopback_mtu_step(MIN_UDP_PAYLOAD), 20);
        assert_eq!(loopback_mtu_step(0), 20);
    }

    #[test]
    fn a_peer_gets_the_configuration_of_its_path() {
        let by = ByPath { network: "net", loopback: "lo" };
        assert_eq!(*by.for_peer("127.0.0.1:4433".parse().unwrap()), "lo");
        assert_eq!(*by.for_peer("[::1]:4433".parse().unwrap()), "lo");
        assert_eq!(*by.for_peer("192.0.2.7:4433".parse().unwrap()), "net");
    }
}
