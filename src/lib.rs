//! Switchyard: a thread-per-core L4/L7 proxy and load balancer.
//!
//! ```text
//!  config file, admin API, SIGHUP ──► control ──► Snapshot (routes, clusters, selection tables)
//!                                                   │ ArcSwap: load() per connection / request
//!        ┌──────────────────────────────────────────┘
//!        ▼
//!  worker 0 … worker N (one per core): an Engine (epoll via mio today) with its own
//!  SO_REUSEPORT sockets; Slab<Session> by value; buffer pool; timer wheel; upstream pool
//!        │  sessions are I/O-free: they ask for ops, the engine does the I/O, the results
//!        │  come back as completions; a transport (plain TCP) sits between them
//!        └──── crossbeam: StatsMsg::Delta every 100 ms / on demand ──► stats aggregator
//! ```
//!
//! Module map:
//! - the data plane: [`worker`] (one core for both protocols: dispatch, accept, upstreams,
//!   queues, timers), [`session`] (I/O-free state machines: [`session::tcp`],
//!   [`session::http`], the byte [`session::flow`]), [`engine`] (the seam between sessions and
//!   system calls, and [`engine::mio`]), [`transport`] (what sits under a session on each
//!   connection: plain TCP, L4 fault toxics), [`io`] (buffers, splice pipes, the timer wheel, transfer
//!   results), [`net`] (binding and announcing listeners);
//! - the message layer: [`http`] (heads, chunked bodies, rewriting), [`routing`] (HTTP route
//!   matching), [`balance`] (backend selection: selection tables built by the control plane,
//!   pick state per worker), [`proto`] (protocol analyzers: the Foo line sniffer), [`release`]
//!   (versioned services: release strategies decided per request, auto-rollback, the DSU
//!   proxy's API);
//! - the control plane: [`config`] (raw → validated), [`snapshot`] (the routing state),
//!   [`control`] (one change path for the admin API and SIGHUP, persistence), [`admin`],
//!   [`faults`] (L4 toxics, L7 faults, the toxiproxy and chaos-broker APIs),
//!   [`health`], [`stats`], [`accesslog`], [`discovery`] (Docker, DNS and file providers feeding
//!   the control plane), [`lbaas`] (the load-balancer-as-a-service API), [`autoscale`] (scale
//!   hooks and webhooks);
//! - the process: [`server`] (start-up, the control loop and shutdown), [`lifecycle`]
//!   (ready/reload/upgrade/stop as the service manager sees them), [`sd`] (sd_notify, the
//!   watchdog, socket activation), [`upgrade`] (zero-downtime binary upgrade), [`signals`],
//!   [`logging`], [`quick`] (the Foo and FaaS compatible command lines), [`ctl`],
//!   [`demo`] (the demo backend), [`sys`] (operating-system facts), [`heap`] (the allocator,
//!   jemalloc, and its figures).
#![deny(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod autoscale;
pub mod balance;
pub mod build_info;
pub mod check;
pub mod config;
pub mod connlog;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod engine;
pub mod faults;
pub mod health;
pub mod heap;
pub mod http;
pub mod io;
pub mod lbaas;
pub mod lifecycle;
pub mod logging;
pub mod net;
pub mod proto;
pub mod quick;
pub mod release;
pub mod routing;
pub mod sd;
pub mod server;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod stats;
/// The one module allowed `unsafe` (each block with a `// SAFETY:` line): adopting descriptors
/// passed by systemd or by the previous process of a binary upgrade.
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod worker;
