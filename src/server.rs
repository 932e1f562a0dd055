//! Process orchestration: bind every listener once per worker, start the workers, the stats
//! aggregator and the signal thread, then wait for a graceful shutdown.

use crate::config::ListenerConfig;
use crate::control::{Boot, Control, Running};
use crate::signals::{self, SignalEvent};
use crate::snapshot::{self, Snapshot};
use crate::stats::{Aggregator, StatsConfig, StatsMsg};
use crate::worker::{self, Ctrl, WorkerHandle, WorkerSettings};
use socket2::{Domain, Protocol as SockProto, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: io::Error,
    },
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

/// One `SO_REUSEPORT` listening socket: the kernel spreads connections across the workers'
/// sockets. TCP_NODELAY set here is inherited by accepted sockets on Linux, which saves a
/// syscall per connection.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Binds `workers` sockets for one listener. Port 0 is resolved by the first bind and reused,
/// so every worker listens on the same ephemeral port.
pub fn bind_listener(
    name: &str,
    addr: SocketAddr,
    workers: usize,
    backlog: i32,
) -> Result<Vec<TcpListener>, RunError> {
    let err = |source| RunError::Bind {
        name: name.to_string(),
        addr,
        source,
    };
    let first = bind_reuseport(addr, backlog).map_err(err)?;
    let actual = first.local_addr().map_err(err)?;
    let mut v = vec![first];
    for _ in 1..workers {
        v.push(bind_reuseport(actual, backlog).map_err(err)?);
    }
    Ok(v)
}

pub fn announce(l: &ListenerConfig, actual: SocketAddr) {
    log::info!(
        "listening name={} protocol={} addr={}",
        l.name,
        l.protocol.as_str(),
        actual
    );
}

/// Reads `server.admin_token_file`: the whole file, surrounding whitespace trimmed.
fn read_token(path: &std::path::Path) -> Result<String, RunError> {
    let t = std::fs::read_to_string(path).map_err(|e| {
        RunError::Admin(format!(
            "cannot read admin_token_file {}: {e}",
            path.display()
        ))
    })?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(RunError::Admin(format!(
            "admin_token_file {} is empty",
            path.display()
        )));
    }
    Ok(t)
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
    // Before anything is announced: a script may signal us as soon as it sees a listener.
    let signals = signals::register().map_err(io_err("installing signal handlers"))?;
    if let Some(limit) = crate::sys::raise_nofile_limit() {
        log::debug!("open-file limit {limit}");
    }
    let workers = cfg.server.workers;
    let snap = snapshot::shared(Snapshot::build(&cfg, boot.version, None));
    let token = match &cfg.server.admin_token_file {
        Some(p) => Some(read_token(p)?),
        None => None,
    };

    // Bind everything before starting any thread: a bad address fails start-up cleanly.
    // Listener i takes slot i.
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut running = std::collections::HashMap::new();
    for (slot, l) in cfg.listeners.iter().enumerate() {
        let socks = bind_listener(&l.name, l.bind, workers, cfg.server.backlog)?;
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

    let (mut log_senders, log_thread) = match &cfg.server.access_log {
        Some(path) => {
            let (tx, t) =
                crate::accesslog::start(path, workers).map_err(|source| RunError::Io {
                    what: "opening the access log",
                    source,
                })?;
            log::info!("access log: {}", path.display());
            (tx.into_iter().map(Some).collect::<Vec<_>>(), Some(t))
        }
        None => ((0..workers).map(|_| None).collect(), None),
    };
    let (stats_tx, stats_rx) = crossbeam_channel::unbounded();
    let max_sessions = cfg.server.max_connections.div_ceil(workers).max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // HTTP heads may exceed a regular buffer up to the largest max_header_bytes; the rewritten
    // head adds forwarding headers, hence the slack.
    let large_buffer_size = cfg
        .listeners
        .iter()
        .filter(|l| l.protocol == crate::config::Protocol::Http)
        .map(|l| l.http.max_header_bytes + 4096)
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
    if let Some(addr) = cfg.server.admin {
        let settings = crate::admin::AdminSettings {
            token,
            read_only: cfg.server.admin_read_only,
            max_body: cfg.server.admin_max_body,
            extensions,
        };
        let local = crate::admin::start(addr, control.clone(), Some(stats_source), settings)
            .map_err(|e| RunError::Admin(format!("cannot bind {addr}: {e}")))?;
        log::info!("listening name=admin protocol=admin addr={local}");
    }

    let health_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health_thread = crate::health::start(control.clone(), health_stop.clone())
        .map_err(io_err("starting the health checker"))?;
    let agg_thread = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || aggregator.run())
        .map_err(io_err("starting stats thread"))?;

    let shutdown_timeout = cfg.server.shutdown_timeout;
    let sig_handles = handles.clone();
    let sig_stats = stats_tx.clone();
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
        SignalEvent::Reload => match control.reload() {
            Ok(v) => log::info!("SIGHUP: configuration reloaded (version {v})"),
            Err(e) => log::error!("SIGHUP: reload rejected, the running configuration is kept: {e}"),
        },
    })
    .map_err(io_err("installing signal handlers"))?;

    let mut threads = Vec::with_capacity(workers);
    for setup in setups {
        threads.push(worker::spawn(setup).map_err(io_err("starting worker thread"))?);
    }
    log::info!("switchyard started: {workers} worker(s)");

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
    let _ = stats_tx.send(StatsMsg::Stop);
    let _ = agg_thread.join();
    // The workers dropped their queues: the writer flushes and ends.
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    signal_handle.close();
    if result.is_ok() {
        log::info!("shutdown complete");
    }
    result
}
