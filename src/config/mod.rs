//! Configuration: raw (serde) → validated → runtime `Config`.
//!
//! The raw layer mirrors the TOML file (and, later, the admin API's JSON) and captures unknown
//! keys instead of failing on the first one, so `switchyard check` can report *every* problem
//! with its field path before exiting 64. All defaults live in [`defaults`].

pub mod autoscale;
pub mod discovery;
pub mod health;
pub mod lbaas;
pub mod resilience;
pub mod routes;
pub mod services;
pub mod tls;
pub mod units;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Every default in one place; README's config reference quotes these.
pub mod defaults {
    use std::time::Duration;
    pub const WORKERS: usize = 0; // 0 = one per core
    pub const BUFFER_SIZE: u64 = 16 * 1024;
    pub const BUFFERS_PER_WORKER: u64 = 4096;
    pub const SPLICE_PIPES_PER_WORKER: u64 = 256;
    pub const MAX_CONNECTIONS: u64 = 100_000;
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const CONNECT_ATTEMPTS: u64 = 3;
    // HTTP listeners (client side).
    pub const REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
    pub const MAX_HEADERS: u64 = 100;
    pub const MAX_URI_BYTES: u64 = 8 * 1024;
    // HTTP clusters (backend side).
    pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Below the keep-alive of common backends (Node.js and Apache close after 5 s), so the
    /// pool rarely hands out a connection the backend is closing.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
    // At least the client concurrency a worker may see, or connections churn: a request that
    // finds the pool full of its peers opens a new connection.
    pub const POOL_MAX_IDLE: u64 = 1024;
    pub const WEIGHT: u64 = 1;
    // Admin API.
    pub const ADMIN: &str = "127.0.0.1:8088";
    pub const ADMIN_MAX_BODY: u64 = 1024 * 1024;
}

/// One problem in a config, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
    pub(crate) fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
    /// Keys of a raw table that `T` does not have, each with a "did you mean" when one of
    /// `T`'s keys is close.
    pub(crate) fn unknown<T: Serialize + Default>(
        &mut self,
        path: &str,
        extra: &BTreeMap<String, toml::Value>,
    ) {
        if extra.is_empty() {
            return;
        }
        let known = keys_of::<T>();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        for key in extra.keys() {
            self.add(
                format!("{path}.{key}"),
                format!("unknown key{}", suggest(key, &known)),
            );
        }
    }
}

/// The keys of a raw table type (its fields, as serialized; the flattened catch-all of
/// unknown keys is skipped when serializing).
fn keys_of<T: Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `" (did you mean \"x\"?)"` when a known key is a small edit away from `key`, else `""`.
pub(crate) fn suggest(key: &str, known: &[&str]) -> String {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(&key.to_ascii_lowercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance with adjacent transpositions (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

// ---------------------------------------------------------------- raw layer

/// A size: either an integer number of bytes or a string such as "16KiB".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawServer {
    pub workers: Option<u64>,
    pub pin_workers: Option<bool>,
    pub buffer_size: Option<RawSize>,
    pub buffers_per_worker: Option<u64>,
    pub buffers_reserve: Option<u64>,
    pub splice_pipes_per_worker: Option<u64>,
    pub max_connections: Option<u64>,
    pub backlog: Option<u64>,
    pub shutdown_timeout: Option<String>,
    /// A path, or `{ path = "...", format = "json" | "combined" }`.
    pub access_log: Option<toml::Value>,
    /// A path, or `{ path = "...", format = "json" | "text" }`.
    pub connection_log: Option<toml::Value>,
    pub log_level: Option<String>,
    pub admin: Option<String>,
    pub admin_token_file: Option<String>,
    pub admin_insecure: Option<bool>,
    pub admin_read_only: Option<bool>,
    pub admin_max_body: Option<RawSize>,
    pub state_dir: Option<String>,
    pub stats: Option<String>,
    /// `"auto"` (default), `"mio"` or `"io_uring"`.
    pub engine: Option<String>,
    /// io_uring only: a kernel thread polls the submission queue (off by default).
    pub sqpoll: Option<bool>,
    pub runtime_dir: Option<String>,
    pub upgrade_timeout: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawListener {
    pub name: Option<String>,
    pub bind: Option<String>,
    pub protocol: Option<String>,
    pub cluster: Option<String>,
    /// Instead of `cluster`: a `[[services]]` entry (versions and a release strategy).
    pub service: Option<String>,
    pub idle_timeout: Option<String>,
    /// `[[listeners.routes]]` (http only); kept as values so each route reports its own errors.
    pub routes: Option<Vec<toml::Value>>,
    /// FaaS dynamic routing (http only): the first path segment names the cluster.
    pub faas: Option<bool>,
    /// FaaS listeners: answer `GET /stats` with the original gateway's discovery JSON.
    pub faas_stats: Option<bool>,
    pub request_header_timeout: Option<String>,
    pub request_body_timeout: Option<String>,
    pub request_buffering: Option<RawSize>,
    pub keepalive_timeout: Option<String>,
    pub max_header_bytes: Option<RawSize>,
    pub max_headers: Option<u64>,
    pub max_uri_bytes: Option<RawSize>,
    pub max_connections: Option<u64>,
    /// Another process listens on this address on purpose (SO_REUSEPORT group).
    pub share: Option<bool>,
    /// `[listeners.tls]`: TLS termination.
    pub tls: Option<toml::Value>,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub accept_proxy: Option<bool>,
    pub proxy_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawCluster {
    pub name: Option<String>,
    pub balance: Option<String>,
    /// Each entry is `"host:port"` or `{ addr = "host:port", weight = N }`; kept as a value so
    /// that every malformed entry gets its own error with its index.
    pub backends: Option<Vec<toml::Value>>,
    pub connect_timeout: Option<String>,
    pub connect_attempts: Option<u64>,
    pub hash_on: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<u64>,
    /// `[clusters.health]`, kept as a value so its errors carry their own paths.
    pub health: Option<toml::Value>,
    pub slow_start: Option<String>,
    /// `[clusters.autoscale]`: ask for more or fewer backends as the load moves.
    pub autoscale: Option<toml::Value>,
    /// `[clusters.outlier]`: passive outlier detection.
    pub outlier: Option<toml::Value>,
    pub retries: Option<u64>,
    pub retry_on: Option<Vec<String>>,
    pub retry_non_idempotent: Option<bool>,
    pub retry_budget: Option<f64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_backend: Option<u64>,
    pub max_pending: Option<u64>,
    /// `[clusters.tls]`: TLS to the backends.
    pub tls: Option<toml::Value>,
    /// `"v1"` or `"v2"`: a PROXY protocol header starts every upstream connection.
    pub send_proxy: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

// ---------------------------------------------------------------- runtime layer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Foo,
    /// HTTP/1.1 reverse proxy: per-request routing and balancing.
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Foo => "foo",
            Protocol::Http => "http",
        }
    }
}

/// `server.engine`: what turns the sessions' I/O into system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring when the kernel allows it, else mio (with one log line saying why).
    #[default]
    Auto,
    /// epoll readiness through mio.
    Mio,
    /// io_uring; start-up fails (exit 70) when the kernel refuses it.
    IoUring,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Mio => "mio",
            EngineKind::IoUring => "io_uring",
        }
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        match s {
            "auto" => Some(EngineKind::Auto),
            "mio" => Some(EngineKind::Mio),
            "io_uring" => Some(EngineKind::IoUring),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceKind {
    RoundRobin,
    Weighted,
    LeastConn,
    /// Power of two choices over peak-EWMA latency, penalising fast failures.
    P2cEwma,
    /// Consistent hashing (Maglev) on `ClusterConfig::hash_on`.
    Hash,
}

impl BalanceKind {
    pub const NAMES: &'static str = "round_robin, weighted, least_conn, p2c_ewma, hash";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Self::RoundRobin),
            "weighted" => Some(Self::Weighted),
            "least_conn" => Some(Self::LeastConn),
            "p2c_ewma" => Some(Self::P2cEwma),
            "hash" => Some(Self::Hash),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::LeastConn => "least_conn",
            Self::P2cEwma => "p2c_ewma",
            Self::Hash => "hash",
        }
    }
}

/// What a `hash` cluster hashes to pick a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address (works for TCP and HTTP listeners).
    ClientIp,
    /// A request header, by name (HTTP listeners only).
    Header(String),
    /// A request cookie, by name (HTTP listeners only).
    Cookie(String),
}

impl HashOn {
    /// `"client_ip"`, `"header:<name>"` or `"cookie:<name>"`.
    pub fn parse(s: &str) -> Result<HashOn, String> {
        let bad = || {
            format!("invalid hash_on {s:?} (expected \"client_ip\", \"header:<name>\" or \"cookie:<name>\")")
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashOn::ClientIp),
            Some(("header", n)) if is_token(n) => Ok(HashOn::Header(n.to_ascii_lowercase())),
            Some(("cookie", n)) if is_token(n) => Ok(HashOn::Cookie(n.to_string())),
            _ => Err(bad()),
        }
    }
}

/// An RFC 9110 token (header and cookie names).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Resolved: never 0.
    pub workers: usize,
    pub pin_workers: bool,
    pub buffer_size: usize,
    pub buffers_per_worker: usize,
    /// Buffers of each worker's pool that only work in progress may take (resolved: unset is
    /// an eighth of the pool, at least 32, at most half).
    pub buffers_reserve: usize,
    /// Pipes for zero-copy forwarding of bulk TCP flows; 0 disables splicing.
    pub splice_pipes_per_worker: usize,
    pub max_connections: usize,
    /// `backlog` as set; unset, each listener's backlog follows its connection limit
    /// ([`ListenerConfig::backlog`]).
    pub backlog: Option<i32>,
    pub shutdown_timeout: Duration,
    /// HTTP access log file, appended to; reopened on SIGUSR1 and SIGHUP.
    pub access_log: Option<AccessLogConfig>,
    /// TCP/Foo connection log (one line per closed connection), as the access log.
    pub connection_log: Option<AccessLogConfig>,
    /// `log_level`; `SWITCHYARD_LOG` wins over it.
    pub log_level: Option<log::LevelFilter>,
    /// Admin API address; `None` when disabled (`admin = "off"`).
    pub admin: Option<SocketAddr>,
    /// When set, every admin mutation needs `Authorization: Bearer <token>`.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Allows a non-loopback admin address without a token.
    pub admin_insecure: bool,
    /// The admin API answers reads only.
    pub admin_read_only: bool,
    /// Largest accepted admin request body.
    pub admin_max_body: usize,
    /// Where runtime changes (and the stats snapshot) are persisted.
    pub state_dir: Option<std::path::PathBuf>,
    /// `stats = "minimal"`: process-wide counters only (no per-object figures, no histograms).
    pub stats_minimal: bool,
    /// `engine`: as configured (`SWITCHYARD_ENGINE` may override it at start).
    pub engine: EngineKind,
    /// `sqpoll`: io_uring submission-queue polling thread.
    pub sqpoll: bool,
    /// Where the control socket lives (default: `$RUNTIME_DIRECTORY`, set by systemd).
    pub runtime_dir: Option<std::path::PathBuf>,
    /// How long a binary upgrade waits for the new process to report ready.
    pub upgrade_timeout: Duration,
}

/// Line format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (every field).
    #[default]
    Json,
    /// NCSA combined (Apache/nginx), for tools that read it.
    Combined,
    /// The connection log's `key=value` line.
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub path: std::path::PathBuf,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// tcp/foo: the target (required). http: the fallback when no route matches (optional).
    pub cluster: Option<String>,
    /// Instead of `cluster` (http): a service, whose release strategy picks the cluster.
    pub service: Option<String>,
    pub idle_timeout: Duration,
    /// http only; first match wins.
    pub routes: Vec<routes::RouteConfig>,
    /// http only: FaaS dynamic routing by first path segment.
    pub faas: bool,
    /// FaaS listeners: `GET /stats` answers the original gateway's discovery JSON.
    pub faas_stats: bool,
    pub http: HttpListenerConfig,
    /// Open client connections on this listener (all workers); beyond it new ones are
    /// turned away (http: `503` with `Retry-After`).
    pub max_connections: Option<u32>,
    /// Sharing the address with another process is intended (else start-up refuses an
    /// address someone already serves).
    pub share: bool,
    /// TLS termination (certificates are loaded by [`crate::tls`]).
    pub tls: Option<tls::ListenerTls>,
    /// Connections start with a PROXY protocol header.
    pub accept_proxy: Option<tls::AcceptProxy>,
}

impl ListenerConfig {
    /// The listen backlog of each of this listener's sockets: `server.backlog` when set, else
    /// its connection limit (the listener's `max_connections`, else the process's), as
    /// HAProxy sizes it, so a burst of new connections waits in the kernel rather than in SYN
    /// retries. The kernel caps it at `net.core.somaxconn` (`switchyard check` says when).
    pub fn backlog(&self, server: &ServerConfig) -> i32 {
        server.backlog.unwrap_or_else(|| {
            let limit = self
                .max_connections
                .map_or(server.max_connections, |m| m as usize);
            limit.clamp(128, 65535) as i32
        })
    }
}

/// Client-side HTTP settings (defaults apply to non-http listeners and are unused there).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpListenerConfig {
    /// A request head must be complete this long after its first byte (slowloris defence).
    pub request_header_timeout: Duration,
    /// A request body that stalls (no byte from the client) this long gets 408.
    pub request_body_timeout: Duration,
    /// Bodies up to this size are read whole before a backend is picked (0: streamed at
    /// once, the default).
    pub request_buffering: usize,
    /// An idle keep-alive client connection is closed after this long.
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// As written by the operator (`host:port`); the admin API addresses backends by it.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Draining: takes no new connections or requests; the ones it has finish.
    pub drain: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    /// The discovery provider that found (or declared) this cluster; `None` for the
    /// operator's own clusters (config file or admin API).
    pub discovered: Option<String>,
    pub balance: BalanceKind,
    /// Set exactly when `balance` is `Hash`.
    pub hash_on: Option<HashOn>,
    pub backends: Vec<BackendConfig>,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    /// HTTP: the response must start this long after the request was sent.
    pub first_byte_timeout: Duration,
    /// HTTP: longest silence from the backend during an exchange.
    pub idle_timeout: Duration,
    /// HTTP: idle pooled upstream connections close after this long.
    pub pool_idle_timeout: Duration,
    /// HTTP: idle pooled connections kept per backend per worker.
    pub pool_max_idle: usize,
    /// Active health checks (none: every backend counts as up).
    pub health: Option<health::HealthConfig>,
    /// An added, undrained or recovered backend's weight ramps up over this long.
    pub slow_start: Option<Duration>,
    pub outlier: Option<resilience::OutlierConfig>,
    pub retry: resilience::RetryPolicy,
    pub limits: resilience::ClusterLimits,
    /// TLS to the backends (files loaded by [`crate::tls`]).
    pub tls: Option<tls::ClusterTls>,
    /// A PROXY protocol header starts every upstream connection.
    pub send_proxy: Option<crate::proto::proxy_protocol::Version>,
    pub autoscale: Option<autoscale::AutoscaleConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub listeners: Vec<ListenerConfig>,
    /// The operator's clusters, then those discovery providers declare or found.
    pub clusters: Vec<ClusterConfig>,
    pub services: Vec<services::ServiceConfig>,
    /// `[lbaas]` (defaults when absent).
    pub lbaas: lbaas::LbaasConfig,
    /// `[[discovery]]` providers.
    pub discovery: Vec<discovery::DiscoveryConfig>,
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
    pub fn service(&self, name: &str) -> Option<&services::ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Reads and validates a config file. The error list is never empty on `Err`.
pub fn load_file(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse_str(&text).map_err(|errs| with_file(errs, &shown))
}

/// Parses and validates TOML text.
pub fn parse_str(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_table(parse_toml(text)?)
}

/// TOML text → table (the raw document the control plane edits), syntax errors only.
///
/// A syntax error's path is `:LINE:COLUMN` (1-based) for the caller to put the file name in
/// front of (see [`with_file`]); its message quotes the offending line with a caret.
pub fn parse_toml(text: &str) -> Result<toml::Table, Vec<ConfigError>> {
    text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().trim().replace('\n', "; ");
        let Some(span) = e.span() else {
            return vec![ConfigError {
                path: String::new(),
                message: format!("TOML syntax: {msg}"),
            }];
        };
        let at = span.start.min(text.len());
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let line_no = text[..line_start].matches('\n').count() + 1;
        let col = text[line_start..at].chars().count() + 1;
        let line = text[line_start..line_end].trim_end_matches('\r');
        let gutter = line_no.to_string().len();
        vec![ConfigError {
            path: format!(":{line_no}:{col}"),
            message: format!(
                "TOML syntax: {msg}\n {:gutter$} |\n {line_no} | {line}\n {:gutter$} | {:>col$}",
                "", "", "^"
            ),
        }]
    })
}

/// Puts the file name into errors that have no path (the whole file) or only a position.
pub fn with_file(mut errs: Vec<ConfigError>, shown: &str) -> Vec<ConfigError> {
    for e in &mut errs {
        if e.path.is_empty() {
            e.path = shown.to_string();
        } else if e.path.starts_with(':') {
            e.path = format!("{shown}{}", e.path);
        }
    }
    errs
}

/// Validates a raw document (a parsed file, or one the admin API edited).
pub fn parse_table(table: toml::Table) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let mut server = RawServer::default();
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut services = Vec::new();
    let mut lbaas_cfg = lbaas::LbaasConfig::default();
    // A `listeners` key of the wrong shape is reported once, as that.
    let listeners_present = table.contains_key("listeners");
    let mut discoveries = Vec::new();
    for (key, value) in table {
        match key.as_str() {
            "server" => {
                if let Some(s) = raw_part::<RawServer>("server", value, &mut errs) {
                    server = s;
                }
            }
            "listeners" => raw_list("listeners", value, &mut listeners, &mut errs),
            "clusters" => raw_list("clusters", value, &mut clusters, &mut errs),
            "lbaas" => lbaas_cfg = lbaas::validate(value, &mut errs),
            "discovery" => raw_list("discovery", value, &mut discoveries, &mut errs),
            "services" => raw_list("services", value, &mut services, &mut errs),
            other => errs.add(
                other,
                format!(
                    "unknown key{}",
                    suggest(
                        other,
                        &[
                            "server",
                            "listeners",
                            "clusters",
                            "services",
                            "discovery",
                            "lbaas"
                        ]
                    )
                ),
            ),
        }
    }
    let mut cfg = validate(
        &server,
        &listeners,
        &clusters,
        &services,
        listeners_present,
        &discoveries,
        &mut errs,
    );
    cfg.lbaas = lbaas_cfg;
    if errs.0.is_empty() {
        Ok(cfg)
    } else {
        Err(errs.0)
    }
}

/// Deserializes one table. A key with the wrong type is reported and removed, and the rest
/// is deserialized again, so one bad value never hides the errors of its neighbours.
pub(crate) fn raw_part<T: for<'de> Deserialize<'de>>(
    path: &str,
    mut value: toml::Value,
    errs: &mut Errors,
) -> Option<T> {
    // Each pass removes one key, so a table with n keys takes at most n + 1 passes.
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let inner = err.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let key = match err.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        errs.add(full, plain_type_error(err.into_inner().message().trim()));
        let removed = match (key, value.as_table_mut()) {
            (Some(k), Some(t)) => t.remove(&k).is_some(),
            _ => false,
        };
        if !removed {
            return None;
        }
    }
}

/// serde's wording, in the config's terms ("expected u64" → "expected a whole number").
fn plain_type_error(m: &str) -> String {
    let m = m
        .replace("expected u64", "expected a whole number (0 or more)")
        .replace("expected u32", "expected a whole number (0 or more)")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false");
    match m.find("expected struct Raw") {
        Some(i) => format!("{}expected a table", &m[..i]),
        None => m,
    }
}

/// An array of tables; each element is deserialized on its own so that one bad element does
/// not hide the errors of the others. A failed element becomes a default (all-`None`) entry so
/// indices stay aligned with the file.
pub(crate) fn raw_list<T: for<'de> Deserialize<'de> + Default>(
    path: &str,
    value: toml::Value,
    out: &mut Vec<Option<T>>,
    errs: &mut Errors,
) {
    match value {
        toml::Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                out.push(raw_part::<T>(&format!("{path}[{i}]"), item, errs));
            }
        }
        _ => errs.add(path, format!("expected an array of tables ([[{path}]])")),
    }
}

fn size_field(
    path: String,
    raw: Option<&RawSize>,
    default: u64,
    min: u64,
    max: u64,
    errs: &mut Errors,
) -> u64 {
    let v = match raw {
        None => default,
        Some(RawSize::Bytes(n)) => *n,
        Some(RawSize::Text(s)) => match units::parse_size(s) {
            Ok(n) => n,
            Err(e) => {
                errs.add(path, e);
                return default;
            }
        },
    };
    if v < min || v > max {
        errs.add(path, format!("{v} bytes is out of range ({min}..={max})"));
        return default;
    }
    v
}

fn http_listener(
    p: &str,
    l: &RawListener,
    protocol: Protocol,
    errs: &mut Errors,
) -> HttpListenerConfig {
    if protocol != Protocol::Http {
        let set = [
            ("request_header_timeout", l.request_header_timeout.is_some()),
            ("request_body_timeout", l.request_body_timeout.is_some()),
            ("request_buffering", l.request_buffering.is_some()),
            ("keepalive_timeout", l.keepalive_timeout.is_some()),
            ("max_header_bytes", l.max_header_bytes.is_some()),
            ("max_headers", l.max_headers.is_some()),
            ("max_uri_bytes", l.max_uri_bytes.is_some()),
        ];
        for (key, present) in set {
            if present {
                errs.add(format!("{p}.{key}"), "for http listeners only");
            }
        }
    }
    HttpListenerConfig {
        request_header_timeout: duration_field(
            format!("{p}.request_header_timeout"),
            l.request_header_timeout.as_ref(),
            defaults::REQUEST_HEADER_TIMEOUT,
            errs,
        ),
        request_body_timeout: duration_field(
            format!("{p}.request_body_timeout"),
            l.request_body_timeout.as_ref(),
            defaults::REQUEST_BODY_TIMEOUT,
            errs,
        ),
        request_buffering: size_field(
            format!("{p}.request_buffering"),
            l.request_buffering.as_ref(),
            0,
            0,
            1 << 20,
            errs,
        ) as usize,
        keepalive_timeout: duration_field(
            format!("{p}.keepalive_timeout"),
            l.keepalive_timeout.as_ref(),
            defaults::KEEPALIVE_TIMEOUT,
            errs,
        ),
        max_header_bytes: size_field(
            format!("{p}.max_header_bytes"),
            l.max_header_bytes.as_ref(),
            defaults::MAX_HEADER_BYTES,
            1024,
            1 << 20,
            errs,
        ) as usize,
        max_headers: int_field(
            &format!("{p}.max_headers"),
            l.max_headers,
            defaults::MAX_HEADERS,
            1,
            crate::http::head::MAX_HEADERS_CAP as u64,
            errs,
        ) as usize,
        max_uri_bytes: size_field(
            format!("{p}.max_uri_bytes"),
            l.max_uri_bytes.as_ref(),
            defaults::MAX_URI_BYTES,
            16,
            1 << 20,
            errs,
        ) as usize,
    }
}

/// `server.access_log`: `"path"` or `{ path = "path", format = "json" | "combined" }`.
fn access_log_field(v: &toml::Value, errs: &mut Errors) -> Option<AccessLogConfig> {
    log_file_field(
        "server.access_log",
        &[("json", LogFormat::Json), ("combined", LogFormat::Combined)],
        v,
        errs,
    )
}

/// `server.connection_log`: `"path"` or `{ path = "path", format = "json" | "text" }`.
fn connection_log_field(v: &toml::Value, errs: &mut Errors) -> Option<AccessLogConfig> {
    log_file_field(
        "server.connection_log",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        v,
        errs,
    )
}

/// A log file: a path, or `{ path, format }` with one of `formats` (the first is the default).
fn log_file_field(
    p: &str,
    formats: &[(&str, LogFormat)],
    v: &toml::Value,
    errs: &mut Errors,
) -> Option<AccessLogConfig> {
    let names = formats
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let default = formats.first().map_or(LogFormat::Json, |f| f.1);
    let (path, format) = match v {
        toml::Value::String(p) => (Some(p.as_str()), default),
        toml::Value::Table(t) => {
            let mut format = default;
            for (k, val) in t {
                match (k.as_str(), val.as_str()) {
                    ("path", Some(_)) => {}
                    ("path", None) => errs.add(format!("{p}.path"), "expected a string"),
                    ("format", Some(f)) if formats.iter().any(|(n, _)| *n == f) => {
                        format = formats
                            .iter()
                            .find(|(n, _)| *n == f)
                            .map_or(default, |x| x.1)
                    }
                    ("format", _) => errs.add(format!("{p}.format"), format!("expected {names}")),
                    (other, _) => errs.add(
                        format!("{p}.{other}"),
                        format!("unknown key{}", suggest(other, &["path", "format"])),
                    ),
                }
            }
            if !t.contains_key("path") {
                errs.add(format!("{p}.path"), "missing");
            }
            (t.get("path").and_then(|p| p.as_str()), format)
        }
        _ => {
            errs.add(
                p,
                format!(
                    "expected a path or {{ path = \"...\", format = {} }}",
                    names.replace(" or ", " | ")
                ),
            );
            return None;
        }
    };
    match path {
        None => None,
        Some("") => {
            errs.add(p, "empty path");
            None
        }
        Some(p) => Some(AccessLogConfig {
            path: p.into(),
            format,
        }),
    }
}

fn path_field(path: &str, raw: &Option<String>, errs: &mut Errors) -> Option<std::path::PathBuf> {
    match raw.as_deref() {
        None => None,
        Some("") => {
            errs.add(path, "empty path");
            None
        }
        Some(p) => Some(std::path::PathBuf::from(p)),
    }
}

/// `server.admin`: an address, or `"off"`. A non-loopback address needs a token file unless
/// the operator says `admin_insecure = true` or the API is read-only.
fn admin_field(raw: &RawServer, s: &ServerConfig, errs: &mut Errors) -> Option<SocketAddr> {
    let text = raw.admin.as_deref().unwrap_or(defaults::ADMIN);
    if text == "off" {
        return None;
    }
    let addr = match parse_bind(text) {
        Ok(a) => a,
        Err(e) => {
            errs.add("server.admin", format!("{e} (or \"off\")"));
            return None;
        }
    };
    if !addr.ip().is_loopback()
        && s.admin_token_file.is_none()
        && !s.admin_insecure
        && !s.admin_read_only
    {
        errs.add(
            "server.admin",
            format!(
                "{addr} is not a loopback address: set admin_token_file so that changes need \
                 a token (or admin_read_only = true; or, at your own risk, admin_insecure = true)"
            ),
        );
    }
    Some(addr)
}

/// Longest accepted duration: far beyond any sane timeout, and small enough that deadline
/// arithmetic (`Instant + Duration`) can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn duration_field(
    path: String,
    raw: Option<&String>,
    default: Duration,
    errs: &mut Errors,
) -> Duration {
    match raw {
        None => default,
        Some(s) => match units::parse_duration(s) {
            Ok(d) if d.is_zero() => {
                errs.add(path, "must be greater than zero");
                default
            }
            Ok(d) if d > MAX_DURATION => {
                errs.add(path, format!("{s:?} is longer than the maximum of 30 days"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                errs.add(path, e);
                default
            }
        },
    }
}

fn int_field(
    path: &str,
    raw: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
    errs: &mut Errors,
) -> u64 {
    let v = raw.unwrap_or(default);
    if v < min || v > max {
        errs.add(path, format!("{v} is out of range ({min}..={max})"));
        return default;
    }
    v
}

fn valid_name(path: String, raw: Option<&String>, errs: &mut Errors) -> String {
    match raw {
        None => {
            errs.add(path, "missing (every entry needs a name)");
            String::new()
        }
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if ok && (n == "." || n == "..") {
                // A name is a path segment of the admin API (`/v1/clusters/..`).
                errs.add(
                    path,
                    format!("invalid name {n:?}: \".\" and \"..\" are not names"),
                );
            } else if !ok {
                errs.add(
                    path,
                    format!("invalid name {n:?}: use 1-64 of [A-Za-z0-9._-]"),
                );
            }
            n.clone()
        }
    }
}

/// Parses a listen address. Accepts `ip:port`, `[v6]:port` and the Foo proxy's `:port`
/// (all interfaces).
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let candidate = if let Some(port) = t.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        t.to_string()
    };
    candidate
        .parse()
        .map_err(|_| format!("invalid listen address {s:?} (expected ip:port or :port)"))
}

/// Parses a backend address. Accepts `ip:port`, `:port` (this host) and `host:port` resolved
/// once here, at load time.
pub fn parse_backend_addr(s: &str) -> Result<SocketAddr, String> {
    let a = resolve_backend_addr(s)?;
    if a.port() == 0 {
        // Connecting to port 0 fails every time: a typo, never a backend.
        return Err(format!("invalid backend address {s:?}: port 0"));
    }
    Ok(a)
}

fn resolve_backend_addr(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Some(port) = t.strip_prefix(':') {
        return format!("127.0.0.1:{port}")
            .parse()
            .map_err(|_| format!("invalid backend address {s:?}"));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !t.contains(':') {
        return Err(format!(
            "invalid backend address {s:?} (expected host:port)"
        ));
    }
    // Fuzzing must not send DNS queries (or read /etc/hosts once per input).
    if cfg!(fuzzing) {
        return Err(format!(
            "invalid backend address {s:?}: no name resolution while fuzzing"
        ));
    }
    match t.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("backend address {s:?} resolved to nothing")),
        Err(e) => Err(format!("invalid backend address {s:?}: {e}")),
    }
}

fn validate_backend(path: &str, v: &toml::Value, errs: &mut Errors) -> Option<BackendConfig> {
    let (name, weight, drain) = match v {
        toml::Value::String(s) => (s.clone(), defaults::WEIGHT, false),
        toml::Value::Table(t) => {
            let mut name = None;
            let mut weight = defaults::WEIGHT;
            let mut drain = false;
            for (k, val) in t {
                match (k.as_str(), val) {
                    ("addr", toml::Value::String(s)) => name = Some(s.clone()),
                    ("addr", _) => {
                        errs.add(format!("{path}.addr"), "expected a string \"host:port\"")
                    }
                    ("weight", toml::Value::Integer(w)) if (1..=10_000).contains(w) => {
                        weight = *w as u64
                    }
                    ("weight", _) => {
                        errs.add(format!("{path}.weight"), "expected an integer in 1..=10000")
                    }
                    ("drain", toml::Value::Boolean(d)) => drain = *d,
                    ("drain", _) => errs.add(format!("{path}.drain"), "expected true or false"),
                    _ => errs.add(
                        format!("{path}.{k}"),
                        format!("unknown key{}", suggest(k, &["addr", "weight", "drain"])),
                    ),
                }
            }
            match name {
                Some(n) => (n, weight, drain),
                None => {
                    if !t.contains_key("addr") {
                        errs.add(format!("{path}.addr"), "missing");
                    }
                    return None;
                }
            }
        }
        _ => {
            errs.add(
                path,
                "expected \"host:port\" or { addr = \"host:port\", weight = N }",
            );
            return None;
        }
    };
    match parse_backend_addr(&name) {
        Ok(addr) => Some(BackendConfig {
            name,
            addr,
            weight: weight as u32,
            drain,
        }),
        Err(e) => {
            let p = if v.is_table() {
                format!("{path}.addr")
            } else {
                path.to_string()
            };
            errs.add(p, e);
            None
        }
    }
}

fn validate(
    server: &RawServer,
    listeners: &[Option<RawListener>],
    clusters: &[Option<RawCluster>],
    services: &[Option<services::RawService>],
    listeners_present: bool,
    discoveries: &[Option<discovery::RawDiscovery>],
    errs: &mut Errors,
) -> Config {
    errs.unknown::<RawServer>("server", &server.unknown);
    let workers = int_field(
        "server.workers",
        server.workers,
        defaults::WORKERS as u64,
        0,
        1024,
        errs,
    ) as usize;
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    let buffer_size = match &server.buffer_size {
        None => defaults::BUFFER_SIZE,
        Some(RawSize::Bytes(n)) => *n,
        Some(RawSize::Text(s)) => units::parse_size(s).unwrap_or_else(|e| {
            errs.add("server.buffer_size", e);
            defaults::BUFFER_SIZE
        }),
    };
    let buffer_size = if !(1024..=16 << 20).contains(&buffer_size) {
        errs.add(
            "server.buffer_size",
            format!("{buffer_size} bytes is out of range (1KiB..=16MiB)"),
        );
        defaults::BUFFER_SIZE
    } else {
        buffer_size
    };
    let buffers = int_field(
        "server.buffers_per_worker",
        server.buffers_per_worker,
        defaults::BUFFERS_PER_WORKER,
        16,
        1 << 20,
        errs,
    );
    if buffers.saturating_mul(buffer_size) > 64 << 30 {
        errs.add(
            "server.buffers_per_worker",
            "buffer_size × buffers_per_worker exceeds 64GiB per worker",
        );
    }
    let default_reserve = crate::io::BufferPool::default_reserve(buffers as usize) as u64;
    let buffers_reserve = match server.buffers_reserve {
        Some(n) if n >= buffers => {
            errs.add(
                "server.buffers_reserve",
                format!(
                    "{n} must be less than buffers_per_worker ({buffers}): new requests would \
                     never get a buffer"
                ),
            );
            default_reserve
        }
        Some(n) => n,
        None => default_reserve,
    };
    let server_cfg = ServerConfig {
        workers,
        pin_workers: server.pin_workers.unwrap_or(false),
        buffer_size: buffer_size as usize,
        buffers_per_worker: buffers as usize,
        buffers_reserve: buffers_reserve as usize,
        splice_pipes_per_worker: int_field(
            "server.splice_pipes_per_worker",
            server.splice_pipes_per_worker,
            defaults::SPLICE_PIPES_PER_WORKER,
            0,
            65536,
            errs,
        ) as usize,
        max_connections: int_field(
            "server.max_connections",
            server.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            10_000_000,
            errs,
        ) as usize,
        backlog: server
            .backlog
            .map(|_| int_field("server.backlog", server.backlog, 1, 1, 65535, errs) as i32),
        shutdown_timeout: duration_field(
            "server.shutdown_timeout".into(),
            server.shutdown_timeout.as_ref(),
            defaults::SHUTDOWN_TIMEOUT,
            errs,
        ),
        access_log: server
            .access_log
            .as_ref()
            .and_then(|v| access_log_field(v, errs)),
        connection_log: server
            .connection_log
            .as_ref()
            .and_then(|v| connection_log_field(v, errs)),
        log_level: server.log_level.as_deref().and_then(|l| {
            let parsed = crate::logging::parse_level(l);
            if parsed.is_none() {
                errs.add(
                    "server.log_level",
                    format!(
                        "unknown log level {l:?} (expected one of: {})",
                        crate::logging::LEVELS
                    ),
                );
            }
            parsed
        }),
        admin: None,
        admin_token_file: path_field("server.admin_token_file", &server.admin_token_file, errs),
        admin_insecure: server.admin_insecure.unwrap_or(false),
        admin_read_only: server.admin_read_only.unwrap_or(false),
        admin_max_body: size_field(
            "server.admin_max_body".into(),
            server.admin_max_body.as_ref(),
            defaults::ADMIN_MAX_BODY,
            1024,
            64 << 20,
            errs,
        ) as usize,
        state_dir: path_field("server.state_dir", &server.state_dir, errs),
        runtime_dir: path_field("server.runtime_dir", &server.runtime_dir, errs),
        upgrade_timeout: duration_field(
            "server.upgrade_timeout".into(),
            server.upgrade_timeout.as_ref(),
            defaults::UPGRADE_TIMEOUT,
            errs,
        ),
        stats_minimal: match server.stats.as_deref() {
            None | Some("full") => false,
            Some("minimal") => true,
            Some(other) => {
                errs.add(
                    "server.stats",
                    format!("unknown stats level {other:?} (expected full or minimal)"),
                );
                false
            }
        },
        engine: match server.engine.as_deref() {
            None => EngineKind::Auto,
            Some(e) => EngineKind::parse(e).unwrap_or_else(|| {
                errs.add(
                    "server.engine",
                    format!("unknown engine {e:?} (expected auto, mio or io_uring)"),
                );
                EngineKind::Auto
            }),
        },
        sqpoll: server.sqpoll.unwrap_or(false),
    };
    let server_cfg = ServerConfig {
        admin: admin_field(server, &server_cfg, errs),
        ..server_cfg
    };

    let mut out_clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    for (i, raw) in clusters.iter().enumerate() {
        let Some(c) = raw else { continue };
        let p = format!("clusters[{i}]");
        let cluster = validate_cluster(&p, c, false, errs);
        if !cluster.name.is_empty() && !cluster_names.insert(cluster.name.clone()) {
            errs.add(
                format!("{p}.name"),
                format!("duplicate cluster name {:?}", cluster.name),
            );
        }
        out_clusters.push(cluster);
    }
    let discovery = discovery::validate(discoveries, errs);
    // Clusters that discovery providers declare exist from the start (empty until found),
    // so listeners and routes can name them.
    for d in &discovery {
        for name in &d.declared {
            if let Some(i) = out_clusters.iter().position(|c| &c.name == name) {
                errs.add(
                    format!("clusters[{i}].name"),
                    format!(
                        "cluster {name:?} is provided by discovery {:?}; remove one of the two",
                        d.name
                    ),
                );
                continue;
            }
            // Bad defaults were reported with the provider.
            if let Ok(c) = discovery::placeholder(d, name) {
                out_clusters.push(c);
            }
        }
    }

    let declared_cluster = |c: &str| {
        clusters
            .iter()
            .flatten()
            .any(|rc| rc.name.as_deref() == Some(c))
    };
    let out_services = services::validate_services(services, &declared_cluster, errs);
    // As for clusters: a service that failed to parse as a whole was already reported.
    let declared_service = |n: &str| {
        services
            .iter()
            .flatten()
            .any(|rs| rs.name.as_deref() == Some(n))
    };

    let mut out_listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, raw) in listeners.iter().enumerate() {
        let Some(l) = raw else { continue };
        let p = format!("listeners[{i}]");
        errs.unknown::<RawListener>(&p, &l.unknown);
        let name = valid_name(format!("{p}.name"), l.name.as_ref(), errs);
        if !name.is_empty() && !listener_names.insert(name.clone()) {
            errs.add(
                format!("{p}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let bind = match l.bind.as_deref() {
            None => {
                errs.add(format!("{p}.bind"), "missing");
                None
            }
            Some(b) => match parse_bind(b) {
                Ok(a) => {
                    if a.port() != 0 && !binds.insert(a) {
                        errs.add(
                            format!("{p}.bind"),
                            format!("{a} is already used by another listener"),
                        );
                    }
                    Some(a)
                }
                Err(e) => {
                    errs.add(format!("{p}.bind"), e);
                    None
                }
            },
        };
        let protocol = match l.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("foo") => Protocol::Foo,
            Some("http") => Protocol::Http,
            Some(other) => {
                errs.add(
                    format!("{p}.protocol"),
                    format!("unknown protocol {other:?} (expected one of: tcp, foo, http)"),
                );
                Protocol::Tcp
            }
        };
        // A cluster that failed to parse as a whole was already reported; only complain
        // about names that are nowhere in the file.
        let declared = |c: &str| {
            clusters
                .iter()
                .flatten()
                .any(|rc| rc.name.as_deref() == Some(c))
                || discovery.iter().any(|d| d.declared.iter().any(|n| n == c))
        };
        let faas = l.faas.unwrap_or(false);
        let service = match (&l.service, &l.cluster, protocol) {
            (None, _, _) => None,
            (Some(_), Some(_), _) => {
                errs.add(format!("{p}.service"), "give cluster or service, not both");
                None
            }
            (Some(_), None, Protocol::Tcp | Protocol::Foo) => {
                errs.add(
                    format!("{p}.service"),
                    "services are for http listeners (their strategies route requests)",
                );
                None
            }
            (Some(n), None, Protocol::Http) => {
                if !declared_service(n) {
                    errs.add(format!("{p}.service"), format!("unknown service {n:?}"));
                }
                if faas {
                    errs.add(
                        format!("{p}.service"),
                        "never used: with faas = true the first path segment picks the cluster",
                    );
                }
                Some(n.clone())
            }
        };
        let cluster = match (&l.cluster, protocol) {
            (None, Protocol::Http) => None,
            (None, _) if l.service.is_some() => None,
            (None, _) => {
                errs.add(format!("{p}.cluster"), "missing");
                None
            }
            (Some(c), _) => {
                if !declared(c) {
                    errs.add(format!("{p}.cluster"), format!("unknown cluster {c:?}"));
                }
                if faas {
                    errs.add(
                        format!("{p}.cluster"),
                        "never used: with faas = true the first path segment picks the cluster",
                    );
                }
                Some(c.clone())
            }
        };
        let routes = match (&l.routes, protocol) {
            (None, _) => Vec::new(),
            (Some(list), Protocol::Http) => {
                routes::validate_routes(&p, list, &declared, &declared_service, errs)
            }
            (Some(_), _) => {
                errs.add(format!("{p}.routes"), "routes are for http listeners only");
                Vec::new()
            }
        };
        if l.faas.is_some() && protocol != Protocol::Http {
            errs.add(format!("{p}.faas"), "faas is for http listeners only");
        }
        let faas_stats = l.faas_stats.unwrap_or(false);
        if faas_stats && !faas {
            errs.add(
                format!("{p}.faas_stats"),
                "needs faas = true (it answers GET /stats on the FaaS listener)",
            );
        }
        let http = http_listener(&p, l, protocol, errs);
        if protocol != Protocol::Http {
            let hashed = cluster
                .as_ref()
                .and_then(|n| out_clusters.iter().find(|c| &c.name == n))
                .filter(|c| matches!(c.hash_on, Some(HashOn::Header(_) | HashOn::Cookie(_))));
            if let Some(c) = hashed {
                errs.add(
                    format!("{p}.cluster"),
                    format!(
                        "cluster {:?} hashes on a header or cookie, which a {} listener does not \
                         have (use hash_on = \"client_ip\")",
                        c.name,
                        protocol.as_str()
                    ),
                );
            }
        }
        let idle_timeout = duration_field(
            format!("{p}.idle_timeout"),
            l.idle_timeout.as_ref(),
            defaults::IDLE_TIMEOUT,
            errs,
        );
        let tls = l
            .tls
            .as_ref()
            .and_then(|v| tls::listener_tls(&format!("{p}.tls"), v, errs));
        let accept_proxy = tls::accept_proxy(
            &p,
            l.accept_proxy,
            l.proxy_timeout.as_ref(),
            l.trusted_proxies.as_ref(),
            errs,
        );
        if let Some(bind) = bind {
            out_listeners.push(ListenerConfig {
                tls,
                accept_proxy,
                name,
                bind,
                protocol,
                cluster,
                service,
                idle_timeout,
                routes,
                faas,
                faas_stats,
                http,
                share: l.share.unwrap_or(false),
                max_connections: l.max_connections.map(|n| {
                    int_field(
                        &format!("{p}.max_connections"),
                        Some(n),
                        1,
                        1,
                        10_000_000,
                        errs,
                    ) as u32
                }),
            });
        }
    }
    // No listeners is fine (an LBaaS node starts empty and gets its instances through the
    // API), unless nothing could ever add one.
    if listeners.is_empty() && !listeners_present && server.admin.as_deref() == Some("off") {
        errs.add(
            "listeners",
            "no listener configured and admin = \"off\": nothing could ever be served (add a \
             [[listeners]] table, or enable the admin API to add listeners at run time)",
        );
    }
    Config {
        server: server_cfg,
        listeners: out_listeners,
        clusters: out_clusters,
        services: out_services,
        lbaas: lbaas::LbaasConfig::default(),
        discovery,
    }
}

/// One `[[clusters]]` table (also a discovered cluster: then `allow_empty`, since a provider
/// may find no backend at the moment, and the cluster is marked with its provider).
pub(crate) fn validate_cluster(
    p: &str,
    c: &RawCluster,
    allow_empty: bool,
    errs: &mut Errors,
) -> ClusterConfig {
    errs.unknown::<RawCluster>(p, &c.unknown);
    let name = valid_name(format!("{p}.name"), c.name.as_ref(), errs);
    let balance = match c.balance.as_deref() {
        None => BalanceKind::RoundRobin,
        Some(b) => BalanceKind::parse(b).unwrap_or_else(|| {
            errs.add(
                format!("{p}.balance"),
                format!(
                    "unknown balance {b:?} (expected one of: {})",
                    BalanceKind::NAMES
                ),
            );
            BalanceKind::RoundRobin
        }),
    };
    let hash_on = match (&c.hash_on, balance) {
        (Some(h), BalanceKind::Hash) => HashOn::parse(h)
            .map_err(|e| errs.add(format!("{p}.hash_on"), e))
            .ok(),
        (None, BalanceKind::Hash) => {
            errs.add(
                format!("{p}.hash_on"),
                "missing (balance = \"hash\" needs it)",
            );
            None
        }
        (Some(_), _) => {
            errs.add(format!("{p}.hash_on"), "only valid with balance = \"hash\"");
            None
        }
        (None, _) => None,
    };
    let mut backends = Vec::new();
    match &c.backends {
        None if allow_empty => {}
        None => errs.add(
            format!("{p}.backends"),
            "missing (a cluster needs at least one backend)",
        ),
        Some(list) if list.is_empty() && !allow_empty => errs.add(
            format!("{p}.backends"),
            "empty (a cluster needs at least one backend)",
        ),
        Some(list) => {
            let mut seen = HashSet::new();
            for (j, v) in list.iter().enumerate() {
                let bp = format!("{p}.backends[{j}]");
                if let Some(b) = validate_backend(&bp, v, errs) {
                    if !seen.insert(b.addr) {
                        errs.add(bp, format!("duplicate backend {}", b.name));
                    } else {
                        backends.push(b);
                    }
                }
            }
        }
    }
    ClusterConfig {
        name,
        discovered: None,
        balance,
        hash_on,
        backends,
        connect_timeout: duration_field(
            format!("{p}.connect_timeout"),
            c.connect_timeout.as_ref(),
            defaults::CONNECT_TIMEOUT,
            errs,
        ),
        connect_attempts: int_field(
            &format!("{p}.connect_attempts"),
            c.connect_attempts,
            defaults::CONNECT_ATTEMPTS,
            1,
            16,
            errs,
        ) as u32,
        first_byte_timeout: duration_field(
            format!("{p}.first_byte_timeout"),
            c.first_byte_timeout.as_ref(),
            defaults::FIRST_BYTE_TIMEOUT,
            errs,
        ),
        idle_timeout: duration_field(
            format!("{p}.idle_timeout"),
            c.idle_timeout.as_ref(),
            defaults::BACKEND_IDLE_TIMEOUT,
            errs,
        ),
        pool_idle_timeout: duration_field(
            format!("{p}.pool_idle_timeout"),
            c.pool_idle_timeout.as_ref(),
            defaults::POOL_IDLE_TIMEOUT,
            errs,
        ),
        pool_max_idle: int_field(
            &format!("{p}.pool_max_idle"),
            c.pool_max_idle,
            defaults::POOL_MAX_IDLE,
            0,
            100_000,
            errs,
        ) as usize,
        health: c
            .health
            .as_ref()
            .and_then(|h| health::validate_health(&format!("{p}.health"), h, errs)),
        outlier: c
            .outlier
            .as_ref()
            .and_then(|o| resilience::outlier(&format!("{p}.outlier"), o, errs)),
        retry: resilience::retry(p, c, errs),
        limits: resilience::limits(p, c, errs),
        tls: c
            .tls
            .as_ref()
            .and_then(|v| tls::cluster_tls(&format!("{p}.tls"), v, errs)),
        send_proxy: tls::send_proxy(p, c.send_proxy.as_ref(), errs),
        autoscale: c
            .autoscale
            .as_ref()
            .and_then(|a| autoscale::validate(&format!("{p}.autoscale"), a, false, errs)),
        slow_start: c.slow_start.as_ref().map(|_| {
            duration_field(
                format!("{p}.slow_start"),
                c.slow_start.as_ref(),
                Duration::ZERO,
                errs,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
workers = 2
buffer_size = "8KiB"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
cluster = "app"
[[clusters]]
name = "app"
balance = "weighted"
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
connect_timeout = "250ms"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse_str(GOOD).expect("valid");
        assert_eq!(c.server.workers, 2);
        assert_eq!(c.server.buffer_size, 8192);
        assert_eq!(c.server.buffers_per_worker, 4096);
        assert_eq!(c.server.buffers_reserve, 512, "an eighth of the pool");
        assert_eq!(c.listeners[0].protocol, Protocol::Tcp);
        assert_eq!(c.listeners[0].idle_timeout, defaults::IDLE_TIMEOUT);
        let cl = &c.clusters[0];
        assert_eq!(cl.balance, BalanceKind::Weighted);
        assert_eq!(cl.backends[1].weight, 3);
        assert_eq!(cl.connect_timeout, Duration::from_millis(250));
    }

    fn paths(text: &str) -> Vec<String> {
        parse_str(text)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let p = paths(
            r#"
bogus = 1
[server]
workers = 5000
buffer_size = "lots"
colour = "red"
[[listeners]]
name = "web"
bind = "nowhere"
cluster = "missing"
protocol = "udp"
[[listeners]]
name = "web"
bind = "127.0.0.1:1"
cluster = "app"
idle_timeout = "soon"
[[listeners]]
name = "forever"
bind = "127.0.0.1:2"
cluster = "app"
idle_timeout = "500years"
[[clusters]]
name = "app"
balance = "random"
backends = ["127.0.0.1:1", "x", { addr = 5 }, { addr = "127.0.0.1:2", weight = 0, extra = 1 }]
"#,
        );
        for want in [
            "bogus",
            "server.workers",
            "server.buffer_size",
            "server.colour",
            "listeners[0].bind",
            "listeners[0].cluster",
            "listeners[0].protocol",
            "listeners[1].name",
            "listeners[1].idle_timeout",
            "listeners[2].idle_timeout",
            "clusters[0].balance",
            "clusters[0].backends[1]",
            "clusters[0].backends[2].addr",
            "clusters[0].backends[3].weight",
            "clusters[0].backends[3].extra",
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}");
        }
    }

    #[test]
    fn type_errors_carry_paths() {
        let p = paths("[server]\nworkers = \"two\"\nbacklog = 0\n[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:0\"\ncluster=\"c\"\n[[clusters]]\nname=\"c\"\nbackends=[\"127.0.0.1:1\"]\nconnect_attempts=\"x\"\n");
        assert!(p.contains(&"server.workers".to_string()), "{p:?}");
        assert!(
            p.contains(&"clusters[0].connect_attempts".to_string()),
            "{p:?}"
        );
    }

    #[test]
    fn syntax_error_is_one_error() {
        let e = parse_str("[server\n").expect_err("invalid");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("TOML"));
    }

    #[test]
    fn routes_and_faas_belong_to_http_listeners() {
        let p = paths(
            r#"
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
cluster = "app"
faas = true
routes = [{ cluster = "app" }]
[[listeners]]
name = "h"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
faas = true
routes = [{ path_prefix = "/x", cluster = "ghost" }]
[[listeners]]
name = "t2"
bind = "127.0.0.1:0"
[[clusters]]
name = "app"
backends = ["127.0.0.1:1"]
"#,
        );
        for want in [
            "listeners[0].faas",
            "listeners[0].routes",
            "listeners[1].cluster", // unused with faas
            "listeners[1].routes[0].cluster",
            "listeners[2].cluster", // tcp needs one
        ] {
            assert!(p.iter().any(|x| x == want), "missing {want} in {p:?}");
        }
    }

    #[test]
    fn foo_style_addresses() {
        assert_eq!(
            parse_bind(":8002").unwrap(),
            "0.0.0.0:8002".parse().unwrap()
        );
        assert_eq!(
            parse_backend_addr(":8001").unwrap(),
            "127.0.0.1:8001".parse().unwrap()
        );
        assert!(parse_bind("8002").is_err());
        assert!(parse_backend_addr("nocolon").is_err());
    }
}
