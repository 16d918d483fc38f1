//! Realms, users and what they may do: the credential check at connect time and the
//! per-operation permission checks. The configuration file that declares them is read by
//! the configuration module (`config::file`).
//!
//! Authentication happens once, in the handshake; authorisation happens when a
//! subscription or registration is made, and per publish or call through the connection's
//! own match cache, so the message path pays one boolean per cached topic.
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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fovea_core::Pattern;

/// What one credential may do in its realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Topics it may publish to.
    pub publish: Allow,
    /// Patterns it may subscribe to (a subscription must lie within one of them).
    pub subscribe: Allow,
    /// Procedures it may call.
    pub call: Allow,
    /// Procedures it may provide.
    pub register: Allow,
}

/// An allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Everything (an open realm).
    All,
    /// Names matching one of these patterns; empty allows nothing.
    Patterns(Vec<Pattern>),
}

impl Allow {
    /// Whether a (valid) topic or procedure name is allowed.
    pub fn name(&self, name: &[u8]) -> bool {
        match self {
            Allow::All => true,
            Allow::Patterns(ps) => ps.iter().any(|p| p.matches_name(name)),
        }
    }

    /// Whether every name `pattern` can match is allowed.
    pub fn pattern(&self, pattern: &Pattern) -> bool {
        match self {
            Allow::All => true,
            Allow::Patterns(ps) => ps.iter().any(|p| p.covers(pattern)),
        }
    }
}

impl Permissions {
    /// Everything allowed: the open `default` realm of a node without configuration.
    pub fn all() -> Self {
        Permissions { publish: Allow::All, subscribe: Allow::All, call: Allow::All, register: Allow::All }
    }
}

/// A user of a realm.
#[derive(Debug, Clone)]
pub struct User {
    /// Its name (for logs and introspection).
    pub name: String,
    /// How it proves who it is.
    pub credential: Credential,
    /// What it may do.
    pub permissions: Arc<Permissions>,
}

/// What identifies a client: the SHA-256 of its token, or of its TLS client certificate
/// (DER), i.e. the certificate's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// SHA-256 of a token sent in `HELLO`.
    Token([u8; 32]),
    /// SHA-256 of the client certificate presented in the TLS handshake.
    Certificate([u8; 32]),
}

/// A realm as configured.
#[derive(Debug, Clone)]
pub struct RealmConfig {
    /// Its name, as clients give it in `HELLO`.
    pub name: String,
    /// Its users.
    pub users: Vec<User>,
}

/// How a realm admits clients.
pub enum Admission {
    /// Anyone, with every permission.
    Open,
    /// Users by credential.
    Users(HashMap<Credential, User>),
}

impl Admission {
    /// The users of a configured realm.
    pub fn users(realm: &RealmConfig) -> Self {
        Admission::Users(realm.users.iter().map(|u| (u.credential, u.clone())).collect())
    }

    /// The permissions of the holder of `credential`, or `None`. The map finds the
    /// candidate by digest; the digests are then compared in constant time, so nothing
    /// about a stored digest leaks through timing.
    pub fn admit(&self, credential: &Credential) -> Option<(String, Arc<Permissions>)> {
        match self {
            Admission::Open => Some((String::new(), Arc::new(Permissions::all()))),
            Admission::Users(users) => {
                let user = users.get(credential)?;
                let (
                    Credential::Token(a) | Credential::Certificate(a),
                    Credential::Token(b) | Credential::Certificate(b),
                ) = (&user.credential, credential);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..])) {
                    return None;
                }
                Some((user.name.clone(), user.permissions.clone()))
            }
        }
    }
}

/// The credential a client presents: its token when `HELLO` carries one, else its TLS
/// client certificate, else an empty token (which only an open realm admits).
pub fn credential_of(token: &[u8], client_cert: Option<&[u8]>) -> Credential {
    match client_cert {
        Some(der) if token.is_empty() => Credential::Certificate(sha256(der)),
        _ => Credential::Token(sha256(token)),
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A fresh random token and the `token_sha256` line that admits it.
///
/// # Errors
/// If the system's random number generator fails.
pub fn new_token() -> Result<(String, String), String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "the system random generator failed".to_owned())?;
    let token = hex(&bytes);
    let line = format!("token_sha256 = \"{}\"", hex(&sha256(token.as_bytes())));
    Ok((token, line))
}

/// A fresh client certificate and key (PEM) for `name`, and the `cert_sha256` line that
/// admits it.
///
/// # Errors
/// If key generation fails.
pub fn new_client_cert(name: &str) -> Result<(String, String, String), String> {
    let made = rcgen::generate_simple_self_signed(vec![name.to_owned()])
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let line = format!("cert_sha256 = \"{}\"", hex(&sha256(made.cert.der())));
    Ok((made.cert.pem(), made.signing_key.serialize_pem(), line))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Failed authentications per source address: after `MAX_FAILURES` in `WINDOW`, further
/// attempts from that address are refused without checking, until the window ends.
///
/// Bounded: at most `MAX_SOURCES` addresses are tracked; when full, expired entries are
/// dropped, and if none has expired the table is cleared (forgetting is the safe side of
/// the trade: it only gives guessers a little more room).
pub(crate) struct AuthLimiter {
    map: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);
const MAX_SOURCES: usize = 10_000;

impl AuthLimiter {
    pub fn new() -> Self {
        AuthLimiter { map: Mutex::new(HashMap::new()) }
    }

    /// Whether `ip` is currently blocked.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = crate::sync::lock(&self.map);
        map.get(&ip).is_some_and(|(n, since)| *n >= MAX_FAILURES && now.duration_since(*since) < WINDOW)
    }

    /// Records a failure from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = crate::sync::lock(&self.map);
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
            if map.len() >= MAX_SOURCES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_repeated_failures_and_forgets() {
        let l = AuthLimiter::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(!l.blocked(ip, t0));
            l.failed(ip, t0);
        }
        assert!(l.blocked(ip, t0));
        assert!(!l.blocked("10.0.0.2".parse().unwrap(), t0));
        assert!(!l.blocked(ip, t0 + WINDOW));
    }
}
