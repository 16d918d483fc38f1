//! Node addresses: `quic://host:port`, `tls://host:port`, `ws://host:port[/path]`,
//! `wss://host:port[/path]`.

use std::fmt;
use std::net::IpAddr;

use crate::ClientError;

/// Port used when a URL gives none.
pub const DEFAULT_PORT: u16 = 4433;

/// How a client reaches a node: the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    /// QUIC over UDP (`quic://`), the fastest.
    #[default]
    Quic,
    /// TLS 1.3 over TCP (`tls://`), for networks that block UDP.
    Tls,
    /// WebSocket, plain (`ws://`): a node's loopback WebSocket, or one behind a proxy.
    Ws,
    /// WebSocket over TLS (`wss://`).
    Wss,
}

impl Scheme {
    /// The scheme as written in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Quic => "quic",
            Scheme::Tls => "tls",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// The port a URL without one means: 4433 for `quic` and `tls` (UDP and TCP ports
    /// are apart), 80 for `ws`, 443 for `wss`.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Quic | Scheme::Tls => DEFAULT_PORT,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// A parsed node URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    /// How to reach the node.
    pub scheme: Scheme,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// UDP or TCP port.
    pub port: u16,
    /// The request path of a WebSocket URL (`/` when none); empty for the others.
    pub path: String,
}

impl NodeUrl {
    /// Parses `SCHEME://host[:port]` (`quic`, `tls`, `ws`, `wss`; a WebSocket URL may
    /// have a path). The scheme may be omitted (QUIC); IPv6 literals go in brackets.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] naming what is wrong and the expected form.
    pub fn parse(s: &str) -> Result<NodeUrl, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl {
            url: s.to_owned(),
            reason: format!("{why}; expected quic://HOST:PORT (or tls://, ws://, wss://), e.g. quic://127.0.0.1:4433"),
        };
        let (scheme, rest) = match s.split_once("://") {
            Some(("quic", rest)) => (Scheme::Quic, rest),
            Some(("tls", rest)) => (Scheme::Tls, rest),
            Some(("ws", rest)) => (Scheme::Ws, rest),
            Some(("wss", rest)) => (Scheme::Wss, rest),
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme `{scheme}`"))),
            None => (Scheme::Quic, s),
        };
        let (rest, path) = match (scheme, rest.find('/')) {
            (Scheme::Ws | Scheme::Wss, Some(i)) => (&rest[..i], rest[i..].to_owned()),
            (Scheme::Ws | Scheme::Wss, None) => (rest, "/".to_owned()),
            (_, _) => (rest.strip_suffix('/').unwrap_or(rest), String::new()),
        };
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('@') || path.contains('#') {
            return Err(bad("paths (but a WebSocket URL's), queries and user info are not used"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?)),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(bad("IPv6 addresses go in brackets, e.g. quic://[::1]:4433"))
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(&format!("bad port `{p}`")))?,
        };
        Ok(NodeUrl { scheme, host: host.to_owned(), port, path })
    }

    /// Whether the host is this machine (a loopback IP or `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.scheme.name();
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = |s| NodeUrl::parse(s).unwrap();
        let url = |scheme, host: &str, port, path: &str| NodeUrl { scheme, host: host.into(), port, path: path.into() };
        assert_eq!(u("quic://127.0.0.1:4433"), url(Scheme::Quic, "127.0.0.1", 4433, ""));
        assert_eq!(u("localhost"), url(Scheme::Quic, "localhost", 4433, ""));
        assert_eq!(u("quic://[::1]:99"), url(Scheme::Quic, "::1", 99, ""));
        assert_eq!(u("tls://h:5"), url(Scheme::Tls, "h", 5, ""));
        assert_eq!(u("tls://h/"), url(Scheme::Tls, "h", 4433, ""));
        assert_eq!(u("ws://127.0.0.1:4480"), url(Scheme::Ws, "127.0.0.1", 4480, "/"));
        assert_eq!(u("wss://example.com/fovea"), url(Scheme::Wss, "example.com", 443, "/fovea"));
        assert_eq!(u("wss://example.com/fovea").to_string(), "wss://example.com:443/fovea");
        assert_eq!(u("quic://[::1]").to_string(), "quic://[::1]:4433");
        assert!(u("quic://[::1]").is_loopback());
        assert!(!u("quic://example.com").is_loopback());
        for bad in [
            "http://x",
            "quic://",
            "quic://h:0",
            "quic://h:x",
            "::1:3",
            "quic://h/p",
            "quic://[::1",
            "tls://h/p",
            "ws:///p",
        ] {
            let e = NodeUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected quic://"), "{bad}: {e}");
        }
    }
}
