//! The session's stream, whatever carries it: QUIC's control stream, TLS over TCP, or a
//! WebSocket (docs/PROTOCOL.md §1.1, §1.2). The bytes are the same on all; what differs is how a
//! connection is opened and how the node's close reaches us (QUIC's close frame, or a
//! last `GOAWAY` before the stream ends).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fovea_core::ErrorCode;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use quinn::{ConnectionError, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::url::Scheme;
use crate::{ClientError, Inner};

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
type BoxIo = Box<dyn Io>;
type Ws = WebSocketStream<BoxIo>;

/// Largest read from a TLS stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// Largest WebSocket message this client sends (more bytes go in more messages).
const WS_MESSAGE: usize = 256 * 1024;

/// The receiving side of the session's stream.
pub(crate) enum Reader {
    Quic(quinn::RecvStream),
    Tls(Box<(ReadHalf<BoxIo>, BytesMut)>),
    Ws(Box<SplitStream<Ws>>),
}

/// The sending side of the session's stream.
pub(crate) enum Writer {
    Quic(quinn::SendStream),
    Tls(Box<WriteHalf<BoxIo>>),
    Ws(Box<SplitSink<Ws, Message>>),
}

/// Opens a connection to the node and its session stream (before `HELLO`). The QUIC
/// connection comes back too: its close carries the node's code.
pub(crate) async fn open(inner: &Inner) -> Result<(Option<quinn::Connection>, Reader, Writer), ClientError> {
    let url = &inner.url;
    let shown = url.to_string();
    let addr = crate::session::resolve(url).await?;
    if url.scheme == Scheme::Quic {
        let endpoint = inner.endpoint.as_ref().ok_or_else(|| ClientError::Connection("no QUIC endpoint".into()))?;
        let connecting = endpoint
            .connect_with(inner.quic.for_peer(addr).clone(), addr, &url.host)
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let conn = connecting.await.map_err(|e| map_quic_error(&shown, e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| map_quic_error(&shown, e))?;
        return Ok((Some(conn), Reader::Quic(recv), Writer::Quic(send)));
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoNode { url: shown.clone(), timeout: std::time::Duration::ZERO }
        }
        _ => ClientError::Connection(format!("{shown}: {e}")),
    })?;
    let _ = tcp.set_nodelay(true);
    // As the node does (docs/PROTOCOL.md §1.1): a vanished node is noticed in about 25 s.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(10))
        .with_interval(std::time::Duration::from_secs(5))
        .with_retries(3);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let io: BoxIo = match url.scheme {
        Scheme::Tls | Scheme::Wss => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| ClientError::Tls(format!("{}: {e}", url.host)))?;
            let connector = tokio_rustls::TlsConnector::from(inner.tls.clone());
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                let reason = e.to_string();
                if reason.contains("certificate") || reason.contains("Certificate") {
                    ClientError::Untrusted { url: shown.clone(), reason }
                } else {
                    ClientError::Connection(format!("TLS handshake with {shown}: {reason}"))
                }
            })?;
            Box::new(tls)
        }
        _ => Box::new(tcp),
    };
    if url.scheme == Scheme::Tls {
        let (r, w) = tokio::io::split(io);
        return Ok((None, Reader::Tls(Box::new((r, BytesMut::new()))), Writer::Tls(Box::new(w))));
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(fovea_core::limits::MAX_FRAME + 64 * 1024))
        .max_frame_size(Some(fovea_core::limits::MAX_FRAME + 64 * 1024));
    let (ws, _) = tokio_tungstenite::client_async_with_config(shown.as_str(), io, Some(config))
        .await
        .map_err(|e| ClientError::Connection(format!("WebSocket upgrade at {shown}: {e}")))?;
    let (w, r) = ws.split();
    Ok((None, Reader::Ws(Box::new(r)), Writer::Ws(Box::new(w))))
}

/// The rustls settings for a stream transport: the QUIC ones with the ALPN it uses
/// (`fovea/1` over TCP, `http/1.1` for a WebSocket, as a proxy expects).
pub(crate) fn stream_tls(mut crypto: rustls::ClientConfig, scheme: Scheme) -> Arc<rustls::ClientConfig> {
    if scheme == Scheme::Wss {
        crypto.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Arc::new(crypto)
}

/// What a failed QUIC connection means to the user.
pub(crate) fn map_quic_error(url: &str, e: ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let code = ErrorCode::from_u64(c.error_code.into_inner());
            if code == ErrorCode::AuthFailed {
                return ClientError::AuthFailed;
            }
            ClientError::Closed { code, reason: String::from_utf8_lossy(&c.reason).into_owned() }
        }
        ConnectionError::TransportError(t)
            if t.code.to_string().contains("CRYPTO") || t.reason.contains("certificate") =>
        {
            ClientError::Untrusted { url: url.to_owned(), reason: t.reason }
        }
        ConnectionError::TimedOut => ClientError::NoNode { url: url.to_owned(), timeout: std::time::Duration::ZERO },
        other => ClientError::Connection(other.to_string()),
    }
}

/// The node's close of a QUIC connection as text.
pub(crate) fn describe_close(code: ErrorCode, reason: &str) -> String {
    format!("closed by the node: {code}{}", crate::fmt_reason(reason))
}

impl Reader {
    /// Reads what arrived into the first slots of `chunks`; how many, or `None` when the
    /// node ended the stream. An error is said as the user should read it.
    pub(crate) async fn read_chunks(&mut self, chunks: &mut [Bytes]) -> Result<Option<usize>, String> {
        match self {
            Reader::Quic(r) => match r.read_chunks(chunks).await {
                Ok(n) => Ok(n),
                Err(quinn::ReadError::ConnectionLost(ConnectionError::ApplicationClosed(c))) => {
                    let code = ErrorCode::from_u64(c.error_code.into_inner());
                    Err(describe_close(code, &String::from_utf8_lossy(&c.reason)))
                }
                Err(e) => Err(e.to_string()),
            },
            Reader::Tls(state) => {
                let (half, buf) = &mut **state;
                buf.reserve(READ_CHUNK);
                match half.read_buf(buf).await {
                    Ok(0) => Ok(None),
                    Ok(_) => {
                        chunks[0] = buf.split().freeze();
                        Ok(Some(1))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Reader::Ws(s) => loop {
                match s.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        chunks[0] = b;
                        return Ok(Some(1));
                    }
                    Some(Ok(Message::Text(_))) => return Err("the node sent a text message".into()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                }
            },
        }
    }
}

impl Writer {
    /// Writes every chunk, in order.
    pub(crate) async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), String> {
        match self {
            Writer::Quic(w) => w.write_all_chunks(chunks).await.map_err(|e| e.to_string()),
            Writer::Tls(w) => {
                for c in chunks.iter() {
                    w.write_all(c).await.map_err(|e| e.to_string())?;
                }
                w.flush().await.map_err(|e| e.to_string())
            }
            Writer::Ws(w) => {
                // Messages of at most WS_MESSAGE bytes, cut anywhere (they are a byte
                // stream): the node refuses one over its frame limit + 64 KiB (§1.2).
                for message in fovea_core::outbuf::cut_messages(chunks, WS_MESSAGE) {
                    w.feed(Message::Binary(message)).await.map_err(|e| e.to_string())?;
                }
                w.flush().await.map_err(|e| e.to_string())
            }
        }
    }

    /// Writes `bytes`.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.write_all_chunks(&mut [Bytes::copy_from_slice(bytes)]).await
    }

    /// Ends the stream: QUIC's FIN, TLS close_notify, a WebSocket close.
    pub(crate) async fn finish(&mut self) {
        match self {
            Writer::Quic(w) => {
                let _ = w.finish();
            }
            Writer::Tls(w) => {
                let _ = w.shutdown().await;
            }
            Writer::Ws(w) => {
                let _ = w.close().await;
            }
        }
    }
}

/// Closes a QUIC connection (the stream transports close with their stream).
pub(crate) fn close_quic(conn: Option<&quinn::Connection>, reason: &[u8]) {
    if let Some(c) = conn {
        c.close(VarInt::from_u32(0), reason);
    }
}
