//! Client sessions over byte streams, for networks and programs that cannot use QUIC: TLS
//! over TCP, and WebSocket (over TLS, or plain on loopback). Both carry exactly the bytes
//! of the QUIC control stream (docs/PROTOCOL.md §1.1, §1.2); the session reads and writes through
//! [`Reader`] and [`Writer`] whatever the transport, and ends it through [`Link`].
//!
//! The QUIC variants are the common case and stay unboxed; the others are boxed so that
//! an idle QUIC session does not grow by their size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fovea_core::frame::GoAway;
use fovea_core::{ErrorCode, Frame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::quic;

/// How a client reached the node; a label in metrics, `/connections` and `fovea stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Quic,
    /// TLS 1.3 over TCP.
    Tls,
    /// WebSocket, plain (loopback, or behind a proxy that terminates TLS).
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Every transport, in the order metrics list them.
    pub const ALL: [Transport; 4] = [Transport::Quic, Transport::Tls, Transport::Ws, Transport::Wss];

    /// The label: `quic`, `tls`, `ws` or `wss` (also the URL scheme clients use).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Index into per-transport counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Any byte stream a session can run on (TCP, or TLS over it).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub(crate) type BoxIo = Box<dyn Io>;
type Ws = WebSocketStream<BoxIo>;

/// Largest read from a TLS stream at once; reads start at [`READ_FIRST`] and double while
/// they fill the buffer, so an idle session holds a small one.
const READ_CHUNK: usize = 64 * 1024;
const READ_FIRST: usize = 2 * 1024;

/// Largest WebSocket message the node sends.
const WS_MESSAGE: usize = 256 * 1024;

/// How long a closing stream transport gets to deliver its last `GOAWAY`.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The WebSocket settings of a session: messages bounded by the largest frame plus room
/// for a batch's small frames around it (docs/PROTOCOL.md §1.2).
pub(crate) fn ws_config(max_frame: usize) -> WebSocketConfig {
    let max = max_frame.saturating_add(64 * 1024);
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .max_write_buffer_size(4 * max)
        // The read buffer is allocated per connection up front (128 KiB by default): an idle
        // session must stay small. Larger messages are read in more steps.
        .read_buffer_size(8 * 1024)
}

/// The receiving side of a session's stream.
pub(crate) enum Reader {
    Quic(quic::RecvStream),
    /// The read half, its buffer, and the size of the next read.
    Tls(Box<(ReadHalf<BoxIo>, BytesMut, usize)>),
    Ws(Box<SplitStream<Ws>>),
}

/// The sending side of a session's stream.
pub(crate) enum Writer {
    Quic(quic::SendStream),
    Tls(Box<WriteHalf<BoxIo>>),
    Ws(Box<SplitSink<Ws, Message>>),
}

/// The connection under a session: its address, the client's certificate, and how it
/// ends.
pub(crate) enum Link {
    Quic(quic::Connection),
    Stream(Box<StreamLink>),
}

/// A stream transport's connection facts.
pub(crate) struct StreamLink {
    pub transport: Transport,
    pub remote: SocketAddr,
    /// The client's certificate (DER), if it presented one (TLS and WSS only).
    pub client_cert: Option<Vec<u8>>,
}

/// Why a read failed: the connection was lost (`NO_ERROR`: nothing to tell the client),
/// or the client broke the transport's rules (the code to close with).
#[derive(Debug)]
pub(crate) struct ReadFailed {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Reader {
    /// A reader over the read half of a TLS stream.
    pub(crate) fn tls(half: ReadHalf<BoxIo>) -> Reader {
        Reader::Tls(Box::new((half, BytesMut::new(), READ_FIRST)))
    }

    /// Reads what arrived into the first slots of `chunks` (at least one slot); how many,
    /// or `None` when the client ended the stream.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken from the transport until it is returned.
    pub(crate) async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> Result<Option<usize>, ReadFailed> {
        let lost = |e: String| ReadFailed { code: ErrorCode::NoError, message: e };
        match self {
            Reader::Quic(r) => r.read_chunks(chunks).await.map_err(|e| lost(e.to_string())),
            Reader::Tls(state) => {
                let (half, buf, next) = &mut **state;
                buf.reserve(*next);
                match half.read_buf(buf).await {
                    Ok(0) => Ok(None),
                    Ok(n) => {
                        *next = if n >= *next { (*next * 2).min(READ_CHUNK) } else { READ_FIRST };
                        chunks[0] = buf.split().freeze();
                        Ok(Some(1))
                    }
                    Err(e) => Err(lost(e.to_string())),
                }
            }
            Reader::Ws(s) => loop {
                match s.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Binary(b))) if b.is_empty() => {}
                    Some(Ok(Message::Binary(b))) => {
                        chunks[0] = b;
                        return Ok(Some(1));
                    }
                    // Answered by the WebSocket layer itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(_))) => {
                        let message = "a text message: fovea's WebSocket carries binary messages only".into();
                        return Err(ReadFailed { code: ErrorCode::ProtocolError, message });
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                        let message = format!("{e} (docs/PROTOCOL.md §1.2: split larger batches)");
                        return Err(ReadFailed { code: ErrorCode::FrameTooLarge, message });
                    }
                    Some(Err(e)) => return Err(lost(e.to_string())),
                }
            },
        }
    }

    /// One chunk of what arrived (the handshake's reads); `None` at the end.
    pub(crate) async fn read_chunk(&mut self) -> Result<Option<Bytes>, ReadFailed> {
        let mut one = [Bytes::new()];
        Ok(self.read_chunks(&mut one).await?.map(|_| std::mem::take(&mut one[0])))
    }
}

impl Writer {
    /// Writes every chunk, in order; empties their slots.
    ///
    /// # Cancel safety
    /// Not cancel safe: part of the chunks may have been written.
    pub(crate) async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), String> {
        match self {
            Writer::Quic(w) => w.write_all_chunks(chunks).await.map_err(|e| e.to_string()),
            Writer::Tls(w) => {
                for c in chunks.iter_mut() {
                    w.write_all(c).await.map_err(|e| e.to_string())?;
                    *c = Bytes::new();
                }
                w.flush().await.map_err(|e| e.to_string())
            }
            Writer::Ws(w) => {
                // Messages of at most WS_MESSAGE bytes, so that a client's limit holds
                // whatever the batch (docs/PROTOCOL.md §1.2).
                for message in fovea_core::outbuf::cut_messages(chunks, WS_MESSAGE) {
                    w.feed(Message::Binary(message)).await.map_err(|e| e.to_string())?;
                }
                w.flush().await.map_err(|e| e.to_string())
            }
        }
    }
}

impl Link {
    /// The client's address.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        match self {
            Link::Quic(c) => c.remote_address(),
            Link::Stream(s) => s.remote,
        }
    }

    /// How the client reached the node.
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Link::Quic(_) => Transport::Quic,
            Link::Stream(s) => s.transport,
        }
    }

    /// The client's certificate (DER), if it presented one.
    pub(crate) fn client_cert(&self) -> Option<Vec<u8>> {
        match self {
            Link::Quic(c) => c
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.first().map(|c| c.to_vec())),
            Link::Stream(s) => s.client_cert.clone(),
        }
    }

    /// The QUIC connection, for its path figures.
    pub(crate) fn quic(&self) -> Option<&quic::Connection> {
        match self {
            Link::Quic(c) => Some(c),
            Link::Stream(_) => None,
        }
    }

    /// Ends the connection with `code` and `reason`. QUIC says it in its close; a stream
    /// transport sends a last `GOAWAY` carrying them (given [`CLOSE_GRACE`] to leave:
    /// a client that stopped reading never gets it), then closes its stream (TLS
    /// close_notify, or a WebSocket close with code 4000 + `code`).
    pub(crate) async fn close(&self, writer: Option<Writer>, code: ErrorCode, reason: &str) {
        let writer = match (self, writer) {
            (Link::Quic(c), _) => return c.close(super::close_code(code), reason.as_bytes()),
            (Link::Stream(_), None) => return,
            (Link::Stream(_), Some(w)) => w,
        };
        let last = Frame::GoAway(GoAway { code, message: reason.to_owned() }).to_bytes();
        match writer {
            Writer::Quic(_) => {}
            Writer::Tls(mut w) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    w.write_all(&last).await?;
                    w.shutdown().await
                })
                .await;
            }
            Writer::Ws(mut w) => {
                let ws_code = if code == ErrorCode::NoError {
                    CloseCode::Normal
                } else {
                    CloseCode::from(4000u16.saturating_add(u16::try_from(code.to_u64()).unwrap_or(999)))
                };
                let close = CloseFrame { code: ws_code, reason: clip(reason, 123).to_owned().into() };
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    w.send(Message::Binary(last)).await?;
                    w.send(Message::Close(Some(close))).await?;
                    w.close().await
                })
                .await;
            }
        }
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The server side of a stream transport: TLS for `tls` and `wss`, the WebSocket
/// upgrade for `ws` and `wss`, with the origin check.
pub(crate) struct StreamServer {
    pub transport: Transport,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Origins a browser may open a WebSocket from (an absent `Origin` is a program, and
    /// is let in: it authenticates like any client).
    pub origins: Arc<Vec<String>>,
    pub max_frame: usize,
}

/// Why an accepted TCP connection did not become a session.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl StreamServer {
    /// Runs the TLS handshake and, for WebSocket, the upgrade on `tcp`.
    pub(crate) async fn accept(&self, tcp: tokio::net::TcpStream) -> Result<(Link, Reader, Writer), Refused> {
        let remote = tcp.peer_addr().map_err(|e| Refused(e.to_string()))?;
        tune(&tcp);
        let (io, client_cert): (BoxIo, Option<Vec<u8>>) = match &self.tls {
            Some(acceptor) => {
                let tls = acceptor.accept(tcp).await.map_err(|e| Refused(format!("TLS handshake: {e}")))?;
                let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                (Box::new(tls), cert)
            }
            None => (Box::new(tcp), None),
        };
        let link =
            |transport| Link::Stream(Box::new(StreamLink { transport, remote, client_cert: client_cert.clone() }));
        match self.transport {
            Transport::Tls | Transport::Quic => {
                let (r, w) = tokio::io::split(io);
                Ok((link(Transport::Tls), Reader::tls(r), Writer::Tls(Box::new(w))))
            }
            Transport::Ws | Transport::Wss => {
                let origins = self.origins.clone();
                // The callback's type is tungstenite's (`Result<Response, ErrorResponse>`).
                #[allow(clippy::result_large_err)]
                let check =
                    move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                        match req.headers().get("origin").map(|o| o.to_str().unwrap_or("")) {
                            Some(origin) if !origin_allowed(&origins, origin) => {
                                let mut refusal = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                                    Some(format!(
                                        "origin {origin:?} is not allowed; the node's --ws-allow-origin lists who is"
                                    )),
                                );
                                *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
                                Err(refusal)
                            }
                            _ => Ok(resp),
                        }
                    };
                let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check, Some(ws_config(self.max_frame)))
                    .await
                    .map_err(|e| Refused(format!("WebSocket upgrade: {e}")))?;
                let (w, r) = ws.split();
                Ok((link(self.transport), Reader::Ws(Box::new(r)), Writer::Ws(Box::new(w))))
            }
        }
    }
}

/// No Nagle delay (frames are batched already), and TCP keep-alive so that a peer that
/// vanished is noticed in about 25 s, as QUIC's idle timeout would (docs/PROTOCOL.md §1.1).
pub(crate) fn tune(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Whether a browser page from `origin` may connect: an exact entry, or an entry ending
/// in `:*` that matches any port of its host.
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix(":*") {
        Some(host) => {
            origin == host
                || origin.strip_prefix(host).is_some_and(|port| {
                    port.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
        }
        None => a == origin || a == "*",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_any_port() {
        let allowed = vec!["http://localhost:*".to_owned(), "https://app.example".to_owned()];
        assert!(origin_allowed(&allowed, "http://localhost:3000"));
        assert!(origin_allowed(&allowed, "http://localhost"));
        assert!(origin_allowed(&allowed, "https://app.example"));
        assert!(!origin_allowed(&allowed, "http://localhost.evil:3000"));
        assert!(!origin_allowed(&allowed, "http://localhost:3000x"));
        assert!(!origin_allowed(&allowed, "https://app.example.evil"));
        assert!(!origin_allowed(&allowed, "null"));
        assert!(origin_allowed(&["*".to_owned()], "https://anything"));
    }

    #[test]
    fn close_reasons_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 123), "abc");
    }
}
