//! `fovea node`: run a node until SIGINT or SIGTERM.

use anyhow::Context;
use fovea_node::Node;
use tokio_util::sync::CancellationToken;

use crate::cli::NodeArgs;

/// The node's worker threads when nothing sets them: one fewer than the host's cores, at
/// least one. A node serves the services on its host ("a nearby node"), and every datagram
/// it handles is work for the kernel and for a client there too: the core left over is
/// theirs. A second worker mostly takes over pieces of one datagram's work, and each
/// hand-off wakes a thread, so with a client beside the node one worker does more than two
/// (BENCHMARKS.md, "Worker threads", has the figures). A node with a many-core host to
/// itself loses one core in N; `--workers` gives it back.
pub fn default_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// Worker threads for `fovea node`: `--workers` (or `FOVEA_WORKERS`), else `[node]
/// workers`, else `TOKIO_WORKER_THREADS` (`tokio_env`), else [`default_workers`]. The flag
/// and the environment are checked where they are parsed; a `[node] workers` that
/// [`check_workers`] refuses is skipped here, and `run` reports it with the file's other
/// errors (so `--check-config` catches it too).
pub fn workers(flag: Option<usize>, file: Option<usize>, tokio_env: Option<usize>, cores: usize) -> usize {
    flag.or(file.filter(|n| check_workers(*n).is_ok())).or(tokio_env).unwrap_or_else(|| default_workers(cores))
}

/// A `[node] workers` value: 1..=[`MAX_WORKERS`](crate::cli::MAX_WORKERS).
fn check_workers(n: usize) -> anyhow::Result<usize> {
    let max = crate::cli::MAX_WORKERS;
    anyhow::ensure!((1..=max).contains(&n), "[node] workers = {n}: use a count from 1 to {max}, or drop the key");
    Ok(n)
}

pub async fn run(
    args: NodeArgs,
    log_level: Option<String>,
    log_format: Option<crate::cli::LogFormat>,
) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some(fovea_node::config::file::load_config(path).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    if let Some(n) = file.as_ref().and_then(|f| f.node.workers) {
        check_workers(n)?;
    }
    let check_only = args.check_config;
    let realm_count = file.as_ref().map_or(0, |f| f.realms.len());
    let users: usize = file.iter().flat_map(|f| &f.realms).map(|r| r.users.len()).sum();
    let config_path = args.config.clone();
    let print_config = args.print_config;
    let resolved = overrides(args, file.as_ref())
        .resolve(file, fovea_client::default_data_dir())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if check_only {
        println!("configuration is valid: {realm_count} realms, {users} users");
        return Ok(());
    }
    let section = &resolved.section;
    if print_config {
        let level = log_level.or(section.log_level.clone()).unwrap_or_else(|| "info".to_owned());
        let format = match log_format {
            Some(f) => f,
            None => match section.log_format.as_deref() {
                Some(f) => clap::ValueEnum::from_str(f, true).map_err(|e| anyhow::anyhow!("[node] log_format: {e}"))?,
                None => crate::cli::LogFormat::Text,
            },
        };
        let format = match format {
            crate::cli::LogFormat::Text => "text",
            crate::cli::LogFormat::Json => "json",
        };
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let text =
            resolved.render(config_path.as_deref(), &level, format, workers).map_err(|e| anyhow::anyhow!("{e}"))?;
        print!("{text}");
        return Ok(());
    }
    let fovea_node::config::overrides::Resolved { node: config, idle_spin, upstreams, .. } = resolved;
    fovea_node::spin::set_max(idle_spin);
    tracing::info!(
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "worker threads (--workers; default one fewer than the cores)"
    );
    let config_cert = config.tls.as_ref().map(|t| t.cert.clone());
    let data_dir = config.data_dir.clone();
    let node = Node::bind(config).context("cannot start the node")?;
    if config_path.is_some() {
        tracing::info!("send SIGHUP to reload realms and credentials from the configuration file");
    }
    let addr = node.local_addr();
    let trust = match node.self_signed_cert() {
        Some(path) => format!(", clients trust {}", path.display()),
        None => String::new(),
    };
    let admin = match node.admin_addr() {
        Some(a) => format!(", admin http://{a}"),
        None => String::new(),
    };
    let admin = match node.mcp_addr() {
        Some(a) => format!("{admin}, mcp http://{a}/mcp"),
        None => admin,
    };
    let admin = node.stream_urls().iter().fold(admin, |acc, url| format!("{acc}, {url}"));
    let admin = match node.mesh() {
        Some(m) => format!("{admin}, mesh quic://{} node {}", m.local().addr, m.local().id),
        None => admin,
    };
    // Handlers are installed before the ready line: a supervisor that signals the node as soon
    // as it reports ready must get a clean shutdown, not the default action of the signal.
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(StopSignals::install(), shutdown.clone()));
    if let Some(path) = config_path.clone() {
        tokio::spawn(reload_on_hangup(hangup_signal(), path, node.reloader()));
    }
    // The one line scripts and tests wait for; keep its shape stable. A closed stdout (the
    // reader went away) is no reason to stop serving, so a failed write is ignored.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "fovea node ready on quic://{addr} (certificate sha256 {}{trust}{admin})",
            node.fingerprint()
        );
        let _ = out.flush();
    }
    let trust = node.self_signed_cert().map(std::path::Path::to_path_buf).or_else(|| config_cert.clone());
    for u in upstreams {
        tokio::spawn(run_upstream(u, format!("quic://{addr}"), trust.clone(), data_dir.clone()));
    }
    node.run(shutdown).await.context("node failed")?;
    tracing::info!("node stopped");
    Ok(())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup()).ok();
        if hup.is_none() {
            tracing::warn!("cannot install the SIGHUP handler; credentials reload only with a restart");
        }
        hup
    }
}

/// SIGHUP: read the configuration file again and apply its realms and credentials. A file
/// that does not parse is reported and the running configuration stays.
async fn reload_on_hangup(hup: Hangup, path: std::path::PathBuf, reloader: fovea_node::Reloader) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else { return };
        while hup.recv().await.is_some() {
            match fovea_node::config::file::load_config(&path) {
                Ok(file) => {
                    if let Err(e) = reloader.reload(&file.realms) {
                        tracing::error!("reload failed: {e}");
                    }
                }
                Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hup, path, reloader);
}

/// SIGTERM and SIGINT, registered once: the first asks for a drain, the second exits at once.
struct StopSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    tracing::warn!("cannot install signal handlers; stop the node with SIGKILL");
                    None
                }
            };
            StopSignals { streams }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for the next signal; never returns when no handler could be installed.
    async fn next(&mut self) {
        #[cfg(unix)]
        match &mut self.streams {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn stop_on_signal(mut signals: StopSignals, token: CancellationToken) {
    signals.next().await;
    tracing::info!("shutting down: telling clients to go away (a second signal stops at once)");
    token.cancel();
    signals.next().await;
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(1);
}

/// `fovea token new`.
pub fn new_token() -> anyhow::Result<()> {
    let (token, line) = fovea_node::auth::new_token().map_err(|e| anyhow::anyhow!(e))?;
    println!("token:  {token}");
    println!("config: {line}");
    Ok(())
}

/// `fovea cert new`.
pub fn new_cert(name: &str, out: &std::path::Path) -> anyhow::Result<()> {
    check_name(name)?;
    let (cert, key, line) = fovea_node::auth::new_client_cert(name).map_err(|e| anyhow::anyhow!(e))?;
    write_pair(out, name, &cert, &key)?;
    println!("config:      {line}");
    Ok(())
}

/// Runs one `[[mcp.upstream]]` as a `fovea mcp attach` child of this node, started again
/// (with backoff) if it ever exits. It ends with the node (the child is killed on drop).
async fn run_upstream(
    u: fovea_node::config::file::UpstreamSection,
    url: String,
    trust: Option<std::path::PathBuf>,
    data_dir: std::path::PathBuf,
) {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        let Ok(exe) = std::env::current_exe() else { return };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["mcp", "attach", &u.name, "--url", &url, "--data-dir"]).arg(&data_dir);
        if let Some(ca) = &trust {
            cmd.arg("--ca").arg(ca);
        }
        cmd.args(["--realm", u.realm.as_deref().unwrap_or(fovea_node::DEFAULT_REALM), "--exit-with-stdin"]);
        // The token travels in the environment, not on a command line others can read.
        if let Some(t) = &u.token {
            cmd.env("FOVEA_TOKEN", t);
        }
        match (&u.url, &u.command) {
            (Some(upstream), _) => {
                cmd.args(["--upstream-url", upstream]);
                if let Some(f) = &u.bearer_file {
                    cmd.arg("--bearer-file").arg(f);
                }
            }
            (None, Some(command)) => {
                cmd.arg("--").args(command);
            }
            (None, None) => return,
        }
        // The child's stdin is a pipe that only this process holds: when the node ends,
        // however it ends (`kill -9` runs no destructor), the child reads its end and
        // stops, rather than living on attached to nothing.
        cmd.kill_on_drop(true).stdin(std::process::Stdio::piped());
        let started = std::time::Instant::now();
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(name = %u.name, "attached MCP server started");
                let _pipe = child.stdin.take();
                let status = child.wait().await;
                tracing::warn!(name = %u.name, ?status, "the attachment exited; starting it again in {delay:?}");
            }
            Err(e) => tracing::error!(name = %u.name, error = %e, "cannot start the attachment"),
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            delay = std::time::Duration::from_millis(500);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// `fovea cert mesh-ca`.
pub fn new_mesh_ca(out: &std::path::Path) -> anyhow::Result<()> {
    let (cert, key) = fovea_node::tls::new_mesh_ca("fovea mesh CA").map_err(|e| anyhow::anyhow!(e))?;
    write_pair(out, "mesh-ca", &cert, &key)?;
    println!("next: issue each node a certificate with `fovea cert mesh-node NAME --ca-cert … --ca-key …`");
    Ok(())
}

/// `fovea cert mesh-node`.
pub fn new_mesh_node(
    name: &str,
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    check_name(name)?;
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let (cert, key) =
        fovea_node::tls::new_mesh_node_cert(name, &read(ca_cert)?, &read(ca_key)?).map_err(|e| anyhow::anyhow!(e))?;
    write_pair(out, name, &cert, &key)?;
    let dir = out.display();
    println!(
        "start the node with --mesh-ca {} --mesh-cert {dir}/{name}.crt --mesh-key {dir}/{name}.key",
        ca_cert.display()
    );
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "certificate name {name:?} must be letters, digits, `-`, `_` or `.` (it names the files)"
    );
    Ok(())
}

/// Writes NAME.crt and NAME.key (0600) to `out`, refusing to overwrite.
fn write_pair(out: &std::path::Path, name: &str, cert: &str, key: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (cert_path, key_path) = (out.join(format!("{name}.crt")), out.join(format!("{name}.key")));
    for p in [&cert_path, &key_path] {
        anyhow::ensure!(!p.exists(), "{} exists already; choose another name or --out", p.display());
    }
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes()).with_context(|| format!("writing {}", key_path.display()))?;
    println!("certificate: {}", cert_path.display());
    println!("key:         {}", key_path.display());
    Ok(())
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

/// The command line's settings for the merge in [`fovea_node::config::overrides`]; the
/// limit flags are applied to the file's limits here, where their names are known.
fn overrides(
    args: NodeArgs,
    file: Option<&fovea_node::config::file::ConfigFile>,
) -> fovea_node::config::overrides::Overrides {
    let mut limits = file.and_then(|f| f.limits.clone()).unwrap_or_default();
    args.limits.apply(&mut limits);
    fovea_node::config::overrides::Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        name: args.name,
        cert: args.cert,
        key: args.key,
        admin: args.admin.map(|a| a.0),
        admin_token: args.admin_token,
        allow_anonymous: args.allow_anonymous,
        limits: Some(limits),
        mcp: args.mcp.map(|a| a.0),
        mcp_call_timeout: args.mcp_call_timeout,
        mesh_secret: args.mesh_secret,
        mesh_ca: args.mesh_ca,
        mesh_cert: args.mesh_cert,
        mesh_key: args.mesh_key,
        mesh_listen: args.mesh_listen,
        join: args.join,
        mesh_probe_interval: args.mesh_probe_interval,
        mesh_probe_timeout: args.mesh_probe_timeout,
        mesh_suspect_timeout: args.mesh_suspect_timeout,
        idle_spin: args.idle_spin,
        tcp: args.tcp.map(|a| a.0),
        ws: args.ws.map(|a| a.0),
        ws_tls: args.ws_tls,
        ws_allowed_origins: args.ws_allowed_origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_leaves_a_core_to_its_host_and_has_at_least_one_worker() {
        assert_eq!(default_workers(0), 1);
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(16), 15);
    }

    #[test]
    fn the_flag_wins_over_the_file_which_wins_over_the_environment() {
        assert_eq!(workers(Some(3), Some(2), Some(5), 8), 3);
        assert_eq!(workers(None, Some(2), Some(5), 8), 2);
        assert_eq!(workers(None, None, Some(5), 8), 5);
        assert_eq!(workers(None, None, None, 8), 7);
        // A bad file value is skipped here; `run` refuses it.
        assert_eq!(workers(None, Some(0), None, 8), 7);
        let err = check_workers(0).unwrap_err().to_string();
        assert!(err.contains("[node] workers = 0"), "{err}");
        assert!(check_workers(crate::cli::MAX_WORKERS + 1).is_err());
        assert_eq!(check_workers(crate::cli::MAX_WORKERS).ok(), Some(crate::cli::MAX_WORKERS));
    }
}
