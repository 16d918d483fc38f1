//! Test helpers: in-process nodes on ephemeral loopback ports, SDK clients that trust them,
//! and a raw protocol client for feeding nodes bad input.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

pub mod http;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fovea_client::{Client, ConnectOptions};
use fovea_core::frame::{Hello, VERSION};
use fovea_core::{Deframer, Frame};
use fovea_node::{Limits, Node, NodeConfig, StatsHandle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything a test waits for; a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestNode {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub stats: StatsHandle,
    pub admin: SocketAddr,
    pub reloader: fovea_node::Reloader,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub dir: Arc<tempfile::TempDir>,
    pub mesh: Option<Arc<fovea_node::mesh::Mesh>>,
    /// The MCP endpoint (every test node serves one).
    pub mcp: SocketAddr,
    /// The TLS-over-TCP transport's URL (`tls://…`; every test node serves one).
    pub tls_url: String,
    /// The WebSocket transport's URL (`ws://…`, loopback: plain; every test node serves one).
    pub ws_url: String,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> TestNode {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_at("127.0.0.1:0".parse().unwrap(), dir, limits).await
    }

    /// Starts a node whose realms are declared by `toml` (a configuration file's text).
    pub async fn start_with_realms(toml: &str) -> TestNode {
        let realms = fovea_node::config::file::parse_realms(toml, "test.toml").expect("valid realms");
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_config("127.0.0.1:0".parse().unwrap(), dir, Limits::default(), Some(realms), None).await
    }

    /// Starts a node whose MCP endpoint has `mcp` as its configuration (address replaced).
    pub async fn start_with_mcp(mut mcp: fovea_node::McpConfig) -> TestNode {
        mcp.listen = "127.0.0.1:0".parse().unwrap();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_full("127.0.0.1:0".parse().unwrap(), dir, Limits::default(), None, None, Some(mcp)).await
    }

    /// Starts a node at `addr` with state in `dir` (reuse both to "restart" a node).
    pub async fn start_at(addr: SocketAddr, dir: Arc<tempfile::TempDir>, limits: Limits) -> TestNode {
        Self::start_config(addr, dir, limits, None, None).await
    }

    /// Two nodes of one mesh, the second joined through the first (a provider on one, an
    /// agent or caller on the other).
    pub async fn start_two() -> (TestNode, TestNode) {
        const SECRET: &str = "a mesh secret of some length";
        let a = TestNode::start_mesh(SECRET, &[]).await;
        let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
        (a, b)
    }

    /// Starts a mesh node on ephemeral ports that joins through `join` (mesh addresses).
    pub async fn start_mesh(secret: &str, join: &[SocketAddr]) -> TestNode {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_mesh_in(dir, secret, join).await
    }

    /// As [`TestNode::start_mesh`], with state in `dir` (reuse it to restart a node as itself).
    pub async fn start_mesh_in(dir: Arc<tempfile::TempDir>, secret: &str, join: &[SocketAddr]) -> TestNode {
        Self::start_mesh_realms(dir, secret, join, None).await
    }

    /// A mesh node with `mesh` as its whole mesh configuration (its listen address is
    /// replaced by an ephemeral one).
    pub async fn start_mesh_config(mut mesh: fovea_node::MeshConfig) -> TestNode {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        mesh.listen = "127.0.0.1:0".parse().unwrap();
        Self::start_config("127.0.0.1:0".parse().unwrap(), dir, Limits::default(), None, Some(mesh)).await
    }

    /// A mesh node whose realms are declared by `realms` (a configuration file's text).
    pub async fn start_mesh_realms(
        dir: Arc<tempfile::TempDir>,
        secret: &str,
        join: &[SocketAddr],
        realms: Option<&str>,
    ) -> TestNode {
        let mut mesh = fovea_node::MeshConfig::new("127.0.0.1:0".parse().unwrap(), secret);
        mesh.join = join.to_vec();
        let realms = realms.map(|t| fovea_node::config::file::parse_realms(t, "test.toml").expect("valid realms"));
        Self::start_config("127.0.0.1:0".parse().unwrap(), dir, Limits::default(), realms, Some(mesh)).await
    }

    /// A mesh node whose client port is `p` and mesh port `p + 1`, the default layout of
    /// `fovea node` (found free at random; retried if another process takes one).
    pub async fn start_mesh_adjacent(secret: &str) -> TestNode {
        for _ in 0..50 {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = probe.local_addr().unwrap().port();
            let Some(next) = p.checked_add(1) else { continue };
            let Ok(second) = std::net::UdpSocket::bind(("127.0.0.1", next)) else { continue };
            drop((probe, second));
            let dir = Arc::new(tempfile::tempdir().unwrap());
            let mesh = fovea_node::MeshConfig::new(SocketAddr::from(([127, 0, 0, 1], next)), secret);
            let addr = SocketAddr::from(([127, 0, 0, 1], p));
            return Self::start_config(addr, dir, Limits::default(), None, Some(mesh)).await;
        }
        panic!("no two adjacent free UDP ports on loopback");
    }

    /// The node's mesh address (for others to join through).
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh.as_ref().expect("a mesh node").local().addr
    }

    async fn start_config(
        addr: SocketAddr,
        dir: Arc<tempfile::TempDir>,
        limits: Limits,
        realms: Option<Vec<fovea_node::auth::RealmConfig>>,
        mesh: Option<fovea_node::MeshConfig>,
    ) -> TestNode {
        Self::start_full(addr, dir, limits, realms, mesh, None).await
    }

    async fn start_full(
        addr: SocketAddr,
        dir: Arc<tempfile::TempDir>,
        limits: Limits,
        realms: Option<Vec<fovea_node::auth::RealmConfig>>,
        mesh: Option<fovea_node::MeshConfig>,
        mcp: Option<fovea_node::McpConfig>,
    ) -> TestNode {
        let mut config = NodeConfig::new(dir.path());
        config.listen = addr;
        config.name = "test-node".into();
        config.limits = limits;
        config.realms = realms;
        config.admin = Some("127.0.0.1:0".parse().unwrap());
        config.mesh = mesh;
        config.tcp = Some("127.0.0.1:0".parse().unwrap());
        config.ws = Some(fovea_node::config::WsConfig::new("127.0.0.1:0".parse().unwrap()));
        config.mcp = Some(mcp.unwrap_or_else(|| {
            let mut mcp = fovea_node::McpConfig::new("127.0.0.1:0".parse().unwrap());
            mcp.call_timeout = Duration::from_secs(3);
            mcp
        }));
        let node = Node::bind(config).expect("node binds");
        let mcp = node.mcp_addr().expect("mcp endpoint on");
        let mesh = node.mesh();
        let addr = node.local_addr();
        let urls = node.stream_urls();
        let find = |scheme: &str| urls.iter().find(|u| u.starts_with(scheme)).cloned().expect("transport on");
        let (tls_url, ws_url) = (find("tls://"), find("ws://"));
        let cert = node.self_signed_cert().unwrap().to_owned();
        let stats = node.stats();
        let admin = node.admin_addr().expect("admin endpoint on");
        let reloader = node.reloader();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            node.run(token).await.unwrap();
        });
        TestNode { addr, cert, stats, admin, reloader, shutdown, task, dir, mesh, mcp, tls_url, ws_url }
    }

    pub fn url(&self) -> String {
        format!("quic://{}", self.addr)
    }

    pub fn options(&self) -> ConnectOptions {
        ConnectOptions::new().ca_file(&self.cert)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url(), self.options()).await.expect("client connects")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task).await.expect("node stops in time").unwrap();
    }
}

/// Waits for `cond` to hold, polling; panics after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that speaks the protocol by hand, to send what the SDK never would.
pub struct RawClient {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    deframer: Deframer,
    _endpoint: quinn::Endpoint,
}

impl RawClient {
    /// Connects and opens the control stream, without sending anything.
    pub async fn connect(node: &TestNode) -> RawClient {
        let pem = std::fs::read(&node.cert).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"fovea/1".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = endpoint.connect(node.addr, "localhost").unwrap().await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        RawClient { conn, send, recv, deframer: Deframer::new(fovea_core::limits::MAX_FRAME), _endpoint: endpoint }
    }

    /// Connects and completes the handshake.
    pub async fn handshake(node: &TestNode) -> RawClient {
        Self::handshake_at(node, VERSION).await
    }

    /// Connects and completes the handshake, offering protocol `version`.
    pub async fn handshake_at(node: &TestNode, version: u64) -> RawClient {
        let mut c = Self::connect(node).await;
        c.send_frame(&Frame::Hello(Hello {
            version,
            realm: "default".into(),
            token: Bytes::new(),
            name: "raw".into(),
        }))
        .await;
        match c.next_frame().await {
            Some(Frame::Welcome(_)) => c,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    pub async fn send_frame(&mut self, f: &Frame) {
        self.send.write_all(&f.to_bytes()).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.send.write_all(bytes).await;
    }

    /// The next frame from the node, or `None` if the stream or connection ended.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self.deframer.next_frame().expect("node sends valid frames") {
                    return Some(f);
                }
                match self.recv.read_chunk(65536, true).await {
                    Ok(Some(c)) => self.deframer.push(c.bytes),
                    _ => return None,
                }
            }
        })
        .await
        .expect("node answers in time")
    }

    /// Waits for the node to close the connection and returns its application close code
    /// and reason.
    pub async fn close_reason(&self) -> Option<(u64, String)> {
        match tokio::time::timeout(WAIT, self.conn.closed()).await.expect("node closes in time") {
            quinn::ConnectionError::ApplicationClosed(c) => {
                Some((c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into_owned()))
            }
            _ => None,
        }
    }

    /// Waits for the node to close the connection and returns its application close code.
    pub async fn close_code(&self) -> Option<u64> {
        match tokio::time::timeout(WAIT, self.conn.closed()).await.expect("node closes in time") {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

/// Waits until the async condition `cond` holds, failing after 30 s (mesh convergence
/// involves lookups and link timeouts).
pub async fn converges<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
