//! Process orchestration: bind every listener once per worker (or take the sockets that
//! systemd or the previous process of a binary upgrade passed us), start the workers, the
//! stats aggregator, the admin API and the signal thread, then run the control loop until a
//! graceful shutdown.
//!
//! The control loop (this thread) handles signals, sends `WATCHDOG=1` while every worker makes
//! progress, and refreshes `STATUS=` (see [`crate::lifecycle`]).
//!
//! Where a listener's sockets come from, in order:
//! 1. the previous process, in a binary upgrade (same name and address): the very sockets it
//!    accepted on, one per worker;
//! 2. socket activation (`LISTEN_FDS`), matched by name or address: systemd passes one socket,
//!    and every worker watches a duplicate of it. The kernel hands each connection to one
//!    `accept`; every worker's epoll wakes for it and the others find nothing. This costs a
//!    wake-up per worker per burst, where per-worker `SO_REUSEPORT` sockets let the kernel
//!    spread connections itself; in exchange, systemd holds the port (it may be privileged, and
//!    connections queue while the service restarts);
//! 3. otherwise, one `SO_REUSEPORT` socket per worker, bound here.

use crate::config::ListenerConfig;
use crate::control::{Boot, Control, Running};
use crate::lifecycle::{self, Lifecycle};
use crate::net::listen::{announce, bind_listener, bind_reuseport};
use crate::sd::{activation, notify::Notifier, watchdog};
use crate::signals::{self, SignalEvent};
use crate::snapshot::{self, Snapshot};
use crate::stats::{Aggregator, StatsConfig, StatsMsg};
use crate::upgrade::{self, HandedAdmin, Inheritance};
use crate::worker::{self, Ctrl, WorkerHandle, WorkerSettings};

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `run` waits for an address a previous instance is still letting go of (see
/// [`crate::check::probe_bind_waiting`]) before refusing it.
const BIND_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] crate::net::listen::BindError),
    #[error("listener {name}: {message}")]
    Refused { name: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("worker {id} failed: {source}")]
    Worker { id: usize, source: io::Error },
    #[error("admin API: {0}")]
    Admin(String),
    /// `server.engine = "io_uring"` and the kernel refuses io_uring.
    #[error("{0}")]
    Engine(String),
    #[error("{0}")]
    Handover(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

/// Large buffers per worker for HTTP request heads that outgrow a regular buffer (rare: only
/// while such a head is being read and sent).
const LARGE_BUFFERS_PER_WORKER: usize = 64;

/// How long start-up waits for the discovery providers' first look.
const DISCOVERY_FIRST_SYNC_WAIT: Duration = Duration::from_secs(2);

/// Reads `server.admin_token_file`: the whole file, surrounding whitespace trimmed.
fn read_token(path: &std::path::Path) -> Result<String, RunError> {
    crate::check::token_file(path).map_err(|e| RunError::Admin(format!("admin_token_file: {e}")))
}

/// What the control loop reacts to.
enum Event {
    Signal(SignalEvent),
    /// Every worker exited (with the first failure, if any).
    WorkersDone(Result<(), RunError>),
    /// Binary upgrade, successor side: the predecessor stopped accepting and passed `MAINPID`
    /// (its pid, its stats totals).
    Promoted(u32, Map<String, Value>),
    /// The predecessor finished draining: what it counted meanwhile.
    PredecessorFinal(Map<String, Value>),
}

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Runs the proxy until SIGTERM/SIGINT and the drain that follows (or, after a binary upgrade
/// handed everything to a new process, until this one drained). `config_path` is what SIGHUP
/// reloads (none in quick mode). `stats`: how stats are served and kept (quick mode sets it;
/// in config mode the recovery file defaults to `state_dir/stats.json`).
pub fn run(
    boot: Boot,
    config_path: Option<std::path::PathBuf>,
    stats: StatsConfig,
) -> Result<(), RunError> {
    run_with(boot, config_path, stats, Vec::new())
}

/// [`run`], with compatibility APIs served on the admin address (`extensions`, e.g. the DSU
/// proxy's REST API in its quick mode).
pub fn run_with(
    boot: Boot,
    config_path: Option<std::path::PathBuf>,
    stats: StatsConfig,
    extensions: Vec<Arc<dyn crate::admin::Extension>>,
) -> Result<(), RunError> {
    crate::logging::apply_config(boot.config.server.log_level);
    // Before anything is announced: a script may signal us as soon as it sees a listener.
    let signals = signals::register().map_err(io_err("installing signal handlers"))?;
    if let Some(limit) = crate::sys::raise_nofile_limit() {
        log::debug!("open-file limit {limit}");
    }
    watchdog::arm_test_stall_from_env();
    // A successor of a binary upgrade takes its predecessor's sockets first.
    let mut inherited = Inheritance::receive().map_err(RunError::Handover)?;
    let started = match start(
        boot,
        config_path,
        stats,
        signals,
        inherited.as_mut(),
        extensions,
    ) {
        Ok(s) => s,
        Err(e) => {
            if let Some(inh) = &inherited {
                let _ = inh.link().send(
                    &upgrade::Msg::Failed {
                        error: e.to_string(),
                    },
                    &[],
                );
            }
            return Err(e);
        }
    };
    match inherited {
        Some(inh) => {
            let (link, predecessor) = inh.into_link();
            link.send(
                &upgrade::Msg::Ready {
                    pid: std::process::id(),
                },
                &[],
            )
            .map_err(|e| RunError::Handover(format!("upgrade: cannot report ready: {e}")))?;
            log::info!("upgrade: ready; waiting for process {predecessor} to hand over");
            let tx = started.events.clone();
            std::thread::Builder::new()
                .name("upgrade-link".into())
                .spawn(move || follow_predecessor(link, predecessor, tx))
                .map_err(io_err("starting the upgrade link thread"))?;
        }
        None => started.lifecycle.ready(),
    }
    control_loop(started)
}

/// Successor side: waits for the predecessor's `Go` and `Final`.
fn follow_predecessor(
    link: upgrade::link::Link,
    predecessor: u32,
    tx: crossbeam_channel::Sender<Event>,
) {
    let mut promoted = false;
    loop {
        match link.recv::<upgrade::Msg>(None) {
            Ok(Some((upgrade::Msg::Go { totals }, _))) => {
                promoted = true;
                let _ = tx.send(Event::Promoted(predecessor, totals));
            }
            Ok(Some((upgrade::Msg::Final { totals }, _))) => {
                let _ = tx.send(Event::PredecessorFinal(totals));
            }
            Ok(Some((other, _))) => log::warn!("upgrade: unexpected message {other:?}"),
            Ok(None) | Err(_) => {
                if !promoted {
                    log::warn!(
                        "upgrade: process {predecessor} went away before handing over; this \
                         process carries on alone"
                    );
                    let _ = tx.send(Event::Promoted(predecessor, Map::new()));
                }
                return;
            }
        }
    }
}

/// Everything [`start`] set up, for the control loop and the teardown.
struct Started {
    lifecycle: Arc<Lifecycle>,
    events: crossbeam_channel::Sender<Event>,
    events_rx: crossbeam_channel::Receiver<Event>,
    stats_tx: crate::stats::StatsSender,
    stats: crate::stats::StatsHandle,
    workers: usize,
    exited: Arc<Vec<AtomicBool>>,
    health_stop: Arc<AtomicBool>,
    health_thread: std::thread::JoinHandle<()>,
    discovery_threads: Vec<std::thread::JoinHandle<()>>,
    autoscale_thread: std::thread::JoinHandle<()>,
    agg_thread: std::thread::JoinHandle<()>,
    log_thread: std::thread::JoinHandle<()>,
    access_log: crate::accesslog::AccessLog,
    conn_log_thread: std::thread::JoinHandle<()>,
    connection_log: crate::accesslog::AccessLog,
    signal_handle: signal_hook::iterator::Handle,
}

/// The sockets of one listener, one per worker: inherited from the previous process, passed
/// by systemd, or bound here.
fn listener_sockets(
    l: &ListenerConfig,
    workers: usize,
    backlog: i32,
    inherited: Option<&mut Inheritance>,
    activated: &mut Vec<activation::Activated>,
) -> Result<Vec<TcpListener>, RunError> {
    let err = |source| {
        RunError::Bind(crate::net::listen::BindError {
            name: l.name.clone(),
            addr: l.bind,
            source,
        })
    };
    // Our own sockets (inherited) are exempt from the probe: it would find them in use.
    let fresh = || -> Result<Vec<TcpListener>, RunError> {
        // SO_REUSEPORT would let us join another process's group on the same address
        // silently: refuse that unless the config says it is meant.
        // A previous instance killed a moment ago may still be letting go of the address.
        crate::check::probe_bind_waiting(l.bind, l.share, BIND_PATIENCE).map_err(|m| {
            RunError::Refused {
                name: l.name.clone(),
                message: m,
            }
        })?;
        Ok(bind_listener(&l.name, l.bind, workers, backlog)?)
    };
    if let Some(mut socks) = inherited.and_then(|i| i.claim_listener(&l.name, l.bind)) {
        if socks.is_empty() {
            return fresh();
        }
        let local = socks[0].local_addr().map_err(err)?;
        while socks.len() < workers {
            // More workers than before: join the SO_REUSEPORT group, or (a socket systemd
            // passed to the previous process) share its socket.
            let s = match bind_reuseport(local, backlog) {
                Ok(s) => s,
                Err(_) => socks[0].try_clone().map_err(err)?,
            };
            socks.push(s);
        }
        return Ok(socks);
    }
    if let Some(a) = activation::claim(activated, &l.name, l.bind) {
        log::info!(
            "listener {}: using the socket passed by the service manager ({}{})",
            l.name,
            a.local,
            a.name
                .as_deref()
                .map(|n| format!(", named {n}"))
                .unwrap_or_default()
        );
        let mut socks = Vec::with_capacity(workers);
        for _ in 1..workers {
            socks.push(a.socket.try_clone().map_err(err)?);
        }
        socks.push(a.socket);
        return Ok(socks);
    }
    fresh()
}

/// `server.runtime_dir`, else systemd's `$RUNTIME_DIRECTORY` (its first entry).
fn runtime_dir(cfg: &crate::config::Config) -> Option<std::path::PathBuf> {
    cfg.server.runtime_dir.clone().or_else(|| {
        let v = std::env::var("RUNTIME_DIRECTORY").ok()?;
        let first = v.split(':').next()?;
        (!first.is_empty()).then(|| first.into())
    })
}

fn start(
    boot: Boot,
    config_path: Option<std::path::PathBuf>,
    stats: StatsConfig,
    signals: signal_hook::iterator::Signals,
    mut inherited: Option<&mut Inheritance>,
    extensions: Vec<Arc<dyn crate::admin::Extension>>,
) -> Result<Started, RunError> {
    let cfg = boot.config.clone();
    let shown_path = config_path.as_ref().map(|p| p.display().to_string());
    // An upgrade keeps the listening sockets, one per worker: never fewer workers than the
    // previous process had (a socket nobody accepted on would strand its connections).
    let inherited_workers = inherited.as_ref().map_or(0, |i| i.max_sockets());
    let workers = cfg.server.workers.max(inherited_workers);
    if workers > cfg.server.workers {
        log::warn!(
            "server.workers = {} but the previous process had {workers} workers: keeping \
             {workers} (a lower count takes effect at the next restart)",
            cfg.server.workers
        );
    }
    let slots: Vec<usize> = (0..cfg.listeners.len()).collect();
    let rt = snapshot::Runtime {
        tls: boot.tls.clone(),
        ..snapshot::Runtime::default()
    };
    let mut first = Snapshot::build_with_slots(&cfg, boot.version, None, &slots, &rt);
    first.faas_stats = crate::discovery::faas_stats_body(&cfg);
    let snap = snapshot::shared(first);
    let token = match &cfg.server.admin_token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };
    let mut activated = activation::take().map_err(RunError::Handover)?;

    // Bind everything before starting any thread: a bad address fails start-up cleanly.
    // Listener i takes slot i.
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut running = HashMap::new();
    let mut kept: HashMap<String, Vec<TcpListener>> = HashMap::new();
    for (slot, l) in cfg.listeners.iter().enumerate() {
        let socks = listener_sockets(
            l,
            workers,
            l.backlog(&cfg.server),
            inherited.as_deref_mut(),
            &mut activated,
        )?;
        let local = socks[0].local_addr().map_err(io_err("local_addr"))?;
        announce(l, local);
        running.insert(
            l.name.clone(),
            Running {
                slot,
                bind: l.bind,
                local,
            },
        );
        kept.insert(
            l.name.clone(),
            socks.iter().filter_map(|s| s.try_clone().ok()).collect(),
        );
        for (w, s) in socks.into_iter().enumerate() {
            per_worker[w].push(s);
        }
    }
    for a in &activated {
        log::warn!(
            "socket activation: no listener matches the socket {}{}; it is closed",
            a.local,
            a.name
                .as_deref()
                .map(|n| format!(" (named {n})"))
                .unwrap_or_default()
        );
    }
    if let Some(i) = &inherited {
        for name in i.unclaimed() {
            log::info!("upgrade: listener {name} is not in the new configuration; closing it");
        }
    }
    drop(activated);

    // The admin socket and the control socket: inherited, or made here.
    let admin_listener = match cfg.server.admin {
        Some(addr) => Some(
            match inherited.as_deref_mut().and_then(|i| i.claim_admin(addr)) {
                Some(l) => l,
                None => TcpListener::bind(addr)
                    .map_err(|e| RunError::Admin(format!("cannot bind {addr}: {e}")))?,
            },
        ),
        None => None,
    };
    let control_socket = match runtime_dir(&cfg) {
        Some(dir) => {
            let path = upgrade::socket::path_in(&dir);
            let l = match inherited
                .as_deref_mut()
                .and_then(|i| i.claim_control(&path))
            {
                Some(l) => l,
                None => {
                    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
                        what: "creating the runtime directory",
                        source,
                    })?;
                    upgrade::socket::bind(&path).map_err(|e| {
                        RunError::Handover(format!("control socket {}: {e}", path.display()))
                    })?
                }
            };
            Some((path, l))
        }
        None => None,
    };

    // The writer runs even without a file: a reload may turn the access log on.
    let (access_log, sinks, log_thread) =
        crate::accesslog::start(cfg.server.access_log.as_ref(), workers).map_err(|source| {
            RunError::Io {
                what: "opening the access log",
                source,
            }
        })?;
    if let Some(a) = &cfg.server.access_log {
        log::info!("access log: {}", a.path.display());
    }
    let mut log_senders: Vec<Option<crate::accesslog::Sink>> =
        sinks.into_iter().map(Some).collect();
    let (connection_log, sinks, conn_log_thread) = crate::accesslog::start_log::<
        crate::connlog::ConnRecord,
    >(
        cfg.server.connection_log.as_ref(), workers
    )
    .map_err(|source| RunError::Io {
        what: "opening the connection log",
        source,
    })?;
    if let Some(a) = &cfg.server.connection_log {
        log::info!("connection log: {}", a.path.display());
    }
    let mut conn_log_senders: Vec<Option<_>> = sinks.into_iter().map(Some).collect();
    let (stats_tx, stats_rx) = crossbeam_channel::unbounded();
    let max_sessions = cfg.server.max_connections.div_ceil(workers).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // HTTP heads may exceed a regular buffer up to the largest max_header_bytes (at least the
    // default, for HTTP listeners added at run time by the admin and LBaaS APIs); the
    // rewritten head adds forwarding headers, hence the slack.
    let large_buffer_size = cfg
        .listeners
        .iter()
        .filter(|l| l.protocol == crate::config::Protocol::Http)
        .map(|l| l.http.max_header_bytes + 4096)
        .chain(std::iter::once(
            crate::config::defaults::MAX_HEADER_BYTES as usize + 4096,
        ))
        .filter(|&n| n > cfg.server.buffer_size)
        .max()
        .unwrap_or(0);
    let engine =
        crate::engine::choose(cfg.server.engine, cfg.server.sqpoll).map_err(RunError::Engine)?;
    let mut handles: Vec<WorkerHandle> = Vec::with_capacity(workers);
    let mut setups = Vec::with_capacity(workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let settings = WorkerSettings {
            id,
            buffer_size: cfg.server.buffer_size,
            buffers: cfg.server.buffers_per_worker,
            buffers_reserve: cfg.server.buffers_reserve,
            pipes: cfg.server.splice_pipes_per_worker,
            large_buffer_size,
            large_buffers: if large_buffer_size > 0 {
                LARGE_BUFFERS_PER_WORKER
            } else {
                0
            },
            access_log: log_senders.get_mut(id).and_then(Option::take),
            connection_log: conn_log_senders.get_mut(id).and_then(Option::take),
            max_sessions,
            pin_cpu: cfg.server.pin_workers.then_some(id % cpus),
            stats_minimal: cfg.server.stats_minimal,
        };
        let (setup, handle) =
            worker::prepare(settings, engine, listeners, snap.clone(), stats_tx.clone())
                .map_err(io_err("creating worker engine"))?;
        setups.push(setup);
        handles.push(handle);
    }
    let peers = worker::Peers::new(handles.iter().map(|h| h.waker.clone()).collect());
    for s in &mut setups {
        s.peers = peers.clone();
    }

    // Quick mode passes -recovery-path; config mode keeps stats next to the runtime state.
    let stats_opts = StatsConfig {
        recovery_path: stats
            .recovery_path
            .clone()
            .or_else(|| cfg.server.state_dir.as_ref().map(|d| d.join("stats.json"))),
        inherit: inherited.is_some(),
        ..stats
    };
    let mut aggregator = Aggregator::new(
        stats_rx,
        stats_tx.clone(),
        handles.clone(),
        snap.clone(),
        &stats_opts,
    );
    aggregator.set_engine(engine.name());
    let autoscale_status = Arc::new(crate::autoscale::status::Status::default());
    aggregator.add_section(autoscale_status.clone());
    let stats_handle = aggregator.handle();
    let stats_source: Arc<dyn crate::admin::StatsSource> = Arc::new(stats_handle.clone());

    let control = Arc::new(Control::new(
        boot,
        running,
        kept,
        snap.clone(),
        handles.clone(),
        config_path,
    ));
    // Release strategies: auto-rollback verdicts from the stats thread go to the controller.
    let triggers = crate::release::controller::start(control.clone())
        .map_err(io_err("starting the release controller"))?;
    aggregator.attach_release(triggers, control.releases());

    let stop_accepting = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(crate::discovery::Registry::new(&cfg.discovery));
    let admin_local = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(io_err("admin local_addr"))?),
        None => None,
    };
    let settings = lifecycle::Settings {
        exe: std::env::current_exe()
            .unwrap_or_else(|_| std::env::args_os().next().unwrap_or_default().into()),
        args: std::env::args_os().skip(1).collect(),
        workers,
        shutdown_timeout: cfg.server.shutdown_timeout,
        upgrade_timeout: cfg.server.upgrade_timeout,
        admin: match (cfg.server.admin, admin_local, &admin_listener) {
            (Some(bind), Some(local), Some(l)) => l
                .try_clone()
                .ok()
                .map(|dup| (HandedAdmin { bind, local }, dup)),
            _ => None,
        },
        control_socket: control_socket
            .as_ref()
            .and_then(|(p, l)| l.try_clone().ok().map(|dup| (p.clone(), dup))),
    };
    let lifecycle = Arc::new(Lifecycle::new(
        Notifier::from_env(),
        control.clone(),
        handles.clone(),
        stats_handle.clone(),
        settings,
        stop_accepting.clone(),
        inherited.is_none(),
    ));

    let health_stop = Arc::new(AtomicBool::new(false));
    let health_thread = crate::health::start(control.clone(), health_stop.clone())
        .map_err(io_err("starting the health checker"))?;
    // Before the workers start: a source that answers is routed to from the first request.
    let discovery_threads = crate::discovery::start(
        control.clone(),
        &cfg.discovery,
        &registry,
        health_stop.clone(),
        DISCOVERY_FIRST_SYNC_WAIT,
    )
    .map_err(io_err("starting discovery"))?;
    // One check round before serving: backends that are not checked yet stay out of rotation
    // and the workers do not accept until each has a verdict (or the longest check timeout
    // and a margin have passed), so a dead backend never sees a connect after a restart.
    if let Some(longest) = control.longest_check().filter(|_| control.unchecked() > 0) {
        let t0 = Instant::now();
        let limit = longest + Duration::from_millis(500);
        while control.unchecked() > 0 && t0.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = control.unchecked();
        if left > 0 {
            log::warn!("{left} backend(s) still unchecked after {limit:?}; serving anyway");
        } else {
            log::info!("first health check round done in {:?}", t0.elapsed());
        }
    }
    let autoscale_thread = crate::autoscale::start(
        control.clone(),
        snap.clone(),
        stats_handle.clone(),
        autoscale_status,
        crate::autoscale::Settings {
            admin: admin_local,
            token_file: cfg.server.admin_token_file.clone(),
        },
        health_stop.clone(),
    )
    .map_err(io_err("starting the autoscaler"))?;
    if cfg.listeners.is_empty() {
        log::info!(
            "no listeners configured: waiting for listeners and LBaaS instances through the admin API"
        );
    }
    {
        let access_log = access_log.clone();
        let connection_log = connection_log.clone();
        control.on_server_reload(Box::new(move |s: &crate::config::ServerConfig| {
            crate::logging::apply_config(s.log_level);
            access_log.set(s.access_log.clone());
            connection_log.set(s.connection_log.clone());
        }));
    }
    let agg_thread = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || aggregator.run())
        .map_err(io_err("starting stats thread"))?;

    let (events, events_rx) = crossbeam_channel::unbounded();
    let sig_events = events.clone();
    let signal_handle = signals::spawn(signals, move |ev| {
        let _ = sig_events.send(Event::Signal(ev));
    })
    .map_err(io_err("installing signal handlers"))?;

    let mut threads = Vec::with_capacity(workers);
    for setup in setups {
        threads.push(worker::spawn(setup).map_err(io_err("starting worker thread"))?);
    }
    let exited: Arc<Vec<AtomicBool>> =
        Arc::new((0..workers).map(|_| AtomicBool::new(false)).collect());
    {
        let exited = exited.clone();
        let handles = handles.clone();
        let tx = events.clone();
        std::thread::Builder::new()
            .name("joiner".into())
            .spawn(move || {
                let r = join_workers(threads, &handles, &exited);
                let _ = tx.send(Event::WorkersDone(r));
            })
            .map_err(io_err("starting the worker joiner"))?;
    }
    log::info!(
        "switchyard {} ({}) started: config={} engine={} workers={workers}{}",
        crate::build_info::VERSION,
        crate::build_info::COMMIT,
        shown_path.as_deref().unwrap_or("(command line)"),
        engine.name(),
        engine.details()
    );
    // The admin API and the control socket last: their announcement tells scripts (and the
    // test harness) that start-up is complete.
    if let Some(listener) = admin_listener {
        let settings = crate::admin::AdminSettings {
            token,
            read_only: cfg.server.admin_read_only,
            max_body: cfg.server.admin_max_body,
            discovery: Some(registry.clone()),
            extensions,
        };
        let local = crate::admin::start(
            listener,
            control.clone(),
            Some(stats_source),
            settings,
            Some(lifecycle.clone()),
            stop_accepting.clone(),
        )
        .map_err(|e| RunError::Admin(e.to_string()))?;
        log::info!("listening name=admin protocol=admin addr={local}");
    }
    if let Some((path, l)) = control_socket {
        upgrade::socket::serve(l, lifecycle.clone(), stop_accepting.clone())
            .map_err(io_err("starting the control socket"))?;
        log::info!("control socket: {}", path.display());
    }

    Ok(Started {
        lifecycle,
        events,
        events_rx,
        stats_tx,
        stats: stats_handle,
        workers,
        exited,
        health_stop,
        health_thread,
        discovery_threads,
        autoscale_thread,
        agg_thread,
        log_thread,
        access_log,
        conn_log_thread,
        connection_log,
        signal_handle,
    })
}

/// Waits for every worker; when one fails, takes the others down too rather than run
/// crippled. Marks each worker in `exited` as it ends.
fn join_workers(
    threads: Vec<std::thread::JoinHandle<io::Result<()>>>,
    handles: &[WorkerHandle],
    exited: &[AtomicBool],
) -> Result<(), RunError> {
    let mut pending: Vec<(usize, std::thread::JoinHandle<io::Result<()>>)> =
        threads.into_iter().enumerate().collect();
    let mut result = Ok(());
    while !pending.is_empty() {
        let mut i = 0;
        while i < pending.len() {
            if !pending[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (id, t) = pending.swap_remove(i);
            if let Some(e) = exited.get(id) {
                e.store(true, Ordering::Relaxed);
            }
            let failure = match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(source)) => {
                    log::error!("worker {id} failed: {source}");
                    Some(RunError::Worker { id, source })
                }
                Err(_) => Some(RunError::Worker {
                    id,
                    source: io::Error::other("worker thread panicked"),
                }),
            };
            if let Some(f) = failure {
                for h in handles {
                    h.send(Ctrl::Shutdown {
                        deadline: Instant::now(),
                    });
                }
                if result.is_ok() {
                    result = Err(f);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

/// The control thread: signals, the watchdog, `STATUS=`, then the teardown once the workers
/// are done.
fn control_loop(s: Started) -> Result<(), RunError> {
    let lc = &s.lifecycle;
    let mut dog = watchdog::interval_from_env()
        .filter(|_| lc.notifier().enabled())
        .map(|t| watchdog::Watchdog::new(t, s.workers));
    if let Some(d) = &dog {
        log::info!(
            "watchdog: WATCHDOG=1 every {:?} while every worker makes progress",
            d.every
        );
    }
    let mut next_status = Instant::now() + STATUS_EVERY;
    let result = loop {
        let now = Instant::now();
        let mut wake = next_status;
        if let Some(d) = &dog {
            wake = wake.min(d.due_at());
        }
        match s
            .events_rx
            .recv_timeout(wake.saturating_duration_since(now))
        {
            Ok(Event::Signal(SignalEvent::Shutdown { again })) => lc.shutdown(again),
            Ok(Event::Signal(SignalEvent::DumpStats)) => {
                let _ = s.stats_tx.send(StatsMsg::Dump);
            }
            Ok(Event::Signal(SignalEvent::Reload)) => {
                match lc.reload(None) {
                    Ok(v) => log::info!("SIGHUP: configuration reloaded (version {v})"),
                    Err(e) => log::error!(
                        "SIGHUP: reload rejected, the running configuration is kept: {}",
                        e.message
                    ),
                }
                s.access_log.reopen();
                s.connection_log.reopen();
            }
            Ok(Event::Signal(SignalEvent::ReopenLogs)) => {
                log::info!("SIGUSR1: reopening log files");
                s.access_log.reopen();
                s.connection_log.reopen();
            }
            Ok(Event::WorkersDone(r)) => break r,
            Ok(Event::Promoted(pid, totals)) => {
                if !totals.is_empty() {
                    s.stats.adopt(totals);
                }
                lc.promoted(pid);
            }
            Ok(Event::PredecessorFinal(totals)) => {
                s.stats.adopt(totals);
                log::info!("upgrade: the previous process finished draining");
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break Ok(()),
        }
        let now = Instant::now();
        if let Some(d) = dog.as_mut() {
            if now >= d.due_at() {
                let exited = &s.exited;
                if d.check(now, |i| {
                    !exited.get(i).is_some_and(|e| e.load(Ordering::Relaxed))
                }) {
                    lc.watchdog_ping();
                }
            }
        }
        if now >= next_status {
            next_status = now + STATUS_EVERY;
            lc.refresh_status();
        }
    };
    s.health_stop.store(true, Ordering::Relaxed);
    let _ = s.health_thread.join();
    let _ = s.autoscale_thread.join();
    for t in s.discovery_threads {
        let _ = t.join();
    }
    lc.finish();
    let _ = s.stats_tx.send(StatsMsg::Stop);
    let _ = s.agg_thread.join();
    // The workers dropped their queues: the writer flushes and ends.
    let _ = s.log_thread.join();
    let _ = s.conn_log_thread.join();
    s.signal_handle.close();
    if result.is_ok() {
        log::info!("shutdown complete");
    }
    result
}
