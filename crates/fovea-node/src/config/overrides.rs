//! The one place a node's settings are merged: what the command line says (flags and their
//! environment variables) wins over the configuration file, which wins over the defaults.
//! The CLI parses its flags into [`Overrides`]; [`Overrides::resolve`] checks and merges;
//! [`Resolved::render`] writes the result back as a file `--config` accepts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{ConfigError, ConfigFile, McpSection, NodeSection, UpstreamSection};
use super::{format_duration, parse_duration, Limits, McpConfig, MeshConfig, NodeConfig, TlsFiles, WsConfig, WsTls};

/// Settings from the command line; `None` (or empty, or `false`) leaves the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `Some(None)`: the admin endpoint off.
    pub admin: Option<Option<SocketAddr>>,
    pub admin_token: Option<String>,
    /// `true` allows an open node on a non-loopback address, whatever the file says.
    pub allow_anonymous: bool,
    /// The limits, with the flags given already applied to the file's (or the defaults).
    pub limits: Option<Limits>,
    /// `Some(None)`: the MCP endpoint off.
    pub mcp: Option<Option<SocketAddr>>,
    pub mcp_call_timeout: Option<Duration>,
    pub mesh_secret: Option<String>,
    pub mesh_ca: Option<PathBuf>,
    pub mesh_cert: Option<PathBuf>,
    pub mesh_key: Option<PathBuf>,
    pub mesh_listen: Option<SocketAddr>,
    /// Members to join through (`quic://host:port`); non-empty replaces the file's list.
    pub join: Vec<String>,
    pub mesh_probe_interval: Option<Duration>,
    pub mesh_probe_timeout: Option<Duration>,
    pub mesh_suspect_timeout: Option<Duration>,
    pub idle_spin: Option<Duration>,
    /// `Some(None)`: the TLS-over-TCP transport off.
    pub tcp: Option<Option<SocketAddr>>,
    /// `Some(None)`: the WebSocket transport off.
    pub ws: Option<Option<SocketAddr>>,
    pub ws_tls: Option<WsTls>,
    /// Non-empty replaces the file's list.
    pub ws_allowed_origins: Vec<String>,
}

/// A node's settings after the merge, checked.
#[derive(Debug)]
pub struct Resolved {
    pub node: NodeConfig,
    /// How long an idle worker spins before it sleeps.
    pub idle_spin: Duration,
    /// `[[mcp.upstream]]`: MCP servers to attach once the node runs.
    pub upstreams: Vec<UpstreamSection>,
    /// The file's `[node]` section, for what the CLI reads before a node exists (log
    /// settings, worker threads).
    pub section: NodeSection,
}

/// The default idle spin: covers a loopback or LAN hop's answer, short enough that a
/// missed spin costs little (BENCHMARKS.md, "Idle spinning").
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(100);

/// `admin` or `listen` in the file: an address, or `off`.
pub fn parse_address_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9600, or `off`"))
}

impl Overrides {
    /// Merges these settings over `file` (if any) and checks the result; `default_data_dir`
    /// is used when neither gives one. Resolves `join` addresses (DNS).
    ///
    /// # Errors
    /// [`ConfigError`] saying which setting is wrong and what to write instead.
    pub async fn resolve(self, file: Option<ConfigFile>, default_data_dir: PathBuf) -> Result<Resolved, ConfigError> {
        let section = file.as_ref().map(|f| f.node.clone()).unwrap_or_default();
        let limits = match self.limits {
            Some(l) => l,
            None => file.as_ref().and_then(|f| f.limits.clone()).unwrap_or_default(),
        };
        limits.validate().map_err(|e| ConfigError(format!("invalid limits: {e}")))?;
        let mcp_section = file.as_ref().and_then(|f| f.mcp.clone()).unwrap_or_default();
        // Checked whether or not the endpoint is on, so --check-config catches it.
        mcp_section.apply(&mut McpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))))?;
        let idle_spin = match (self.idle_spin, section.idle_spin.as_deref()) {
            (Some(d), _) => d,
            (None, Some(s)) => parse_duration(s).map_err(|e| ConfigError(format!("[node] idle_spin: {e}")))?,
            (None, None) => DEFAULT_IDLE_SPIN,
        };
        if idle_spin > fovea_spin::MAX_WINDOW {
            return Err(ConfigError(format!(
                "--idle-spin (or [node] idle_spin) {idle_spin:?} is longer than the {:?} allowed: longer spins only burn CPU",
                fovea_spin::MAX_WINDOW
            )));
        }
        let realms = file.map(|f| f.realms).filter(|r| !r.is_empty());

        let mut node = NodeConfig::new(self.data_dir.or(section.data_dir.clone()).unwrap_or(default_data_dir));
        if let Some(listen) = self.listen.or(section.listen) {
            node.listen = listen;
        }
        if let Some(name) = self.name.or(section.name.clone()) {
            node.name = name;
        }
        let (cert, key) = match (self.cert, self.key) {
            (Some(c), Some(k)) => (Some(c), Some(k)),
            _ => (section.cert.clone(), section.key.clone()),
        };
        node.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError("[node] cert and key go together: give both, or neither".into())),
        };
        // A file's `KEY = "ADDR"` or `"off"`, as `Some(Some(addr))` or `Some(None)`.
        let address = |key: &str, v: &Option<String>| -> Result<Option<Option<SocketAddr>>, ConfigError> {
            v.as_deref().map(|a| parse_address_or_off(a).map_err(|e| ConfigError(format!("{key}: {e}")))).transpose()
        };
        if let Some(admin) = self.admin.or(address("[node] admin", &section.admin)?) {
            node.admin = admin;
        }
        node.admin_token = self.admin_token.or(section.admin_token.clone());
        node.realms = realms;
        node.allow_anonymous = self.allow_anonymous || section.allow_anonymous.unwrap_or(false);
        node.limits = limits;

        if let Some(addr) = self.mcp.or(address("[mcp] listen", &mcp_section.listen)?).flatten() {
            let mut mcp = McpConfig::new(addr);
            mcp_section.apply(&mut mcp)?;
            if let Some(t) = self.mcp_call_timeout {
                mcp.call_timeout = t;
            }
            node.mcp = Some(mcp);
        }

        node.tcp = self.tcp.or(address("[node] tcp", &section.tcp)?).flatten();
        node.ws = self.ws.or(address("[node] ws", &section.ws)?).flatten().map(|listen| WsConfig {
            listen,
            tls: self.ws_tls.or(section.ws_tls).unwrap_or_default(),
            allowed_origins: if self.ws_allowed_origins.is_empty() {
                section.ws_allowed_origins.clone().unwrap_or_default()
            } else {
                self.ws_allowed_origins
            },
        });

        let identity = match (self.mesh_cert.or(section.mesh_cert.clone()), self.mesh_key.or(section.mesh_key.clone()))
        {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError("--mesh-cert and --mesh-key go together: give both, or neither".into())),
        };
        let join = if self.join.is_empty() { section.join.clone().unwrap_or_default() } else { self.join };
        let timer = |flag: Option<Duration>, key: &str, file: &Option<String>, default: Duration| match (flag, file) {
            (Some(d), _) => Ok(d),
            (None, Some(s)) => parse_duration(s).map_err(|e| ConfigError(format!("[node] {key}: {e}"))),
            (None, None) => Ok(default),
        };
        let defaults = fovea_core::failure::Config::default();
        let failure = failure_config(
            timer(self.mesh_probe_interval, "mesh_probe_interval", &section.mesh_probe_interval, defaults.interval)?,
            timer(self.mesh_probe_timeout, "mesh_probe_timeout", &section.mesh_probe_timeout, defaults.ack_timeout)?,
            timer(
                self.mesh_suspect_timeout,
                "mesh_suspect_timeout",
                &section.mesh_suspect_timeout,
                defaults.suspect_timeout,
            )?,
        )?;
        let mesh = Mesh {
            secret: self.mesh_secret.or(section.mesh_secret.clone()),
            ca: self.mesh_ca.or(section.mesh_ca.clone()),
            identity,
            listen: self.mesh_listen.or(section.mesh_listen),
            join,
            failure,
        };
        node.mesh = mesh.resolve(node.listen).await?;
        Ok(Resolved { node, idle_spin, upstreams: mcp_section.upstream, section })
    }
}

/// The failure detector's timers (docs/MESH.md, "Failure"), checked: a probe's timeout
/// must end before the next probe is due, and none may be so short that a loaded machine's
/// scheduling delay alone looks like a death, or so long that a dead node is used for
/// minutes.
fn failure_config(
    interval: Duration,
    timeout: Duration,
    suspect: Duration,
) -> Result<fovea_core::failure::Config, ConfigError> {
    const SHORTEST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(60);
    for (name, d) in
        [("mesh_probe_interval", interval), ("mesh_probe_timeout", timeout), ("mesh_suspect_timeout", suspect)]
    {
        if !(SHORTEST..=LONGEST).contains(&d) {
            return Err(ConfigError(format!(
                "--{} (or [node] {name}) {} must be between 10ms and 60s",
                name.replace('_', "-"),
                format_duration(d)
            )));
        }
    }
    if timeout >= interval {
        return Err(ConfigError(format!(
            "--mesh-probe-timeout {} must be shorter than --mesh-probe-interval {}: a probe must be answered or \
             given up before the next one",
            format_duration(timeout),
            format_duration(interval)
        )));
    }
    Ok(fovea_core::failure::Config {
        interval,
        ack_timeout: timeout,
        suspect_timeout: suspect,
        ..fovea_core::failure::Config::default()
    })
}

/// The mesh settings before they are checked.
struct Mesh {
    secret: Option<String>,
    ca: Option<PathBuf>,
    identity: Option<TlsFiles>,
    listen: Option<SocketAddr>,
    join: Vec<String>,
    failure: fovea_core::failure::Config,
}

impl Mesh {
    /// The mesh's configuration: on when a secret or a CA is given; its endpoint on the
    /// client port + 1 unless set.
    async fn resolve(self, client_listen: SocketAddr) -> Result<Option<MeshConfig>, ConfigError> {
        if self.secret.is_none() && self.ca.is_none() {
            if !self.join.is_empty() || self.listen.is_some() || self.identity.is_some() {
                return Err(ConfigError(
                    "--join, --mesh-listen and --mesh-cert need a way into the mesh: pass --mesh-secret (or set \
                     FOVEA_MESH_SECRET), or --mesh-ca with this node's --mesh-cert/--mesh-key"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let listen = self.listen.unwrap_or_else(|| {
            let mut a = client_listen;
            if a.port() != 0 {
                a.set_port(a.port().wrapping_add(1));
            }
            a
        });
        let mut mesh = MeshConfig::new(listen, String::new());
        mesh.secret = self.secret;
        mesh.ca = self.ca;
        mesh.identity = self.identity;
        mesh.failure = self.failure;
        for url in self.join {
            let hostport = url.trim().trim_start_matches("quic://").trim_end_matches('/');
            let addr = tokio::net::lookup_host(hostport).await.ok().and_then(|mut a| a.next()).ok_or_else(|| {
                ConfigError(format!("--join {url}: cannot resolve; give quic://host:port of a member's mesh endpoint"))
            })?;
            mesh.join.push(addr);
        }
        Ok(Some(mesh))
    }
}

impl Resolved {
    /// The effective configuration as a file `--config` accepts (secrets left out, with a
    /// comment saying they are set). `file`: where the realms came from; `log_level`,
    /// `log_format` and `workers` as the process runs with them.
    ///
    /// # Errors
    /// [`ConfigError`] if the settings cannot be written as TOML.
    pub fn render(
        &self,
        file: Option<&Path>,
        log_level: &str,
        log_format: &str,
        workers: usize,
    ) -> Result<String, ConfigError> {
        #[derive(serde::Serialize)]
        struct Effective<'a> {
            node: NodeSection,
            limits: &'a Limits,
            #[serde(skip_serializing_if = "Option::is_none")]
            mcp: Option<McpSection>,
        }
        let config = &self.node;
        let mesh = config.mesh.as_ref();
        let node = NodeSection {
            listen: Some(config.listen),
            data_dir: Some(config.data_dir.clone()),
            name: Some(config.name.clone()),
            cert: config.tls.as_ref().map(|t| t.cert.clone()),
            key: config.tls.as_ref().map(|t| t.key.clone()),
            admin: Some(config.admin.map_or("off".to_owned(), |a| a.to_string())),
            // A secret: never printed (a comment says it is set).
            admin_token: None,
            log_level: Some(log_level.to_owned()),
            log_format: Some(log_format.to_owned()),
            allow_anonymous: Some(config.allow_anonymous),
            mesh_listen: mesh.map(|m| m.listen),
            join: mesh.map(|m| m.join.iter().map(|a| format!("quic://{a}")).collect()),
            // A secret: never printed (a comment says it is set).
            mesh_secret: None,
            mesh_ca: mesh.and_then(|m| m.ca.clone()),
            mesh_cert: mesh.and_then(|m| m.identity.as_ref().map(|f| f.cert.clone())),
            mesh_key: mesh.and_then(|m| m.identity.as_ref().map(|f| f.key.clone())),
            mesh_probe_interval: mesh.map(|m| format_duration(m.failure.interval)),
            mesh_probe_timeout: mesh.map(|m| format_duration(m.failure.ack_timeout)),
            mesh_suspect_timeout: mesh.map(|m| format_duration(m.failure.suspect_timeout)),
            idle_spin: Some(format_duration(self.idle_spin)),
            workers: Some(workers),
            tcp: Some(config.tcp.map_or("off".to_owned(), |a| a.to_string())),
            ws: Some(config.ws.as_ref().map_or("off".to_owned(), |w| w.listen.to_string())),
            ws_tls: config.ws.as_ref().map(|w| w.tls),
            ws_allowed_origins: config.ws.as_ref().map(|w| w.allowed_origins.clone()).filter(|o| !o.is_empty()),
        };
        let mcp = config.mcp.as_ref().map(McpSection::of);
        let body = toml::to_string(&Effective { node, limits: &config.limits, mcp })
            .map_err(|e| ConfigError(format!("rendering the configuration: {e}")))?;
        let realms = match (&config.realms, file) {
            (Some(r), Some(f)) => {
                format!("# {} realms are declared in {} ([[realm]] tables, not repeated here).\n", r.len(), f.display())
            }
            _ => "# No realms: the node runs one open realm, `default`. Add [[realm]] tables to require credentials.\n"
                .to_owned(),
        };
        let mut secrets = String::new();
        if config.admin_token.is_some() {
            secrets.push_str(
                "# An admin token is set; it is not printed. Add `admin_token = \"…\"` under [node] or pass --admin-token.\n",
            );
        }
        if mesh.is_some_and(|m| m.secret.is_some()) {
            secrets.push_str(
                "# A mesh secret is set; it is not printed. Add `mesh_secret = \"…\"` under [node] or pass --mesh-secret.\n",
            );
        }
        Ok(format!(
            "# fovea node configuration: the effective values (flags > environment > file > defaults).\n\
             # Save it, edit it, and start with `fovea node --config FILE`. docs/LIMITS.md explains [limits].\n{realms}{secrets}\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        super::super::file::parse_config(text, "test.toml").unwrap()
    }

    fn resolve(o: Overrides, f: Option<ConfigFile>) -> Result<Resolved, ConfigError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(o.resolve(f, PathBuf::from("data")))
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_defaults() {
        let f = file("[node]\nlisten = \"127.0.0.1:5000\"\nname = \"from-file\"\nadmin = \"off\"\n");
        let r = resolve(Overrides { name: Some("from-flag".into()), ..Overrides::default() }, Some(f)).unwrap();
        assert_eq!(r.node.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(r.node.name, "from-flag");
        assert_eq!(r.node.admin, None);
        assert_eq!(r.node.data_dir, PathBuf::from("data"));
        assert_eq!(r.idle_spin, DEFAULT_IDLE_SPIN);
        assert!(r.node.mesh.is_none());
        let r =
            resolve(Overrides { admin: Some(Some("127.0.0.1:9700".parse().unwrap())), ..Overrides::default() }, None)
                .unwrap();
        assert_eq!(r.node.admin, Some("127.0.0.1:9700".parse().unwrap()));
    }

    #[test]
    fn halves_of_a_pair_and_a_mesh_without_a_way_in_are_refused_with_what_to_do() {
        let e = resolve(Overrides::default(), Some(file("[node]\ncert = \"c.pem\"\n")));
        assert!(e.is_err_and(|e| e.0.contains("cert and key go together")));
        let e = resolve(Overrides { join: vec!["quic://127.0.0.1:4434".into()], ..Overrides::default() }, None);
        assert!(e.is_err_and(|e| e.0.contains("--mesh-secret")));
        let e = resolve(Overrides { idle_spin: Some(Duration::from_secs(5)), ..Overrides::default() }, None);
        assert!(e.is_err_and(|e| e.0.contains("--idle-spin")));
    }

    #[test]
    fn the_mesh_listens_next_to_the_client_port_and_resolves_its_members() {
        let o = Overrides {
            listen: Some("127.0.0.1:4433".parse().unwrap()),
            mesh_secret: Some("s".into()),
            join: vec!["quic://127.0.0.1:5001/".into()],
            ..Overrides::default()
        };
        let mesh = resolve(o, None).unwrap().node.mesh.unwrap();
        assert_eq!(mesh.listen, "127.0.0.1:4434".parse().unwrap());
        assert_eq!(mesh.join, ["127.0.0.1:5001".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn failure_timers_come_from_flags_or_the_file_and_are_checked() {
        let f = file(
            "[node]\nmesh_secret = \"a mesh secret\"\nmesh_probe_interval = \"2s\"\nmesh_suspect_timeout = \"3s\"\n",
        );
        let o = Overrides { mesh_probe_timeout: Some(Duration::from_millis(800)), ..Overrides::default() };
        let r = resolve(o, Some(f)).unwrap();
        let failure = r.node.mesh.as_ref().unwrap().failure.clone();
        assert_eq!(
            (failure.interval, failure.ack_timeout, failure.suspect_timeout),
            (Duration::from_secs(2), Duration::from_millis(800), Duration::from_secs(3))
        );
        let secret = || Overrides { mesh_secret: Some("a mesh secret".into()), ..Overrides::default() };
        // They survive a render and read back (the secret, never rendered, given again).
        let back = resolve(secret(), Some(file(&r.render(None, "info", "text", 1).unwrap()))).unwrap();
        let back = back.node.mesh.unwrap().failure;
        assert_eq!(
            (back.interval, back.ack_timeout, back.suspect_timeout),
            (failure.interval, failure.ack_timeout, failure.suspect_timeout)
        );
        let e = resolve(Overrides { mesh_probe_timeout: Some(Duration::from_secs(1)), ..secret() }, None);
        assert!(e.is_err_and(|e| e.0.contains("--mesh-probe-timeout 1s must be shorter than --mesh-probe-interval")));
        let e = resolve(Overrides { mesh_suspect_timeout: Some(Duration::from_millis(1)), ..secret() }, None);
        assert!(e.is_err_and(|e| e.0.contains("--mesh-suspect-timeout")));
        let e = resolve(secret(), Some(file("[node]\nmesh_probe_interval = \"soon\"\n")));
        assert!(e.is_err_and(|e| e.0.contains("[node] mesh_probe_interval")));
    }

    #[test]
    fn the_rendered_configuration_reads_back_and_keeps_secrets_out() {
        let o = Overrides {
            admin_token: Some("hunter2".into()),
            mcp: Some(Some("127.0.0.1:9601".parse().unwrap())),
            ..Overrides::default()
        };
        let r = resolve(o, None).unwrap();
        let text = r.render(None, "info", "text", 1).unwrap();
        assert!(!text.contains("hunter2") && text.contains("An admin token is set"), "{text}");
        let back = resolve(Overrides::default(), Some(file(&text))).unwrap();
        assert_eq!(back.node.listen, r.node.listen);
        assert_eq!(back.node.mcp.map(|m| m.listen), Some("127.0.0.1:9601".parse().unwrap()));

        let o = Overrides { mesh_secret: Some("sesame".into()), ..Overrides::default() };
        let text = resolve(o, None).unwrap().render(None, "info", "text", 1).unwrap();
        assert!(!text.contains("sesame") && text.contains("A mesh secret is set"), "{text}");
    }
}
