//! `[[discovery]]`: providers that find clusters and backends at run time (Docker Engine,
//! DNS, a file). This is the config side only: raw keys → validated [`DiscoveryConfig`], and
//! the one function that turns what a provider found into a validated [`ClusterConfig`]
//! ([`build_cluster`]), with exactly the rules of a `[[clusters]]` table. The providers
//! themselves live in `crate::discovery`.

use super::{raw_part, valid_name, ClusterConfig, ConfigError, Errors, RawCluster};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::{Table, Value};

/// Discovery defaults (README's `[[discovery]]` table quotes these).
pub mod defaults {
    use std::time::Duration;
    pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
    pub const DOCKER_INTERVAL: Duration = Duration::from_secs(1);
    pub const FILE_INTERVAL: Duration = Duration::from_secs(1);
    pub const DNS_MIN_TTL: Duration = Duration::from_secs(1);
    pub const DNS_MAX_TTL: Duration = Duration::from_secs(300);
    pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawDiscovery {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub backoff_max: Option<String>,
    /// docker
    pub socket: Option<String>,
    /// dns: the name to resolve.
    pub host: Option<String>,
    /// dns: `"a"` (A and AAAA) or `"srv"`.
    pub record: Option<String>,
    pub port: Option<u64>,
    pub server: Option<String>,
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub timeout: Option<String>,
    /// dns: the cluster the addresses become.
    pub cluster: Option<String>,
    /// file
    pub path: Option<String>,
    pub format: Option<String>,
    /// docker, file: cluster names expected from this provider (listeners may name them).
    pub clusters: Option<Vec<String>>,
    /// Cluster settings for every cluster this provider makes (any `[[clusters]]` key but
    /// `name` and `backends`).
    pub defaults: Option<Table>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsRecord {
    /// A and AAAA records, all on the configured port.
    #[default]
    Addr,
    /// SRV records: target and port each; the lowest priority only.
    Srv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Toml,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub host: String,
    pub record: DnsRecord,
    /// Required for `Addr`.
    pub port: Option<u16>,
    /// `None`: the first `nameserver` of /etc/resolv.conf, read at each query.
    pub server: Option<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub timeout: Duration,
    pub cluster: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Docker {
        socket: PathBuf,
        interval: Duration,
    },
    Dns(DnsConfig),
    File {
        path: PathBuf,
        interval: Duration,
        format: FileFormat,
    },
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Docker { .. } => "docker",
            Provider::Dns(_) => "dns",
            Provider::File { .. } => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub name: String,
    /// `discovery[i]`, for messages.
    pub path: String,
    pub provider: Provider,
    /// Retries after failures back off from the provider's interval up to this.
    pub backoff_max: Duration,
    /// Clusters this provider declares: they exist (maybe empty) from start-up on.
    pub declared: Vec<String>,
    pub defaults: Table,
}

fn duration(path: String, raw: Option<&String>, default: Duration, errs: &mut Errors) -> Duration {
    super::duration_field(path, raw, default, errs)
}

/// Validates every `[[discovery]]` table.
pub(crate) fn validate(raw: &[Option<RawDiscovery>], errs: &mut Errors) -> Vec<DiscoveryConfig> {
    let mut out: Vec<DiscoveryConfig> = Vec::new();
    let mut names = HashSet::new();
    let mut declared_by: BTreeMap<String, String> = BTreeMap::new();
    for (i, d) in raw.iter().enumerate() {
        let Some(d) = d else { continue };
        let p = format!("discovery[{i}]");
        errs.unknown::<RawDiscovery>(&p, &d.unknown);
        let kind = d.kind.as_deref().unwrap_or("");
        let allowed: &[&str] = match kind {
            "docker" => &["socket", "interval", "clusters"],
            "dns" => &[
                "host", "record", "port", "server", "min_ttl", "max_ttl", "timeout", "cluster",
            ],
            "file" => &["path", "format", "interval", "clusters"],
            "" => {
                errs.add(format!("{p}.type"), "missing (docker, dns or file)");
                continue;
            }
            other => {
                errs.add(
                    format!("{p}.type"),
                    format!("unknown discovery type {other:?} (expected docker, dns or file)"),
                );
                continue;
            }
        };
        let present = [
            ("socket", d.socket.is_some()),
            ("interval", d.interval.is_some()),
            ("clusters", d.clusters.is_some()),
            ("host", d.host.is_some()),
            ("record", d.record.is_some()),
            ("port", d.port.is_some()),
            ("server", d.server.is_some()),
            ("min_ttl", d.min_ttl.is_some()),
            ("max_ttl", d.max_ttl.is_some()),
            ("timeout", d.timeout.is_some()),
            ("cluster", d.cluster.is_some()),
            ("path", d.path.is_some()),
            ("format", d.format.is_some()),
        ];
        for (key, set) in present {
            if set && !allowed.contains(&key) {
                errs.add(
                    format!("{p}.{key}"),
                    format!("not a key of type = {kind:?} discovery"),
                );
            }
        }
        let name = match &d.name {
            Some(_) => valid_name(format!("{p}.name"), d.name.as_ref(), errs),
            None => kind.to_string(),
        };
        if !names.insert(name.clone()) {
            errs.add(
                format!("{p}.name"),
                format!(
                    "duplicate discovery name {name:?} (give each provider of the same type a \
                     name)"
                ),
            );
        }
        let interval_default = match kind {
            "docker" => defaults::DOCKER_INTERVAL,
            _ => defaults::FILE_INTERVAL,
        };
        let interval = duration(
            format!("{p}.interval"),
            d.interval.as_ref(),
            interval_default,
            errs,
        );
        let mut declared: Vec<String> = Vec::new();
        let provider = match kind {
            "docker" => Provider::Docker {
                socket: PathBuf::from(d.socket.as_deref().unwrap_or(defaults::DOCKER_SOCKET)),
                interval,
            },
            "file" => {
                let path = match d.path.as_deref() {
                    None | Some("") => {
                        errs.add(format!("{p}.path"), "missing (the file to watch)");
                        PathBuf::new()
                    }
                    Some(s) => PathBuf::from(s),
                };
                let format = match d.format.as_deref() {
                    Some("json") => FileFormat::Json,
                    Some("toml") => FileFormat::Toml,
                    None if path.extension().is_some_and(|e| e == "toml") => FileFormat::Toml,
                    None => FileFormat::Json,
                    Some(other) => {
                        errs.add(
                            format!("{p}.format"),
                            format!("unknown format {other:?} (expected json or toml)"),
                        );
                        FileFormat::Json
                    }
                };
                Provider::File {
                    path,
                    interval,
                    format,
                }
            }
            _ => {
                let host = match d.host.as_deref() {
                    Some(h) if valid_dns_name(h) => h.trim_end_matches('.').to_string(),
                    Some(h) => {
                        errs.add(format!("{p}.host"), format!("invalid DNS name {h:?}"));
                        String::new()
                    }
                    None => {
                        errs.add(format!("{p}.host"), "missing (the DNS name to resolve)");
                        String::new()
                    }
                };
                let record = match d.record.as_deref() {
                    None | Some("a") => DnsRecord::Addr,
                    Some("srv") => DnsRecord::Srv,
                    Some(other) => {
                        errs.add(
                            format!("{p}.record"),
                            format!("unknown record {other:?} (expected a or srv)"),
                        );
                        DnsRecord::Addr
                    }
                };
                let port = match (d.port, record) {
                    (Some(n), _) if (1..=65535).contains(&n) => Some(n as u16),
                    (Some(n), _) => {
                        errs.add(
                            format!("{p}.port"),
                            format!("{n} is out of range (1..=65535)"),
                        );
                        None
                    }
                    (None, DnsRecord::Addr) => {
                        errs.add(
                            format!("{p}.port"),
                            "missing (A/AAAA records carry no port; SRV records do)",
                        );
                        None
                    }
                    (None, DnsRecord::Srv) => None,
                };
                if port.is_some() && record == DnsRecord::Srv {
                    errs.add(format!("{p}.port"), "SRV records carry their own ports");
                }
                let server = d.server.as_deref().and_then(|s| {
                    let with_port = if s.parse::<std::net::IpAddr>().is_ok() {
                        format!("{s}:53")
                    } else {
                        s.to_string()
                    };
                    with_port
                        .parse::<SocketAddr>()
                        .or_else(|_| format!("[{s}]:53").parse())
                        .map_err(|_| {
                            errs.add(
                                format!("{p}.server"),
                                format!("invalid DNS server {s:?} (expected ip or ip:port)"),
                            )
                        })
                        .ok()
                });
                let min_ttl = duration(
                    format!("{p}.min_ttl"),
                    d.min_ttl.as_ref(),
                    defaults::DNS_MIN_TTL,
                    errs,
                );
                let max_ttl = duration(
                    format!("{p}.max_ttl"),
                    d.max_ttl.as_ref(),
                    defaults::DNS_MAX_TTL,
                    errs,
                );
                if min_ttl > max_ttl {
                    errs.add(format!("{p}.min_ttl"), "is above max_ttl");
                }
                let cluster = match &d.cluster {
                    Some(_) => valid_name(format!("{p}.cluster"), d.cluster.as_ref(), errs),
                    None => {
                        errs.add(
                            format!("{p}.cluster"),
                            "missing (the cluster the addresses become)",
                        );
                        String::new()
                    }
                };
                if !cluster.is_empty() {
                    declared.push(cluster.clone());
                }
                Provider::Dns(DnsConfig {
                    host,
                    record,
                    port,
                    server,
                    min_ttl,
                    max_ttl,
                    timeout: duration(
                        format!("{p}.timeout"),
                        d.timeout.as_ref(),
                        defaults::DNS_TIMEOUT,
                        errs,
                    ),
                    cluster,
                })
            }
        };
        for (j, c) in d.clusters.iter().flatten().enumerate() {
            let before = declared.len();
            let n = valid_name(format!("{p}.clusters[{j}]"), Some(c), errs);
            if !declared.contains(&n) {
                declared.push(n);
            }
            if declared.len() == before {
                errs.add(format!("{p}.clusters[{j}]"), format!("duplicate {c:?}"));
            }
        }
        for n in &declared {
            if let Some(other) = declared_by.insert(n.clone(), name.clone()) {
                errs.add(
                    format!("{p}.clusters"),
                    format!("cluster {n:?} is already declared by discovery {other:?}"),
                );
            }
        }
        let defaults_table = d.defaults.clone().unwrap_or_default();
        for key in ["name", "backends"] {
            if defaults_table.contains_key(key) {
                errs.add(
                    format!("{p}.defaults.{key}"),
                    "set by the provider, not in defaults",
                );
            }
        }
        let cfg = DiscoveryConfig {
            name,
            path: p.clone(),
            provider,
            backoff_max: duration(
                format!("{p}.backoff_max"),
                d.backoff_max.as_ref(),
                defaults::BACKOFF_MAX,
                errs,
            ),
            declared,
            defaults: defaults_table,
        };
        // The defaults must make a valid cluster on their own (checked once, here).
        if let Err(es) = build_cluster(
            &cfg,
            &format!("{p}.defaults"),
            cluster_table(&cfg, "x", Vec::new(), None),
        ) {
            for e in es {
                errs.add(e.path, e.message);
            }
        }
        out.push(cfg);
    }
    out
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (for SRV's `_service`).
fn valid_dns_name(s: &str) -> bool {
    let t = s.trim_end_matches('.');
    !t.is_empty()
        && t.len() <= 253
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The cluster table a provider's find becomes: its defaults, then `extra` (the keys of a
/// cluster table from a discovery file), then `name` and `backends`.
pub fn cluster_table(
    d: &DiscoveryConfig,
    name: &str,
    backends: Vec<Value>,
    extra: Option<&Table>,
) -> Table {
    let mut t = d.defaults.clone();
    if let Some(x) = extra {
        for (k, v) in x {
            t.insert(k.clone(), v.clone());
        }
    }
    t.insert("name".into(), Value::String(name.to_string()));
    t.insert("backends".into(), Value::Array(backends));
    t
}

/// Validates a discovered cluster table exactly as a `[[clusters]]` table (an empty backend
/// list is allowed). Error paths start with `path`.
pub fn build_cluster(
    d: &DiscoveryConfig,
    path: &str,
    table: Table,
) -> Result<ClusterConfig, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let raw = raw_part::<RawCluster>(path, Value::Table(table), &mut errs);
    let cluster = raw.map(|c| super::validate_cluster(path, &c, true, &mut errs));
    match cluster {
        Some(mut c) if errs.0.is_empty() => {
            c.discovered = Some(d.name.clone());
            Ok(c)
        }
        _ => {
            if errs.0.is_empty() {
                errs.add(path, "not a valid cluster");
            }
            Err(errs.0)
        }
    }
}

/// The empty cluster a declared name stands for until the provider finds it.
pub(crate) fn placeholder(
    d: &DiscoveryConfig,
    name: &str,
) -> Result<ClusterConfig, Vec<ConfigError>> {
    build_cluster(d, &d.path, cluster_table(d, name, Vec::new(), None))
}

/// A backend entry as a config value: `{ addr = "ip:port", weight = n }`.
pub fn backend_value(addr: SocketAddr, weight: u32) -> Value {
    let mut t = Table::new();
    t.insert("addr".into(), Value::String(addr.to_string()));
    if weight != 1 {
        t.insert("weight".into(), Value::Integer(i64::from(weight)));
    }
    Value::Table(t)
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    #[test]
    fn providers_validate_and_declare_clusters() {
        let c = parse_str(
            r#"
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
cluster = "api"
[[discovery]]
type = "dns"
host = "api.example.test"
port = 8080
cluster = "api"
min_ttl = "2s"
[discovery.defaults]
balance = "least_conn"
[[discovery]]
type = "docker"
[[discovery]]
type = "file"
path = "/tmp/x.toml"
clusters = ["b"]
"#,
        )
        .expect("valid");
        assert_eq!(c.discovery.len(), 3);
        let api = c.cluster("api").expect("placeholder");
        assert!(api.backends.is_empty());
        assert_eq!(api.discovered.as_deref(), Some("dns"));
        assert_eq!(api.balance, crate::config::BalanceKind::LeastConn);
        assert!(c.cluster("b").is_some());
        assert!(matches!(
            c.discovery[2].provider,
            super::Provider::File {
                format: super::FileFormat::Toml,
                ..
            }
        ));
    }

    #[test]
    fn bad_discovery_tables_report_every_field() {
        let errs = parse_str(
            r#"
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
protocol = "http"
[[clusters]]
name = "api"
backends = ["127.0.0.1:1"]
[[discovery]]
type = "dns"
host = "bad name!"
cluster = "api"
socket = "/x"
[discovery.defaults]
balance = "nope"
backends = []
[[discovery]]
type = "consul"
[[discovery]]
type = "file"
"#,
        )
        .unwrap_err();
        let paths: Vec<String> = errs.iter().map(|e| e.path.clone()).collect();
        for want in [
            "discovery[0].host",
            "discovery[0].port",
            "discovery[0].socket",
            "discovery[0].defaults.balance",
            "discovery[0].defaults.backends",
            "discovery[1].type",
            "discovery[2].path",
            "clusters[0].name",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing in {errs:?}"
            );
        }
    }
}
