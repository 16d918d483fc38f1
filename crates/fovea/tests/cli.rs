//! The built `fovea` binary, as a user runs it: a node, `sub` and `pub`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fovea");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fovea node` on a free port and returns it with its URL once it is ready.
fn start_node(data_dir: &Path) -> (Proc, String) {
    start_node_with(data_dir, &[])
}

fn start_node_with(data_dir: &Path, extra: &[&str]) -> (Proc, String) {
    let (node, line) = spawn_node(data_dir, extra);
    assert!(line.starts_with("fovea node ready on quic://127.0.0.1:"), "ready line: {line:?}");
    assert!(line.contains("certificate sha256 "), "{line}");
    let url = line.split_whitespace().find(|w| w.starts_with("quic://")).unwrap().to_owned();
    (node, url)
}

/// Starts `fovea node` on free ports and returns it with its ready line.
fn spawn_node(data_dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (Proc(child), line)
}

fn fovea(args: &[&str], ca: &Path, url: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).arg("--url").arg(url).arg("--ca").arg(ca);
    c
}

/// Whether process `pid` is alive: it exists and is not a zombie waiting to be reaped
/// (an orphan's new parent may be slow to reap it, or never, in a container).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits for a child to exit, killing it after a bound so a hang fails the test.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn sub_prints_what_pub_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url) = start_node(dir.path());
    let ca = dir.path().join("node.crt");
    assert!(ca.exists(), "the node writes its self-signed certificate to the data dir");

    // `sub` says on stderr when it is subscribed; publish only after that.
    let sub = start_sub(&["sub", "greetings.>", "--count", "3"], &ca, &url);

    let status = fovea(&["pub", "greetings.en", "hello world"], &ca, &url).status().unwrap();
    assert!(status.success());
    let mut stdin_pub = fovea(&["pub", "greetings.lines"], &ca, &url).stdin(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = stdin_pub.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\n").unwrap();
    }
    assert!(wait_output(stdin_pub, Duration::from_secs(20)).status.success());

    let out = wait_output(sub, Duration::from_secs(20));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "greetings.en hello world\ngreetings.lines one\ngreetings.lines two\n"
    );
}

#[test]
fn the_certificate_is_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start_node(dir.path());
    let first = std::fs::read(dir.path().join("node.crt")).unwrap();
    drop(node);
    let (_node, _) = start_node(dir.path());
    assert_eq!(std::fs::read(dir.path().join("node.crt")).unwrap(), first);
}

#[test]
fn errors_say_what_to_do_next() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("missing.crt");
    // Bad topic: reported before connecting.
    let out = Command::new(BIN).args(["pub", "a..b", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty segment"));
    // No node at the address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("quic://{}", silent.local_addr().unwrap());
    let out = Command::new(BIN)
        .args(["pub", "a", "x", "--insecure", "--connect-timeout", "0.3", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start one with `fovea node`"), "{err}");
    // Unreadable CA file.
    let out = fovea(&["pub", "a", "x"], &ca, &url).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read CA file"));
    // Usage errors exit 2, as clap does.
    let out = Command::new(BIN).args(["sub"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_shows_examples() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fovea sub 'sensors.>'"), "{text}");
    let serve = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&serve.stdout).starts_with("Provide a procedure"));
    for cmd in ["node", "pub", "sub", "bench"] {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"), "{cmd}");
    }
}

#[test]
fn node_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start_node(dir.path());
    stop_and_expect_success(node);
}

/// A node whose stdout and stderr readers went away keeps serving and still shuts down
/// cleanly: its log lines (the shutdown notice among them) must not kill the task that
/// writes them.
#[test]
fn node_survives_closed_output_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--admin", "off", "--log-level", "debug", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("quic://")).unwrap().to_owned();
    // Connections log at debug level, to the closed stderr; the node must go on serving.
    let ca = dir.path().join("node.crt");
    for _ in 0..2 {
        let out = fovea(&["pub", "closed.out", "x"], &ca, &url).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    stop_and_expect_success(Proc(child));
}

fn stop_and_expect_success(mut node: Proc) {
    let pid = node.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the first line of a child's stderr, then keeps reading the rest in the background:
/// a closed pipe would turn the child's later log lines into write errors.
fn first_line_then_drain(stderr: std::process::ChildStderr) -> String {
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line
}

/// Starts `fovea sub` and waits until it reports being subscribed.
fn start_sub(args: &[&str], ca: &Path, url: &str) -> Child {
    let mut sub = fovea(args, ca, url).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let line = first_line_then_drain(sub.stderr.take().unwrap());
    assert!(line.starts_with("subscribed to"), "{line:?}");
    sub
}

#[test]
fn node_serves_an_operator_certificate() {
    // The PEM pair a first start writes stands in for an operator's own files.
    let made = tempfile::tempdir().unwrap();
    drop(start_node(made.path()));
    let (cert, key) = (made.path().join("node.crt"), made.path().join("node.key"));
    let data = tempfile::tempdir().unwrap();
    let (_node, url) =
        start_node_with(data.path(), &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(!data.path().join("node.crt").exists(), "no self-signed certificate when one is given");

    let sub = start_sub(&["sub", "raw.*", "--count", "1", "--raw"], &cert, &url);
    assert!(fovea(&["pub", "raw.bytes", "just the payload"], &cert, &url).status().unwrap().success());
    let out = wait_output(sub, Duration::from_secs(20));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "just the payload", "--raw adds nothing");

    // A key that is not PEM stops the node with a message naming the file.
    std::fs::write(data.path().join("bad.key"), "not a key").unwrap();
    let out = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--admin", "off", "--cert", cert.to_str().unwrap(), "--key"])
        .arg(data.path().join("bad.key"))
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.key"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `fovea serve` and waits until it reports serving.
fn start_serve(args: &[&str], ca: &Path, url: &str) -> Proc {
    let mut serve = fovea(args, ca, url).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let line = first_line_then_drain(serve.stderr.take().unwrap());
    assert!(line.starts_with("serving "), "{line:?}");
    Proc(serve)
}

#[test]
fn serve_and_call_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url) = start_node(dir.path());
    let ca = dir.path().join("node.crt");

    // No provider: exit status 3, at once.
    let out = fovea(&["call", "text.upper", "hi"], &ca, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no provider for text.upper"));

    let _echo = start_serve(&["serve", "demo.echo"], &ca, &url);
    let out = fovea(&["call", "demo.echo", "ping"], &ca, &url).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n");

    // Any script is a provider: payload on stdin, stdout is the answer.
    let _upper = start_serve(&["serve", "text.upper", "--exec", "tr a-z A-Z"], &ca, &url);
    let mut call =
        fovea(&["call", "text.upper"], &ca, &url).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        call.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    }
    let out = wait_output(call, Duration::from_secs(20));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");

    // A failing script: exit status 5 and its stderr as the message.
    let _fail = start_serve(&["serve", "always.fails", "--exec", "echo broken >&2; exit 3"], &ca, &url);
    let out = fovea(&["call", "always.fails", "x"], &ca, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken") && err.contains("0x1003"), "{err}");

    // A script slower than the caller's deadline: exit status 4.
    let _slow = start_serve(&["serve", "very.slow", "--exec", "sleep 5"], &ca, &url);
    let out = fovea(&["call", "very.slow", "--timeout", "300ms"], &ca, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Files of any size through the binary: `pub --file` and `sub --raw` move bytes unchanged;
/// `call --file` streams a request larger than a frame into a `serve --exec` command's
/// stdin; `serve --exec --stream` sends each line as the command writes it and `call
/// --stream` prints them; `call --raw` writes a large answer unchanged.
#[test]
fn files_and_streams_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url) = start_node(dir.path());
    let ca = dir.path().join("node.crt");
    // Every byte value, no trailing newline (under a pipe's 64 KiB: the test reads it at exit).
    let small: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
    let file = dir.path().join("small.bin");
    std::fs::write(&file, &small).unwrap();
    let sub = start_sub(&["sub", "files.in", "--count", "1", "--raw"], &ca, &url);
    assert!(fovea(&["pub", "files.in", "--file", file.to_str().unwrap()], &ca, &url).status().unwrap().success());
    let out = wait_output(sub, Duration::from_secs(20));
    assert!(out.stdout == small, "the payload came out changed ({} bytes)", out.stdout.len());

    // 5 MiB, five times the default max_payload.
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| (i % 251) as u8).collect();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &big).unwrap();

    // Published as one streamed message and written out as it comes, unchanged.
    let received = dir.path().join("received.bin");
    let mut sub = fovea(&["sub", "files.big", "--count", "1", "--raw"], &ca, &url)
        .stdout(std::fs::File::create(&received).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line_then_drain(sub.stderr.take().unwrap());
    assert!(line.starts_with("subscribed to"), "{line:?}");
    let out = fovea(&["pub", "files.big", "--file", file.to_str().unwrap()], &ca, &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = wait_output(sub, Duration::from_secs(30)).status;
    assert!(status.success());
    let got = std::fs::read(&received).unwrap();
    assert!(got == big, "the file came out changed ({} bytes)", got.len());

    // Counted by the provider's command.
    let _count = start_serve(&["serve", "bytes.count", "--exec", "wc -c"], &ca, &url);
    let out = fovea(&["call", "bytes.count", "--file", file.to_str().unwrap(), "--timeout", "60s"], &ca, &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (5 << 20).to_string());

    // The same file back: `cat` answers with all of it, streamed to the caller.
    let _cat = start_serve(&["serve", "bytes.cat", "--exec", "cat"], &ca, &url);
    let out = fovea(&["call", "bytes.cat", "--file", file.to_str().unwrap(), "--raw", "--timeout", "60s"], &ca, &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == big, "the answer came out changed ({} bytes)", out.stdout.len());

    // Lines as they are written.
    let script = "for i in 1 2 3; do echo line $i; done";
    let _lines = start_serve(&["serve", "text.lines", "--exec", script, "--stream"], &ca, &url);
    let out = fovea(&["call", "text.lines", "--stream"], &ca, &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line 1\nline 2\nline 3\n");
    // A missing file is an error that names it.
    let out = fovea(&["call", "bytes.count", "--file", "/nonexistent/x"], &ca, &url).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x"));
}

#[test]
fn sub_group_members_share_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url) = start_node(dir.path());
    let ca = dir.path().join("node.crt");
    let mut members = vec![
        start_sub(&["sub", "work.>", "--group", "w", "--count", "1"], &ca, &url),
        start_sub(&["sub", "work.>", "--group", "w", "--count", "1"], &ca, &url),
    ];
    // The first message goes to exactly one member, which prints it and exits.
    assert!(fovea(&["pub", "work.item", "0"], &ca, &url).status().unwrap().success());
    let start = Instant::now();
    let first = loop {
        if let Some(i) = members.iter_mut().position(|m| m.try_wait().unwrap().is_some()) {
            break members.remove(i);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no member received the message");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(String::from_utf8_lossy(&wait_output(first, Duration::from_secs(5)).stdout), "work.item 0\n");
    // The other did not get it: it gets the next one.
    assert!(fovea(&["pub", "work.item", "1"], &ca, &url).status().unwrap().success());
    let other = wait_output(members.remove(0), Duration::from_secs(20));
    assert_eq!(String::from_utf8_lossy(&other.stdout), "work.item 1\n");
}

#[test]
fn config_files_are_checked_and_errors_point_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["token", "new"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = text.lines().find_map(|l| l.strip_prefix("token:  ")).unwrap().to_owned();
    let line = text.lines().find_map(|l| l.strip_prefix("config: ")).unwrap().to_owned();

    let good = dir.path().join("good.toml");
    let config = format!("[[realm]]\nname = \"acme\"\n\n[[realm.user]]\nname = \"app\"\n{line}\npublish = [\"x\"]\nsubscribe = [\">\"]\n");
    std::fs::write(&good, &config).unwrap();
    let out = Command::new(BIN).args(["node", "--check-config", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 realms, 1 users"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, config.replace("publish = [\"x\"]", "publish = [\"a.>.b\"]")).unwrap();
    let out = Command::new(BIN).args(["node", "--check-config", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7: realm.user.publish"), "{err}");

    // The printed token admits its user through the binary, end to end.
    let (_node, url) = start_node_with(dir.path(), &["--config", good.to_str().unwrap()]);
    let ca = dir.path().join("node.crt");
    let sub = start_sub(&["sub", "x", "--count", "1", "--realm", "acme", "--token", &token], &ca, &url);
    let status = fovea(&["pub", "x", "y", "--realm", "acme", "--token", &token], &ca, &url).status().unwrap();
    assert!(status.success());
    assert_eq!(String::from_utf8_lossy(&wait_output(sub, Duration::from_secs(20)).stdout), "x y\n");
    // A publish outside the user's allow-list fails the command, with the reason.
    let out = fovea(&["pub", "not.allowed", "y", "--realm", "acme", "--token", &token], &ca, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the publish: permission denied"), "{err}");
    let out = fovea(&["pub", "x", "y", "--realm", "acme", "--token", "nope"], &ca, &url).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
}

#[test]
fn limits_come_from_flags_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.toml");
    std::fs::write(&file, "[limits]\nmax_payload = 64\nmax_subscriptions = 1\n").unwrap();
    // The flag raises max_payload over the file's; max_subscriptions stays from the file.
    let (_node, line) = spawn_node(dir.path(), &["--config", file.to_str().unwrap(), "--max-payload", "128"]);
    let url = line.split_whitespace().find(|w| w.starts_with("quic://")).unwrap().to_owned();
    let admin = line.split("admin ").nth(1).and_then(|rest| rest.split([' ', ',', ')']).next()).unwrap();
    let info = admin_get(admin, "/info");
    assert!(info.contains("\"max_payload\":128"), "{info}");
    assert!(info.contains("\"max_subscriptions\":1"), "{info}");
    let ca = dir.path().join("node.crt");
    let ok = fovea(&["pub", "t", &"x".repeat(100)], &ca, &url).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Over max_payload: streamed (protocol 6) rather than refused.
    let streamed = fovea(&["pub", "t", &"x".repeat(200)], &ca, &url).output().unwrap();
    assert!(streamed.status.success(), "{}", String::from_utf8_lossy(&streamed.stderr));
    // A bad value stops the node with the key's name.
    for (flag, value, message) in [
        ("--max-topic-depth", "99", "max_topic_depth must be between 1 and 32"),
        ("--max-loopback-datagram", "9000", "max_loopback_datagram must be between 1200 and 6500"),
    ] {
        let out = Command::new(BIN)
            .args(["node", "--admin", "off", flag, value, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(message), "{flag} {value}");
    }
}

#[test]
fn stats_reads_the_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url, admin) = start_node_admin(dir.path());
    let ca = dir.path().join("node.crt");
    assert!(fovea(&["pub", "x", "1"], &ca, &url).status().unwrap().success());
    let out = Command::new(BIN).args(["stats", "--admin", &admin]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("messages in 1"), "{text}");
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let workers = cores.saturating_sub(1).max(1);
    assert!(
        text.contains(&format!(", {workers} worker{} on {cores} core", if workers == 1 { "" } else { "s" })),
        "{text}"
    );
    let out = Command::new(BIN).args(["stats", "--admin", "http://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the node running with --admin?"));
}

/// Like `start_node`, also returning the admin URL from the ready line.
fn start_node_admin(data_dir: &Path) -> (Proc, String, String) {
    let (node, line) = spawn_node(data_dir, &[]);
    let url = line.split_whitespace().find(|w| w.starts_with("quic://")).unwrap().to_owned();
    let admin = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches(')').to_owned();
    (node, url, admin)
}

#[test]
fn sigterm_delivers_what_was_accepted_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, url) = start_node(dir.path());
    let ca = dir.path().join("node.crt");
    let sub = start_sub(&["sub", "drain.>", "--count", "500"], &ca, &url);
    let mut publisher = fovea(&["pub", "drain.x"], &ca, &url).stdin(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().unwrap();
        for i in 0..500 {
            writeln!(stdin, "{i}").unwrap();
        }
    }
    // `fovea pub` exits after the node confirmed routing everything (flush).
    assert!(wait_output(publisher, Duration::from_secs(20)).status.success());
    let pid = node.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = wait_output(sub, Duration::from_secs(20));
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 500);
    assert_eq!(lines[499], "drain.x 499");
    let start = Instant::now();
    while node.0.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn print_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "node",
            "--print-config",
            "--max-payload",
            "2048",
            "--admin",
            "off",
            "--idle-spin",
            "250us",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "[node]",
        "admin = \"off\"",
        "idle_spin = \"250us\"",
        "[limits]",
        "max_payload = 2048",
        "slow_consumer_timeout = \"10s\"",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(BIN).args(["node", "--check-config", "--config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A bad key in [node] names the file and line.
    std::fs::write(&file, "[node]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n").unwrap();
    let out = Command::new(BIN).args(["node", "--check-config", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("printed.toml:3") && err.contains("lisen"), "{err}");
}

#[test]
fn an_idle_spin_past_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["node", "--idle-spin", "5s", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--idle-spin") && err.contains("longer than"), "{err}");
}

/// `fovea node --print-config` shows the worker count the node's runtime really has.
fn printed_workers(args: &[&str], env: Option<(&str, &str)>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--print-config", "--admin", "off"]).args(args).arg("--data-dir").arg(dir.path());
    cmd.env_remove("TOKIO_WORKER_THREADS").env_remove("FOVEA_WORKERS");
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn the_worker_count_comes_from_the_flag_the_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "[node]\nworkers = 2\n").unwrap();
    let file = file.to_str().unwrap();
    let line = |out: &Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("workers = ")).map(str::to_owned)
    };
    assert_eq!(line(&printed_workers(&["--workers", "3"], None)).as_deref(), Some("workers = 3"));
    assert_eq!(line(&printed_workers(&["--config", file], None)).as_deref(), Some("workers = 2"));
    assert_eq!(line(&printed_workers(&["--config", file, "--workers", "1"], None)).as_deref(), Some("workers = 1"));
    assert_eq!(
        line(&printed_workers(&["--config", file], Some(("FOVEA_WORKERS", "4")))).as_deref(),
        Some("workers = 4")
    );
    assert_eq!(line(&printed_workers(&[], Some(("TOKIO_WORKER_THREADS", "3")))).as_deref(), Some("workers = 3"));
    // Unset: one fewer than the cores, at least one.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let expected = format!("workers = {}", cores.saturating_sub(1).max(1));
    assert_eq!(line(&printed_workers(&[], None)), Some(expected));

    for bad in ["0", "many", "100000"] {
        let out = printed_workers(&["--workers", bad], None);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--workers") && err.contains("from 1 to"), "{err}");
    }
    // A bad value in the file is the file's error, which --check-config reports too.
    std::fs::write(dir.path().join("node.toml"), "[node]\nworkers = 0\n").unwrap();
    for check in [&["--check-config"][..], &[]] {
        let out = printed_workers(&[&["--config", file][..], check].concat(), None);
        assert_eq!(out.status.code(), Some(1), "{check:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[node] workers = 0") && !err.contains("panicked"), "{err}");
    }
}

/// tokio panics on a bad TOKIO_WORKER_THREADS; the binary says what to write instead.
#[test]
fn a_bad_worker_thread_count_is_an_error_not_a_panic() {
    for bad in ["", "0", "two"] {
        let out = Command::new(BIN).args(["token", "new"]).env("TOKIO_WORKER_THREADS", bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("TOKIO_WORKER_THREADS") && err.contains("at least 1") && !err.contains("panicked"),
            "{err}"
        );
    }
    let out = Command::new(BIN).args(["token", "new"]).env("TOKIO_WORKER_THREADS", "1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every short benchmark runs end to end through the binary (it starts its own node) and
/// ends with the `system=fovea mode=…` line that sits beside NATS's.
#[test]
fn bench_modes_print_key_value_lines() {
    let runs: &[(&[&str], &str)] = &[
        (&["bench", "pubsub", "--msgs", "2000"], "mode=pubsub"),
        (&["bench", "fanout", "--subs", "3", "--msgs", "1000"], "mode=fanout"),
        (&["bench", "rpc", "--callers", "4", "--calls", "200"], "mode=rpc"),
        (&["bench", "rpc", "--callers", "2", "--calls", "200", "--client-spin", "50us"], "mode=rpc"),
        (&["bench", "startup", "--runs", "2"], "mode=startup"),
        (&["bench", "conns", "--conns", "260"], "mode=conns"),
        // Another address for the node (scripts/netns-conns.sh gives a non-loopback one).
        (&["bench", "conns", "--conns", "260", "--node-listen", "127.0.0.2:0"], "mode=conns"),
        (&["bench", "mesh", "--msgs", "2000", "--calls", "200", "--callers", "2"], "mode=mesh"),
    ];
    for (args, mode) in runs {
        let out = Command::new(BIN).args(*args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("system=fovea {mode} ")), "{args:?}: {last}");
        assert!(!last.contains("dropped=") || last.contains("dropped=0 "), "{last}");
    }
    // A node to start and a node to use are one too many.
    let out = Command::new(BIN)
        .args(["bench", "conns", "--node-listen", "127.0.0.1:0", "--url", "quic://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A spin longer than allowed is refused up front.
    let out = Command::new(BIN).args(["bench", "rpc", "--client-spin", "5ms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-spin"), "{}", String::from_utf8_lossy(&out.stderr));
    // A missing comparison script is a clear error, after fovea's own figures.
    let out = Command::new(BIN)
        .args(["bench", "pubsub", "--msgs", "100", "--compare-nats", "--nats-script", "/nonexistent/nats.sh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("system=fovea mode=pubsub"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nats-script"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--rounds` runs a workload several times and reports medians; with `--compare-nats` it
/// alternates with the NATS script and takes the ratio per round. A stand-in script (the
/// real one needs nats-server) gives NATS's figures, so the arithmetic is checked too.
#[test]
fn bench_rounds_report_medians_and_ratios() {
    let out = Command::new(BIN).args(["bench", "pubsub", "--msgs", "1000", "--rounds", "3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("system=fovea mode=pubsub size=").count(), 3, "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("system=fovea mode=pubsub rounds=3 delivered_rate="), "{last}");
    assert!(last.ends_with(" dropped=0"), "{last}");

    // NATS "delivers" 1 msg/s and drops 5 per round: every ratio is fovea's own rate.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("nats.sh");
    std::fs::write(&script, "echo \"system=nats mode=$1 size=$3 delivered=1 dropped=5 delivered_rate=1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["bench", "pubsub", "--msgs", "1000", "--rounds", "2", "--compare-nats", "--nats-script"])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("\ncompare mode=pubsub delivered_rate_ratio=").count(), 2, "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let get =
        |key: &str| last.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok());
    assert!(last.starts_with("compare mode=pubsub rounds=2 "), "{last}");
    let (fovea, ratio) = (get("fovea_delivered_rate").unwrap(), get("delivered_rate_ratio").unwrap());
    assert!(fovea > 0.0 && (ratio - fovea).abs() <= 1.0, "{last}");
    assert_eq!(get("nats_delivered_rate"), Some(1.0), "{last}");
    assert_eq!(get("nats_dropped"), Some(10.0), "{last}");
    assert_eq!(get("fovea_dropped"), Some(0.0), "{last}");

    // Workloads without a NATS counterpart refuse both flags before running.
    let out = Command::new(BIN).args(["bench", "startup", "--rounds", "2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rounds covers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `path` from an admin endpoint (HTTP/1.0, loopback, no token needed).
fn admin_get(admin: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = admin.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Two nodes started as users start them form a mesh: the second joins the first with
/// `--join`, and each sees the other in its DHT (admin `/info`). Without the secret,
/// `--join` is refused with a hint.
#[test]
fn nodes_form_a_mesh_from_the_command_line() {
    let secret = "correct horse battery staple";
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_line) = spawn_node(a_dir.path(), &["--mesh-secret", secret, "--mesh-listen", "127.0.0.1:0"]);
    assert!(a_line.contains(", mesh quic://127.0.0.1:"), "{a_line}");
    let word_after = |line: &str, key: &str| {
        let at = line.find(key).unwrap() + key.len();
        line[at..].split([' ', ',', ')']).next().unwrap().to_owned()
    };
    let a_mesh = word_after(&a_line, ", mesh ");
    let a_admin = word_after(&a_line, "admin ");
    let (b, b_line) =
        spawn_node(b_dir.path(), &["--mesh-secret", secret, "--mesh-listen", "127.0.0.1:0", "--join", &a_mesh]);
    let b_admin = word_after(&b_line, "admin ");
    let start = Instant::now();
    for admin in [&a_admin, &b_admin] {
        loop {
            let info = admin_get(admin, "/info");
            if info.contains("\"dht_contacts\":1") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no mesh after 20 s: {info}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(admin_get(&a_admin, "/metrics").contains("fovea_mesh_links 1"));
    // B dies without a word (SIGKILL): A notices from the silence and drops it.
    let mut b = b;
    b.0.kill().unwrap();
    let start = Instant::now();
    loop {
        let info = admin_get(&a_admin, "/info");
        if info.contains("\"dht_contacts\":0") && info.contains("\"links\":[]") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "A still lists B after 20 s: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("a killed node left the mesh after {:?}", start.elapsed());
    // Found by the failure detector's probes (1.5 s at most), before the link's QUIC idle
    // timeout (4 s) would have closed it.
    assert!(admin_get(&a_admin, "/metrics").contains("fovea_mesh_peers_dead_total 1"));
    drop(a);
    let c_dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--admin", "off", "--join", &a_mesh, "--data-dir"])
        .arg(c_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mesh-secret"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One HTTP/1.1 POST to an MCP endpoint (2026-07-28, stateless); the JSON-RPC message of
/// the answer.
fn mcp_post(endpoint: &str, method: &str, name: &str, params: serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://").trim_end_matches("/mcp");
    let mut params = params;
    params["_meta"] = serde_json::json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                         "io.modelcontextprotocol/clientCapabilities": {}});
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: {method}\r\n\
         Mcp-Name: {name}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
        .find(|m| m.get("id").is_some())
        .or_else(|| raw.split("\r\n\r\n").nth(1).and_then(|b| serde_json::from_str(b.trim()).ok()))
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {raw}"))
}

/// A node with an MCP endpoint in `dir`: the process, its QUIC URL and its MCP endpoint.
fn spawn_mcp_node(dir: &Path) -> (Proc, String, String) {
    let (node, line) = spawn_node(dir, &["--mcp", "127.0.0.1:0"]);
    let url = line.split_whitespace().find(|w| w.starts_with("quic://")).unwrap().to_owned();
    let endpoint = line.split_whitespace().find(|w| w.starts_with("http://") && w.contains("/mcp")).unwrap();
    let endpoint = endpoint.trim_end_matches([')', ',']).to_owned();
    (node, url, endpoint)
}

#[test]
fn any_script_becomes_an_ai_tool() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url, endpoint) = spawn_mcp_node(dir.path());
    let ca = dir.path().join("node.crt");
    let schema = r#"{"type":"object","properties":{"who":{"type":"string"}},"required":["who"]}"#;
    let _greet = start_serve(
        &[
            "serve",
            "demo.greet",
            "--description",
            "Greets someone.",
            "--input-schema",
            schema,
            "--exec",
            r#"printf '{"greeting":"hello"}'"#,
        ],
        &ca,
        &url,
    );
    let _fails = start_serve(
        &["serve", "demo.fail", "--description", "Always fails.", "--exec", "echo 'out of paper' >&2; exit 2"],
        &ca,
        &url,
    );

    // Over HTTP, as an agent on the node's endpoint.
    let list = mcp_post(&endpoint, "tools/list", "", serde_json::json!({}));
    let names: Vec<&str> =
        list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["demo__fail", "demo__greet"]);
    let call = mcp_post(
        &endpoint,
        "tools/call",
        "demo__greet",
        serde_json::json!({"name": "demo__greet", "arguments": {"who": "Ada"}}),
    );
    assert_eq!(call["result"]["structuredContent"]["greeting"], "hello", "{call}");
    let failed =
        mcp_post(&endpoint, "tools/call", "demo__fail", serde_json::json!({"name": "demo__fail", "arguments": {}}));
    assert_eq!(failed["result"]["isError"], true);
    assert!(failed["result"]["content"][0]["text"].as_str().unwrap().contains("out of paper"), "{failed}");
    let invalid =
        mcp_post(&endpoint, "tools/call", "demo__greet", serde_json::json!({"name": "demo__greet", "arguments": {}}));
    assert_eq!(invalid["error"]["code"], -32602, "{invalid}");

    // Over stdio, as a desktop agent starts `fovea mcp`.
    let mut mcp =
        fovea(&["mcp"], &ca, &url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = mcp.stdin.take().unwrap();
        for m in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"demo__greet","arguments":{"who":"Ada"}}}"#,
        ] {
            writeln!(stdin, "{m}").unwrap();
        }
        let mut out = BufReader::new(mcp.stdout.take().unwrap());
        let mut answers = Vec::new();
        while answers.len() < 3 {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "fovea mcp ended early");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("id").is_some() {
                answers.push(v);
            }
        }
        assert_eq!(answers[1]["result"]["tools"].as_array().unwrap().len(), 2);
        assert_eq!(answers[2]["result"]["structuredContent"]["greeting"], "hello");
        drop(stdin);
    }
    let out = wait_output(mcp, Duration::from_secs(20));
    assert!(out.status.success());
}

#[test]
fn any_command_serves_a_resource_or_a_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, url, endpoint) = spawn_mcp_node(dir.path());
    let ca = dir.path().join("node.crt");
    let _readme = start_serve(
        &[
            "serve",
            "docs.readme",
            "--resource",
            "docs://readme",
            "--mime-type",
            "text/markdown",
            "--exec",
            "printf '# hi'",
        ],
        &ca,
        &url,
    );
    // A template: the command reads the params ({"uri", "variables"}) on stdin.
    let _pages = start_serve(&["serve", "docs.page", "--resource", "docs://pages/{n}", "--exec", "cat"], &ca, &url);
    let _prompt = start_serve(
        &[
            "serve",
            "p.greet",
            "--prompt",
            "--description",
            "Greets.",
            "--argument",
            "who",
            "--exec",
            "echo \"$FOVEA_MCP_METHOD\"",
        ],
        &ca,
        &url,
    );
    let read = mcp_post(&endpoint, "resources/read", "docs://readme", serde_json::json!({"uri": "docs://readme"}));
    assert_eq!(read["result"]["contents"][0]["text"], "# hi", "{read}");
    assert_eq!(read["result"]["contents"][0]["mimeType"], "text/markdown");
    let page = mcp_post(&endpoint, "resources/read", "docs://pages/4", serde_json::json!({"uri": "docs://pages/4"}));
    let text: serde_json::Value =
        serde_json::from_str(page["result"]["contents"][0]["text"].as_str().unwrap_or_default()).unwrap();
    assert_eq!(text["variables"]["n"], "4", "{page}");
    let templates = mcp_post(&endpoint, "resources/templates/list", "", serde_json::json!({}));
    assert_eq!(templates["result"]["resourceTemplates"][0]["uriTemplate"], "docs://pages/{n}");
    let get = mcp_post(
        &endpoint,
        "prompts/get",
        "p__greet",
        serde_json::json!({"name": "p__greet", "arguments": {"who": "Ada"}}),
    );
    assert_eq!(get["result"]["messages"][0]["content"]["text"], "prompts/get\n", "{get}");
    let missing = mcp_post(&endpoint, "prompts/get", "p__greet", serde_json::json!({"name": "p__greet"}));
    assert_eq!(missing["error"]["code"], -32602, "{missing}");
    // The flags say what goes together.
    let out = fovea(&["serve", "x.y", "--prompt", "--exec", "true"], &ca, &url).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--description"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_node_attaches_the_mcp_servers_its_configuration_lists() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream_mcp.py");
    let config = dir.path().join("fovea.toml");
    std::fs::write(&config, format!("[[mcp.upstream]]\nname = \"up\"\ncommand = [\"python3\", {script:?}]\n")).unwrap();
    let (node, url) = start_node_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let ca = dir.path().join("node.crt");
    let start = Instant::now();
    loop {
        let out = fovea(&["call", "up.echo", r#"{"a":1}"#], &ca, &url).output().unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("structuredContent"));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    // The attachment ends with the node, even one killed outright (no destructor runs).
    let out = fovea(&["mcp", "status", "up", "--json"], &ca, &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let replica = status["replica"].as_str().unwrap_or_default().to_owned();
    let pid: u32 = replica.strip_prefix("pid ").and_then(|r| r.split(' ').next()).and_then(|p| p.parse().ok()).unwrap();
    drop(node);
    let start = Instant::now();
    while running(pid) {
        assert!(start.elapsed() < Duration::from_secs(20), "the attachment (pid {pid}) outlived its node");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A malformed entry is a configuration error that names it.
    std::fs::write(&config, "[[mcp.upstream]]\nname = \"bad\"\n").unwrap();
    let out = Command::new(BIN).args(["node", "--check-config", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"bad\"") && err.contains("command"), "{err}");
}
