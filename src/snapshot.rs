//! The routing state as one immutable [`Snapshot`] behind an `ArcSwap`.
//!
//! Writers (today the config loader; later the admin API, SIGHUP reload and health checker)
//! build a complete new snapshot and publish it with one `store`. Workers `load` it once per
//! new connection, so a connection keeps the snapshot (and therefore the backend list) it
//! started with. Never split related state across two swaps.

use crate::config::{BalanceKind, Config, HashOn, HttpListenerConfig, Protocol};
use crate::http::head::Limits;
use crate::routing::CompiledRoute;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Live per-backend figures that every worker updates (once per connection, never per byte).
/// Shared across snapshots so a swap does not reset them.
#[derive(Debug, Default)]
pub struct BackendLive {
    pub active: AtomicU32,
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
    pub backends: Vec<Backend>,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

#[derive(Debug)]
pub struct ListenerRoute {
    pub name: String,
    pub protocol: Protocol,
    /// Index into `Snapshot::clusters`: the target of tcp/foo listeners (always set for them),
    /// the fallback of http listeners.
    pub cluster: Option<usize>,
    pub idle_timeout: Duration,
    /// http: tried in order before FaaS routing and the fallback.
    pub routes: Vec<CompiledRoute>,
    pub faas: bool,
    pub http: HttpListenerConfig,
    /// Parse limits derived from `http`.
    pub limits: Limits,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub listeners: Vec<ListenerRoute>,
    pub clusters: Vec<Cluster>,
    /// Cluster name → index (FaaS routing looks clusters up by name per request).
    pub cluster_index: HashMap<String, usize>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config. `prev` lends its live counters to backends
    /// that survive the change (same cluster name and address).
    pub fn build(cfg: &Config, version: u64, prev: Option<&Snapshot>) -> Snapshot {
        let clusters: Vec<Cluster> = cfg
            .clusters
            .iter()
            .map(|c| Cluster {
                name: c.name.clone(),
                balance: c.balance,
                hash_on: c.hash_on.clone(),
                connect_timeout: c.connect_timeout,
                connect_attempts: c.connect_attempts,
                first_byte_timeout: c.first_byte_timeout,
                idle_timeout: c.idle_timeout,
                pool_idle_timeout: c.pool_idle_timeout,
                pool_max_idle: c.pool_max_idle,
                backends: c
                    .backends
                    .iter()
                    .map(|b| Backend {
                        name: b.name.clone(),
                        addr: b.addr,
                        weight: b.weight,
                        live: prev
                            .and_then(|p| p.find_backend(&c.name, b.addr))
                            .map(|old| old.live.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        let cluster_index: HashMap<String, usize> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        // Validation guarantees that every cluster a listener or route names exists.
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| ListenerRoute {
                name: l.name.clone(),
                protocol: l.protocol,
                cluster: l
                    .cluster
                    .as_ref()
                    .and_then(|c| cluster_index.get(c).copied()),
                idle_timeout: l.idle_timeout,
                routes: l
                    .routes
                    .iter()
                    .filter_map(|r| CompiledRoute::compile(r, &cluster_index))
                    .collect(),
                faas: l.faas,
                http: l.http.clone(),
                limits: Limits {
                    max_head_bytes: l.http.max_header_bytes,
                    max_headers: l.http.max_headers,
                    max_uri_bytes: l.http.max_uri_bytes,
                },
            })
            .collect();
        Snapshot {
            version,
            listeners,
            clusters,
            cluster_index,
        }
    }

    fn find_backend(&self, cluster: &str, addr: SocketAddr) -> Option<&Backend> {
        self.clusters
            .iter()
            .find(|c| c.name == cluster)?
            .backends
            .iter()
            .find(|b| b.addr == addr)
    }
}

pub fn shared(s: Snapshot) -> SharedSnapshot {
    Arc::new(ArcSwap::from_pointee(s))
}
