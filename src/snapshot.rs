//! The routing state as one immutable [`Snapshot`] behind an `ArcSwap`.
//!
//! The control plane (`control::Control`: config loads and reloads, the admin API, health
//! verdicts, slow-start steps) builds a complete new snapshot, including each cluster's
//! selection table (`balance::SelectionTable`, reused from the previous snapshot when the
//! cluster's backends did not change), and publishes it with one `store`. Workers `load` it
//! once per new connection (an HTTP keep-alive session once per request), so a connection
//! or request keeps the snapshot (and therefore the backend list and its numbering) it
//! started with. Never split related state across two swaps.

use crate::balance::SelectionTable;
use crate::config::{BalanceKind, Config, HashOn, HttpListenerConfig, Protocol};
use crate::http::head::Limits;
use crate::routing::{CompiledRoute, Target};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What active health checks last concluded about a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HealthState {
    #[default]
    Up,
    Down,
    /// Not checked yet (`init_state = "unknown"`): out of rotation until the first check.
    Unknown,
}

/// Health by (cluster name, backend address); absent means up.
pub type HealthMap = HashMap<(String, SocketAddr), HealthState>;

/// Snapshot weights are config weights × this, so a backend in slow start can hold a
/// fraction of a weight-1 share.
pub const WEIGHT_SCALE: u32 = 100;

/// Runtime state that shapes a snapshot besides the config.
#[derive(Debug, Default)]
pub struct Runtime {
    pub health: HealthMap,
    /// Backends in slow start: the fraction (0..1) of their weight they carry now.
    pub ramp: HashMap<(String, SocketAddr), f64>,
    /// Loaded TLS material of listeners and clusters (by name).
    pub tls: crate::tls::Store,
}

/// Live per-backend figures that every worker updates (once per connection, never per byte).
/// Shared across snapshots so a swap does not reset them.
#[derive(Debug, Default)]
pub struct BackendLive {
    pub active: AtomicU32,
    /// The last active health check: 0 none yet, 1 passed, 2 failed.
    pub last_check: std::sync::atomic::AtomicU8,
    /// When it ended (unix milliseconds).
    pub last_check_at_ms: std::sync::atomic::AtomicU64,
    /// Passive outlier detection ejected it until then (unix milliseconds; set by the worker
    /// that ejected it, once per ejection; the latest ejection wins).
    pub ejected_until_ms: std::sync::atomic::AtomicU64,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub live: Arc<BackendLive>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub balance: BalanceKind,
    pub hash_on: Option<HashOn>,
    /// Backends in rotation: what the balancers pick from (indices are into this list).
    pub backends: Vec<Backend>,
    /// The selection table for `backends` (Maglev table, weight sums, addresses), built here
    /// once for every worker; shared with the previous snapshot when `backends` kept what it
    /// depends on.
    pub table: Arc<SelectionTable>,
    /// Draining backends: no new connections or requests; shown by the admin API and stats.
    pub draining: Vec<Backend>,
    /// Backends their health checks took down (out of rotation).
    pub down: Vec<Backend>,
    /// Backends not checked yet (out of rotation until their first check passes).
    pub unknown: Vec<Backend>,
    /// Every backend in rotation is down: fail open, and send traffic to all of them anyway
    /// (`backends` then holds them all and `down` is empty).
    pub panic: bool,
    pub outlier: Option<crate::config::resilience::OutlierConfig>,
    pub retry: crate::config::resilience::RetryPolicy,
    pub limits: crate::config::resilience::ClusterLimits,
    /// The queue for connection slots (`limits`) every worker shares; kept across snapshots
    /// by cluster name.
    pub queue: Arc<crate::worker::SlotQueue>,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// TLS to the backends.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// A PROXY protocol header starts every upstream connection.
    pub send_proxy: Option<crate::proto::proxy_protocol::Version>,
}

#[derive(Debug)]
pub struct ListenerRoute {
    pub name: String,
    pub protocol: Protocol,
    /// Index into `Snapshot::clusters`: the target of tcp/foo listeners (always set for them),
    /// the fallback of http listeners.
    pub cluster: Option<usize>,
    /// http: the fallback when no route matches (a cluster, as `cluster`, or a service).
    pub target: Option<Target>,
    pub idle_timeout: Duration,
    /// http: tried in order before FaaS routing and the fallback.
    pub routes: Vec<CompiledRoute>,
    pub faas: bool,
    /// FaaS: `GET /stats` answers [`Snapshot::faas_stats`].
    pub faas_stats: bool,
    pub http: HttpListenerConfig,
    /// Parse limits derived from `http`.
    pub limits: Limits,
    pub max_connections: Option<u32>,
    /// Open client connections (all workers); shared across snapshots by listener name.
    pub live: Arc<ListenerLive>,
    /// TLS termination.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Connections start with a PROXY protocol header.
    pub accept_proxy: Option<crate::config::tls::AcceptProxy>,
    /// L4 fault toxics: set when the listener has toxics (or is a toxiproxy proxy); new
    /// connections then go through them. Shared across snapshots by listener name.
    pub toxics: Option<Arc<crate::faults::ToxicCell>>,
}

/// Live figures of a listener that every worker updates once per connection.
#[derive(Debug, Default)]
pub struct ListenerLive {
    pub active: AtomicU32,
}

#[derive(Debug)]
pub struct Snapshot {
    /// Generation: bumped by every publish (config change, health change, slow-start step).
    /// Workers point their per-cluster pick state at the new selection tables when it moves
    /// (`balance::PickState::follow`: no table is built in a worker).
    pub version: u64,
    /// Indexed by listener slot. A slot is the listener's index in the workers' socket table
    /// and its token; removed listeners leave `None` until the slot is reused.
    pub listeners: Vec<Option<ListenerRoute>>,
    pub clusters: Vec<Cluster>,
    /// Cluster name → index (FaaS routing looks clusters up by name per request).
    pub cluster_index: HashMap<String, usize>,
    /// Versioned services with their release strategies ([`crate::release`]).
    pub services: Vec<crate::release::Service>,
    pub service_index: HashMap<String, usize>,
    /// Identifies the numbering of listeners, clusters and backends in rotation: snapshots
    /// with the same layout index them the same way (a weight change or a slow-start step
    /// keeps it; adding, removing, draining a backend or a health verdict changes it). Per
    /// worker stats are kept per layout rather than per snapshot.
    pub layout: u64,
    /// The `GET /stats` body of FaaS listeners with `faas_stats` (the original gateway's
    /// discovery JSON), rendered by the control plane when it builds the snapshot.
    pub faas_stats: Arc<[u8]>,
    /// L7 faults (rules, header-triggered faults, the chaos broker): `None` when none is set,
    /// which is the one check a request pays.
    pub faults: Option<Arc<crate::faults::L7Table>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config, listener `i` in slot `i`. `prev` lends its
    /// live counters to backends that survive the change (same cluster name and address).
    pub fn build(cfg: &Config, version: u64, prev: Option<&Snapshot>) -> Snapshot {
        let slots: Vec<usize> = (0..cfg.listeners.len()).collect();
        Snapshot::build_with_slots(cfg, version, prev, &slots, &Runtime::default())
    }

    /// As [`Snapshot::build`], with `slots[i]` the slot of `cfg.listeners[i]`.
    pub fn build_with_slots(
        cfg: &Config,
        version: u64,
        prev: Option<&Snapshot>,
        slots: &[usize],
        rt: &Runtime,
    ) -> Snapshot {
        let health = &rt.health;
        let backend =
            |c: &crate::config::ClusterConfig, b: &crate::config::BackendConfig| Backend {
                name: b.name.clone(),
                addr: b.addr,
                // Round robin ignores configured weights: equal weights, so only a slow
                // start can make them differ (its balancer then honours the ramp).
                weight: {
                    let w = if c.balance == BalanceKind::RoundRobin {
                        WEIGHT_SCALE
                    } else {
                        b.weight * WEIGHT_SCALE
                    };
                    match rt.ramp.get(&(c.name.clone(), b.addr)) {
                        Some(f) => ((f64::from(w) * f.clamp(0.0, 1.0)) as u32).max(1),
                        None => w,
                    }
                },
                live: prev
                    .and_then(|p| p.find_backend(&c.name, b.addr))
                    .map(|old| old.live.clone())
                    .unwrap_or_default(),
            };
        let clusters: Vec<Cluster> = cfg
            .clusters
            .iter()
            .map(|c| {
                let state = |b: &crate::config::BackendConfig| {
                    health
                        .get(&(c.name.clone(), b.addr))
                        .copied()
                        .unwrap_or_default()
                };
                let mut backends: Vec<Backend> = Vec::new();
                let mut down: Vec<Backend> = Vec::new();
                let mut unknown: Vec<Backend> = Vec::new();
                for b in c.backends.iter().filter(|b| !b.drain) {
                    match state(b) {
                        HealthState::Up => backends.push(backend(c, b)),
                        HealthState::Down => down.push(backend(c, b)),
                        HealthState::Unknown => unknown.push(backend(c, b)),
                    }
                }
                let panic = backends.is_empty() && !(down.is_empty() && unknown.is_empty());
                if panic {
                    backends = std::mem::take(&mut down);
                    backends.append(&mut unknown);
                }
                let before = prev.and_then(|p| p.cluster(&c.name));
                let table = SelectionTable::reuse_or_build(
                    &c.name,
                    c.balance,
                    &backends,
                    before.map(|b| (&b.table, &b.backends[..])),
                );
                Cluster {
                    table,
                    name: c.name.clone(),
                    balance: c.balance,
                    hash_on: c.hash_on.clone(),
                    connect_timeout: c.connect_timeout,
                    connect_attempts: c.connect_attempts,
                    first_byte_timeout: c.first_byte_timeout,
                    idle_timeout: c.idle_timeout,
                    pool_idle_timeout: c.pool_idle_timeout,
                    pool_max_idle: c.pool_max_idle,
                    backends,
                    draining: c
                        .backends
                        .iter()
                        .filter(|b| b.drain)
                        .map(|b| backend(c, b))
                        .collect(),
                    down,
                    unknown,
                    panic,
                    outlier: c.outlier.clone(),
                    retry: c.retry.clone(),
                    limits: c.limits.clone(),
                    queue: before.map(|b| b.queue.clone()).unwrap_or_default(),
                    tls: rt.tls.clusters.get(&c.name).cloned(),
                    send_proxy: c.send_proxy,
                }
            })
            .collect();
        let cluster_index: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let now = std::time::Instant::now();
        let services: Vec<crate::release::Service> = cfg
            .services
            .iter()
            .filter_map(|s| {
                let old = prev.and_then(|p| p.service(&s.name));
                crate::release::Service::build(s, &cluster_index, old, now)
            })
            .collect();
        let service_index: HashMap<String, usize> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        // Validation guarantees that every cluster a listener or route names exists.
        let mut listeners: Vec<Option<ListenerRoute>> = Vec::new();
        for (l, &slot) in cfg.listeners.iter().zip(slots) {
            let route = ListenerRoute {
                name: l.name.clone(),
                protocol: l.protocol,
                cluster: l
                    .cluster
                    .as_ref()
                    .and_then(|c| cluster_index.get(c).copied()),
                target: Target::resolve(
                    l.cluster.as_deref(),
                    l.service.as_deref(),
                    &cluster_index,
                    &service_index,
                ),
                idle_timeout: l.idle_timeout,
                routes: l
                    .routes
                    .iter()
                    .filter_map(|r| CompiledRoute::compile(r, &cluster_index, &service_index))
                    .collect(),
                faas: l.faas,
                faas_stats: l.faas_stats,
                http: l.http.clone(),
                limits: Limits {
                    max_head_bytes: l.http.max_header_bytes,
                    max_headers: l.http.max_headers,
                    max_uri_bytes: l.http.max_uri_bytes,
                },
                max_connections: l.max_connections,
                live: prev
                    .and_then(|p| p.listeners.iter().flatten().find(|o| o.name == l.name))
                    .map(|o| o.live.clone())
                    .unwrap_or_default(),
                tls: rt.tls.listeners.get(&l.name).cloned(),
                accept_proxy: l.accept_proxy.clone(),
                toxics: None,
            };
            if listeners.len() <= slot {
                listeners.resize_with(slot + 1, || None);
            }
            listeners[slot] = Some(route);
        }
        // Which clusters serve requests directly (not only through a service version).
        let mut direct = vec![false; clusters.len()];
        for l in listeners.iter().flatten() {
            if l.faas {
                direct.iter_mut().for_each(|d| *d = true);
            }
            let targets = l.routes.iter().map(|r| r.target).chain(l.target);
            for t in targets {
                if let Target::Cluster(c) = t {
                    if let Some(d) = direct.get_mut(c) {
                        *d = true;
                    }
                }
            }
            if let Some(d) = l.cluster.and_then(|c| direct.get_mut(c)) {
                *d = true;
            }
        }
        let mut services = services;
        crate::release::service::mark_shared(&mut services, &direct);
        let layout = layout_of(&listeners, &clusters, &services);
        Snapshot {
            version,
            listeners,
            clusters,
            cluster_index,
            services,
            service_index,
            layout,
            faas_stats: Arc::from(&b""[..]),
            faults: None,
        }
    }

    /// The listener in `slot`, if there is one.
    #[inline]
    pub fn listener(&self, slot: usize) -> Option<&ListenerRoute> {
        self.listeners.get(slot)?.as_ref()
    }

    pub fn service(&self, name: &str) -> Option<&crate::release::Service> {
        self.services.get(*self.service_index.get(name)?)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(*self.cluster_index.get(name)?)
    }

    pub fn find_backend(&self, cluster: &str, addr: SocketAddr) -> Option<&Backend> {
        let c = self.cluster(cluster)?;
        c.backends
            .iter()
            .chain(&c.draining)
            .chain(&c.down)
            .chain(&c.unknown)
            .find(|b| b.addr == addr)
    }
}

/// FNV-1a over the names and addresses that decide the indices (see [`Snapshot::layout`]).
fn layout_of(
    listeners: &[Option<ListenerRoute>],
    clusters: &[Cluster],
    services: &[crate::release::Service],
) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3); // separator
    };
    for l in listeners {
        eat(l.as_ref().map_or(b"-", |l| l.name.as_bytes()));
    }
    for c in clusters {
        eat(c.name.as_bytes());
        for b in &c.backends {
            eat(b.addr.to_string().as_bytes());
        }
        eat(if c.panic { b"panic" } else { b"ok" });
    }
    // Per-version stats are indexed by (service, version in version order); a version alone
    // on its cluster takes the cluster's counters at flush, so its cluster and whether it
    // shares it are part of the layout too.
    for s in services {
        eat(s.name.as_bytes());
        for v in &s.versions {
            eat(&v.id);
            eat(&(v.cluster as u64).to_le_bytes());
            eat(&[u8::from(v.shares_cluster)]);
        }
    }
    h
}

pub fn shared(s: Snapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const CFG: &str = r#"
        [[listeners]]
        name = "l"
        bind = "127.0.0.1:0"
        cluster = "h"

        [[clusters]]
        name = "h"
        balance = "hash"
        hash_on = "client_ip"
        backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]

        [[clusters]]
        name = "rr"
        balance = "round_robin"
        backends = ["127.0.0.1:9101", "127.0.0.1:9102"]

        [[clusters]]
        name = "lc"
        balance = "least_conn"
        backends = ["127.0.0.1:9201", "127.0.0.1:9202"]
    "#;

    fn down(cluster: &str, port: u16) -> Runtime {
        let mut rt = Runtime::default();
        rt.health.insert(
            (cluster.to_string(), ([127, 0, 0, 1], port).into()),
            HealthState::Down,
        );
        rt
    }

    fn ramp(cluster: &str, port: u16, f: f64) -> Runtime {
        let mut rt = Runtime::default();
        rt.ramp
            .insert((cluster.to_string(), ([127, 0, 0, 1], port).into()), f);
        rt
    }

    #[test]
    fn tables_are_built_once_and_reused_while_their_backends_stay() {
        let cfg = parse_str(CFG).expect("config");
        let slots = [0];
        let build = |v, prev: Option<&Snapshot>, rt: &Runtime| {
            Snapshot::build_with_slots(&cfg, v, prev, &slots, rt)
        };
        let s1 = build(1, None, &Runtime::default());
        let t = |s: &Snapshot, c: &str| s.cluster(c).expect("cluster").table.clone();
        assert_eq!(t(&s1, "h").maglev().map(|m| m.table_len()), Some(65_537));
        // A health flap in another cluster: the Maglev table is shared, not rebuilt.
        let s2 = build(2, Some(&s1), &down("rr", 9102));
        assert!(Arc::ptr_eq(&t(&s1, "h"), &t(&s2, "h")));
        assert!(Arc::ptr_eq(&t(&s1, "lc"), &t(&s2, "lc")));
        assert!(!Arc::ptr_eq(&t(&s1, "rr"), &t(&s2, "rr")));
        assert_eq!(t(&s2, "rr").len(), 1);
        // A slow-start step of a least-connections backend keeps its table; a hash
        // cluster's step rebuilds its (in the control plane, once for every worker).
        let s3 = build(3, Some(&s2), &ramp("lc", 9202, 0.5));
        let s4 = build(4, Some(&s3), &ramp("lc", 9202, 0.6));
        assert_eq!(s4.cluster("lc").unwrap().backends[1].weight, 60);
        assert!(Arc::ptr_eq(&t(&s2, "lc"), &t(&s4, "lc")));
        let s5 = build(5, Some(&s4), &ramp("h", 9003, 0.5));
        assert!(!Arc::ptr_eq(&t(&s4, "h"), &t(&s5, "h")));
        // The same inputs again: shared.
        let s6 = build(6, Some(&s5), &ramp("h", 9003, 0.5));
        assert!(Arc::ptr_eq(&t(&s5, "h"), &t(&s6, "h")));
        // Every cluster's table numbers its backends as the snapshot does.
        for s in [&s1, &s2, &s3, &s4, &s5, &s6] {
            for c in &s.clusters {
                let addrs: Vec<_> = (0..c.table.len()).filter_map(|i| c.table.addr(i)).collect();
                let want: Vec<_> = c.backends.iter().map(|b| b.addr).collect();
                assert_eq!(addrs, want, "{}", c.name);
                assert_eq!(c.table.cluster(), c.name);
            }
        }
    }
}
