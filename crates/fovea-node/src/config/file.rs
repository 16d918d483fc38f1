//! The configuration file (TOML): its schema, its parser, and the errors it reports with
//! file, line and key. `fovea node --config FILE` reads it; `--print-config` writes it.
//!
//! ```toml
//! [[realm]]
//! name = "acme"
//!
//! [[realm.user]]
//! name = "sensor-1"
//! token_sha256 = "…64 hex digits…"   # the node never stores the token itself
//! publish   = ["sensors.>"]          # allow-lists of patterns; omitted = nothing allowed
//! subscribe = ["commands.sensor-1.>"]
//! call      = []
//! register  = []
//! ```

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use fovea_core::Pattern;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::{Allow, Credential, Permissions, RealmConfig, User};
use crate::config::{format_duration, parse_duration, Limits, McpConfig};

/// A configuration error: the file, the line, the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    realm: Vec<FileRealm>,
    limits: Option<Limits>,
    #[serde(default)]
    node: NodeSection,
    mcp: Option<McpSection>,
}

/// The `[mcp]` table: the MCP endpoint for AI agents. Present with `listen`, it turns the
/// endpoint on (as `--mcp` does); the other keys have the defaults of
/// [`McpConfig::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// TCP address, or `"off"`.
    pub listen: Option<String>,
    /// `Host` values accepted besides loopback names.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides loopback ones.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: Option<usize>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_user: Option<usize>,
    /// e.g. `"5m"`.
    pub session_idle: Option<String>,
    /// e.g. `"30s"`, or `"off"`.
    pub hibernate_after: Option<String>,
    /// e.g. `"60s"`.
    pub call_timeout: Option<String>,
    pub max_calls_in_flight: Option<usize>,
    /// MCP servers the node attaches (`fovea mcp attach` run by the node). Only what the
    /// operator lists here is ever started; nothing a client sends can start a process
    /// or choose a URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<UpstreamSection>,
}

/// One `[[mcp.upstream]]`: an MCP server whose tools become the procedures `name.<tool>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    /// A stdio server: the program and its arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A Streamable HTTP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the HTTP server's bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_file: Option<std::path::PathBuf>,
    /// The realm the tools go into [default: `default`], and a token of a user allowed to
    /// register them there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// A secret: never printed.
    #[serde(skip_serializing)]
    pub token: Option<String>,
}

impl UpstreamSection {
    fn check(&self) -> Result<(), ConfigError> {
        let err = |why: String| ConfigError(format!("[[mcp.upstream]] {:?}: {why}", self.name));
        fovea_core::Procedure::new(&self.name).map_err(|e| err(format!("the name {e}")))?;
        match (&self.command, &self.url) {
            (Some(c), None) if !c.is_empty() => Ok(()),
            (None, Some(_)) => Ok(()),
            _ => Err(err("give exactly one of command = [\"program\", \"arg\", …] and url = \"https://…\"".into())),
        }
    }
}

impl McpSection {
    /// The table that gives `config` (without upstreams, which the CLI runs).
    pub fn of(config: &McpConfig) -> McpSection {
        let fmt = format_duration;
        McpSection {
            listen: Some(config.listen.to_string()),
            allowed_hosts: config.allowed_hosts.clone(),
            allowed_origins: config.allowed_origins.clone(),
            max_body_bytes: Some(config.max_body_bytes),
            max_sessions: Some(config.max_sessions),
            max_sessions_per_user: Some(config.max_sessions_per_user),
            session_idle: Some(fmt(config.session_idle)),
            hibernate_after: Some(config.hibernate_after.map_or_else(|| "off".to_owned(), fmt)),
            call_timeout: Some(fmt(config.call_timeout)),
            max_calls_in_flight: Some(config.max_calls_in_flight),
            upstream: Vec::new(),
        }
    }

    /// Applies the table's keys to `config`.
    ///
    /// # Errors
    /// A duration that does not parse, a zero limit, or a malformed `[[mcp.upstream]]`.
    pub fn apply(&self, config: &mut McpConfig) -> Result<(), ConfigError> {
        for u in &self.upstream {
            u.check()?;
        }
        let dur = |key: &str, v: &Option<String>, d: &mut std::time::Duration| -> Result<(), ConfigError> {
            if let Some(v) = v {
                *d = parse_duration(v).map_err(|e| ConfigError(format!("[mcp] {key}: {e}")))?;
            }
            Ok(())
        };
        dur("session_idle", &self.session_idle, &mut config.session_idle)?;
        dur("call_timeout", &self.call_timeout, &mut config.call_timeout)?;
        match self.hibernate_after.as_deref() {
            None => {}
            Some("off") => config.hibernate_after = None,
            Some(v) => {
                let d = parse_duration(v).map_err(|e| {
                    ConfigError(format!("[mcp] hibernate_after: {e} (or \"off\" to keep idle sessions live)"))
                })?;
                config.hibernate_after = Some(d);
            }
        }
        config.allowed_hosts.extend(self.allowed_hosts.iter().cloned());
        config.allowed_origins.extend(self.allowed_origins.iter().cloned());
        for (key, v, slot) in [
            ("max_body_bytes", self.max_body_bytes, &mut config.max_body_bytes),
            ("max_sessions", self.max_sessions, &mut config.max_sessions),
            ("max_sessions_per_user", self.max_sessions_per_user, &mut config.max_sessions_per_user),
            ("max_calls_in_flight", self.max_calls_in_flight, &mut config.max_calls_in_flight),
        ] {
            match v {
                Some(0) => return Err(ConfigError(format!("[mcp] {key} must be at least 1"))),
                Some(n) => *slot = n,
                None => {}
            }
        }
        Ok(())
    }
}

/// The `[node]` table: the settings that are also `fovea node` flags. Every key is
/// optional; a flag (or its environment variable) wins over the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// UDP address to listen on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// State directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<std::path::PathBuf>,
    /// The node's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PEM certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// Admin endpoint address, or `"off"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Bearer token for the admin endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Log filter (`info`, `debug`, or `RUST_LOG`-style directives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format: `text` or `json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Allow an open node on a non-loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// UDP address of the mesh endpoint (node-to-node links).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_listen: Option<std::net::SocketAddr>,
    /// Mesh members to join through (`quic://host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// The mesh's shared secret; setting it (or `mesh_ca`) turns the mesh on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_secret: Option<String>,
    /// The mesh CA's certificate: only nodes with a certificate it issued are admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_ca: Option<std::path::PathBuf>,
    /// This node's certificate from the mesh CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_cert: Option<std::path::PathBuf>,
    /// Its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<std::path::PathBuf>,
    /// Failure detection: a linked node silent this long is probed (`500ms`; docs/MESH.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_probe_interval: Option<String>,
    /// A probe unanswered this long makes the node suspect (`300ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_probe_timeout: Option<String>,
    /// A suspect heard from by no path this long is dead (`700ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_suspect_timeout: Option<String>,
    /// Longest time an idle worker watches the sockets before it sleeps (`100us`; `0` off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_spin: Option<String>,
    /// Worker threads (at least 1); default one fewer than the cores, at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// TCP address of the TLS-over-TCP client transport, or `"off"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// TCP address of the WebSocket client transport, or `"off"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
    /// WebSocket over TLS: `auto` (plain on loopback), `on` or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_tls: Option<super::WsTls>,
    /// Origins whose pages may open a WebSocket, besides loopback ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_allowed_origins: Option<Vec<String>>,
}

/// What a configuration file declares.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Its realms; empty when it declares none (the node then runs open).
    pub realms: Vec<RealmConfig>,
    /// Its `[limits]` table, with defaults for the keys it omits.
    pub limits: Option<Limits>,
    /// Its `[node]` table.
    pub node: NodeSection,
    /// Its `[mcp]` table.
    pub mcp: Option<McpSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRealm {
    name: Spanned<String>,
    #[serde(default)]
    user: Vec<FileUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    cert_sha256: Option<Spanned<String>>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    subscribe: Vec<Spanned<String>>,
    #[serde(default)]
    call: Vec<Spanned<String>>,
    #[serde(default)]
    register: Vec<Spanned<String>>,
}

/// Reads a configuration file.
///
/// # Errors
/// [`ConfigError`] naming the file, line and key of the first problem.
pub fn load_config(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
    parse_config(&text, &path.display().to_string())
}

/// Parses the realms of a configuration file's text; `origin` names it in errors.
///
/// # Errors
/// [`ConfigError`] naming the origin, line and key of the first problem.
pub fn parse_realms(text: &str, origin: &str) -> Result<Vec<RealmConfig>, ConfigError> {
    Ok(parse_config(text, origin)?.realms)
}

/// Parses a configuration file's text; `origin` names it in errors.
///
/// # Errors
/// [`ConfigError`] naming the origin, line and key of the first problem.
pub fn parse_config(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| format!(":{}", line_of(text, &s))).unwrap_or_default();
        ConfigError(format!("{origin}{at}: {}", e.message()))
    })?;
    if let Some(limits) = &file.limits {
        limits.validate().map_err(|why| ConfigError(format!("{origin}: limits: {why}")))?;
    }
    let err = |span: Range<usize>, key: &str, what: String| {
        ConfigError(format!("{origin}:{}: {key}: {what}", line_of(text, &span)))
    };
    let mut realms: Vec<RealmConfig> = Vec::new();
    for r in file.realm {
        let name = r.name.get_ref();
        if let Err(why) = check_name(name) {
            return Err(err(r.name.span(), "realm.name", why));
        }
        if realms.iter().any(|x| x.name == *name) {
            return Err(err(r.name.span(), "realm.name", format!("realm {name:?} is declared twice")));
        }
        let mut users: Vec<User> = Vec::new();
        for u in r.user {
            let uname = u.name.get_ref();
            if let Err(why) = check_name(uname) {
                return Err(err(u.name.span(), "realm.user.name", why));
            }
            if users.iter().any(|x| x.name == *uname) {
                return Err(err(
                    u.name.span(),
                    "realm.user.name",
                    format!("user {uname:?} is declared twice in realm {name:?}"),
                ));
            }
            let credential = match (&u.token_sha256, &u.cert_sha256) {
                (Some(t), None) => Credential::Token(
                    parse_digest(t.get_ref()).map_err(|why| err(t.span(), "realm.user.token_sha256", why))?,
                ),
                (None, Some(c)) => Credential::Certificate(
                    parse_digest(c.get_ref()).map_err(|why| err(c.span(), "realm.user.cert_sha256", why))?,
                ),
                _ => {
                    let why = "give exactly one of token_sha256 (`fovea token new`) and cert_sha256 (`fovea cert new`)";
                    return Err(err(u.name.span(), "realm.user", why.to_owned()));
                }
            };
            if users.iter().any(|x| x.credential == credential) {
                let why = "two users of this realm have the same credential".to_owned();
                return Err(err(u.name.span(), "realm.user", why));
            }
            let list = |key: &str, items: &[Spanned<String>]| -> Result<Allow, ConfigError> {
                let mut out = Vec::new();
                for item in items {
                    let p = Pattern::new(item.get_ref()).map_err(|e| {
                        err(item.span(), &format!("realm.user.{key}"), format!("pattern {:?} {e}", item.get_ref()))
                    })?;
                    out.push(p);
                }
                Ok(Allow::Patterns(out))
            };
            let permissions = Permissions {
                publish: list("publish", &u.publish)?,
                subscribe: list("subscribe", &u.subscribe)?,
                call: list("call", &u.call)?,
                register: list("register", &u.register)?,
            };
            users.push(User { name: uname.clone(), credential, permissions: Arc::new(permissions) });
        }
        realms.push(RealmConfig { name: name.clone(), users });
    }
    Ok(ConfigFile { realms, limits: file.limits, node: file.node, mcp: file.mcp })
}

/// Fuzz entry point: any text, parsed as a configuration file, yields realms or an error
/// that names a line, never a panic.
#[doc(hidden)]
pub fn fuzz_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = parse_realms(text, "fuzz.toml") {
            assert!(e.0.starts_with("fuzz.toml"), "errors name the file: {}", e.0);
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > fovea_core::limits::MAX_REALM_LEN {
        return Err(format!("{name:?} must be 1 to {} bytes long", fovea_core::limits::MAX_REALM_LEN));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{name:?} must not contain whitespace or control characters"));
    }
    Ok(())
}

/// 64 hex digits, optionally in `AB:CD:…` form (as fingerprints are printed).
fn parse_digest(raw: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!("{raw:?} is not a SHA-256 digest (64 hexadecimal digits, colons allowed); `fovea token new` and `fovea cert new` print valid lines")
    };
    let s: String = raw.chars().filter(|c| *c != ':').collect();
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    text.get(..span.start).map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{credential_of, hex, new_token, sha256, Admission};

    const TOKEN: &str = "s3cret";

    fn digest_hex() -> String {
        hex(&sha256(TOKEN.as_bytes()))
    }

    #[test]
    fn parses_realms_users_and_permissions() {
        let text = format!(
            "[[realm]]\nname = \"acme\"\n\n[[realm.user]]\nname = \"sensor-1\"\ntoken_sha256 = \"{}\"\npublish = [\"sensors.>\"]\n",
            digest_hex()
        );
        let realms = parse_realms(&text, "f.toml").unwrap();
        assert_eq!(realms.len(), 1);
        let u = &realms[0].users[0];
        assert_eq!(u.name, "sensor-1");
        assert!(u.permissions.publish.name(b"sensors.a"));
        assert!(!u.permissions.publish.name(b"other"));
        assert!(!u.permissions.subscribe.pattern(&Pattern::new("x").unwrap()), "omitted means nothing");
        let admission = Admission::users(&realms[0]);
        assert_eq!(admission.admit(&credential_of(TOKEN.as_bytes(), None)).map(|(n, _)| n), Some("sensor-1".into()));
        assert!(admission.admit(&credential_of(b"wrong", None)).is_none());
        assert!(admission.admit(&credential_of(b"", Some(TOKEN.as_bytes()))).is_none(), "a certificate is not a token");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("[[realm]]\nname = \"a\"\nbogus = 1\n", "f.toml:3", "unknown field `bogus`"),
            ("[[realm]]\nname = \"a\"\n[[realm.user]]\nname = \"u\"\ntoken_sha256 = \"xyz\"\n", "f.toml:5: realm.user.token_sha256", "64 hexadecimal"),
            ("[[realm]]\nname = \"a\"\n[[realm.user]]\nname = \"u\"\n", "f.toml:4: realm.user", "exactly one of token_sha256"),
            (
                &format!("[[realm]]\nname = \"a\"\n[[realm.user]]\nname = \"u\"\ntoken_sha256 = \"{}\"\nsubscribe = [\"a..b\"]\n", digest_hex()),
                "f.toml:6: realm.user.subscribe",
                "empty segment",
            ),
            ("[[realm]]\nname = \"a\"\n[[realm]]\nname = \"a\"\n", "f.toml:4: realm.name", "declared twice"),
            ("[[realm]]\nname = \"\"\n", "f.toml:2: realm.name", "1 to 64 bytes"),
            ("[[realm]\n", "f.toml:1", ""),
        ];
        for (text, at, what) in cases {
            let e = parse_realms(text, "f.toml").unwrap_err().0;
            assert!(e.starts_with(at) && e.contains(what), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn limits_table() {
        let c = parse_config("[limits]\nmax_connections = 5\nslow_consumer_timeout = \"2s\"\n", "f").unwrap();
        let l = c.limits.unwrap();
        assert_eq!((l.max_connections, l.slow_consumer_timeout), (5, std::time::Duration::from_secs(2)));
        assert_eq!(l.max_payload, crate::config::Limits::default().max_payload, "omitted keys keep their defaults");
        assert!(c.realms.is_empty());
        let e = parse_config("[limits]\nmax_conections = 5\n", "f").unwrap_err().0;
        assert!(e.starts_with("f:2") && e.contains("max_conections"), "{e}");
        let e = parse_config("[limits]\nidle_timeout = \"soon\"\n", "f").unwrap_err().0;
        assert!(e.starts_with("f:2") && e.contains("not a duration"), "{e}");
        let e = parse_config("[limits]\nmax_topic_depth = 99\n", "f").unwrap_err().0;
        assert!(e.contains("max_topic_depth must be between 1 and 32"), "{e}");
    }

    #[test]
    fn new_tokens_verify_against_their_line() {
        let (token, line) = new_token().unwrap();
        assert_eq!(token.len(), 64);
        let text = format!("[[realm]]\nname = \"r\"\n[[realm.user]]\nname = \"u\"\n{line}\n");
        let realms = parse_realms(&text, "t").unwrap();
        assert_eq!(realms[0].users[0].credential, Credential::Token(sha256(token.as_bytes())));
    }
}
