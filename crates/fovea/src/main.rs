//! `fovea`: one binary to run a node and to talk to one.
//!
//! Each subcommand lives in its own module; this file parses the command line, sets up
//! logging and maps failures to exit codes (0 success, 1 error, 2 usage).

// clap turns the doc comments in `cli` into `--help` text, where `[node]` names a TOML
// table and `<tool>` a placeholder: they are written for the terminal, not for rustdoc.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod bench;
mod bench_mcp;
mod cli;
mod client_cmds;
mod mcp_attach;
mod mcp_cmd;
mod node_cmd;
mod rpc_cmds;
mod stats_cmd;

use std::process::ExitCode;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The node's config file may set the log level and format; flags and env win over it.
    let file = match &cli.command {
        Command::Node(args) => {
            args.config.as_deref().and_then(|p| fovea_node::config::file::load_config(p).ok()).map(|f| f.node)
        }
        _ => None,
    };
    let level = cli.log_level.clone().or_else(|| file.as_ref().and_then(|n| n.log_level.clone()));
    let format = cli.log_format.or_else(|| {
        file.as_ref().and_then(|n| n.log_format.as_deref()).and_then(|f| clap::ValueEnum::from_str(f, true).ok())
    });
    init_logging(level.as_deref().unwrap_or("info"), format.unwrap_or(cli::LogFormat::Text));
    // `mcp attach` runs on one thread: rmcp hands each upstream notification to a task of
    // its own, and only a single-threaded (FIFO) scheduler runs those tasks in arrival order
    // and before the task that the answer wakes, so progress and logs keep their order and
    // precede the result.
    let mut builder = match &cli.command {
        Command::Mcp(cli::McpCmd { sub: Some(cli::McpSub::Attach(_)), .. }) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            // tokio reads TOKIO_WORKER_THREADS itself and panics on a bad value: read it
            // here so that a typo gets an error that says what to write.
            let from_env = match worker_threads(std::env::var_os("TOKIO_WORKER_THREADS")) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let count = match &cli.command {
                Command::Node(args) => {
                    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
                    Some(node_cmd::workers(args.workers, file.as_ref().and_then(|n| n.workers), from_env, cores))
                }
                _ => from_env,
            };
            if let Some(n) = count {
                b.worker_threads(n);
            }
            b
        }
    };
    match &cli.command {
        // Idle workers watch the node's sockets before they sleep (fovea_node::spin); the
        // node sets the window once its configuration is read.
        Command::Node(_) => {
            builder.on_thread_park(fovea_node::spin::on_park).on_thread_unpark(fovea_node::spin::on_unpark);
            // So that `top -H`, `perf` and `ps -L` tell a node's workers from a client's.
            builder.thread_name("fovea-node");
        }
        Command::Bench(args) => {
            if let Some(max) = args.client_spin {
                if max > fovea_client::spin::MAX_WINDOW {
                    eprintln!(
                        "error: --client-spin {max:?} is longer than the {:?} allowed: longer spins only burn CPU",
                        fovea_client::spin::MAX_WINDOW
                    );
                    return ExitCode::from(2);
                }
                fovea_client::spin::install(&mut builder, max);
            }
        }
        _ => {}
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node_cmd::run(*args, cli.log_level, cli.log_format).await,
            Command::Pub(args) => client_cmds::publish(args).await,
            Command::Sub(args) => client_cmds::subscribe(args).await,
            Command::Serve(args) => rpc_cmds::serve(args).await,
            Command::Call(args) => rpc_cmds::call(args).await,
            Command::Mcp(cli::McpCmd { sub: None, serve }) => mcp_cmd::run(serve).await,
            Command::Mcp(cli::McpCmd { sub: Some(cli::McpSub::Attach(args)), .. }) => mcp_attach::attach(*args).await,
            Command::Mcp(cli::McpCmd { sub: Some(cli::McpSub::Approve(args)), .. }) => mcp_attach::approve(args).await,
            Command::Mcp(cli::McpCmd { sub: Some(cli::McpSub::Status(args)), .. }) => mcp_attach::status(args).await,
            Command::Stats(args) => stats_cmd::run(args).await,
            Command::Token(cli::TokenCommand::New) => node_cmd::new_token(),
            Command::Cert(cli::CertCommand::New { name, out }) => node_cmd::new_cert(&name, &out),
            Command::Cert(cli::CertCommand::MeshCa { out }) => node_cmd::new_mesh_ca(&out),
            Command::Cert(cli::CertCommand::MeshNode { name, ca_cert, ca_key, out }) => {
                node_cmd::new_mesh_node(&name, &ca_cert, &ca_key, &out)
            }
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // Do not wait for stray tasks (a reconnecting client, a reader on stdin).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The worker thread count from `TOKIO_WORKER_THREADS`: `None` when unset (the command's
/// default: tokio's one per core, or `fovea node`'s own).
fn worker_threads(value: Option<std::ffi::OsString>) -> Result<Option<usize>, String> {
    let Some(value) = value else { return Ok(None) };
    match value.to_str().map(str::trim).map(str::parse::<usize>) {
        Some(Ok(n)) if n > 0 => Ok(Some(n)),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS={value:?} is not a thread count: set it to a whole number of \
             worker threads of at least 1, or unset it for the default"
        )),
    }
}

fn init_logging(level: &str, format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LogWriter).with_target(false);
    match format {
        cli::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        cli::LogFormat::Json => fmt.json().init(),
    }
}

/// Standard error for log lines, ignoring write errors. A node whose stderr was closed (its
/// supervisor or a `| head` went away) must keep serving: with a failing writer,
/// tracing-subscriber reports the failure with `eprintln!`, which panics on the same
/// closed pipe and would take down whichever task was logging (seen: the shutdown task).
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Exit status per failure kind, as `fovea call --help` documents: 3 no provider,
/// 4 timeout, 5 the provider failed, 6 the provider disconnected, 7 busy, 1 anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    use fovea_client::ClientError;
    match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        Some(ClientError::NoProvider(_)) => 3,
        Some(ClientError::Timeout(_)) => 4,
        Some(ClientError::Remote { .. }) => 5,
        Some(ClientError::ProviderDisconnected) => 6,
        Some(ClientError::Busy(_)) => 7,
        _ => 1,
    }
}

/// A reader closing our stdout (`fovea sub … | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
