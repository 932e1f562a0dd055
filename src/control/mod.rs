//! The control plane: every change to the running configuration goes through [`Control`].
//!
//! One path for all writers (admin API, SIGHUP reload): edit a copy of the raw document →
//! validate the whole result exactly like a file → bind the sockets of new listeners → build a
//! new [`Snapshot`] → persist to `state_dir` → one `ArcSwap` store → hand the new sockets to
//! the workers. A change that fails any step before the store changes nothing; a change that
//! cannot be persisted is not applied (so an acknowledged change always survives a restart).
//!
//! Existing connections keep the snapshot they were routed with: TCP sessions for their
//! lifetime, HTTP keep-alive sessions until their next request. Nothing here closes a
//! connection.

pub mod doc;
pub mod persist;

use crate::config::{self, Config, ConfigError};
use crate::discovery::Found;
use crate::snapshot::{HealthMap, HealthState, Runtime, SharedSnapshot, Snapshot};
use crate::worker::{Ctrl, WorkerHandle};
use doc::Kind;
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use toml::{Table, Value};

/// An API-level failure: HTTP status, a stable code, a message and the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn field(mut self, f: impl Into<String>) -> ApiError {
        self.field = Some(f.into());
        self
    }
    fn not_found(kind: &str, name: &str) -> ApiError {
        ApiError::new(404, "not_found", format!("no {kind} named {name:?}"))
    }
}

/// An `If-Match` precondition (RFC 9110 §13.1.1): the change goes ahead only when the running
/// config version is one of `versions`. Tags that are not one of our version ETags (a
/// `"stale-version"` from somewhere else) match nothing, so a header holding only such tags
/// fails with 412, as a stale version does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfMatch {
    pub versions: Vec<u64>,
    /// The header as sent, for the error message.
    pub raw: String,
}

impl IfMatch {
    fn check(&self, running: u64) -> Result<(), ApiError> {
        if self.versions.contains(&running) {
            return Ok(());
        }
        let message = if self.versions.is_empty() {
            format!(
                "If-Match {:?} names no version of this config; the running config is version \
                 {running} (ETag \"{running}\")",
                self.raw
            )
        } else {
            format!(
                "If-Match names version {}, the running config is version {running}",
                self.raw.trim().trim_start_matches("W/").trim_matches('"')
            )
        };
        Err(ApiError::new(412, "version_mismatch", message))
    }
}

/// One change requested through the API. Bodies are the JSON the client sent.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Kind, String, Json),
    Delete(Kind, String),
    AddBackend {
        cluster: String,
        body: Json,
    },
    PatchBackend {
        cluster: String,
        addr: String,
        body: Json,
    },
    DeleteBackend {
        cluster: String,
        addr: String,
    },
    /// Versions, promotion and rollback of a service ([`crate::release::api`]).
    Service {
        name: String,
        op: crate::release::api::ServiceOp,
    },
}

impl Change {
    fn describe(&self) -> String {
        match self {
            Change::Put(k, n, _) => format!("put {} {n}", k.noun()),
            Change::Delete(k, n) => format!("delete {} {n}", k.noun()),
            Change::AddBackend { cluster, body } => format!(
                "add backend {} to cluster {cluster}",
                body.get("addr").and_then(Json::as_str).unwrap_or("?")
            ),
            Change::PatchBackend {
                cluster,
                addr,
                body,
            } => format!("patch backend {addr} of cluster {cluster}: {body}"),
            Change::DeleteBackend { cluster, addr } => {
                format!("delete backend {addr} of cluster {cluster}")
            }
            Change::Service { name, op } => op.describe(name),
        }
    }
}

/// A successful change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    /// The object did not exist before (answered 201).
    pub created: bool,
}

/// A listener the workers accept on.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    pub slot: usize,
    pub bind: SocketAddr,
    pub local: SocketAddr,
}

/// One backend's health-check record (kept while the backend exists).
#[derive(Debug, Clone, Default)]
pub struct CheckRecord {
    pub state: HealthState,
    /// The last check: passed, what happened, when (unix ms), how long it took.
    pub last_ok: Option<bool>,
    pub last_detail: String,
    pub last_at_ms: u64,
    pub last_took_ms: f64,
}

/// A backend the health checker must probe.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub cluster: String,
    pub backend: SocketAddr,
    pub check: crate::config::health::HealthConfig,
}

struct State {
    /// Config version (ETags, If-Match): bumped by config changes only.
    version: u64,
    /// Snapshot generation: bumped by every publish, health changes included.
    generation: u64,
    /// Listener slots of `config.listeners`, in order.
    slots: Vec<usize>,
    health: HashMap<(String, SocketAddr), CheckRecord>,
    /// Backends in slow start, since when.
    ramps: HashMap<(String, SocketAddr), Instant>,
    /// The state files (with `server.state_dir`).
    store: Option<persist::Store>,
    /// The config file the running state derives from (base of the three-way merge).
    file: Table,
    /// The running document: server + listeners + clusters.
    doc: Table,
    config: Config,
    running: HashMap<String, Running>,
    /// A duplicate of every running listener's sockets (one per worker), kept to hand them to
    /// the successor of a binary upgrade.
    sockets: HashMap<String, Vec<std::net::TcpListener>>,
    /// Changes are refused while set (an upgrade in progress or done), with this reason.
    frozen: Option<String>,
    /// Module records persisted with the document (see [`Txn`]).
    ext: Ext,
    /// What each discovery provider found, by provider name (not persisted: see
    /// [`Control::set_discovered`]).
    discovered: HashMap<String, Vec<Found>>,
    /// Discovered clusters left out because another owner has the name.
    conflicts: Vec<String>,
    /// Bumped by every commit, operator's or discovery's (the health checker re-reads
    /// its targets when it moves).
    commits: u64,
    /// The `GET /stats` body of FaaS listeners with `faas_stats`.
    faas_stats: Arc<[u8]>,
    /// Certificates and keys of the running config (read again at every reload).
    tls: crate::tls::Store,
    /// Fault injection (runtime only: never persisted; see [`crate::faults`]).
    faults: crate::faults::FaultState,
    /// Live toxic sets of the listeners that have (or had) toxics, by listener name.
    toxic_cells: HashMap<String, Arc<crate::faults::ToxicCell>>,
    /// The L7 fault table of the running snapshot.
    l7: Option<Arc<crate::faults::L7Table>>,
    /// Bumped by every fault commit (connections under toxics re-draw when it moves).
    fault_gen: u64,
    /// Listeners a fault took down, with the address they had (they come back on it).
    pins: HashMap<String, SocketAddr>,
}

/// Module records kept next to the config, by module name.
pub type Ext = serde_json::Map<String, Json>;

/// A change made by code rather than one API call (the LBaaS API): edits to a copy of the
/// running document and of the module records, committed together — one validation, one
/// persist, one snapshot swap — or not at all.
pub struct Txn<'a> {
    pub doc: Table,
    pub ext: Ext,
    /// The running config, before the change.
    pub config: &'a Config,
    pub running: &'a HashMap<String, Running>,
}

/// A consistent read of the running state.
pub struct View<'a> {
    pub version: u64,
    pub doc: &'a Table,
    pub config: &'a Config,
    pub ext: &'a Ext,
    pub running: &'a HashMap<String, Running>,
    pub health: &'a HashMap<(String, SocketAddr), CheckRecord>,
}

/// What start-up decided to run.
pub struct Boot {
    pub file: Table,
    pub doc: Table,
    pub config: Config,
    pub version: u64,
    /// Which state file holds the state restored (the next write goes to the other).
    pub newest_slot: Option<usize>,
    /// The TLS material the config names, loaded.
    pub tls: crate::tls::Store,
    /// Module records restored with the state.
    pub ext: Ext,
}

/// Merges the config file with the persisted runtime state (see [`doc::merge`]). A corrupt
/// state file, or one whose merge no longer validates, is reported and set aside; start-up
/// then runs the file alone.
pub fn boot(file: Table) -> Result<Boot, Vec<ConfigError>> {
    let mut b = boot_config(file)?;
    // Certificates and keys: a file that cannot be used stops the start (exit 64).
    b.tls = crate::tls::Store::load(&b.config, None, true)?;
    Ok(b)
}

fn boot_config(file: Table) -> Result<Boot, Vec<ConfigError>> {
    let config = config::parse_table(file.clone())?;
    let fresh = |config: Config| Boot {
        doc: file.clone(),
        file: file.clone(),
        config,
        version: 1,
        newest_slot: None,
        tls: crate::tls::Store::default(),
        ext: Ext::new(),
    };
    let Some(dir) = config.server.state_dir.clone() else {
        return Ok(fresh(config));
    };
    check_state_dir(&config)?;
    let loaded = persist::load(&dir);
    for problem in &loaded.problems {
        log::warn!("state file {problem}");
    }
    let Some((p, slot)) = loaded.found else {
        if !loaded.problems.is_empty() {
            log::warn!("no usable runtime state: starting from the config file alone");
        }
        return Ok(fresh(config));
    };
    let merged = doc::merge(&file, &p.file, &p.config);
    match config::parse_table(merged.clone()) {
        Ok(cfg) => {
            if merged != file {
                log::info!(
                    "restored runtime changes from {} (version {})",
                    persist::state_path(&dir, slot).display(),
                    p.version
                );
            }
            Ok(Boot {
                file: file.clone(),
                doc: merged,
                config: cfg,
                version: p.version + 1,
                newest_slot: Some(slot),
                tls: crate::tls::Store::default(),
                ext: p.ext,
            })
        }
        Err(errs) => {
            let moved = persist::set_aside(&persist::state_path(&dir, slot));
            log::warn!(
                "the persisted runtime state no longer fits the config file ({}); \
                 starting from the file alone{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                moved
                    .map(|p| format!(" (state moved to {})", p.display()))
                    .unwrap_or_default()
            );
            Ok(fresh(config))
        }
    }
}

/// `server.state_dir` must be usable before start-up goes on (see [`persist::check_dir`]);
/// `switchyard check` asks the same.
pub fn check_state_dir(config: &Config) -> Result<(), Vec<ConfigError>> {
    let Some(dir) = &config.server.state_dir else {
        return Ok(());
    };
    persist::check_dir(dir).map_err(|message| {
        vec![ConfigError {
            path: "server.state_dir".into(),
            message,
        }]
    })
}

/// Called after a reload with the new `[server]` settings (the ones a reload applies at once).
pub type ServerHook = Box<dyn Fn(&config::ServerConfig) + Send + Sync>;

/// `[server]` keys a reload applies at once; every other server setting waits for a restart.
pub const RELOADABLE_SERVER_KEYS: [&str; 3] = ["access_log", "connection_log", "log_level"];

pub struct Control {
    state: Mutex<State>,
    /// Rollbacks and promotions of services since start-up.
    releases: Arc<crate::release::api::Releases>,
    server_hook: std::sync::OnceLock<ServerHook>,
    shared: SharedSnapshot,
    workers: Vec<WorkerHandle>,
    state_dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
}

impl Control {
    pub fn new(
        boot: Boot,
        running: HashMap<String, Running>,
        sockets: HashMap<String, Vec<std::net::TcpListener>>,
        shared: SharedSnapshot,
        workers: Vec<WorkerHandle>,
        config_path: Option<PathBuf>,
    ) -> Control {
        let state_dir = boot.config.server.state_dir.clone();
        let store = state_dir
            .as_ref()
            .map(|d| persist::Store::new(d, boot.newest_slot));
        let slots = boot
            .config
            .listeners
            .iter()
            .map(|l| running.get(&l.name).map_or(0, |r| r.slot))
            .collect();
        let mut health = HashMap::new();
        add_unchecked(&boot.config, &mut health);
        let faas_stats = crate::discovery::faas_stats_body(&boot.config);
        let c = Control {
            releases: Arc::default(),
            state: Mutex::new(State {
                version: boot.version,
                generation: boot.version,
                commits: boot.version,
                discovered: HashMap::new(),
                conflicts: Vec::new(),
                faas_stats,
                tls: boot.tls,
                faults: crate::faults::FaultState::default(),
                toxic_cells: HashMap::new(),
                l7: None,
                fault_gen: 0,
                pins: HashMap::new(),
                slots,
                health,
                ramps: HashMap::new(),
                store,
                file: boot.file,
                doc: boot.doc,
                config: boot.config,
                running,
                sockets,
                frozen: None,
                ext: boot.ext,
            }),
            shared,
            workers,
            state_dir,
            config_path,
            server_hook: std::sync::OnceLock::new(),
        };
        // Backends not checked yet leave the rotation before anything is served.
        {
            let mut st = c.lock();
            if st.health.values().any(|r| r.state == HealthState::Unknown) {
                c.publish(&mut st);
            }
        }
        // Record what we run now, so a restart before any change still finds it.
        if let Some(dir) = &c.state_dir {
            let mut st = c.lock();
            let p = persist::Persisted::new(
                st.version,
                doc::objects_only(&st.file),
                doc::objects_only(&st.doc),
            )
            .with_ext(st.ext.clone());
            let saved = match st.store.as_mut() {
                Some(store) => store.save(&p),
                None => Ok(()),
            };
            if let Err(e) = saved {
                log::warn!(
                    "cannot write the state file in {}: {e} (runtime changes will be refused \
                     until it is writable)",
                    dir.display()
                );
            }
        } else {
            log::info!("server.state_dir is not set: runtime changes last until the next restart");
        }
        c
    }

    /// Registers what a reload calls with the new `[server]` settings (set once, at start).
    pub fn on_server_reload(&self, hook: ServerHook) {
        let _ = self.server_hook.set(hook);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (every commit
        // swaps fields only after all fallible steps), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The release history of services (rollbacks and promotions).
    pub fn releases(&self) -> Arc<crate::release::api::Releases> {
        self.releases.clone()
    }

    /// The routing snapshot now published.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    /// The running document as JSON, with its version.
    pub fn config_json(&self) -> (u64, Json) {
        let st = self.lock();
        let mut j = serde_json::to_value(&st.doc).unwrap_or(Json::Null);
        if let Json::Object(m) = &mut j {
            for k in ["listeners", "clusters", "services"] {
                m.entry(k).or_insert_with(|| Json::Array(Vec::new()));
            }
        }
        (st.version, j)
    }

    /// All objects of a kind, as JSON (listeners carry a read-only `status`).
    pub fn list(&self, kind: Kind) -> (u64, Vec<Json>) {
        let st = self.lock();
        let mut items: Vec<Json> = doc::objects(&st.doc, kind)
            .iter()
            .map(|v| self.with_status(object_json(&st, kind, v), kind))
            .collect();
        if kind == Kind::Cluster {
            for c in st.config.clusters.iter().filter(|c| c.discovered.is_some()) {
                if let Some(v) = discovered_table(&st, &c.name) {
                    items.push(object_json(&st, kind, &v));
                }
            }
        }
        (st.version, items)
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<(u64, Json), ApiError> {
        let st = self.lock();
        if let Some(v) = doc::find(&st.doc, kind, name) {
            return Ok((
                st.version,
                self.with_status(object_json(&st, kind, v), kind),
            ));
        }
        let v = (kind == Kind::Cluster)
            .then(|| discovered_table(&st, name))
            .flatten()
            .ok_or_else(|| ApiError::not_found(kind.noun(), name))?;
        Ok((st.version, object_json(&st, kind, &v)))
    }

    /// Replaces the clusters discovery provider `provider` found, through the same
    /// validate → build → swap path as an API change. The operator's document does not
    /// change: no new config version, nothing written to the state files (a discovered set
    /// is re-discovered at start-up rather than restored as if an operator had set it), and
    /// a reload keeps it.
    pub fn set_discovered(&self, provider: &str, found: Vec<Found>) -> Result<(), ApiError> {
        let mut st = self.lock();
        let d = st.doc.clone();
        self.commit(
            &mut st,
            d,
            None,
            None,
            Some((provider.to_string(), found)),
            None,
        )
        .map(|_| ())
    }

    /// Discovered clusters currently left out because another owner has the name.
    pub fn discovery_conflicts(&self) -> Vec<String> {
        self.lock().conflicts.clone()
    }

    /// Services carry their read-only release status.
    fn with_status(&self, mut j: Json, kind: Kind) -> Json {
        if kind == Kind::Service {
            let name = j
                .get("name")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string();
            if let Json::Object(m) = &mut j {
                let snap = self.shared.load();
                m.insert(
                    "status".into(),
                    crate::release::api::status_json(&snap, &self.releases, &name),
                );
            }
        }
        j
    }

    /// The running listeners' bound addresses (name → address).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.lock()
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.local))
            .collect()
    }

    /// Refuses every change (admin API, reload) with `why` until [`Control::thaw`]: a binary
    /// upgrade hands the running state over, so nothing may change it meanwhile.
    pub fn freeze(&self, why: String) {
        self.lock().frozen = Some(why);
    }

    pub fn thaw(&self) {
        self.lock().frozen = None;
    }

    /// Closes the duplicates kept for an upgrade: at shutdown, and once an upgrade handed the
    /// sockets over. A listening socket must close when the workers close theirs, or the
    /// kernel would keep queueing connections that nobody accepts.
    pub fn release_sockets(&self) {
        self.lock().sockets.clear();
    }

    /// The running listeners and duplicates of their sockets (for a binary upgrade).
    pub fn handover_sockets(
        &self,
    ) -> std::io::Result<Vec<(String, Running, Vec<std::os::fd::OwnedFd>)>> {
        let st = self.lock();
        let mut out = Vec::with_capacity(st.running.len());
        let mut names: Vec<&String> = st.running.keys().collect();
        names.sort_by_key(|n| st.running[*n].slot);
        for name in names {
            let socks = st.sockets.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let fds = socks
                .iter()
                .map(|s| s.try_clone().map(std::os::fd::OwnedFd::from))
                .collect::<std::io::Result<Vec<_>>>()?;
            out.push((name.clone(), st.running[name], fds));
        }
        Ok(out)
    }

    /// Applies one API change. `if_match`: the version the client last saw (412 if stale).
    pub fn apply(
        &self,
        change: Change,
        if_match: Option<&IfMatch>,
        who: &str,
    ) -> Result<Applied, ApiError> {
        let mut st = self.lock();
        if let Some(m) = if_match {
            m.check(st.version)?;
        }
        crate::lbaas::guard(&st.ext, &change)?;
        if let Some((cluster, provider)) = discovered_target(&st, &change) {
            return Err(ApiError::new(
                409,
                "discovered",
                format!(
                    "cluster {cluster:?} comes from discovery {provider:?}: change it at its \
                     source"
                ),
            ));
        }
        let mut d = st.doc.clone();
        let (created, target) = edit(&mut d, &st.config, &change)?;
        let target = target.and_then(|(kind, name)| {
            let i = doc::objects(&d, kind)
                .iter()
                .position(|v| doc::name_of(v) == Some(name.as_str()))?;
            Some(format!("{}[{i}]", kind.key()))
        });
        let what = change.describe();
        let old = st.version;
        let version = self
            .commit(&mut st, d, None, None, None, None)
            .map_err(|e| with_relative_field(e, target))?;
        if version == old {
            log::info!("audit: {who}: {what}: no change (version {version})");
        } else {
            log::info!("audit: {who}: {what}: version {old} -> {version}");
        }
        Ok(Applied { version, created })
    }

    /// The fault state (runtime only).
    pub fn faults(&self) -> crate::faults::FaultState {
        self.lock().faults.clone()
    }

    /// Changes the fault state through the same validate → bind → build → swap path as any
    /// change (not persisted, no new config version). `edit` gets a copy of the fault state
    /// and the operator's document; its error, or any failure after it, changes nothing.
    pub fn apply_faults<T>(
        &self,
        who: &str,
        what: &str,
        edit: impl FnOnce(&mut crate::faults::FaultState, &Table) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut st = self.lock();
        let mut fs = st.faults.clone();
        let out = edit(&mut fs, &st.doc)?;
        if fs == st.faults {
            return Ok(out);
        }
        let d = st.doc.clone();
        let was_up: Vec<String> = st.running.keys().cloned().collect();
        self.commit(&mut st, d, None, None, None, Some(fs))?;
        log::info!("audit: {who}: faults: {what}");
        if was_up.iter().any(|n| !st.running.contains_key(n)) {
            // A listener went down: answer once every worker has closed its socket, so the
            // port refuses connections when the client hears back (as toxiproxy's does).
            let (tx, rx) = crossbeam_channel::bounded(self.workers.len().max(1));
            for w in &self.workers {
                w.send(Ctrl::Barrier(tx.clone()));
            }
            for _ in &self.workers {
                if rx.recv_timeout(std::time::Duration::from_secs(2)).is_err() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// SIGHUP: reloads the config file through the same path. A bad file changes nothing.
    pub fn reload(&self) -> Result<u64, String> {
        self.reload_if(None).map_err(|e| e.message)
    }

    /// [`Control::reload`] for the API: 412 when `if_match` is stale, 422 when the file is bad.
    pub fn reload_if(&self, if_match: Option<&IfMatch>) -> Result<u64, ApiError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ApiError::new(
                409,
                "no_config_file",
                "no config file to reload (quick mode)",
            ));
        };
        let failed = |m: String| ApiError::new(422, "reload_failed", m);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        let shown = path.display().to_string();
        let join = |errs: Vec<ConfigError>| {
            config::with_file(errs, &shown)
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let new_file = config::parse_toml(&text).map_err(|e| failed(join(e)))?;
        // The file must be valid on its own, not only once merged.
        let file_cfg = config::parse_table(new_file.clone()).map_err(|e| failed(join(e)))?;
        let mut st = self.lock();
        if let Some(m) = if_match {
            m.check(st.version)?;
        }
        let restart_only = |s: &config::ServerConfig| config::ServerConfig {
            access_log: None,
            connection_log: None,
            log_level: None,
            ..s.clone()
        };
        if restart_only(&file_cfg.server) != restart_only(&st.config.server) {
            log::warn!(
                "reload: [server] settings changed in {}; they take effect at the next restart \
                 (only {} apply at once)",
                path.display(),
                RELOADABLE_SERVER_KEYS.join(", ")
            );
        }
        if file_cfg.discovery != st.config.discovery {
            log::warn!(
                "reload: [[discovery]] changed in {}; providers change at the next restart",
                path.display()
            );
        }
        let mut merged = doc::merge(&new_file, &st.file, &st.doc);
        // The running [server] table, with the keys a reload applies taken from the file.
        let mut server = st
            .doc
            .get("server")
            .and_then(Value::as_table)
            .cloned()
            .unwrap_or_default();
        let file_server = new_file.get("server").and_then(Value::as_table);
        for k in RELOADABLE_SERVER_KEYS {
            match file_server.and_then(|s| s.get(k)) {
                Some(v) => server.insert(k.into(), v.clone()),
                None => server.remove(k),
            };
        }
        if server.is_empty() {
            merged.remove("server");
        } else {
            merged.insert("server".into(), Value::Table(server));
        }
        // Like the rest of [server], the providers running now stay until a restart.
        match st.doc.get("discovery") {
            Some(d) => merged.insert("discovery".into(), d.clone()),
            None => merged.remove("discovery"),
        };
        for line in doc::overridden(&new_file, &st.file, &st.doc) {
            log::warn!("reload overrides a runtime change: {line}");
        }
        let old = st.version;
        let version = self.commit(&mut st, merged, Some(new_file), None, None, None)?;
        if version == old {
            log::info!(
                "audit: SIGHUP: reloaded {}: no change (version {version})",
                path.display()
            );
        } else {
            log::info!(
                "audit: SIGHUP: reloaded {}: version {old} -> {version}",
                path.display()
            );
        }
        if let Some(hook) = self.server_hook.get() {
            hook(&st.config.server);
        }
        Ok(version)
    }

    /// Runs `f` on a copy of the running document and module records, then commits both as
    /// one change (validated in full; `f`'s error, or a failed commit, changes nothing).
    /// `what` is the audit line's description.
    pub fn transact<T>(
        &self,
        who: &str,
        what: &str,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, ApiError>,
    ) -> Result<(T, u64), ApiError> {
        let mut st = self.lock();
        let mut txn = Txn {
            doc: st.doc.clone(),
            ext: st.ext.clone(),
            config: &st.config,
            running: &st.running,
        };
        let out = f(&mut txn)?;
        let (doc, ext) = (txn.doc, txn.ext);
        let old = st.version;
        let version = self.commit(&mut st, doc, None, Some(ext), None, None)?;
        log::info!("audit: {who}: {what}: version {old} -> {version}");
        Ok((out, version))
    }

    /// Reads the running state under the lock (keep `f` short: writers wait).
    pub fn view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        let st = self.lock();
        f(&View {
            version: st.version,
            doc: &st.doc,
            config: &st.config,
            ext: &st.ext,
            running: &st.running,
            health: &st.health,
        })
    }

    /// Validate → bind → build → persist → swap → hand sockets to workers. `new_ext`: new
    /// module records (None keeps them). `found`: a discovery provider's new set (then the
    /// document is unchanged: no new version, no write to the state files).
    fn commit(
        &self,
        st: &mut State,
        new_doc: Table,
        new_file: Option<Table>,
        new_ext: Option<Ext>,
        found: Option<(String, Vec<Found>)>,
        faults: Option<crate::faults::FaultState>,
    ) -> Result<u64, ApiError> {
        let fault_change = faults.is_some();
        let operator = found.is_none() && !fault_change;
        // Discovery keeps this process's routing current (it is not persisted, so a successor
        // finds for itself), and so do faults (runtime only); operator changes wait for the
        // upgrade.
        if let (true, Some(why)) = (operator, &st.frozen) {
            return Err(ApiError::new(409, "upgrade_in_progress", why.clone()));
        }
        let mut fs = faults.unwrap_or_else(|| st.faults.clone());
        // What runs: the operator's document with the faults' proxies added and the
        // listeners that are down taken out.
        let run_doc = if fs.proxies.is_empty()
            && fs.listeners.values().all(|l| l.enabled)
            && st.pins.is_empty()
        {
            new_doc.clone()
        } else {
            fs.overlay_doc(&new_doc, &st.pins)
        };
        let mut cfg = config::parse_table(run_doc).map_err(|errs| {
            let e = invalid(&errs);
            if fault_change {
                ApiError::new(400, "bad_fault", e.message)
            } else {
                e
            }
        })?;
        if fault_change {
            fs.validate(&cfg, &new_doc)?;
        } else {
            fs.prune(&cfg, &new_doc);
        }
        // An operator's change or a reload reads the certificate files again (renewed ones
        // take effect); a discovery update keeps what is loaded. A file that cannot be used
        // refuses the change, and the running certificates stay.
        let tls = crate::tls::Store::load(&cfg, Some(&st.tls), operator)
            .map_err(|errs| invalid(&errs))?;
        if operator && new_doc == st.doc && !tls.same_as(&st.tls) {
            // Same config, new certificate files: new connections use them, live ones keep
            // the certificates they were accepted with.
            st.tls = tls.clone();
            self.publish(st);
            log::info!("certificates reloaded: new connections use the new files");
        }
        if operator && new_doc == st.doc && new_ext.as_ref().is_none_or(|e| *e == st.ext) {
            // Nothing runs differently: the version (ETags, If-Match) stays. A file that now
            // reads differently but merges to the same document becomes the new base.
            if let Some(f) = new_file.filter(|f| *f != st.file) {
                if let Some(store) = st.store.as_mut() {
                    let p = persist::Persisted::new(
                        st.version,
                        doc::objects_only(&f),
                        doc::objects_only(&st.doc),
                    )
                    .with_ext(st.ext.clone());
                    if let Err(e) = store.save(&p) {
                        log::warn!("cannot update the state file: {e}");
                    }
                }
                st.file = f;
            }
            return Ok(st.version);
        }
        let mut discovered = st.discovered.clone();
        if let Some((provider, set)) = found {
            discovered.insert(provider, set);
        }
        let conflicts = crate::discovery::overlay(&mut cfg, &discovered);
        for c in conflicts.iter().filter(|c| !st.conflicts.contains(c)) {
            log::warn!("discovery {c}");
        }
        let workers = self.workers.len().max(1);

        // Listeners: same name and bind → same slot and sockets; otherwise bind anew.
        let used: HashSet<usize> = st.running.values().map(|r| r.slot).collect();
        let mut next_free = 0usize;
        let mut alloc = |taken: &HashSet<usize>| {
            while used.contains(&next_free) || taken.contains(&next_free) {
                next_free += 1;
            }
            next_free
        };
        let mut slots = Vec::with_capacity(cfg.listeners.len());
        let mut new_slots: HashSet<usize> = HashSet::new();
        let mut bound: Vec<(String, usize, Vec<std::net::TcpListener>)> = Vec::new();
        let mut running: HashMap<String, Running> = HashMap::new();
        for l in &cfg.listeners {
            // (A proxy asked for port 0 is pinned to the port it got: the same socket.)
            if let Some(r) = st
                .running
                .get(&l.name)
                .filter(|r| r.bind == l.bind || r.local == l.bind)
            {
                slots.push(r.slot);
                running.insert(l.name.clone(), *r);
                continue;
            }
            let slot = alloc(&new_slots);
            if slot >= crate::engine::token::MAX_LISTENERS {
                return Err(ApiError::new(
                    409,
                    "too_many_listeners",
                    format!("at most {} listeners", crate::engine::token::MAX_LISTENERS),
                ));
            }
            new_slots.insert(slot);
            if !l.share && !st.running.values().any(|r| r.bind == l.bind) {
                crate::check::probe_bind(l.bind, false).map_err(|m| {
                    ApiError::new(409, "bind_failed", format!("listener {}: {m}", l.name))
                })?;
            }
            let socks =
                crate::net::listen::bind_listener(&l.name, l.bind, workers, l.backlog(&cfg.server))
                    .map_err(|e| ApiError::new(409, "bind_failed", e.to_string()))?;
            let local = socks
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(l.bind);
            slots.push(slot);
            running.insert(
                l.name.clone(),
                Running {
                    slot,
                    bind: l.bind,
                    local,
                },
            );
            bound.push((l.name.clone(), slot, socks));
        }
        let removed: Vec<(String, usize)> = st
            .running
            .iter()
            .filter(|(n, r)| running.get(*n).is_none_or(|nr| nr.slot != r.slot))
            .map(|(n, r)| (n.clone(), r.slot))
            .collect();

        let version = if operator { st.version + 1 } else { st.version };
        let generation = st.generation + 1;
        // A proxy asked for port 0 keeps the port it got (re-enabling it binds the same).
        for (name, p) in fs.proxies.iter_mut() {
            let zero = p.listen.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0);
            if let (true, Some(r)) = (zero, running.get(name)) {
                p.listen = r.local.to_string();
            }
        }
        // Health records of backends that are gone are dropped (re-added means re-checked).
        let exists = |(c, a): &(String, SocketAddr)| {
            cfg.cluster(c)
                .is_some_and(|cl| cl.health.is_some() && cl.backends.iter().any(|b| b.addr == *a))
        };
        let mut health: HashMap<(String, SocketAddr), CheckRecord> = st
            .health
            .iter()
            .filter(|(k, _)| exists(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        add_unchecked(&cfg, &mut health);
        // Slow start for backends that join the rotation: new, or no longer drained.
        let now = Instant::now();
        let mut ramps: HashMap<(String, SocketAddr), Instant> = HashMap::new();
        for c in cfg.clusters.iter().filter(|c| c.slow_start.is_some()) {
            let before = st.config.cluster(&c.name);
            for b in c.backends.iter().filter(|b| !b.drain) {
                let key = (c.name.clone(), b.addr);
                if let Some(t) = st.ramps.get(&key) {
                    ramps.insert(key, *t);
                    continue;
                }
                let was_in = before
                    .is_some_and(|o| o.backends.iter().any(|ob| ob.addr == b.addr && !ob.drain));
                if !was_in && before.is_some() {
                    ramps.insert(key, now);
                }
            }
        }
        let mut snap = Snapshot::build_with_slots(
            &cfg,
            generation,
            Some(&self.shared.load()),
            &slots,
            &runtime(&cfg, &tls, &health, &mut ramps, now),
        );
        let faas_stats = crate::discovery::faas_stats_body(&cfg);
        snap.faas_stats = faas_stats.clone();
        let l7 = fs.compile_l7(&cfg, &slots);
        let cells = fs.cells(&st.toxic_cells);
        crate::faults::attach(&mut snap, &fs, &cells, l7.clone());
        let file = new_file.as_ref().unwrap_or(&st.file);
        if let (true, Some(dir), Some(store)) = (operator, &self.state_dir, st.store.as_mut()) {
            let p = persist::Persisted::new(
                version,
                doc::objects_only(file),
                doc::objects_only(&new_doc),
            )
            .with_ext(new_ext.as_ref().unwrap_or(&st.ext).clone());
            store.save(&p).map_err(|e| {
                ApiError::new(
                    500,
                    "persist_failed",
                    format!(
                        "cannot persist to {}: {e}; the change was not applied",
                        dir.display()
                    ),
                )
            })?;
        }
        // Point of no return.
        self.shared.store(Arc::new(snap));
        st.fault_gen += 1;
        crate::faults::publish_sets(&fs, &st.toxic_cells, &cells, st.fault_gen);
        for (name, slot) in &removed {
            for w in &self.workers {
                w.send(Ctrl::RemoveListener { slot: *slot });
            }
            log::info!("listener {name} closed (slot {slot}); its connections go on");
        }
        for (name, _) in &removed {
            if !running.contains_key(name) {
                st.sockets.remove(name);
            }
        }
        for (name, slot, socks) in bound {
            // Kept for a binary upgrade; a failed duplicate only means that listener would be
            // bound anew by the successor.
            let dups: Vec<_> = socks.iter().filter_map(|s| s.try_clone().ok()).collect();
            st.sockets.insert(name.clone(), dups);
            if let Some(l) = cfg.listeners.iter().find(|l| l.name == name) {
                if let Some(r) = running.get(&name) {
                    crate::net::listen::announce(l, r.local);
                }
            }
            for (w, socket) in self.workers.iter().zip(socks) {
                w.send(Ctrl::AddListener { slot, socket });
            }
        }
        for (name, _) in &removed {
            if let (false, Some(r)) = (fs.listener(name).enabled, st.running.get(name)) {
                st.pins.insert(name.clone(), r.local);
            }
        }
        // A pin lasts while its listener is down, or until it is back on its port.
        st.pins
            .retain(|n, _| !fs.listener(n).enabled || !running.contains_key(n));
        if let Some(f) = new_file {
            st.file = f;
        }
        st.doc = new_doc;
        if let Some(ext) = new_ext {
            st.ext = ext;
        }
        st.config = cfg;
        st.running = running;
        st.version = version;
        st.generation = generation;
        st.slots = slots;
        st.health = health;
        st.ramps = ramps;
        st.discovered = discovered;
        st.conflicts = conflicts;
        st.commits += 1;
        st.faas_stats = faas_stats;
        st.tls = tls;
        st.faults = fs;
        st.toxic_cells = cells;
        st.l7 = l7;
        Ok(version)
    }

    /// Every backend of every cluster with active checks, and the config version they
    /// come from (the checker re-reads when it moves).
    pub fn health_targets(&self) -> (u64, Vec<CheckTarget>) {
        let st = self.lock();
        let mut out = Vec::new();
        for c in &st.config.clusters {
            let Some(check) = &c.health else { continue };
            for b in &c.backends {
                out.push(CheckTarget {
                    cluster: c.name.clone(),
                    backend: b.addr,
                    check: check.clone(),
                });
            }
        }
        (st.commits, out)
    }

    /// Records a check result. `state`: the checker's verdict after its rise/fall counting;
    /// a change publishes a new snapshot (the backend leaves or rejoins the rotation).
    pub fn report_check(
        &self,
        cluster: &str,
        backend: SocketAddr,
        ok: bool,
        detail: &str,
        took: std::time::Duration,
        state: HealthState,
    ) {
        let mut st = self.lock();
        let still_there = st
            .config
            .cluster(cluster)
            .is_some_and(|c| c.health.is_some() && c.backends.iter().any(|b| b.addr == backend));
        if !still_there {
            return; // removed while the check ran
        }
        let rec = st.health.entry((cluster.to_string(), backend)).or_default();
        rec.last_ok = Some(ok);
        rec.last_detail = detail.to_string();
        rec.last_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        rec.last_took_ms = took.as_secs_f64() * 1000.0;
        let at_ms = rec.last_at_ms;
        // For /stats and /metrics, which read the snapshot.
        if let Some(b) = self.shared.load().find_backend(cluster, backend) {
            b.live
                .last_check
                .store(if ok { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
            b.live
                .last_check_at_ms
                .store(at_ms, std::sync::atomic::Ordering::Relaxed);
        }
        if rec.state == state {
            return;
        }
        let rec_was = rec.state;
        rec.state = state;
        match state {
            HealthState::Down => {
                log::warn!("health: backend {backend} of cluster {cluster} is DOWN ({detail})")
            }
            HealthState::Up if rec_was == HealthState::Unknown => {
                log::info!("health: backend {backend} of cluster {cluster} is UP (first check)")
            }
            HealthState::Up => {
                log::info!("health: backend {backend} of cluster {cluster} is UP again")
            }
            HealthState::Unknown => {}
        }
        if state == HealthState::Up
            && st
                .config
                .cluster(cluster)
                .is_some_and(|c| c.slow_start.is_some())
        {
            st.ramps
                .insert((cluster.to_string(), backend), Instant::now());
        }
        let snap = self.publish(&mut st);
        if let Some(c) = snap.clusters.iter().find(|c| c.name == cluster) {
            if c.panic {
                log::error!(
                    "health: every backend of cluster {cluster} is down; failing open (traffic \
                     goes to all of them until one passes its checks)"
                );
            }
        }
    }

    /// Rebuilds the snapshot from the running config and runtime state and publishes it.
    fn publish(&self, st: &mut State) -> Arc<Snapshot> {
        st.generation += 1;
        let State {
            config,
            health,
            ramps,
            slots,
            generation,
            faas_stats,
            tls,
            faults,
            toxic_cells,
            l7,
            ..
        } = &mut *st;
        let rt = runtime(config, tls, health, ramps, Instant::now());
        let mut snap =
            Snapshot::build_with_slots(config, *generation, Some(&self.shared.load()), slots, &rt);
        snap.faas_stats = faas_stats.clone();
        crate::faults::attach(&mut snap, faults, toxic_cells, l7.clone());
        let snap = Arc::new(snap);
        self.shared.store(snap.clone());
        snap
    }

    /// Moves slow starts along: while any backend ramps, republishes with its grown weight.
    /// Called a few times a second (by the health checker thread).
    pub fn tick(&self) {
        let mut st = self.lock();
        if !st.ramps.is_empty() {
            self.publish(&mut st);
        }
    }

    /// What the control plane holds for a backend's health (the checker starts from it).
    pub fn health_state(&self, cluster: &str, backend: SocketAddr) -> HealthState {
        self.lock()
            .health
            .get(&(cluster.to_string(), backend))
            .map_or(HealthState::Up, |r| r.state)
    }

    /// Backends whose first check has not concluded yet.
    pub fn unchecked(&self) -> usize {
        self.lock()
            .health
            .values()
            .filter(|r| r.state == HealthState::Unknown)
            .count()
    }

    /// The longest check timeout of any health-checked cluster (bounds the first round).
    pub fn longest_check(&self) -> Option<std::time::Duration> {
        let st = self.lock();
        st.config
            .clusters
            .iter()
            .filter_map(|c| c.health.as_ref().map(|h| h.timeout))
            .max()
    }

    /// Health records for the admin API, by backend address.
    pub fn health_of(&self, cluster: &str) -> HashMap<SocketAddr, CheckRecord> {
        self.lock()
            .health
            .iter()
            .filter(|((c, _), _)| c == cluster)
            .map(|((_, a), r)| (*a, r.clone()))
            .collect()
    }
}

/// Backends of health-checked clusters with `init_state = "unknown"` that have no record yet
/// start as unknown: out of rotation until their first check.
fn add_unchecked(cfg: &Config, health: &mut HashMap<(String, SocketAddr), CheckRecord>) {
    for c in &cfg.clusters {
        let Some(h) = &c.health else { continue };
        if !h.init_unknown {
            continue;
        }
        for b in &c.backends {
            health
                .entry((c.name.clone(), b.addr))
                .or_insert_with(|| CheckRecord {
                    state: HealthState::Unknown,
                    ..CheckRecord::default()
                });
        }
    }
}

/// The runtime part of a snapshot. Finished ramps are dropped from `ramps`.
fn runtime(
    cfg: &Config,
    tls: &crate::tls::Store,
    health: &HashMap<(String, SocketAddr), CheckRecord>,
    ramps: &mut HashMap<(String, SocketAddr), Instant>,
    now: Instant,
) -> Runtime {
    let mut ramp = HashMap::new();
    ramps.retain(|(c, a), since| {
        let Some(total) = cfg.cluster(c).and_then(|c| c.slow_start) else {
            return false;
        };
        let f = now.duration_since(*since).as_secs_f64() / total.as_secs_f64().max(1e-3);
        if f >= 1.0 {
            return false;
        }
        ramp.insert((c.clone(), *a), f);
        true
    });
    Runtime {
        health: health_map(health),
        ramp,
        tls: tls.clone(),
    }
}

fn health_map(h: &HashMap<(String, SocketAddr), CheckRecord>) -> HealthMap {
    h.iter()
        .filter(|(_, r)| r.state != HealthState::Up)
        .map(|(k, r)| (k.clone(), r.state))
        .collect()
}

/// Applies `change` to `d`. Returns (created, the edited object's kind and name).
fn edit(
    d: &mut Table,
    cfg: &Config,
    change: &Change,
) -> Result<(bool, Option<(Kind, String)>), ApiError> {
    match change {
        Change::Put(kind, name, body) => {
            let v = object_from_json(*kind, name, body)?;
            if *kind == Kind::Cluster {
                crate::autoscale::guard_api_put(doc::find(d, Kind::Cluster, name), &v)?;
            }
            let created = doc::put(d, *kind, name, v);
            Ok((created, Some((*kind, name.clone()))))
        }
        Change::Delete(kind, name) => {
            if *kind == Kind::Cluster {
                if let Some(user) = cluster_user(cfg, name) {
                    return Err(ApiError::new(
                        409,
                        "in_use",
                        format!("cluster {name:?} is used by listener {user:?}; change that first"),
                    ));
                }
            }
            if let Some(user) = crate::release::api::user_of(cfg, *kind, name) {
                return Err(ApiError::new(
                    409,
                    "in_use",
                    format!(
                        "{} {name:?} is used by {user}; change that first",
                        kind.noun()
                    ),
                ));
            }
            if !doc::remove(d, *kind, name) {
                return Err(ApiError::not_found(kind.noun(), name));
            }
            Ok((false, None))
        }
        Change::AddBackend { cluster, body } => {
            let entry = backend_from_json(body, true)?;
            let addr = doc::backend_addr(&entry).unwrap_or_default().to_string();
            let backends = backends_mut(d, cluster)?;
            if find_backend(backends, &addr).is_some() {
                return Err(ApiError::new(
                    409,
                    "exists",
                    format!("cluster {cluster:?} already has backend {addr}"),
                )
                .field("addr"));
            }
            backends.push(entry);
            Ok((true, Some((Kind::Cluster, cluster.clone()))))
        }
        Change::PatchBackend {
            cluster,
            addr,
            body,
        } => {
            let patch = backend_from_json(body, false)?;
            let backends = backends_mut(d, cluster)?;
            let i = find_backend(backends, addr).ok_or_else(|| {
                ApiError::new(
                    404,
                    "not_found",
                    format!("cluster {cluster:?} has no backend {addr}"),
                )
            })?;
            let mut t = match &backends[i] {
                Value::Table(t) => t.clone(),
                other => {
                    let mut t = Table::new();
                    if let Some(a) = doc::backend_addr(other) {
                        t.insert("addr".into(), Value::String(a.to_string()));
                    }
                    t
                }
            };
            if let Value::Table(p) = patch {
                for (k, v) in p {
                    if k == "drain" && v.as_bool() == Some(false) {
                        t.remove("drain");
                    } else {
                        t.insert(k, v);
                    }
                }
            }
            backends[i] = Value::Table(t);
            Ok((false, Some((Kind::Cluster, cluster.clone()))))
        }
        Change::DeleteBackend { cluster, addr } => {
            let backends = backends_mut(d, cluster)?;
            let i = find_backend(backends, addr).ok_or_else(|| {
                ApiError::new(
                    404,
                    "not_found",
                    format!("cluster {cluster:?} has no backend {addr}"),
                )
            })?;
            if backends.len() == 1 {
                return Err(ApiError::new(
                    409,
                    "last_backend",
                    format!(
                        "{addr} is the last backend of cluster {cluster:?}; a cluster needs at \
                         least one (drain it, or delete the cluster)"
                    ),
                ));
            }
            backends.remove(i);
            Ok((false, Some((Kind::Cluster, cluster.clone()))))
        }
        Change::Service { name, op } => crate::release::api::edit(d, name, op),
    }
}

/// The discovered cluster (and its provider) an API change would edit, if the operator's
/// document has no cluster of that name.
fn discovered_target(st: &State, change: &Change) -> Option<(String, String)> {
    let cluster = match change {
        Change::Delete(Kind::Cluster, n) => n,
        Change::AddBackend { cluster, .. }
        | Change::PatchBackend { cluster, .. }
        | Change::DeleteBackend { cluster, .. } => cluster,
        _ => return None,
    };
    if doc::find(&st.doc, Kind::Cluster, cluster).is_some() {
        return None;
    }
    let provider = st.config.cluster(cluster)?.discovered.clone()?;
    Some((cluster.clone(), provider))
}

/// A discovered cluster as a table: what its provider found, or the empty placeholder of a
/// declared cluster not found yet.
fn discovered_table(st: &State, name: &str) -> Option<Value> {
    let c = st.config.cluster(name)?;
    let provider = c.discovered.as_ref()?;
    if let Some(f) = st
        .discovered
        .get(provider)
        .and_then(|l| l.iter().find(|f| f.cluster.name == name))
    {
        return Some(Value::Table(f.table.clone()));
    }
    let d = st.config.discovery.iter().find(|d| &d.name == provider)?;
    Some(Value::Table(config::discovery::cluster_table(
        d,
        name,
        Vec::new(),
        None,
    )))
}

/// The listener that routes to `cluster`, if any.
fn cluster_user(cfg: &Config, cluster: &str) -> Option<String> {
    cfg.listeners
        .iter()
        .find(|l| {
            l.cluster.as_deref() == Some(cluster) || l.routes.iter().any(|r| r.cluster == cluster)
        })
        .map(|l| l.name.clone())
}

fn backends_mut<'a>(d: &'a mut Table, cluster: &str) -> Result<&'a mut Vec<Value>, ApiError> {
    let c = doc::find_mut(d, Kind::Cluster, cluster)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| ApiError::not_found("cluster", cluster))?;
    let list = c
        .entry("backends")
        .or_insert_with(|| Value::Array(Vec::new()));
    list.as_array_mut().ok_or_else(|| {
        ApiError::new(422, "invalid", "the cluster's backends are not a list").field("backends")
    })
}

/// Finds a backend by its address as written, else by the address it resolves to.
fn find_backend(list: &[Value], addr: &str) -> Option<usize> {
    if let Some(i) = list.iter().position(|v| doc::backend_addr(v) == Some(addr)) {
        return Some(i);
    }
    let want = config::parse_backend_addr(addr).ok()?;
    list.iter().position(|v| {
        doc::backend_addr(v).and_then(|a| config::parse_backend_addr(a).ok()) == Some(want)
    })
}

fn json_to_toml(j: &Json, field: Option<&str>) -> Result<Value, ApiError> {
    Value::try_from(j).map_err(|e| {
        let err = ApiError::new(
            400,
            "bad_value",
            format!("cannot use this JSON as config: {e} (null is not allowed)"),
        );
        match field {
            Some(f) => err.field(f),
            None => err,
        }
    })
}

/// A PUT body → the object's table. `name` may be omitted; `status` (read-only) is ignored.
fn object_from_json(kind: Kind, name: &str, body: &Json) -> Result<Value, ApiError> {
    let Json::Object(m) = body else {
        return Err(ApiError::new(
            400,
            "bad_request",
            format!("a {} must be a JSON object", kind.noun()),
        ));
    };
    let mut m = m.clone();
    m.remove("status");
    match m.get("name") {
        None => {
            m.insert("name".into(), Json::String(name.to_string()));
        }
        Some(Json::String(n)) if n == name => {}
        Some(other) => {
            return Err(ApiError::new(
                422,
                "invalid",
                format!(
                    "name {other} does not match the {} in the URL ({name:?})",
                    kind.noun()
                ),
            )
            .field("name"))
        }
    }
    let mut t = Table::new();
    for (k, v) in &m {
        t.insert(k.clone(), json_to_toml(v, Some(k))?);
    }
    Ok(Value::Table(t))
}

/// `{"addr": .., "weight": .., "drain": ..}`; `addr` is required when adding.
fn backend_from_json(body: &Json, adding: bool) -> Result<Value, ApiError> {
    let Json::Object(m) = body else {
        return Err(ApiError::new(
            400,
            "bad_request",
            "a backend must be a JSON object, e.g. {\"addr\":\"127.0.0.1:9002\",\"weight\":1}",
        ));
    };
    let mut t = Table::new();
    for (k, v) in m {
        match (k.as_str(), v) {
            ("addr", Json::String(_)) if adding => {}
            ("addr", _) if adding => {
                return Err(
                    ApiError::new(422, "invalid", "expected a string \"host:port\"").field("addr"),
                )
            }
            ("addr", _) => return Err(ApiError::new(
                422,
                "invalid",
                "the address is in the URL; to move a backend, add the new one and delete the old",
            )
            .field("addr")),
            ("weight", Json::Number(_)) | ("drain", Json::Bool(_)) => {}
            ("weight", _) => {
                return Err(
                    ApiError::new(422, "invalid", "expected an integer in 1..=10000")
                        .field("weight"),
                )
            }
            ("drain", _) => {
                return Err(ApiError::new(422, "invalid", "expected true or false").field("drain"))
            }
            _ => return Err(ApiError::new(422, "invalid", "unknown key").field(k.as_str())),
        }
        t.insert(k.clone(), json_to_toml(v, Some(k))?);
    }
    if adding && !t.contains_key("addr") {
        return Err(ApiError::new(422, "invalid", "missing").field("addr"));
    }
    if !adding && t.is_empty() {
        return Err(ApiError::new(
            422,
            "invalid",
            "nothing to change (expected \"weight\" and/or \"drain\")",
        ));
    }
    Ok(Value::Table(t))
}

fn object_json(st: &State, kind: Kind, v: &Value) -> Json {
    let mut j = serde_json::to_value(v).unwrap_or(Json::Null);
    if kind == Kind::Cluster {
        if let (Json::Object(m), Some(c)) =
            (&mut j, doc::name_of(v).and_then(|n| st.config.cluster(n)))
        {
            m.insert("status".into(), cluster_status(st, c));
        }
    }
    if kind == Kind::Listener {
        if let (Json::Object(m), Some(r)) =
            (&mut j, doc::name_of(v).and_then(|n| st.running.get(n)))
        {
            m.insert(
                "status".into(),
                serde_json::json!({ "local_addr": r.local.to_string() }),
            );
        }
    }
    j
}

/// Read-only runtime state of a cluster's backends: `up`, `down` (health checks) or
/// `draining`, and the last check.
fn cluster_status(st: &State, c: &crate::config::ClusterConfig) -> Json {
    let rec = |a: SocketAddr| st.health.get(&(c.name.clone(), a));
    let down = |a: SocketAddr| rec(a).is_some_and(|r| r.state != HealthState::Up);
    let panic = c.backends.iter().any(|b| !b.drain)
        && c.backends.iter().filter(|b| !b.drain).all(|b| down(b.addr));
    let backends: Vec<Json> = c
        .backends
        .iter()
        .map(|b| {
            let state = if b.drain {
                "draining"
            } else if rec(b.addr).is_some_and(|r| r.state == HealthState::Unknown) {
                "unknown"
            } else if down(b.addr) {
                "down"
            } else {
                "up"
            };
            let mut o = serde_json::json!({ "addr": b.name, "state": state, "weight": b.weight });
            if let Some(r) = rec(b.addr).filter(|r| r.last_ok.is_some()) {
                o["last_check"] = serde_json::json!({
                    "ok": r.last_ok,
                    "detail": r.last_detail,
                    "at_unix_ms": r.last_at_ms,
                    "took_ms": (r.last_took_ms * 1000.0).round() / 1000.0,
                });
            }
            o
        })
        .collect();
    let mut status = serde_json::json!({ "backends": backends, "panic": panic });
    if let Some(p) = &c.discovered {
        status["discovered"] = Json::String(p.clone());
    }
    status
}

/// Validation errors → 422, every error in the message, the first one's path as `field`.
pub fn invalid(errs: &[ConfigError]) -> ApiError {
    let message = errs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut e = ApiError::new(422, "invalid", message);
    e.field = errs.first().map(|e| e.path.clone());
    e
}

/// Makes `clusters[3].backends[0]` read `backends[0]` when the change was to `clusters[3]`.
fn with_relative_field(mut e: ApiError, target: Option<String>) -> ApiError {
    if let (Some(f), Some(t)) = (&e.field, &target) {
        if let Some(rest) = f.strip_prefix(t.as_str()) {
            e.field = rest.strip_prefix('.').map(str::to_string);
        }
    }
    e
}
