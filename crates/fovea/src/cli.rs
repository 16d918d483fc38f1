//! The command line, declared once with clap derive. Every flag's doc is its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Quick start:
  fovea node                           # start a node on quic://127.0.0.1:4433
  fovea sub 'sensors.>'                # in a second shell: print matching messages
  fovea pub sensors.kitchen.temp 21.5  # in a third: publish one
  fovea serve demo.echo                # provide a procedure (echo)
  fovea call demo.echo hello           # call it

Exit status: 0 success, 1 error (the message says what to do next), 2 bad usage.";

/// fovea: a mesh for events, RPC and AI tools. One binary runs a node and talks to one.
#[derive(Debug, Parser)]
#[command(name = "fovea", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level (error, warn, info, debug, trace) or a RUST_LOG-style directive list [default: info].
    #[arg(long, global = true, env = "FOVEA_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log format: `text` for people, `json` (one object per line) for log collectors [default: text].
    #[arg(long, global = true, env = "FOVEA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    #[command(
        after_help = "Examples:\n  fovea node\n  fovea node --config fovea.toml --listen 0.0.0.0:4433 --cert node.pem --key node.key\n  fovea node --config fovea.toml --check-config"
    )]
    Node(Box<NodeArgs>),
    /// Publish a message (or one per line of stdin).
    #[command(
        after_help = "Examples:\n  fovea pub sensors.kitchen.temp 21.5\n  printf 'a\\nb\\n' | fovea pub logs.app\n  fovea pub -H unit=C sensors.kitchen.temp 21.5"
    )]
    Pub(PubArgs),
    /// Subscribe to a pattern and print each message as `TOPIC PAYLOAD`.
    #[command(
        after_help = "Patterns: `*` matches one segment, a final `>` one or more.\n\nExamples:\n  fovea sub 'sensors.>'\n  fovea sub 'sensors.*.temp' --count 1 --raw"
    )]
    Sub(SubArgs),
    /// Provide a procedure: echo each call's payload, or run a command per call.
    #[command(
        after_help = "Examples:\n  fovea serve demo.echo\n  fovea serve text.upper --exec 'tr a-z A-Z'\n  fovea serve math.add --exec ./add.py --concurrency 4\n\nWith --exec, each call runs `sh -c CMD` with the payload on stdin; its stdout is the\nanswer. A non-zero exit fails the call with code 0x1000 + the exit status and stderr as\nthe message. FOVEA_PROCEDURE and FOVEA_TIMEOUT_MS are set for the command, which is\nkilled at the caller's deadline."
    )]
    Serve(ServeArgs),
    /// Serve MCP on stdin/stdout for a desktop agent; attach existing MCP servers to the mesh.
    #[command(
        after_help = "Examples:\n  fovea mcp\n  fovea mcp --url quic://10.0.0.5:4433 --ca node.crt --realm acme --token $TOKEN\n  fovea mcp attach files -- npx -y @modelcontextprotocol/server-filesystem /srv/docs\n  fovea mcp attach gh --upstream-url https://example.com/mcp --bearer-file gh.token\n  fovea mcp approve files\n  fovea mcp status files\n\nIn an agent's configuration (Claude Desktop, Claude Code, Cursor):\n  {\"mcpServers\": {\"fovea\": {\"command\": \"fovea\", \"args\": [\"mcp\"]}}}\n\nLogs go to stderr; stdout carries only MCP messages.",
        args_conflicts_with_subcommands = true
    )]
    Mcp(McpCmd),
    /// Call a procedure and print its answer.
    #[command(
        after_help = "Examples:\n  fovea call demo.echo hello\n  echo '{\"a\":1}' | fovea call math.add --timeout 500ms\n\nExit status: 0 answered, 1 other error, 2 bad usage, 3 no provider, 4 timeout,\n5 the provider failed the call, 6 the provider disconnected, 7 busy."
    )]
    Call(CallArgs),
    /// Show a node's counters and rates (from its admin endpoint).
    #[command(
        after_help = "Examples:\n  fovea stats\n  fovea stats --watch\n  fovea stats --admin http://10.0.0.5:9600 --watch --interval 5s"
    )]
    Stats(StatsArgs),
    /// Manage token credentials.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage client-certificate credentials.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Measure throughput and latency (starts its own node unless --url is given).
    #[command(
        after_help = "Examples:\n  fovea bench pubsub\n  fovea bench pubsub --msgs 2000000 --size 1024 --compare-nats\n  fovea bench fanout --subs 100 --msgs 100000\n  fovea bench rpc --callers 64 --calls 200000\n  fovea bench rpc --callers 64 --calls 300000 --compare-nats --rounds 5\n  fovea bench conns --conns 100000\n  fovea bench startup\n  fovea bench mesh --msgs 500000 --calls 50000 --callers 16\n\nThe last line is key=value pairs, as the benchmark harness's nats.sh prints, for side-by-side comparison."
    )]
    Bench(BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token, and the `token_sha256` line that admits it, for a user in the node's config file.
    #[command(
        after_help = "Example:\n  fovea token new\n  # give the token to the client (--token / FOVEA_TOKEN);\n  # put the token_sha256 line in the user's [[realm.user]] table."
    )]
    New,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a new client certificate and key (NAME.crt, NAME.key) and print the `cert_sha256` line that admits it.
    #[command(
        after_help = "Example:\n  fovea cert new sensor-1 --out certs/\n  fovea pub sensors.sensor-1.temp 20 --realm acme --client-cert certs/sensor-1.crt --client-key certs/sensor-1.key"
    )]
    New {
        /// Name for the certificate (and its files).
        name: String,
        /// Directory to write the files to.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
    /// Write a new mesh CA (mesh-ca.crt, mesh-ca.key): nodes given --mesh-ca admit only
    /// nodes with a certificate it issued.
    #[command(after_help = "Example:
  fovea cert mesh-ca --out ca/
  fovea cert mesh-node n1 --ca-cert ca/mesh-ca.crt --ca-key ca/mesh-ca.key --out n1/
  fovea node --mesh-ca ca/mesh-ca.crt --mesh-cert n1/n1.crt --mesh-key n1/n1.key

Keep mesh-ca.key offline: whoever holds it can admit nodes to the mesh.")]
    MeshCa {
        /// Directory to write the files to.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node's mesh certificate (NAME.crt, NAME.key) from the mesh CA.
    MeshNode {
        /// The node's name (and the files').
        name: String,
        /// The mesh CA's certificate.
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// The mesh CA's key.
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// Directory to write the files to.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// UDP address to listen on [default: 127.0.0.1:4433]. Port 0 picks a free port (the ready line shows it).
    #[arg(long, env = "FOVEA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the node's state (self-signed certificate). Default: the platform data dir, e.g. ~/.local/share/fovea.
    #[arg(long, env = "FOVEA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain to serve instead of the self-signed one (needs --key).
    #[arg(long, env = "FOVEA_CERT", requires = "key", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, env = "FOVEA_KEY", requires = "cert", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The node's name, shown to clients. Default: the host name.
    #[arg(long, env = "FOVEA_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Admin HTTP endpoint (/metrics, /health, /ready, /info, /connections), or `off` [default: 127.0.0.1:9600].
    #[arg(long, env = "FOVEA_ADMIN", value_parser = parse_admin, value_name = "ADDR|off")]
    pub admin: Option<AdminAddr>,
    /// Bearer token the admin endpoint requires (all paths but /health); needed for a non-loopback --admin.
    #[arg(long, env = "FOVEA_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Configuration file: [node] settings, [limits], and realms with users and permissions (see README).
    #[arg(long, env = "FOVEA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With no realms configured, allow the open `default` realm on a non-loopback address.
    #[arg(long, env = "FOVEA_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Shared secret of the mesh this node belongs to (at least 16 characters; `fovea token
    /// new` makes one). Turns the mesh on: node-to-node links on --mesh-listen.
    #[arg(long, env = "FOVEA_MESH_SECRET", value_name = "SECRET", hide_env_values = true, help_heading = "Mesh")]
    pub mesh_secret: Option<String>,
    /// Admit only nodes with a certificate from this mesh CA (with or without a secret).
    #[arg(long, env = "FOVEA_MESH_CA", value_name = "FILE", requires_all = ["mesh_cert", "mesh_key"], help_heading = "Mesh")]
    pub mesh_ca: Option<PathBuf>,
    /// This node's mesh certificate, issued by --mesh-ca (`fovea cert mesh-node`).
    #[arg(long, env = "FOVEA_MESH_CERT", value_name = "FILE", requires = "mesh_key", help_heading = "Mesh")]
    pub mesh_cert: Option<PathBuf>,
    /// The key of --mesh-cert.
    #[arg(long, env = "FOVEA_MESH_KEY", value_name = "FILE", requires = "mesh_cert", help_heading = "Mesh")]
    pub mesh_key: Option<PathBuf>,
    /// UDP address for links from other nodes [default: the --listen address, port + 1].
    #[arg(long, env = "FOVEA_MESH_LISTEN", value_name = "ADDR", help_heading = "Mesh")]
    pub mesh_listen: Option<SocketAddr>,
    /// Join the mesh through these members' mesh addresses (any one that answers is enough),
    /// e.g. --join quic://10.0.0.1:4434,quic://10.0.0.2:4434.
    #[arg(long, env = "FOVEA_JOIN", value_name = "URL", value_delimiter = ',', help_heading = "Mesh")]
    pub join: Vec<String>,
    /// Failure detection: a linked node silent this long is probed. Shorter finds a dead
    /// node sooner for more probe traffic (docs/MESH.md, "Failure") [default: 500ms;
    /// config: [node] mesh_probe_interval].
    #[arg(long, env = "FOVEA_MESH_PROBE_INTERVAL", value_parser = parse_duration, value_name = "DURATION", help_heading = "Mesh")]
    pub mesh_probe_interval: Option<std::time::Duration>,
    /// A probe unanswered this long makes the node suspect and asks others to probe it:
    /// keep it above the links' round trip [default: 300ms; config: [node] mesh_probe_timeout].
    #[arg(long, env = "FOVEA_MESH_PROBE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", help_heading = "Mesh")]
    pub mesh_probe_timeout: Option<std::time::Duration>,
    /// A suspect heard from by no path this long is declared dead and stops being used
    /// [default: 700ms; config: [node] mesh_suspect_timeout].
    #[arg(long, env = "FOVEA_MESH_SUSPECT_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", help_heading = "Mesh")]
    pub mesh_suspect_timeout: Option<std::time::Duration>,
    /// Serve MCP (AI agents) over HTTP at http://ADDR/mcp [ADDR default: 127.0.0.1:8765]; `off`
    /// to disable what the config file's [mcp] table turns on. Tools are the realm's
    /// procedures registered with a description (fovea serve --description).
    #[arg(long, env = "FOVEA_MCP", value_parser = parse_admin, value_name = "ADDR|off", num_args = 0..=1,
          default_missing_value = "127.0.0.1:8765", help_heading = "MCP")]
    pub mcp: Option<AdminAddr>,
    /// Also serve clients over TLS 1.3 on TCP at ADDR (tls://ADDR), for networks that block
    /// UDP: the same frames, credentials and limits as QUIC; `off` to disable the config
    /// file's [config: [node] tcp].
    #[arg(long, env = "FOVEA_TCP", value_parser = parse_admin, value_name = "ADDR|off", help_heading = "Transports")]
    pub tcp: Option<AdminAddr>,
    /// Also serve clients over WebSocket at ADDR: ws:// on a loopback address, wss:// (the
    /// node's certificate) elsewhere; see --ws-tls. Browsers and the TypeScript SDK use it
    /// [config: [node] ws].
    #[arg(long, env = "FOVEA_WS", value_parser = parse_admin, value_name = "ADDR|off", help_heading = "Transports")]
    pub ws: Option<AdminAddr>,
    /// WebSocket over TLS: auto (plain on loopback only), on, or off (plain everywhere: only
    /// behind a proxy that terminates TLS) [default: auto; config: [node] ws_tls].
    #[arg(long, env = "FOVEA_WS_TLS", value_name = "auto|on|off", help_heading = "Transports")]
    pub ws_tls: Option<fovea_node::config::WsTls>,
    /// A web origin whose pages may open a WebSocket to the node (repeat, or separate with
    /// commas), besides loopback pages; `https://app.example:*` matches any port, `*` any
    /// origin [config: [node] ws_allowed_origins].
    #[arg(
        long = "ws-allow-origin",
        env = "FOVEA_WS_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ',',
        help_heading = "Transports"
    )]
    pub ws_allowed_origins: Vec<String>,
    /// Deadline of an MCP tool call [default: 60s; config: [mcp] call_timeout].
    #[arg(long, env = "FOVEA_MCP_CALL_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", help_heading = "MCP")]
    pub mcp_call_timeout: Option<std::time::Duration>,
    /// Longest time an idle worker watches the node's sockets before it sleeps: waking a
    /// sleeping thread costs tens of µs per hop (more on VMs). Adaptive: spinning stops when
    /// traffic comes in long gaps. 0 turns it off [default: 100us; config: [node] idle_spin].
    #[arg(long, env = "FOVEA_IDLE_SPIN", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_spin: Option<std::time::Duration>,
    /// Worker threads. The default leaves a core to the services beside the node (2 cores:
    /// one worker, RPC +20% over two; BENCHMARKS.md, "Worker threads"); a node with a host to
    /// itself can take every core [default: one fewer than the cores, at least 1; config:
    /// [node] workers].
    #[arg(long, env = "FOVEA_WORKERS", value_parser = parse_workers, value_name = "N")]
    pub workers: Option<usize>,
    /// Check the configuration file and exit (0 if it is valid) without starting a node.
    #[arg(long, requires = "config")]
    pub check_config: bool,
    /// Print the effective configuration (flags > environment > file > defaults) as a
    /// config file you can save and edit, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `--workers`: a thread count from 1 to [`MAX_WORKERS`].
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!("expected a worker count from 1 to {MAX_WORKERS}, e.g. --workers 2")),
    }
}

/// Most worker threads a node may be given: far above any core count that would use
/// them, low enough that a typo (`--workers 10000`) is caught rather than obeyed.
pub const MAX_WORKERS: usize = 1024;

/// Limit flags: each overrides the `[limits]` key of the same name in the config file.
/// docs/LIMITS.md says what happens at each limit.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits (see docs/LIMITS.md)")]
pub struct LimitArgs {
    /// Open client connections; more are closed with NODE_FULL [default: 100000].
    #[arg(long, env = "FOVEA_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Subscriptions per connection [default: 65536].
    #[arg(long, env = "FOVEA_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Registrations per connection [default: 4096].
    #[arg(long, env = "FOVEA_MAX_REGISTRATIONS", value_name = "N")]
    pub max_registrations: Option<usize>,
    /// Largest payload, bytes [default: 1048576].
    #[arg(long, env = "FOVEA_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// Most bytes one streamed request, answer or message may carry [default: 17179869184].
    #[arg(long, env = "FOVEA_MAX_STREAM_BYTES", value_name = "BYTES")]
    pub max_stream_bytes: Option<u64>,
    /// Largest frame, bytes [default: 1081344].
    #[arg(long, env = "FOVEA_MAX_FRAME", value_name = "BYTES")]
    pub max_frame: Option<usize>,
    /// Longest topic or name, bytes [default: 1024].
    #[arg(long, env = "FOVEA_MAX_TOPIC_LEN", value_name = "BYTES")]
    pub max_topic_len: Option<usize>,
    /// Most segments in a topic or name [default: 32].
    #[arg(long, env = "FOVEA_MAX_TOPIC_DEPTH", value_name = "N")]
    pub max_topic_depth: Option<usize>,
    /// Largest header block, bytes [default: 16384].
    #[arg(long, env = "FOVEA_MAX_HEADERS_LEN", value_name = "BYTES")]
    pub max_headers_len: Option<usize>,
    /// Bytes queued per connection before messages for it are dropped [default: 67108864].
    #[arg(long, env = "FOVEA_MAX_PENDING_BYTES", value_name = "BYTES")]
    pub max_pending_bytes: Option<usize>,
    /// On shutdown, how long clients get to leave after GOAWAY [default: 2s].
    #[arg(long, env = "FOVEA_DRAIN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Option<std::time::Duration>,
    /// How long a connection may keep dropping before it is closed as a slow consumer [default: 10s].
    #[arg(long, env = "FOVEA_SLOW_CONSUMER_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub slow_consumer_timeout: Option<std::time::Duration>,
    /// Calls in flight per caller connection [default: 1024].
    #[arg(long, env = "FOVEA_MAX_CALLS_IN_FLIGHT", value_name = "N")]
    pub max_calls_in_flight: Option<usize>,
    /// Requests in flight per provider connection [default: 1024].
    #[arg(long, env = "FOVEA_MAX_REQUESTS_IN_FLIGHT", value_name = "N")]
    pub max_requests_in_flight: Option<usize>,
    /// Longest call timeout honoured [default: 5m].
    #[arg(long, env = "FOVEA_MAX_CALL_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub max_call_timeout: Option<std::time::Duration>,
    /// Time allowed from the QUIC handshake to HELLO [default: 10s].
    #[arg(long, env = "FOVEA_HANDSHAKE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub handshake_timeout: Option<std::time::Duration>,
    /// Close connections silent for this long [default: 30s].
    #[arg(long, env = "FOVEA_IDLE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<std::time::Duration>,
    /// QUIC keep-alive interval [default: 10s].
    #[arg(long, env = "FOVEA_KEEP_ALIVE", value_parser = parse_duration, value_name = "DURATION")]
    pub keep_alive: Option<std::time::Duration>,
    /// Largest datagram sent to a client on loopback, bytes (1200-6500; network paths use
    /// 1452). Larger carries more messages per datagram [default: 6500].
    #[arg(long, env = "FOVEA_MAX_LOOPBACK_DATAGRAM", value_name = "BYTES")]
    pub max_loopback_datagram: Option<usize>,
}

impl LimitArgs {
    /// Overrides `limits` with every flag given.
    pub fn apply(&self, limits: &mut fovea_node::Limits) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { limits.$f = v; } )* };
        }
        set!(
            max_connections,
            max_subscriptions,
            max_registrations,
            max_payload,
            max_stream_bytes,
            max_frame,
            max_topic_len,
            max_topic_depth,
            max_headers_len,
            max_pending_bytes,
            slow_consumer_timeout,
            max_calls_in_flight,
            max_requests_in_flight,
            max_call_timeout,
            handshake_timeout,
            idle_timeout,
            keep_alive,
            drain_timeout,
            max_loopback_datagram
        );
    }
}

/// How a client reaches and authenticates to a node.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ClientArgs {
    /// The node to connect to.
    #[arg(long, env = "FOVEA_URL", default_value = fovea_client::DEFAULT_URL, value_name = "URL")]
    pub url: String,
    /// PEM file of the certificate (or CA) to trust. Default for a loopback URL: the local node's node.crt.
    #[arg(long, env = "FOVEA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Skip certificate verification. For tests only: anyone on the path can impersonate the node.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// The realm to join.
    #[arg(long, env = "FOVEA_REALM", default_value = "default", value_name = "NAME")]
    pub realm: String,
    /// The credential for the realm.
    #[arg(long, env = "FOVEA_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM client certificate to present (users with `cert_sha256` are identified by it; needs --client-key).
    #[arg(long, env = "FOVEA_CLIENT_CERT", requires = "client_key", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "FOVEA_CLIENT_KEY", requires = "client_cert", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub connect_timeout: f64,
}

#[derive(Debug, Args)]
pub struct PubArgs {
    /// Topic to publish to, e.g. sensors.kitchen.temp (no wildcards).
    pub topic: String,
    /// The payload. Without it, each line of stdin is published as one message.
    pub payload: Option<String>,
    /// Publish the contents of this file as one message, unchanged (`-`: all of stdin). A
    /// file larger than the node's max_payload is streamed as it is read (nodes of protocol
    /// 6); `fovea sub --raw` writes it out the same way.
    #[arg(long, value_name = "PATH", conflicts_with = "payload")]
    pub file: Option<std::path::PathBuf>,
    /// A header, as NAME=VALUE. Repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct SubArgs {
    /// Pattern to subscribe to, e.g. 'sensors.>' (quote it: `>` and `*` are special in shells).
    pub pattern: String,
    /// Exit after this many messages.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Print only the payload, exactly as published: no topic, nothing added (with
    /// `--count 1`, a file sent with `fovea pub --file` comes out unchanged, written as
    /// its parts arrive, whatever its size).
    #[arg(long)]
    pub raw: bool,
    /// Print headers too, as ` [name=value …]` after the topic.
    #[arg(long)]
    pub headers: bool,
    /// Join queue group NAME: subscribers with the same pattern and group share the messages, each going to one of them.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMode {
    /// One publisher, one subscriber.
    Pubsub,
    /// One publisher, --subs subscribers (each its own connection) on the same topic.
    Fanout,
    /// Concurrent callers, one provider that echoes.
    Rpc,
    /// --conns idle client connections: the node's memory per connection.
    Conns,
    /// Time from starting `fovea node` to its ready line, over --runs starts.
    Startup,
    /// Two nodes in a mesh: pub/sub and RPC across the link, and discovery latency.
    Mesh,
    /// A fast and a stalled subscriber, against a run with the fast one alone.
    SlowConsumer,
    /// Mixed pub/sub and RPC for --duration, sampling the node's memory.
    Soak,
    /// MCP tools/call over HTTP for --duration (default 10s) from --callers connections, the
    /// tool served through the mesh by a provider on the node; --sessions N also measures
    /// the node's memory per idle 2025-11-25 session.
    Mcp,
    /// Streamed calls and messages through one node and across a mesh link: one --bytes
    /// transfer each way (caller → provider, provider → caller) and one published message
    /// of --bytes (publisher → subscriber), with the node's memory growth, then an answer of
    /// --msgs chunks of --size bytes (chunks/s) and the time to a first chunk.
    Stream,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which workload to run.
    #[arg(value_enum)]
    pub mode: BenchMode,
    /// Messages to publish.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub msgs: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Fan-out: subscribers.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub subs: usize,
    /// RPC: concurrent callers.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub callers: usize,
    /// Conns: idle client connections to open.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub conns: usize,
    /// Startup: how many times to start the node.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub runs: usize,
    /// Stream: bytes of each large transfer.
    #[arg(long, default_value_t = 256_000_000, value_name = "BYTES")]
    pub bytes: u64,
    /// RPC: calls in all.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub calls: u64,
    /// Soak, mcp: how long to run [default: soak 10m, mcp 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<std::time::Duration>,
    /// MCP: call through 2025-11-25 sessions instead of stateless 2026-07-28 requests.
    #[arg(long)]
    pub legacy: bool,
    /// MCP: open loop instead of closed: offer this many calls per second (over --callers
    /// connections, at least 512), to see how the node sheds load it cannot take.
    #[arg(long, value_name = "CALLS_PER_S")]
    pub rate: Option<u64>,
    /// MCP: compare calling a bare upstream MCP server directly with calling it attached
    /// through the mesh (`fovea mcp attach`, then the node's endpoint).
    #[arg(long)]
    pub upstream: bool,
    /// MCP: first open this many idle 2025-11-25 sessions and report the node's memory per session.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sessions: usize,
    /// MCP with --sessions: the node's `[mcp] hibernate_after` (its default: 30s); the memory
    /// is read once the sessions have been idle that long.
    #[arg(long, value_parser = parse_hibernate_after, value_name = "DURATION|off", requires = "sessions")]
    pub hibernate_after: Option<String>,
    /// Soak: how often to sample the node's memory.
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub sample: std::time::Duration,
    /// Start the node with this configuration file (realms and permissions), to measure
    /// their cost; give --realm and --token for the benchmark's clients.
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub node_config: Option<PathBuf>,
    /// Realm for the benchmark's clients.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub realm: String,
    /// Token for the benchmark's clients.
    #[arg(long, env = "FOVEA_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Use this node instead of starting one (with the other connection flags).
    #[arg(long, env = "FOVEA_BENCH_URL", value_name = "URL")]
    pub url: Option<String>,
    /// The transport the benchmark's clients use with the node it starts: quic, tls (TLS
    /// over TCP) or ws (WebSocket) [default: quic].
    #[arg(long, value_enum, default_value_t = BenchTransport::Quic, conflicts_with = "url")]
    pub transport: BenchTransport,
    /// Address for the node the benchmark starts [default: 127.0.0.1:0]. A non-loopback
    /// address of this host makes the node treat the benchmark's clients as over a network
    /// (quinn's MTU discovery up to 1 452 bytes, as for clients on other hosts);
    /// scripts/netns-conns.sh runs `bench conns` so in a network namespace of its own.
    #[arg(long, value_name = "ADDR", conflicts_with = "url")]
    pub node_listen: Option<std::net::SocketAddr>,
    /// PEM file to trust for --url.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Skip certificate verification for --url.
    #[arg(long)]
    pub insecure: bool,
    /// Let the benchmark's own idle workers spin this long on its clients' sockets before
    /// sleeping (the SDK's opt-in `fovea_client::spin`; the node spins by default). Lower
    /// latency for client CPU; off by default, as in an application that does not opt in.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub client_spin: Option<std::time::Duration>,
    /// Run the same workload against NATS right after (pubsub, fanout, rpc) with the
    /// harness's nats.sh (see --nats-script), and print the ratio.
    #[arg(long)]
    pub compare_nats: bool,
    /// Pubsub, fanout, rpc: run the workload this many times (with --compare-nats, fovea
    /// and NATS alternately) and report the median of each figure and of the ratios, with
    /// their range: on a shared or virtual machine one run can be off by 15%.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// The NATS benchmark script for --compare-nats (the benchmark harness's
    /// `bench/nats.sh`). Default: the first `shared/bench/nats.sh` found in the current
    /// directory or one of its parents.
    #[arg(long, env = "FOVEA_NATS_BENCH", value_name = "FILE")]
    pub nats_script: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Procedure to provide, e.g. math.add.
    pub procedure: String,
    /// Run this shell command per call instead of echoing.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// With --exec: send each line of the command's output to the caller as it is written
    /// (a caller that takes a streamed answer, e.g. `fovea call --stream`; others get the
    /// whole output at the end).
    #[arg(long, requires = "exec")]
    pub stream: bool,
    /// Calls handled at once; more wait (and the node balances to other providers).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// Make the procedure an AI tool with this description: agents connected to any node's
    /// MCP endpoint see it. The call's arguments object is the payload (JSON) given to --exec
    /// on stdin; stdout that is a JSON object becomes structured content, and a non-zero exit
    /// an error result with stderr.
    #[arg(long, value_name = "TEXT", help_heading = "Tool")]
    pub description: Option<String>,
    /// The tool's input JSON Schema, inline or @FILE [default: {"type":"object"}].
    #[arg(long, value_name = "JSON|@FILE", requires = "description", help_heading = "Tool")]
    pub input_schema: Option<String>,
    /// The tool's output JSON Schema, inline or @FILE.
    #[arg(long, value_name = "JSON|@FILE", requires = "description", help_heading = "Tool")]
    pub output_schema: Option<String>,
    /// The tool's (resource's, prompt's) human-readable title.
    #[arg(long, value_name = "TEXT", help_heading = "Tool")]
    pub title: Option<String>,
    /// Serve an MCP resource of this URI instead of a tool (a URI with {var} is an RFC 6570
    /// template: every URI it matches). Each read runs --exec with the params JSON on stdin
    /// ({"uri", "variables"}); its stdout is the content.
    #[arg(long, value_name = "URI", requires = "exec", conflicts_with_all = ["input_schema", "output_schema", "prompt"], help_heading = "Resource or prompt")]
    pub resource: Option<String>,
    /// The resource's MIME type, e.g. text/markdown [default: text/plain, or
    /// application/octet-stream for output that is not UTF-8].
    #[arg(long, value_name = "TYPE", requires = "resource", help_heading = "Resource or prompt")]
    pub mime_type: Option<String>,
    /// Serve an MCP prompt (named like a tool) instead of a tool: each prompts/get runs --exec
    /// with {"name", "arguments"} on stdin; its stdout is the prompt's text. Needs
    /// --description.
    #[arg(long, requires_all = ["exec", "description"], conflicts_with_all = ["input_schema", "output_schema"], help_heading = "Resource or prompt")]
    pub prompt: bool,
    /// A required argument of the --prompt (repeat for more).
    #[arg(long = "argument", value_name = "NAME", requires = "prompt", help_heading = "Resource or prompt")]
    pub arguments: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `fovea mcp`: serve on stdio, or manage attached MCP servers.
#[derive(Debug, Args)]
pub struct McpCmd {
    #[command(subcommand)]
    pub sub: Option<McpSub>,
    #[command(flatten)]
    pub serve: McpArgs,
}

#[derive(Debug, Subcommand)]
pub enum McpSub {
    /// Attach an existing MCP server: its tools become the procedures NAME.<tool>, for every
    /// service and every agent of the realm.
    Attach(Box<McpAttachArgs>),
    /// Expose the changed tool definitions of attachment NAME (they are held back until then).
    Approve(McpApproveArgs),
    /// What attachment NAME says about itself: its upstream's state, restarts, last error,
    /// tools attached, held back and refused, and calls served.
    Status(McpStatusArgs),
}

#[derive(Debug, Args)]
pub struct McpAttachArgs {
    /// The attachment's name: its tools are NAME.<tool>. Attach the same NAME twice (on any
    /// nodes) and calls are shared between the two.
    pub name: String,
    /// The upstream MCP server over HTTP (Streamable HTTP) instead of a command.
    #[arg(long, value_name = "URL")]
    pub upstream_url: Option<String>,
    /// A file holding the upstream's bearer token (kept here; never shown to callers).
    #[arg(long, value_name = "FILE", requires = "upstream_url")]
    pub bearer_file: Option<PathBuf>,
    /// Where the pins of tool definitions live [default: the platform data dir].
    #[arg(long, env = "FOVEA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Expose changed tool definitions at once instead of holding them for approval.
    #[arg(long)]
    pub no_pin: bool,
    /// How often the upstream is pinged; one that does not answer within half of it is
    /// taken as hung and restarted.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub ping_interval: std::time::Duration,
    /// End when stdin reaches its end: set by `fovea node` on the attachments its
    /// configuration lists, whose stdin is a pipe from the node, so that they end with the
    /// node even when it is killed outright.
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The upstream MCP server to run (stdio), after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct McpApproveArgs {
    /// The attachment whose changed definitions to accept.
    pub name: String,
    /// Where the pins live [default: the platform data dir].
    #[arg(long, env = "FOVEA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct McpStatusArgs {
    /// The attachment to ask (one replica answers when NAME is attached more than once).
    pub name: String,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Deadline of each tool call: e.g. 30s, 5m.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Procedure to call, e.g. math.add.
    pub procedure: String,
    /// The payload. Without it, stdin is read as the payload (unless it is a terminal).
    pub payload: Option<String>,
    /// Send the contents of this file as the payload (`-`: all of stdin). Any size: one over
    /// the node's max_payload is streamed to the provider.
    #[arg(long, value_name = "PATH", conflicts_with = "payload")]
    pub file: Option<std::path::PathBuf>,
    /// Print the answer's parts as they arrive (a provider that streams: tokens, lines),
    /// unchanged.
    #[arg(long)]
    pub stream: bool,
    /// Write the answer exactly as received, adding no newline (for files).
    #[arg(long)]
    pub raw: bool,
    /// The call may run twice: if its provider disconnects before answering, the node sends
    /// it once more, to another provider (for reads and other calls safe to repeat).
    #[arg(long, conflicts_with = "stream")]
    pub idempotent: bool,
    /// How long to wait for the answer: e.g. 500ms, 5s, 2m.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
    /// A header, as NAME=VALUE. Repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Print the answer's headers to stderr.
    #[arg(long)]
    pub show_headers: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    fovea_node::parse_duration(s)
}

/// `bench --hibernate-after`: a duration or `off`, kept as written for the node's config.
fn parse_hibernate_after(s: &str) -> Result<String, String> {
    if s != "off" {
        parse_duration(s)?;
    }
    Ok(s.to_owned())
}

/// How `fovea bench`'s clients reach the node it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTransport {
    Quic,
    Tls,
    Ws,
}

impl BenchTransport {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            BenchTransport::Quic => "quic",
            BenchTransport::Tls => "tls",
            BenchTransport::Ws => "ws",
        }
    }
}

/// `--admin`: an address, or off.
#[derive(Debug, Clone, Copy)]
pub struct AdminAddr(pub Option<SocketAddr>);

pub fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    fovea_node::config::overrides::parse_address_or_off(s).map(AdminAddr)
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The node's admin endpoint.
    #[arg(long, env = "FOVEA_ADMIN_URL", default_value = "http://127.0.0.1:9600", value_name = "URL")]
    pub admin: String,
    /// Keep refreshing, with rates per second.
    #[arg(long)]
    pub watch: bool,
    /// Refresh interval for --watch.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: std::time::Duration,
}
