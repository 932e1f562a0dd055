//! Service discovery: providers that find clusters and backends at run time and commit them
//! through the control plane's one validated, atomic path ([`Control::set_discovered`]).
//!
//! One thread per `[[discovery]]` provider, far from the workers; blocking I/O is fine here.
//! Each thread looks at its source ([`docker`], [`dns`], [`file`]), turns what it found into
//! cluster tables validated exactly like `[[clusters]]` tables, and — only when the set
//! changed — commits it. A look that fails keeps the last good set, is counted, logged once
//! per change of state (failing / recovered), and retried with exponential backoff from the
//! provider's interval up to `backoff_max`.
//!
//! Discovered clusters are an overlay on the operator's document: they are not written to
//! the state files and a SIGHUP reload keeps them (see README, "Discovery"). An operator's
//! cluster of the same name wins; the discovered one is then reported as a conflict.

pub mod dns;
pub mod docker;
pub mod file;

use crate::config::discovery::{
    backend_value, build_cluster, cluster_table, DiscoveryConfig, Provider,
};
use crate::config::{ClusterConfig, Config};
use crate::control::Control;
use crate::snapshot::unix_ms;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toml::Table;

/// A validated discovered cluster, as the control plane keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The cluster table (shown by `GET /v1/clusters`).
    pub table: Table,
    pub cluster: ClusterConfig,
}

/// One backend a source lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Where it came from: `container web-1`, `task 3 of service x`, `A record`, …
    pub source: String,
}

/// One service a source lists: a cluster name and its backends.
#[derive(Debug, Clone, Default)]
pub struct Service {
    pub name: String,
    pub backends: Vec<Endpoint>,
    /// Cluster keys that come with the service (the file provider's cluster tables).
    pub extra: Option<Table>,
}

/// The result of one look at a source.
#[derive(Debug, Default)]
pub struct Fetched {
    pub services: Vec<Service>,
    /// Entries left out, with the reason (a container with a bad label, …).
    pub skipped: Vec<String>,
    /// Look again after this long (DNS: the records' TTL, clamped); `None`: the interval.
    pub next: Option<Duration>,
    /// An invalid service fails the whole look (the file provider: a bad file is rejected
    /// whole) rather than being skipped.
    pub strict: bool,
}

/// A discovery source: looks, blocking, and says what it sees.
pub trait Source: Send {
    fn fetch(&mut self) -> Result<Fetched, String>;
    /// The normal wait between looks (and the first backoff step).
    fn interval(&self) -> Duration;
    /// What it watches, for `/v1/discovery` (a socket, a name, a path).
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Starting,
    Ok,
    Failing,
}

impl SyncState {
    fn as_str(self) -> &'static str {
        match self {
            SyncState::Starting => "starting",
            SyncState::Ok => "ok",
            SyncState::Failing => "failing",
        }
    }
}

/// A provider's state, for `GET /v1/discovery`.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub kind: &'static str,
    pub source: String,
    pub state: SyncState,
    /// Looks that succeeded / failed.
    pub syncs: u64,
    pub errors: u64,
    /// Commits of a changed set.
    pub changes: u64,
    pub last_attempt_ms: u64,
    pub last_sync_ms: u64,
    pub next_at_ms: u64,
    pub error: Option<String>,
    /// DNS: the TTL in use (clamped).
    pub ttl: Option<Duration>,
    pub skipped: Vec<String>,
    /// The last good set, by cluster name.
    pub services: BTreeMap<String, Vec<Endpoint>>,
}

/// Every provider's status, in config order. Read by the admin API.
#[derive(Debug, Default)]
pub struct Registry {
    providers: Vec<Arc<Mutex<Status>>>,
}

impl Registry {
    pub fn new(cfgs: &[DiscoveryConfig]) -> Registry {
        Registry {
            providers: cfgs
                .iter()
                .map(|d| {
                    Arc::new(Mutex::new(Status {
                        name: d.name.clone(),
                        kind: d.provider.kind(),
                        source: describe(&d.provider),
                        state: SyncState::Starting,
                        syncs: 0,
                        errors: 0,
                        changes: 0,
                        last_attempt_ms: 0,
                        last_sync_ms: 0,
                        next_at_ms: 0,
                        error: None,
                        ttl: None,
                        skipped: Vec::new(),
                        services: BTreeMap::new(),
                    }))
                })
                .collect(),
        }
    }

    /// `GET /v1/discovery`. `conflicts`: discovered clusters shadowed by another owner.
    pub fn json(&self, conflicts: &[String]) -> Json {
        let now = unix_ms();
        let providers: Vec<Json> = self
            .providers
            .iter()
            .map(|p| {
                let s = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let services: serde_json::Map<String, Json> = s
                    .services
                    .iter()
                    .map(|(n, eps)| {
                        let b: Vec<Json> = eps
                            .iter()
                            .map(|e| json!({"addr": e.addr.to_string(), "weight": e.weight, "source": e.source}))
                            .collect();
                        (n.clone(), json!({ "backends": b }))
                    })
                    .collect();
                let ms = |v: u64| if v == 0 { Json::Null } else { json!(v) };
                json!({
                    "name": s.name,
                    "type": s.kind,
                    "source": s.source,
                    "state": s.state.as_str(),
                    "syncs": s.syncs,
                    "errors": s.errors,
                    "changes": s.changes,
                    "last_attempt_unix_ms": ms(s.last_attempt_ms),
                    "last_sync_unix_ms": ms(s.last_sync_ms),
                    "next_sync_in_ms": s.next_at_ms.saturating_sub(now),
                    "error": s.error,
                    "ttl_ms": s.ttl.map(|t| t.as_millis() as u64),
                    "skipped": s.skipped,
                    "conflicts": conflicts.iter().filter(|c| c.starts_with(&format!("{}:", s.name))).collect::<Vec<_>>(),
                    "services": services,
                })
            })
            .collect();
        json!({ "providers": providers })
    }
}

fn describe(p: &Provider) -> String {
    match p {
        Provider::Docker { socket, .. } => socket.display().to_string(),
        Provider::Dns(crate::config::discovery::DnsConfig { host, record, .. }) => match record {
            crate::config::discovery::DnsRecord::Addr => format!("{host} (A/AAAA)"),
            crate::config::discovery::DnsRecord::Srv => format!("{host} (SRV)"),
        },
        Provider::File { path, .. } => path.display().to_string(),
    }
}

/// Puts the discovered clusters into `cfg`, in provider order: a declared cluster's
/// placeholder is replaced, a new name appended. A name an operator cluster (or an earlier
/// provider) already has is left out and returned as a conflict (`provider: message`).
pub fn overlay(cfg: &mut Config, found: &HashMap<String, Vec<Found>>) -> Vec<String> {
    let mut conflicts = Vec::new();
    let order: Vec<String> = cfg.discovery.iter().map(|d| d.name.clone()).collect();
    for provider in &order {
        let Some(list) = found.get(provider) else {
            continue;
        };
        for f in list {
            let name = &f.cluster.name;
            match cfg.clusters.iter().position(|c| &c.name == name) {
                Some(i) if cfg.clusters[i].discovered.as_deref() == Some(provider.as_str()) => {
                    cfg.clusters[i] = f.cluster.clone();
                }
                Some(i) => conflicts.push(format!(
                    "{provider}: cluster {name:?} is left out: {} has that name",
                    match &cfg.clusters[i].discovered {
                        Some(other) => format!("discovery {other:?}"),
                        None => "a cluster of the operator (config file or admin API)".into(),
                    }
                )),
                None => cfg.clusters.push(f.cluster.clone()),
            }
        }
    }
    conflicts
}

/// The original FaaS gateway's `GET /stats` body:
/// `{"Data":{"ProviderName":"docker","Services":{"name":{"Name":..,"Port":..,"Alias":..}}}}`,
/// one service per discovered cluster with a backend. `Port` is the first backend's port;
/// `Replicas` and `Backends` are ours (we balance over every replica).
pub fn faas_stats_body(cfg: &Config) -> Arc<[u8]> {
    let mut kinds: Vec<&str> = Vec::new();
    for d in &cfg.discovery {
        if !kinds.contains(&d.provider.kind()) {
            kinds.push(d.provider.kind());
        }
    }
    let mut services = serde_json::Map::new();
    let mut shown: Vec<&ClusterConfig> = cfg
        .clusters
        .iter()
        .filter(|c| c.discovered.is_some() && !c.backends.is_empty())
        .collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    for c in shown {
        let backends: Vec<String> = c.backends.iter().map(|b| b.name.clone()).collect();
        services.insert(
            c.name.clone(),
            json!({
                "Name": c.name,
                "Port": c.backends[0].addr.port(),
                "Alias": c.name,
                "Replicas": backends.len(),
                "Backends": backends,
            }),
        );
    }
    let mut body = json!({"Data": {"ProviderName": kinds.join(","), "Services": services}});
    let mut v = serde_json::to_vec(&body).unwrap_or_default();
    // The answer goes out in one pool buffer (16 KiB by default): a long one drops the
    // backend lists, which the original did not have.
    if v.len() > FAAS_STATS_COMPACT {
        if let Some(Json::Object(m)) = body.pointer_mut("/Data/Services") {
            for s in m.values_mut() {
                if let Json::Object(o) = s {
                    o.remove("Backends");
                }
            }
        }
        v = serde_json::to_vec(&body).unwrap_or_default();
    }
    v.push(b'\n');
    v.into()
}

/// Above this many bytes, the FaaS `/stats` body leaves out the backend lists.
const FAAS_STATS_COMPACT: usize = 12 * 1024;

/// Answers `GET /stats` on a FaaS listener with `faas_stats = true`: the body to send, or
/// `None` for any other request. Called per request on such listeners: a comparison, no
/// allocation (the body was rendered when the snapshot was built).
#[inline]
pub fn faas_stats_answer<'a>(
    snap: &'a crate::snapshot::Snapshot,
    method: &[u8],
    target: &[u8],
) -> Option<&'a [u8]> {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    (method == b"GET" && path == b"/stats").then_some(&snap.faas_stats[..])
}

/// Exponential backoff after `failures` failures in a row: interval × 2^(failures-1),
/// at most `max` (and never below the interval).
pub fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    interval
        .saturating_mul(1u32 << shift)
        .min(max.max(interval))
}

/// Starts one thread per provider. Waits (at most `first_sync_wait`) for each to finish its
/// first look, so that a proxy that starts while its sources answer routes to them from the
/// first request.
pub fn start(
    control: Arc<Control>,
    cfgs: &[DiscoveryConfig],
    registry: &Registry,
    stop: Arc<AtomicBool>,
    first_sync_wait: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    let mut threads = Vec::new();
    for (d, status) in cfgs.iter().zip(&registry.providers) {
        let source: Box<dyn Source> = match &d.provider {
            Provider::Docker { socket, interval } => {
                Box::new(docker::DockerSource::new(socket.clone(), *interval))
            }
            Provider::Dns(c) => Box::new(dns::DnsSource::new(c.clone())),
            Provider::File {
                path,
                interval,
                format,
            } => Box::new(file::FileSource::new(path.clone(), *interval, *format)),
        };
        let runner = Runner {
            cfg: d.clone(),
            control: control.clone(),
            status: status.clone(),
            stop: stop.clone(),
            committed: None,
            failures: 0,
        };
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("discovery-{}", d.name))
                .spawn(move || runner.run(source, tx))?,
        );
    }
    drop(tx);
    let deadline = Instant::now() + first_sync_wait;
    for _ in 0..threads.len() {
        if rx.recv_deadline(deadline).is_err() {
            break;
        }
    }
    Ok(threads)
}

struct Runner {
    cfg: DiscoveryConfig,
    control: Arc<Control>,
    status: Arc<Mutex<Status>>,
    stop: Arc<AtomicBool>,
    /// The set last committed (`None` before the first commit).
    committed: Option<Vec<Found>>,
    failures: u32,
}

impl Runner {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(mut self, mut source: Box<dyn Source>, first: crossbeam_channel::Sender<()>) {
        let mut first = Some(first);
        while !self.stop.load(Ordering::Relaxed) {
            let wait = self.look(source.as_mut());
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            self.status().next_at_ms = unix_ms() + wait.as_millis() as u64;
            let until = Instant::now() + wait;
            // Sleep in short steps so shutdown is prompt.
            while !self.stop.load(Ordering::Relaxed) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
            }
        }
    }

    /// One look: fetch, validate, commit when changed. Returns the wait before the next.
    fn look(&mut self, source: &mut dyn Source) -> Duration {
        let interval = source.interval();
        self.status().last_attempt_ms = unix_ms();
        let result = source.fetch().and_then(|f| self.validate(f));
        match result {
            Ok((found, skipped, next, services)) => {
                if self.committed.as_ref() != Some(&found) {
                    if let Err(e) = self.control.set_discovered(&self.cfg.name, found.clone()) {
                        return self.failed(interval, format!("cannot apply: {}", e.message));
                    }
                    self.log_changes(&found);
                    self.committed = Some(found);
                    self.status().changes += 1;
                }
                let was_failing = self.failures > 0;
                self.failures = 0;
                if was_failing {
                    log::info!("discovery {}: recovered", self.cfg.name);
                }
                let mut st = self.status();
                if st.skipped != skipped {
                    for s in skipped.iter().filter(|s| !st.skipped.contains(s)) {
                        log::warn!("discovery {}: left out {s}", self.cfg.name);
                    }
                }
                st.state = SyncState::Ok;
                st.syncs += 1;
                st.last_sync_ms = unix_ms();
                st.error = None;
                st.skipped = skipped;
                st.services = services;
                st.ttl = next;
                next.unwrap_or(interval)
            }
            Err(e) => self.failed(interval, e),
        }
    }

    fn failed(&mut self, interval: Duration, e: String) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let kept = self.committed.as_ref().map_or(0, Vec::len);
        let mut st = self.status();
        if st.state != SyncState::Failing {
            log::warn!(
                "discovery {}: {e}; keeping the last good set ({kept} cluster(s)), retrying \
                 with backoff",
                self.cfg.name
            );
        } else if st.error.as_deref() != Some(e.as_str()) {
            log::debug!("discovery {}: still failing: {e}", self.cfg.name);
        }
        st.state = SyncState::Failing;
        st.errors += 1;
        st.error = Some(e);
        backoff(interval, self.failures, self.cfg.backoff_max)
    }

    /// Services → validated clusters (sorted, so an unchanged set compares equal).
    #[allow(clippy::type_complexity)]
    fn validate(
        &self,
        f: Fetched,
    ) -> Result<
        (
            Vec<Found>,
            Vec<String>,
            Option<Duration>,
            BTreeMap<String, Vec<Endpoint>>,
        ),
        String,
    > {
        let mut skipped = f.skipped;
        let mut found = Vec::with_capacity(f.services.len());
        let mut services = BTreeMap::new();
        for mut s in f.services {
            s.backends.sort();
            s.backends.dedup_by(|a, b| a.addr == b.addr);
            let values = s
                .backends
                .iter()
                .map(|e| backend_value(e.addr, e.weight))
                .collect();
            let table = cluster_table(&self.cfg, &s.name, values, s.extra.as_ref());
            match build_cluster(&self.cfg, &format!("cluster {:?}", s.name), table.clone()) {
                Ok(cluster) => {
                    services.insert(s.name.clone(), s.backends);
                    found.push(Found { table, cluster });
                }
                Err(errs) => {
                    let msg = errs
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    if f.strict {
                        return Err(msg);
                    }
                    skipped.push(msg);
                }
            }
        }
        found.sort_by(|a, b| a.cluster.name.cmp(&b.cluster.name));
        skipped.sort();
        Ok((found, skipped, f.next, services))
    }

    fn log_changes(&self, found: &[Found]) {
        let before: HashMap<&str, &ClusterConfig> = self
            .committed
            .iter()
            .flatten()
            .map(|f| (f.cluster.name.as_str(), &f.cluster))
            .collect();
        for f in found {
            let c = &f.cluster;
            if before.get(c.name.as_str()) != Some(&c) {
                log::info!(
                    "discovery {}: cluster {} has {} backend(s): {}",
                    self.cfg.name,
                    c.name,
                    c.backends.len(),
                    c.backends
                        .iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        for name in before.keys() {
            if !found.iter().any(|f| f.cluster.name == *name) {
                log::info!("discovery {}: cluster {name} is gone", self.cfg.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        let steps: Vec<u64> = (1..=7).map(|f| backoff(s, f, cap).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(s, u32::MAX, cap), cap);
        // A cap below the interval never makes retries faster than normal looks.
        assert_eq!(
            backoff(Duration::from_secs(5), 3, s),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn overlay_replaces_placeholders_and_reports_conflicts() {
        let mut cfg = crate::config::parse_str(
            r#"
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
protocol = "http"
faas = true
[[clusters]]
name = "mine"
backends = ["127.0.0.1:1"]
[[discovery]]
type = "file"
path = "/x.json"
clusters = ["a"]
"#,
        )
        .expect("valid");
        let d = cfg.discovery[0].clone();
        let mk = |name: &str, port: u16| {
            let t = cluster_table(
                &d,
                name,
                vec![backend_value(SocketAddr::from(([127, 0, 0, 1], port)), 1)],
                None,
            );
            Found {
                cluster: build_cluster(&d, name, t.clone()).expect("valid"),
                table: t,
            }
        };
        let mut found = HashMap::new();
        found.insert(
            "file".to_string(),
            vec![mk("a", 2), mk("mine", 3), mk("new", 4)],
        );
        let conflicts = overlay(&mut cfg, &found);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(conflicts[0].contains("\"mine\""));
        assert_eq!(cfg.cluster("a").unwrap().backends.len(), 1);
        assert_eq!(cfg.cluster("mine").unwrap().backends[0].addr.port(), 1);
        assert_eq!(
            cfg.cluster("new").unwrap().discovered.as_deref(),
            Some("file")
        );
        let body = String::from_utf8(faas_stats_body(&cfg).to_vec()).unwrap();
        let v: Json = serde_json::from_str(&body).unwrap();
        assert_eq!(v["Data"]["ProviderName"], "file");
        assert_eq!(v["Data"]["Services"]["new"]["Port"], 4);
        assert!(v["Data"]["Services"].get("mine").is_none());

        // Many services: the backend lists go, so the answer fits a pool buffer.
        let many: Vec<Found> = (0..200).map(|i| mk(&format!("svc{i}"), 1000 + i)).collect();
        found.insert("file".to_string(), many);
        overlay(&mut cfg, &found);
        let body = faas_stats_body(&cfg);
        assert!(body.len() < 16 * 1024, "{}", body.len());
        let v: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Data"]["Services"]["svc7"]["Port"], 1007);
        assert!(v["Data"]["Services"]["svc7"].get("Backends").is_none());
    }
}
