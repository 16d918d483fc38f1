//! The command line, declared once with clap derive. Every flag's doc is its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Quick start:
  fovea node                         # start a node on quic://127.0.0.1:4433
  fovea sub 'sensors.>'              # in a second shell: print matching messages
  fovea pub sensors.kitchen.temp 21.5  # in a third: publish one

Exit status: 0 success, 1 error (the message says what to do next), 2 bad usage.";

/// fovea: a mesh for events, RPC and AI tools. One binary runs a node and talks to one.
#[derive(Debug, Parser)]
#[command(name = "fovea", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter: a level (error, warn, info, debug, trace) or a RUST_LOG-style directive list.
    #[arg(long, global = true, default_value = "info", env = "FOVEA_LOG", value_name = "FILTER")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    #[command(
        after_help = "Examples:\n  fovea node\n  fovea node --listen 0.0.0.0:4433 --cert node.pem --key node.key"
    )]
    Node(NodeArgs),
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
    /// Measure throughput (starts its own node unless --url is given).
    #[command(
        after_help = "Examples:\n  fovea bench pubsub\n  fovea bench pubsub --msgs 2000000 --size 1024\n\nThe last line is key=value pairs, as ../shared/bench/nats.sh prints, for side-by-side comparison."
    )]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// UDP address to listen on. Use port 0 for any free port (the ready line shows it).
    #[arg(long, env = "FOVEA_LISTEN", default_value = fovea_node::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
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
    /// Print only the payload, as raw bytes, with no topic.
    #[arg(long)]
    pub raw: bool,
    /// Print headers too, as ` [name=value …]` after the topic.
    #[arg(long)]
    pub headers: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BenchMode {
    /// One publisher, one subscriber.
    Pubsub,
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
    /// Use this node instead of starting one (with the other connection flags).
    #[arg(long, env = "FOVEA_BENCH_URL", value_name = "URL")]
    pub url: Option<String>,
    /// PEM file to trust for --url.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Skip certificate verification for --url.
    #[arg(long)]
    pub insecure: bool,
}
