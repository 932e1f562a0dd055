//! Process orchestration: bind every listener once per worker, start the workers, the stats
//! aggregator and the signal thread, then wait for a graceful shutdown.

use crate::control::{Boot, Control, Running};
use crate::net::listen::{announce, bind_listener};
use crate::signals::{self, SignalEvent};
use crate::snapshot::{self, Snapshot};
use crate::stats::{Aggregator, StatsConfig, StatsMsg};
use crate::worker::{self, Ctrl, WorkerHandle, WorkerSettings};
use std::io;
use std::net::TcpListener;
use std::time::Instant;

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
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

/// Large buffers per worker for HTTP request heads that outgrow a regular buffer (rare: only
/// while such a head is being read and sent).
const LARGE_BUFFERS_PER_WORKER: usize = 64;

/// How long start-up waits for the discovery providers' first look.
const DISCOVERY_FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads `server.admin_token_file`: the whole file, surrounding whitespace trimmed.
fn read_token(path: &std::path::Path) -> Result<String, RunError> {
    crate::check::token_file(path).map_err(|e| RunError::Admin(format!("admin_token_file: {e}")))
}

/// Runs the proxy until SIGTERM/SIGINT and the drain that follows. `config_path` is what
/// SIGHUP reloads (none in quick mode). `stats`: how stats are served and kept (quick mode
/// sets it; in config mode the recovery file defaults to `state_dir/stats.json`).
pub fn run(
    boot: Boot,
    config_path: Option<std::path::PathBuf>,
    stats: StatsConfig,
) -> Result<(), RunError> {
    run_with(boot, config_path, stats, Vec::new())
}

/// [`run`], with compatibility APIs served on the admin address (`extensions`).
pub fn run_with(
    boot: Boot,
    config_path: Option<std::path::PathBuf>,
    stats: StatsConfig,
    extensions: Vec<std::sync::Arc<dyn crate::admin::Extension>>,
) -> Result<(), RunError> {
    let cfg = boot.config.clone();
    let shown_path = config_path.as_ref().map(|p| p.display().to_string());
    crate::logging::apply_config(cfg.server.log_level);
    // Before anything is announced: a script may signal us as soon as it sees a listener.
    let signals = signals::register().map_err(io_err("installing signal handlers"))?;
    if let Some(limit) = crate::sys::raise_nofile_limit() {
        log::debug!("open-file limit {limit}");
    }
    let workers = cfg.server.workers;
    let mut first = Snapshot::build(&cfg, boot.version, None);
    first.faas_stats = crate::discovery::faas_stats_body(&cfg);
    let snap = snapshot::shared(first);
    let token = match &cfg.server.admin_token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };

    // Bind everything before starting any thread: a bad address fails start-up cleanly.
    // Listener i takes slot i.
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut running = std::collections::HashMap::new();
    for (slot, l) in cfg.listeners.iter().enumerate() {
        // SO_REUSEPORT would let us join another process's group on the same address
        // silently: refuse that unless the config says it is meant.
        crate::check::probe_bind(l.bind, l.share).map_err(|m| RunError::Refused {
            name: l.name.clone(),
            message: m,
        })?;
        let socks = bind_listener(&l.name, l.bind, workers, l.backlog(&cfg.server))?;
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
        for (w, s) in socks.into_iter().enumerate() {
            per_worker[w].push(s);
        }
    }

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
    let mut handles: Vec<WorkerHandle> = Vec::with_capacity(workers);
    let mut setups = Vec::with_capacity(workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let settings = WorkerSettings {
            id,
            buffer_size: cfg.server.buffer_size,
            buffers: cfg.server.buffers_per_worker,
            pipes: cfg.server.splice_pipes_per_worker,
            large_buffer_size,
            large_buffers: if large_buffer_size > 0 {
                LARGE_BUFFERS_PER_WORKER
            } else {
                0
            },
            access_log: log_senders.get_mut(id).and_then(Option::take),
            max_sessions,
            pin_cpu: cfg.server.pin_workers.then_some(id % cpus),
            stats_minimal: cfg.server.stats_minimal,
        };
        let (setup, handle) = worker::prepare(settings, listeners, snap.clone(), stats_tx.clone())
            .map_err(io_err("creating worker poll"))?;
        setups.push(setup);
        handles.push(handle);
    }

    // Quick mode passes -recovery-path; config mode keeps stats next to the runtime state.
    let stats_opts = StatsConfig {
        recovery_path: stats
            .recovery_path
            .clone()
            .or_else(|| cfg.server.state_dir.as_ref().map(|d| d.join("stats.json"))),
        ..stats
    };
    let mut aggregator = Aggregator::new(
        stats_rx,
        stats_tx.clone(),
        handles.clone(),
        snap.clone(),
        &stats_opts,
    );
    let autoscale_status = std::sync::Arc::new(crate::autoscale::status::Status::default());
    aggregator.add_section(autoscale_status.clone());
    let stats_handle = aggregator.handle();
    let stats_source: std::sync::Arc<dyn crate::admin::StatsSource> =
        std::sync::Arc::new(aggregator.handle());

    let control = std::sync::Arc::new(Control::new(
        boot,
        running,
        snap.clone(),
        handles.clone(),
        config_path,
    ));
    let triggers = crate::release::controller::start(control.clone())
        .map_err(io_err("starting the release controller"))?;
    aggregator.attach_release(triggers, control.releases());
    let mut admin_local = None;
    let registry = std::sync::Arc::new(crate::discovery::Registry::new(&cfg.discovery));
    if let Some(addr) = cfg.server.admin {
        let settings = crate::admin::AdminSettings {
            token,
            read_only: cfg.server.admin_read_only,
            max_body: cfg.server.admin_max_body,
            extensions,
            discovery: Some(registry.clone()),
        };
        let local = crate::admin::start(addr, control.clone(), Some(stats_source), settings)
            .map_err(|e| RunError::Admin(format!("cannot bind {addr}: {e}")))?;
        log::info!("listening name=admin protocol=admin addr={local}");
        admin_local = Some(local);
    }
    if cfg.listeners.is_empty() {
        log::info!("no listeners configured: waiting for listeners and LBaaS instances through the admin API");
    }

    let health_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        let limit = longest + std::time::Duration::from_millis(500);
        while control.unchecked() > 0 && t0.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(5));
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
        stats_handle,
        autoscale_status,
        crate::autoscale::Settings {
            admin: admin_local,
            token_file: cfg.server.admin_token_file.clone(),
        },
        health_stop.clone(),
    )
    .map_err(io_err("starting the autoscaler"))?;
    let agg_thread = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || aggregator.run())
        .map_err(io_err("starting stats thread"))?;

    let shutdown_timeout = cfg.server.shutdown_timeout;
    let sig_handles = handles.clone();
    let sig_stats = stats_tx.clone();
    let sig_log = access_log.clone();
    control.on_server_reload(Box::new(move |s: &crate::config::ServerConfig| {
        crate::logging::apply_config(s.log_level);
        access_log.set(s.access_log.clone());
    }));
    let signal_handle = signals::spawn(signals, move |ev| match ev {
        SignalEvent::Shutdown { again } => {
            let deadline = if again {
                log::warn!("second shutdown signal: closing all connections now");
                Instant::now()
            } else {
                log::info!(
                    "shutdown requested: no new connections, draining for up to {shutdown_timeout:?}"
                );
                Instant::now() + shutdown_timeout
            };
            for h in &sig_handles {
                h.send(Ctrl::Shutdown { deadline });
            }
        }
        SignalEvent::DumpStats => {
            let _ = sig_stats.send(StatsMsg::Dump);
        }
        SignalEvent::Reload => {
            match control.reload() {
                Ok(v) => log::info!("SIGHUP: configuration reloaded (version {v})"),
                Err(e) => {
                    log::error!("SIGHUP: reload rejected, the running configuration is kept: {e}")
                }
            }
            sig_log.reopen();
        }
        SignalEvent::ReopenLogs => {
            log::info!("SIGUSR1: reopening log files");
            sig_log.reopen();
        }
    })
    .map_err(io_err("installing signal handlers"))?;

    let mut threads = Vec::with_capacity(workers);
    for setup in setups {
        threads.push(worker::spawn(setup).map_err(io_err("starting worker thread"))?);
    }
    log::info!(
        "switchyard {} ({}) started: config={} engine=mio workers={workers}",
        crate::build_info::VERSION,
        crate::build_info::COMMIT,
        shown_path.as_deref().unwrap_or("(command line)")
    );

    let mut result = Ok(());
    for (id, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                log::error!("worker {id} failed: {source}");
                // Take the others down too rather than run crippled.
                for h in &handles {
                    h.send(Ctrl::Shutdown {
                        deadline: Instant::now(),
                    });
                }
                if result.is_ok() {
                    result = Err(RunError::Worker { id, source });
                }
            }
            Err(_) => {
                result = Err(RunError::Worker {
                    id,
                    source: io::Error::other("worker thread panicked"),
                })
            }
        }
    }
    health_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = health_thread.join();
    let _ = autoscale_thread.join();
    for t in discovery_threads {
        let _ = t.join();
    }
    let _ = stats_tx.send(StatsMsg::Stop);
    let _ = agg_thread.join();
    // The workers dropped their queues: the writer flushes and ends.
    let _ = log_thread.join();
    signal_handle.close();
    if result.is_ok() {
        log::info!("shutdown complete");
    }
    result
}
