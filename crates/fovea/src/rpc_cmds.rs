//! `fovea serve` and `fovea call`.

use std::io::{IsTerminal, Read, Write};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use fovea_client::{ErrorCode, Request};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::cli::{CallArgs, ServeArgs};
use crate::client_cmds::{connect, parse_headers};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    fovea_client::Procedure::new(&args.procedure)
        .map_err(|e| anyhow::anyhow!("invalid procedure {:?}: it {e}", args.procedure))?;
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let tool = tool_descriptor(&args)?;
    let client = connect(&args.client, "fovea-serve").await?;
    let mut reg = match &tool {
        Some(t) => client.register_tool(&args.procedure, t).await?,
        None => client.register(&args.procedure).await?,
    };
    match &args.exec {
        Some(cmd) => eprintln!("serving {} on {} with `{cmd}`", args.procedure, client.url()),
        None => eprintln!("serving {} on {} (echo)", args.procedure, client.url()),
    }
    if tool.is_some() {
        let name = fovea_core::tool::tool_name(&args.procedure);
        eprintln!("{} is an AI tool: agents on any node's MCP endpoint see it as {name}", args.procedure);
    }
    let slots = Arc::new(Semaphore::new(args.concurrency));
    while let Some(req) = reg.next().await {
        let Some(cmd) = args.exec.clone() else {
            let payload = req.payload.clone();
            req.respond(payload);
            continue;
        };
        // Waiting for a slot here stops reading requests: the SDK then stops reading from
        // the node, and calls pile up at the node, visible as this provider's load.
        let permit = slots.clone().acquire_owned().await.context("semaphore closed")?;
        tokio::spawn(async move {
            run_command(&cmd, req).await;
            drop(permit);
        });
    }
    anyhow::bail!("the registration ended: the client was closed")
}

/// The tool descriptor the flags describe, if `--description` is given.
fn tool_descriptor(args: &ServeArgs) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(description) = &args.description else { return Ok(None) };
    let schema = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<serde_json::Value>> {
        let Some(v) = v else { return Ok(None) };
        let text = match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag} @{path}: cannot read"))?,
            None => v.clone(),
        };
        let json = serde_json::from_str(&text).with_context(|| {
            format!("{flag}: not JSON; give a JSON Schema such as '{{\"type\":\"object\"}}' or @FILE")
        })?;
        Ok(Some(json))
    };
    let mut d = serde_json::json!({ "description": description });
    if let Some(s) = schema("--input-schema", &args.input_schema)? {
        d["inputSchema"] = s;
    }
    if let Some(s) = schema("--output-schema", &args.output_schema)? {
        d["outputSchema"] = s;
    }
    if let Some(t) = &args.title {
        d["title"] = t.clone().into();
    }
    Ok(Some(d))
}

/// Runs `cmd` for one request, killing it at the caller's deadline.
async fn run_command(cmd: &str, req: Request) {
    let timeout = req.deadline().saturating_duration_since(tokio::time::Instant::now());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FOVEA_PROCEDURE", req.procedure.as_str())
        .env("FOVEA_TIMEOUT_MS", timeout.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return req.fail(&format!("cannot run `{cmd}`: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let payload = req.payload.clone();
        // A command that does not read its input closes the pipe; that is not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&payload).await;
        });
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        // Past the deadline the node answers the caller with TIMEOUT itself; a failure from
        // here could race it and tell the caller the wrong story.
        Err(_) => {
            req.abandon();
            tracing::warn!(command = %cmd, "killed at the caller's deadline");
        }
        Ok(Err(e)) => req.fail(&format!("`{cmd}` failed: {e}")),
        Ok(Ok(out)) if out.status.success() => req.respond(out.stdout),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = match stderr.trim() {
                "" => format!("`{cmd}` exited with {}", out.status),
                text => text.to_owned(),
            };
            // Exit status N becomes application code 0x1000 + N; a signal has no status.
            let code = ErrorCode::ApplicationError.to_u64() + out.status.code().map_or(0, |c| c.clamp(0, 255) as u64);
            req.fail_with_code(code, &message);
        }
    }
}

pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    fovea_client::Procedure::new(&args.procedure)
        .map_err(|e| anyhow::anyhow!("invalid procedure {:?}: it {e}", args.procedure))?;
    let payload = match args.payload {
        Some(p) => p.into_bytes(),
        None if std::io::stdin().is_terminal() => Vec::new(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading the payload from stdin")?;
            buf
        }
    };
    let client = connect(&args.client, "fovea-call").await?;
    let result = client.call_with_headers(&args.procedure, &headers, payload, args.timeout).await;
    client.close().await;
    let response = result?;
    if args.show_headers {
        for (k, v) in response.headers.iter() {
            eprintln!("{k}: {v}");
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&response.payload)?;
    if !response.payload.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
