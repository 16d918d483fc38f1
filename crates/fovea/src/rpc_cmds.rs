//! `fovea serve` and `fovea call`.

use std::io::{IsTerminal, Read, Write};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use fovea_client::{ErrorCode, Headers, Request};
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
        Some(t) => client.register_described(&args.procedure, t).await?,
        None => client.register(&args.procedure).await?,
    };
    match &args.exec {
        Some(cmd) => eprintln!("serving {} on {} with `{cmd}`", args.procedure, client.url()),
        None => eprintln!("serving {} on {} (echo)", args.procedure, client.url()),
    }
    let name = fovea_core::tool::tool_name(&args.procedure);
    match (&args.resource, args.prompt, &tool) {
        (Some(uri), _, _) => eprintln!("{} serves the MCP resource {uri} to agents on any node", args.procedure),
        (_, true, _) => eprintln!("{} is an MCP prompt: agents on any node see it as {name}", args.procedure),
        (_, _, Some(_)) => {
            eprintln!("{} is an AI tool: agents on any node's MCP endpoint see it as {name}", args.procedure)
        }
        _ => {}
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
        let stream = args.stream;
        tokio::spawn(async move {
            run_command(&cmd, req, stream).await;
            drop(permit);
        });
    }
    anyhow::bail!("the registration ended: the client was closed")
}

/// The descriptor the flags describe: a resource (`--resource`), a prompt (`--prompt`), a
/// tool (`--description`), or none (a plain procedure).
fn tool_descriptor(args: &ServeArgs) -> anyhow::Result<Option<serde_json::Value>> {
    if let Some(uri) = &args.resource {
        let template = uri.contains('{');
        let mut d = serde_json::json!({
            "kind": if template { "resourceTemplate" } else { "resource" },
            (if template { "uriTemplate" } else { "uri" }): uri,
        });
        for (key, value) in [("description", &args.description), ("title", &args.title), ("mimeType", &args.mime_type)]
        {
            if let Some(v) = value {
                d[key] = v.clone().into();
            }
        }
        return Ok(Some(d));
    }
    let Some(description) = &args.description else { return Ok(None) };
    if args.prompt {
        let arguments: Vec<serde_json::Value> =
            args.arguments.iter().map(|a| serde_json::json!({"name": a, "required": true})).collect();
        let mut d = serde_json::json!({"kind": "prompt", "description": description, "arguments": arguments});
        if let Some(t) = &args.title {
            d["title"] = t.clone().into();
        }
        return Ok(Some(d));
    }
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

/// Runs `cmd` for one request, killing it at the caller's deadline: the request (all of
/// it, streamed or not) goes to its stdin, its stdout is the answer, sent line by line as
/// it is written when `stream` is set and the caller takes a streamed answer.
async fn run_command(cmd: &str, mut req: Request, stream: bool) {
    let timeout = req.deadline().saturating_duration_since(tokio::time::Instant::now());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("FOVEA_PROCEDURE", req.procedure.as_str())
        .env("FOVEA_MCP_METHOD", req.mcp_method().map_or("", |m| m.as_str()))
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
        let mut body = req.take_body();
        // A command that does not read its input closes the pipe; that is not an error.
        tokio::spawn(async move {
            if stdin.write_all(&payload).await.is_err() {
                return;
            }
            while let Some(Ok(chunk)) = match body.as_mut() {
                Some(b) => b.next_chunk().await,
                None => None,
            } {
                if stdin.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    let lines = stream && req.answer_streams();
    let run = async {
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(std::io::Error::other("the command's output pipes are missing"));
        };
        let errors = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut text).await;
            text
        });
        let mut output = Vec::new();
        if lines {
            let mut reader = tokio::io::BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                if tokio::io::AsyncBufReadExt::read_until(&mut reader, b'\n', &mut line).await? == 0 {
                    break;
                }
                // The caller has gone: the command is killed as this drops.
                if req.send(line).await.is_err() {
                    return Err(std::io::Error::other("the caller abandoned the call"));
                }
            }
        } else {
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut output).await?;
        }
        let status = child.wait().await?;
        Ok((status, output, errors.await.unwrap_or_default()))
    };
    match tokio::time::timeout(timeout, run).await {
        // Past the deadline the node answers the caller with TIMEOUT itself; a failure from
        // here could race it and tell the caller the wrong story.
        Err(_) => {
            req.abandon();
            tracing::warn!(command = %cmd, "killed at the caller's deadline");
        }
        Ok(Err(e)) if req.is_cancelled() => {
            tracing::debug!(command = %cmd, "stopped: {e}");
            req.abandon();
        }
        Ok(Err(e)) => req.fail(&format!("`{cmd}` failed: {e}")),
        Ok(Ok((status, stdout, _))) if status.success() => req.respond(stdout),
        Ok(Ok((status, _, stderr))) => {
            let stderr = String::from_utf8_lossy(&stderr);
            let message = match stderr.trim() {
                "" => format!("`{cmd}` exited with {status}"),
                text => text.to_owned(),
            };
            // Exit status N becomes application code 0x1000 + N; a signal has no status.
            let code = ErrorCode::ApplicationError.to_u64() + status.code().map_or(0, |c| c.clamp(0, 255) as u64);
            req.fail_with_code(code, &message);
        }
    }
}

/// A payload from `--file` (`-`: all of stdin), the command line, or stdin.
pub(crate) fn read_payload(
    file: Option<&std::path::Path>,
    arg: Option<String>,
    stdin_whole: bool,
) -> anyhow::Result<Option<Bytes>> {
    let read_stdin = || -> anyhow::Result<Bytes> {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading the payload from stdin")?;
        Ok(buf.into())
    };
    Ok(match (file, arg) {
        (Some(p), _) if p.as_os_str() == "-" => Some(read_stdin()?),
        (Some(p), _) => {
            let data = std::fs::read(p).with_context(|| format!("cannot read --file {}", p.display()))?;
            Some(data.into())
        }
        (None, Some(a)) => Some(a.into_bytes().into()),
        (None, None) if stdin_whole && !std::io::stdin().is_terminal() => Some(read_stdin()?),
        (None, None) if stdin_whole => Some(Bytes::new()),
        (None, None) => None,
    })
}

pub async fn call(mut args: CallArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    fovea_client::Procedure::new(&args.procedure)
        .map_err(|e| anyhow::anyhow!("invalid procedure {:?}: it {e}", args.procedure))?;
    // A file is read as it is sent, never whole (stdin is: it cannot be sized up front).
    let file = args.file.take().filter(|p| p.as_os_str() != "-");
    let payload = match &file {
        Some(p) => {
            std::fs::metadata(p).with_context(|| format!("cannot read --file {}", p.display()))?;
            Bytes::new()
        }
        None => read_payload(args.file.as_deref(), args.payload.take(), true)?.unwrap_or_default(),
    };
    let client = connect(&args.client, "fovea-call").await?;
    let streams = client.server_info().is_some_and(|i| i.version >= fovea_core::frame::VERSION_STREAMS);
    let result = if args.idempotent {
        let r = client.call_idempotent(&args.procedure, &headers, payload, args.timeout).await;
        r.map_err(anyhow::Error::from).and_then(|r| write_answer(&args, &r.headers, &r.payload))
    } else if let Some(path) = file {
        send_file(&client, &args, &headers, path).await
    } else if streams {
        answer(&client, &args, &headers, payload).await
    } else {
        let r = client.call_with_headers(&args.procedure, &headers, payload, args.timeout).await;
        r.map_err(anyhow::Error::from).and_then(|r| write_answer(&args, &r.headers, &r.payload))
    };
    client.close().await;
    result
}

/// A call through a node that streams: the answer, whatever its size, printed as it arrives
/// (`--stream`) or once whole.
async fn answer(
    client: &fovea_client::Client,
    args: &CallArgs,
    headers: &Headers,
    payload: Bytes,
) -> anyhow::Result<()> {
    let call = client.call_stream_with_headers(&args.procedure, headers, payload, args.timeout).await?;
    print_answer(args, call).await
}

/// Prints a streamed call's answer: each part as it arrives with `--stream`, else once whole.
async fn print_answer(args: &CallArgs, mut call: fovea_client::CallStream) -> anyhow::Result<()> {
    if !args.stream {
        let r = call.collect(usize::MAX).await?;
        return write_answer(args, &r.headers, &r.payload);
    }
    while let Some(chunk) = call.next().await {
        let chunk = chunk?;
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk)?;
        out.flush()?;
    }
    show_headers(args, call.headers());
    Ok(())
}

/// A call whose request is a file, sent in chunks as it is read while the answer is read
/// (a provider may answer as it reads).
async fn send_file(
    client: &fovea_client::Client,
    args: &CallArgs,
    headers: &Headers,
    path: std::path::PathBuf,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut call = client.open_call(&args.procedure, headers, args.timeout)?;
    let Some(mut sender) = call.take_sender() else { anyhow::bail!("the call does not stream its request") };
    let sending = tokio::spawn(async move {
        let mut file =
            tokio::fs::File::open(&path).await.with_context(|| format!("cannot read --file {}", path.display()))?;
        let mut block = vec![0u8; fovea_client::MAX_CHUNK];
        loop {
            let n = file.read(&mut block).await.with_context(|| format!("reading --file {}", path.display()))?;
            if n == 0 {
                break;
            }
            sender.send(Bytes::copy_from_slice(&block[..n])).await?;
        }
        sender.finish()?;
        anyhow::Ok(())
    });
    let answered = print_answer(args, call).await;
    match sending.await {
        // The answer says why a send stopped (the provider failed or the deadline passed).
        Ok(Err(e)) if answered.is_ok() => Err(e),
        _ => answered,
    }
}

fn show_headers(args: &CallArgs, headers: &Headers) {
    if args.show_headers {
        for (k, v) in headers.iter() {
            eprintln!("{k}: {v}");
        }
    }
}

/// Prints a whole answer: unchanged with `--raw`, else ending with a newline.
fn write_answer(args: &CallArgs, headers: &Headers, payload: &[u8]) -> anyhow::Result<()> {
    show_headers(args, headers);
    let mut out = std::io::stdout().lock();
    out.write_all(payload)?;
    if !args.raw && !payload.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
