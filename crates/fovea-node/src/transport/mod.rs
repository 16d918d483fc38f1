//! Transport: sockets, QUIC and TLS, and the QUIC settings every endpoint of the node
//! uses. Knows nothing of what frames mean.

pub mod quic;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use fovea_core::path::LOOPBACK_UDP_PAYLOAD;
use fovea_core::ErrorCode;
use quinn::{IdleTimeout, VarInt};

use crate::config::Limits;
use crate::error::NodeError;
use fovea_spin as spin;

/// An endpoint on `addr` (the clients', or the mesh's) on fovea's own QUIC IO shell
/// ([`quic`] says why), whose socket idle workers watch ([`spin`]).
pub(crate) fn bind_endpoint(
    server: Arc<quinn::ServerConfig>,
    addr: SocketAddr,
    stats: Arc<quic::EndpointStats>,
) -> Result<(quic::Endpoint, spin::Watch), NodeError> {
    let (socket, watch) = bind_socket(addr)?;
    let endpoint = quic::Endpoint::new(endpoint_config(), server, socket, stats)
        .map_err(|source| NodeError::Bind { addr, source })?;
    Ok((endpoint, watch))
}

/// A UDP socket on `addr` with the node's buffer sizes, and a watch on it for idle workers.
fn bind_socket(addr: SocketAddr) -> Result<(std::net::UdpSocket, spin::Watch), NodeError> {
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| NodeError::Bind { addr, source })?;
    size_buffers(&socket);
    let watch = spin::Watch::new(std::os::fd::AsRawFd::as_raw_fd(&socket));
    Ok((socket, watch))
}

/// The UDP receive and send buffer the node's sockets ask for. One socket carries every
/// client's datagrams, and Linux's default (~208 KB) holds under a millisecond of them at
/// full speed: a worker late by that much loses packets, and each loss halves a QUIC
/// sender's congestion window. 4 MiB absorbs the bursts of a saturated loopback node
/// (BENCHMARKS.md, "Socket buffers"). Memory is taken only while datagrams wait.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`]; the kernel caps it at `net.core.rmem_max`/`wmem_max`, and
/// a cap well below it is worth an operator's attention.
fn size_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    if let Ok(reported) = sock.recv_buffer_size() {
        // Linux reports twice the size it granted (the rest is its bookkeeping).
        let got = if cfg!(target_os = "linux") { reported / 2 } else { reported };
        if got < SOCKET_BUFFER {
            tracing::info!(
                granted = got,
                asked = SOCKET_BUFFER,
                "the UDP receive buffer is smaller than asked: under load datagrams may be dropped; \
                 raise the net.core.rmem_max sysctl to {SOCKET_BUFFER} or more"
            );
        }
    }
}

pub(crate) fn close_code(code: ErrorCode) -> VarInt {
    VarInt::from_u64(code.to_u64()).unwrap_or(VarInt::from_u32(0))
}

/// QUIC transport settings for client connections. One bidirectional stream per
/// connection (the control stream) and no unidirectional ones: besides being all the
/// protocol uses, each allowed stream pre-allocates per-connection state in quinn
/// (100 + 100 streams cost ~8 KB per connection, BENCHMARKS.md).
pub(crate) fn client_transport(limits: &Limits) -> Result<quinn::TransportConfig, NodeError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| NodeError::Config(format!("idle timeout {:?} is too large", limits.idle_timeout)))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(limits.keep_alive));
    t.datagram_receive_buffer_size(None);
    // Ask the client to acknowledge every 9th ack-eliciting packet instead of every 2nd
    // (QUIC ACK frequency; a gap is still acknowledged at once): fewer ACK-only packets
    // to build, send and process on both sides (BENCHMARKS.md, "QUIC settings").
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(fovea_core::ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    Ok(t)
}

/// The endpoint's settings: it accepts datagrams as large as a loopback peer may send
/// ([`LOOPBACK_UDP_PAYLOAD`]). This is a limit announced to peers, not a size anyone
/// sends: a network peer's datagrams stay within what MTU discovery finds on its path.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // Cannot fail: the value is within QUIC's 1 200..=65 527.
    let _ = c.max_udp_payload_size(LOOPBACK_UDP_PAYLOAD);
    c
}

/// `t` for a loopback path: datagrams of up to `largest` bytes (at most
/// [`LOOPBACK_UDP_PAYLOAD`]; quinn's default bound is 1 452) from the start, without
/// probes; discovery stays on to climb back after a black hole
/// ([`fovea_core::path::loopback_mtu_step`] says why).
pub(crate) fn on_loopback(mut t: quinn::TransportConfig, largest: u16) -> quinn::TransportConfig {
    let upper = largest.min(LOOPBACK_UDP_PAYLOAD);
    t.initial_mtu(upper);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(upper);
    mtu.minimum_change(fovea_core::path::loopback_mtu_step(upper));
    t.mtu_discovery_config(Some(mtu));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn node_sockets_get_the_buffer_they_ask_for_up_to_the_kernel_cap() {
        let cap = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        size_buffers(&socket);
        let sock = socket2::SockRef::from(&socket);
        // Linux reports twice what it grants.
        let (recv, send) = (sock.recv_buffer_size().unwrap() / 2, sock.send_buffer_size().unwrap() / 2);
        assert!(recv >= SOCKET_BUFFER.min(cap("rmem_max")), "receive buffer {recv}");
        assert!(send >= SOCKET_BUFFER.min(cap("wmem_max")), "send buffer {send}");
    }
}
