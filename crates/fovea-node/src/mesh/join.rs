//! Joining: dialing members, accepting links, and the handshake that proves both ends
//! hold the mesh secret (or a certificate from the mesh CA).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fovea_core::dht::{Contact, NodeId};
use fovea_core::frame::MeshHello;
use fovea_core::{Deframer, ErrorCode, Frame};
use quinn_proto::VarInt;

use crate::transport::quic::{Connection, ConnectionError, Incoming, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use super::{lock, Mesh, EXPORTER_LABEL, HANDSHAKE_TIMEOUT, MESH_VERSION, REJOIN_EVERY};

impl Mesh {
    /// Dials a join address until a link is up, with backoff (a member that is down now
    /// may be up later; this is how a restarted node rejoins without manual steps).
    ///
    /// An address that answers with fovea's client protocol instead of the mesh's is a
    /// member's client port: users have a member's URL at hand and give it. The mesh port
    /// is the client port + 1 unless the member chose another, so that is tried once,
    /// with a warning that says what to give instead; an address that still is not a mesh
    /// endpoint is given up with an error, since dialing it again cannot help.
    pub(super) async fn join(self: Arc<Self>, mut addr: SocketAddr, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(200);
        let mut joined = false;
        let mut tried_next_port = false;
        loop {
            // Dialed again whenever no link to it stands: after a partition heals, the
            // join addresses are how the two sides find each other again.
            let linked = lock(&self.links).values().any(|l| l.addr == addr);
            if !linked {
                match self.clone().dial(addr, None).await {
                    Ok(peer) => {
                        if !joined {
                            tracing::info!(%addr, peer = %peer.id, "joined the mesh");
                        }
                        joined = true;
                        delay = REJOIN_EVERY;
                    }
                    Err(DialError::NotMesh) => {
                        self.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                        let next = addr.port().checked_add(1).map(|p| SocketAddr::new(addr.ip(), p));
                        match next.filter(|_| !tried_next_port) {
                            Some(next) => {
                                tracing::warn!(
                                    %addr,
                                    "{addr} is a client port (it speaks fovea's client protocol, not the mesh's); \
                                     trying {next}, the mesh port by default (client port + 1). \
                                     Give --join with the member's mesh address (its --mesh-listen) to skip this"
                                );
                                tried_next_port = true;
                                addr = next;
                                continue;
                            }
                            None => {
                                tracing::error!(
                                    %addr,
                                    "{addr} is not a mesh endpoint (it refused the mesh protocol): not joining \
                                     through it. Give --join the member's mesh address: its --mesh-listen, by \
                                     default its client port + 1"
                                );
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        self.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                        if !joined {
                            tracing::warn!(%addr, error = %e, "cannot reach mesh member; retrying in {delay:?}");
                        }
                        delay = (delay * 2).min(REJOIN_EVERY);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens a link to `addr`. `expect`: the node id the DHT believes lives there.
    pub(super) async fn dial(self: Arc<Self>, addr: SocketAddr, expect: Option<NodeId>) -> Result<Contact, DialError> {
        let connecting = self
            .endpoint
            .connect(self.clients.for_peer(addr).clone(), addr, "fovea-mesh")
            .map_err(|e| e.to_string())?;
        let attempt = async {
            let conn = connecting.await.map_err(|e| match e {
                ConnectionError::ConnectionClosed(c) if refused_alpn(c.error_code) => DialError::NotMesh,
                e => DialError::Failed(e.to_string()),
            })?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            self.send_hello(&conn, &mut send).await?;
            let (peer, deframer) = self.read_hello(&conn, &mut recv).await?;
            Ok::<_, DialError>((conn, send, recv, peer, deframer))
        };
        let (conn, send, recv, peer, deframer) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.map_err(|_| "handshake timed out".to_owned())??;
        if let Some(expect) = expect {
            if expect != peer.id {
                tracing::debug!(%addr, expected = %expect, got = %peer.id, "a different node answers at this address");
            }
        }
        self.clone().open_link(conn, send, recv, deframer, peer, true)?;
        Ok(peer)
    }

    pub(super) async fn accept(self: Arc<Self>, incoming: Incoming) -> Result<(), String> {
        let server = self.servers.for_peer(incoming.remote_address()).clone();
        let conn = match incoming.accept_with(server) {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // A TLS failure here is a peer without an acceptable certificate (CA mode).
                self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let (peer, deframer) = self.read_hello(&conn, &mut recv).await?;
        self.send_hello(&conn, &mut send).await?;
        self.open_link(conn, send, recv, deframer, peer, false)
    }

    fn proof(&self, conn: &Connection, sender: &NodeId) -> Result<Bytes, String> {
        let Some(secret) = &self.secret else { return Ok(Bytes::new()) };
        let mut exported = [0u8; 32];
        conn.export_keying_material(&mut exported, EXPORTER_LABEL, &sender.0)
            .map_err(|_| "TLS exporter unavailable".to_owned())?;
        Ok(Bytes::copy_from_slice(ring::hmac::sign(secret, &exported).as_ref()))
    }

    async fn send_hello(&self, conn: &Connection, send: &mut SendStream) -> Result<(), String> {
        let hello = Frame::MeshHello(MeshHello {
            version: MESH_VERSION,
            node_id: Bytes::copy_from_slice(&self.local.id.0),
            mesh_addr: self.local.addr.to_string(),
            name: self.name.clone(),
            proof: self.proof(conn, &self.local.id)?,
        });
        send.write_all(hello.to_bytes()).await.map_err(|e| e.to_string())
    }

    /// Reads and checks the peer's `MESH_HELLO`: its id must be its certificate's key, and
    /// its proof must verify under our secret. Refusals close the connection and count.
    async fn read_hello(&self, conn: &Connection, recv: &mut RecvStream) -> Result<(Contact, Deframer), String> {
        let refuse = |why: &str| {
            self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
            conn.close(
                VarInt::from_u64(ErrorCode::AuthFailed.to_u64()).unwrap_or(VarInt::from_u32(0)),
                b"not a member",
            );
            why.to_owned()
        };
        let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
        let frame = loop {
            match deframer.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(refuse(&format!("malformed MESH_HELLO: {e}"))),
            }
            let mut chunk = [Bytes::new()];
            match recv.read_chunks(&mut chunk).await {
                Ok(Some(_)) => deframer.push(std::mem::take(&mut chunk[0])),
                Ok(None) => return Err(refuse("stream ended before MESH_HELLO")),
                Err(e) => return Err(e.to_string()),
            }
        };
        let Frame::MeshHello(hello) = frame else { return Err(refuse("the first frame must be MESH_HELLO")) };
        let Ok(id) = <[u8; 32]>::try_from(&hello.node_id[..]) else { return Err(refuse("bad node id")) };
        let id = NodeId(id);
        let cert_id = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(crate::transport::tls::public_key_id));
        if cert_id != Some(id.0) {
            return Err(refuse("node id does not match the certificate"));
        }
        // With a secret, the proof must verify; with a CA, the TLS handshake already
        // checked the peer's certificate chain. With both, both must hold.
        if let Some(secret) = &self.secret {
            let mut exported = [0u8; 32];
            conn.export_keying_material(&mut exported, EXPORTER_LABEL, &id.0)
                .map_err(|_| "TLS exporter unavailable".to_owned())?;
            if ring::hmac::verify(secret, &exported, &hello.proof).is_err() {
                return Err(refuse("wrong mesh secret"));
            }
        }
        let addr: SocketAddr = hello.mesh_addr.parse().map_err(|_| refuse("bad mesh address"))?;
        // A node listening on a wildcard address is reached where its packets come from.
        let addr =
            if addr.ip().is_unspecified() { SocketAddr::new(conn.remote_address().ip(), addr.port()) } else { addr };
        if id == self.local.id {
            return Err(refuse("connected to itself"));
        }
        Ok((Contact { id, addr }, deframer))
    }
}

/// Whether a close is the TLS alert `no_application_protocol` (120) as QUIC carries it
/// (RFC 9001 §4.8): the dialed endpoint offers none of our ALPNs.
fn refused_alpn(code: quinn_proto::TransportErrorCode) -> bool {
    code == quinn_proto::TransportErrorCode::crypto(120)
}

/// Why a dial failed.
#[derive(Debug)]
pub(super) enum DialError {
    /// The address answered but refused the mesh protocol (no common ALPN): most likely
    /// a node's client port.
    NotMesh,
    Failed(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::NotMesh => f.write_str("not a mesh endpoint (it refused the mesh protocol)"),
            DialError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for DialError {
    fn from(why: String) -> Self {
        DialError::Failed(why)
    }
}
