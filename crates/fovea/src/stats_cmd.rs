//! `fovea stats`: a human summary of a node's `/info`, refreshing with rates under `--watch`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::StatsArgs;

pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let (host, path_prefix) = parse_admin_url(&args.admin)?;
    let mut prev: Option<(Instant, serde_json::Value)> = None;
    let tty = std::io::stdout().is_terminal();
    loop {
        let info = fetch(&host, &format!("{path_prefix}/info")).await.with_context(|| {
            format!("no admin endpoint answered at {}: is the node running with --admin? pass --admin URL", args.admin)
        })?;
        let now = Instant::now();
        let text = render(&info, prev.as_ref().map(|(t, v)| (now.duration_since(*t).as_secs_f64(), v)));
        let mut out = std::io::stdout().lock();
        if args.watch && tty && prev.is_some() {
            // Redraw in place: move up over the previous block and clear it.
            write!(out, "\x1b[{}F\x1b[J", text.lines().count())?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !args.watch {
            return Ok(());
        }
        prev = Some((now, info));
        tokio::time::sleep(args.interval).await;
    }
}

fn parse_admin_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--admin {url:?}: expected http://HOST:PORT (the admin endpoint speaks plain HTTP)");
    };
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = if path.is_empty() { String::new() } else { format!("/{}", path.trim_end_matches('/')) };
    Ok((host.to_owned(), path))
}

async fn fetch(host: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .context("timed out")??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await.context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("the admin endpoint answered {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).context("the admin endpoint's /info is not JSON")
}

/// The summary; with the previous sample, also rates per second.
fn render(info: &serde_json::Value, prev: Option<(f64, &serde_json::Value)>) -> String {
    let stat = |v: &serde_json::Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
    let rate = |k: &str| match prev {
        Some((dt, p)) if dt > 0.0 => format!("  ({:.0}/s)", stat(info, k).saturating_sub(stat(p, k)) as f64 / dt),
        _ => String::new(),
    };
    let mut s = String::new();
    s += &format!(
        "node {} (fovea {}), up {}s, listening on {}{}\n",
        info["name"].as_str().unwrap_or("?"),
        info["version"].as_str().unwrap_or("?"),
        info["uptime_s"].as_u64().unwrap_or(0),
        info["listen"].as_str().unwrap_or("?"),
        // Absent from nodes older than the field.
        match (info["workers"].as_u64(), info["cores"].as_u64()) {
            (Some(w), Some(c)) => format!(", {w} worker{} on {c} cores", if w == 1 { "" } else { "s" }),
            _ => String::new(),
        }
    );
    // By transport, when other transports than QUIC are in use (absent from older nodes).
    let by_transport = match info["stats"]["transports"].as_object() {
        Some(t) if t.iter().any(|(k, v)| k != "quic" && v.as_u64().unwrap_or(0) > 0) => {
            let parts: Vec<String> = t
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0)))
                .collect();
            format!(" ({})", parts.join(", "))
        }
        _ => String::new(),
    };
    s += &format!(
        "  connections {}{by_transport}   subscriptions {}   registrations {}\n",
        stat(info, "connections"),
        stat(info, "subscriptions"),
        stat(info, "registrations")
    );
    s += &format!("  messages in {}{}\n", stat(info, "msgs_in"), rate("msgs_in"));
    s += &format!("  deliveries  {}{}\n", stat(info, "deliveries"), rate("deliveries"));
    s += &format!(
        "  dropped     {}{}   publishers held back {} (ran out {})\n",
        stat(info, "dropped"),
        rate("dropped"),
        stat(info, "stalls"),
        stat(info, "stall_timeouts")
    );
    s += &format!(
        "  calls       {}{}   late answers {}\n",
        stat(info, "calls"),
        rate("calls"),
        stat(info, "late_responses")
    );
    s += &format!(
        "  auth failures {}   protocol errors {}\n",
        stat(info, "auth_failures"),
        stat(info, "protocol_errors")
    );
    s
}
