//! TLS and PROXY protocol settings: `[listeners.tls]`, `accept_proxy` and `trusted_proxies` on
//! listeners; `[clusters.tls]` and `send_proxy` on clusters. Only the settings are checked here
//! (no file is read): the certificate files are loaded by [`crate::tls`], at start-up, by
//! `switchyard check` and at every reload.

use super::{duration_field, path_field, raw_part, Errors};
use crate::proto::proxy_protocol::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod defaults {
    use std::time::Duration;
    /// A TLS handshake (and a PROXY header before it) must be complete this long after the
    /// connection was accepted.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// A PROXY header must arrive this long after the connection was accepted.
    pub const PROXY_TIMEOUT: Duration = Duration::from_secs(5);
    /// Sessions kept per listener for resumption by session id (TLS 1.2 clients without
    /// ticket support; TLS 1.3 uses tickets).
    pub const SESSION_CACHE: usize = 4096;
}

/// One certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// The first one is the default (no SNI, or SNI matching none).
    pub certificates: Vec<CertPair>,
    /// Client certificates are required and verified against these CAs.
    pub client_ca: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTls {
    /// CA bundle that backend certificates are verified against; `None` with
    /// `verify = false` only.
    pub ca: Option<PathBuf>,
    /// SNI and the name verified; default: the backend's host as written.
    pub server_name: Option<String>,
    /// Client certificate presented to backends.
    pub client_cert: Option<CertPair>,
    /// `false`: backend certificates are not verified (testing only).
    pub verify: bool,
}

/// An address range (`trusted_proxies` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("invalid address range {s:?} (expected an address or address/bits)");
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { addr, bits })
    }

    /// `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The PROXY protocol on a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxy {
    /// The header must be complete this long after the accept.
    pub timeout: Duration,
    /// When set, only connections from these ranges may connect (and must send a header).
    pub trusted: Vec<Cidr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawCertPair {
    cert: Option<String>,
    key: Option<String>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawListenerTls {
    certificates: Option<Vec<toml::Value>>,
    client_ca: Option<String>,
    handshake_timeout: Option<String>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawClusterTls {
    ca: Option<String>,
    server_name: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    verify: Option<bool>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

fn cert_pair(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<CertPair> {
    let raw: RawCertPair = raw_part(p, v.clone(), errs)?;
    errs.unknown::<RawCertPair>(p, &raw.unknown);
    let cert = path_field(&format!("{p}.cert"), &raw.cert, errs);
    let key = path_field(&format!("{p}.key"), &raw.key, errs);
    if raw.cert.is_none() {
        errs.add(format!("{p}.cert"), "missing");
    }
    if raw.key.is_none() {
        errs.add(format!("{p}.key"), "missing");
    }
    Some(CertPair {
        cert: cert?,
        key: key?,
    })
}

/// `[listeners.tls]`.
pub(crate) fn listener_tls(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<ListenerTls> {
    let raw: RawListenerTls = raw_part(p, v.clone(), errs)?;
    errs.unknown::<RawListenerTls>(p, &raw.unknown);
    let mut certificates = Vec::new();
    match &raw.certificates {
        None => errs.add(
            format!("{p}.certificates"),
            "missing (at least one { cert = \"...\", key = \"...\" })",
        ),
        Some(list) if list.is_empty() => errs.add(
            format!("{p}.certificates"),
            "empty (at least one { cert = \"...\", key = \"...\" })",
        ),
        Some(list) => {
            for (i, c) in list.iter().enumerate() {
                if let Some(pair) = cert_pair(&format!("{p}.certificates[{i}]"), c, errs) {
                    certificates.push(pair);
                }
            }
        }
    }
    let client_ca = path_field(&format!("{p}.client_ca"), &raw.client_ca, errs);
    let handshake_timeout = duration_field(
        format!("{p}.handshake_timeout"),
        raw.handshake_timeout.as_ref(),
        defaults::HANDSHAKE_TIMEOUT,
        errs,
    );
    Some(ListenerTls {
        certificates,
        client_ca,
        handshake_timeout,
    })
}

/// `[clusters.tls]`.
pub(crate) fn cluster_tls(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<ClusterTls> {
    let raw: RawClusterTls = raw_part(p, v.clone(), errs)?;
    errs.unknown::<RawClusterTls>(p, &raw.unknown);
    let verify = raw.verify.unwrap_or(true);
    let ca = path_field(&format!("{p}.ca"), &raw.ca, errs);
    if verify && raw.ca.is_none() {
        errs.add(
            format!("{p}.ca"),
            "missing: the CA bundle backend certificates are verified against (or verify = false)",
        );
    }
    let client_cert = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(_), None) => {
            errs.add(format!("{p}.key"), "missing (cert is set)");
            None
        }
        (None, Some(_)) => {
            errs.add(format!("{p}.cert"), "missing (key is set)");
            None
        }
        (Some(_), Some(_)) => Some(CertPair {
            cert: path_field(&format!("{p}.cert"), &raw.cert, errs)?,
            key: path_field(&format!("{p}.key"), &raw.key, errs)?,
        }),
    };
    if let Some(n) = &raw.server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            errs.add(
                format!("{p}.server_name"),
                format!("{n:?} is not a DNS name or an IP address"),
            );
        }
    }
    Some(ClusterTls {
        ca,
        server_name: raw.server_name.clone(),
        client_cert,
        verify,
    })
}

/// `accept_proxy`, `proxy_timeout` and `trusted_proxies` of a listener.
pub(crate) fn accept_proxy(
    p: &str,
    accept: Option<bool>,
    timeout: Option<&String>,
    trusted: Option<&Vec<String>>,
    errs: &mut Errors,
) -> Option<AcceptProxy> {
    let on = accept.unwrap_or(false);
    if !on {
        if timeout.is_some() {
            errs.add(format!("{p}.proxy_timeout"), "needs accept_proxy = true");
        }
        if trusted.is_some() {
            errs.add(format!("{p}.trusted_proxies"), "needs accept_proxy = true");
        }
        return None;
    }
    let timeout = duration_field(
        format!("{p}.proxy_timeout"),
        timeout,
        defaults::PROXY_TIMEOUT,
        errs,
    );
    let mut out = Vec::new();
    for (i, s) in trusted.into_iter().flatten().enumerate() {
        match Cidr::parse(s) {
            Ok(c) => out.push(c),
            Err(e) => errs.add(format!("{p}.trusted_proxies[{i}]"), e),
        }
    }
    if trusted.is_some_and(|t| t.is_empty()) {
        errs.add(
            format!("{p}.trusted_proxies"),
            "empty: no connection could be accepted (leave it out to trust every sender)",
        );
    }
    Some(AcceptProxy {
        timeout,
        trusted: out,
    })
}

/// `send_proxy = "v1" | "v2"` of a cluster.
pub(crate) fn send_proxy(p: &str, raw: Option<&String>, errs: &mut Errors) -> Option<Version> {
    match raw.map(String::as_str) {
        None => None,
        Some("v1") => Some(Version::V1),
        Some("v2") => Some(Version::V2),
        Some(other) => {
            errs.add(
                format!("{p}.send_proxy"),
                format!("unknown PROXY protocol version {other:?} (expected \"v1\" or \"v2\")"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match crate::config::parse_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_bad_tls_and_proxy_setting_is_reported_with_its_path() {
        let errs = errors(
            r#"
[[listeners]]
name = "a"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "c"
proxy_timeout = "1s"
[listeners.tls]
certificates = [{ cert = "x.pem" }, { key = "y.key", cet = "z" }]
handshake_timeout = "0s"
[[listeners]]
name = "b"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
accept_proxy = true
trusted_proxies = ["10.0.0.0/33"]
[listeners.tls]
[[clusters]]
name = "c"
backends = ["127.0.0.1:1"]
send_proxy = "v3"
[clusters.tls]
server_name = "not a name!"
cert = "c.pem"
"#,
        );
        for want in [
            "listeners[0].proxy_timeout: needs accept_proxy = true",
            "listeners[0].tls.certificates[0].key: missing",
            "listeners[0].tls.certificates[1].cet: unknown key",
            "listeners[0].tls.certificates[1].cert: missing",
            "listeners[0].tls.handshake_timeout: must be greater than zero",
            "listeners[1].trusted_proxies[0]: invalid address range",
            "listeners[1].tls.certificates: missing",
            "clusters[0].send_proxy: unknown PROXY protocol version",
            "clusters[0].tls.ca: missing",
            "clusters[0].tls.key: missing (cert is set)",
            "clusters[0].tls.server_name: \"not a name!\" is not a DNS name",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want:?} not in {errs:#?}"
            );
        }
    }

    #[test]
    fn cidr_ranges() {
        let c = Cidr::parse("10.0.0.0/8").expect("range");
        assert!(c.contains("10.200.1.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        let one = Cidr::parse("127.0.0.1").expect("single");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let any = Cidr::parse("0.0.0.0/0").expect("all");
        assert!(any.contains("1.2.3.4".parse().expect("ip")));
        let six = Cidr::parse("2001:db8::/32").expect("v6");
        assert!(six.contains("2001:db8:1::1".parse().expect("ip")));
        assert!(!six.contains("10.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
