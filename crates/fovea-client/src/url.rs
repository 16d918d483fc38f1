//! Node addresses: `quic://host:port`.

use std::fmt;
use std::net::IpAddr;

use crate::ClientError;

/// Port used when a URL gives none.
pub const DEFAULT_PORT: u16 = 4433;

/// A parsed node URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl NodeUrl {
    /// Parses `quic://host[:port]`. The scheme may be omitted; IPv6 literals go in brackets.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] naming what is wrong and the expected form.
    pub fn parse(s: &str) -> Result<NodeUrl, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl {
            url: s.to_owned(),
            reason: format!("{why}; expected quic://HOST:PORT, e.g. quic://127.0.0.1:4433"),
        };
        let rest = match s.split_once("://") {
            Some(("quic", rest)) => rest,
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme `{scheme}`"))),
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad("paths, queries and user info are not used"));
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
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(&format!("bad port `{p}`")))?,
        };
        Ok(NodeUrl { host: host.to_owned(), port })
    }

    /// Whether the host is this machine (a loopback IP or `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "quic://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "quic://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let u = |s| NodeUrl::parse(s).unwrap();
        assert_eq!(u("quic://127.0.0.1:4433"), NodeUrl { host: "127.0.0.1".into(), port: 4433 });
        assert_eq!(u("localhost"), NodeUrl { host: "localhost".into(), port: 4433 });
        assert_eq!(u("quic://[::1]:99"), NodeUrl { host: "::1".into(), port: 99 });
        assert_eq!(u("quic://[::1]").to_string(), "quic://[::1]:4433");
        assert!(u("quic://[::1]").is_loopback());
        assert!(!u("quic://example.com").is_loopback());
        for bad in ["http://x", "quic://", "quic://h:0", "quic://h:x", "::1:3", "quic://h/p", "quic://[::1"] {
            let e = NodeUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected quic://"), "{bad}: {e}");
        }
    }
}
