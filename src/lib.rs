//! Switchyard: a thread-per-core L4/L7 proxy and load balancer.
//!
//! ```text
//!  config file ──► config::load → validate → Snapshot ──► ArcSwap<Snapshot>
//!                                                            │ load() per connection
//!        ┌───────────────────────────┬───────────────────────┘
//!        ▼                           ▼
//!  worker 0: mio::Poll,        worker N: own SO_REUSEPORT sockets, Slab<Session>,
//!  Slab<TcpSession>, buffer    buffer pool, timer wheel, local counters
//!  pool, timer wheel, counters      │
//!        └──── crossbeam: StatsMsg::Delta every 100 ms / on demand ──► stats aggregator
//! ```
//!
//! Module map: [`config`] (raw → validated), [`snapshot`] (the routing state), [`worker`] (the
//! event loop), [`tcp`] (the L4 pipe), [`http`] (HTTP/1.1 message layer), [`balance`] (backend
//! selection), [`buffer`], [`timer`],
//! [`token`], [`ready`] (event-loop plumbing), [`routing`] (HTTP route matching), [`release`] (versioned services and
//! their release strategies), [`stats`], [`signals`], [`server`] (start-up and
//! shutdown), [`quick`] (the Foo-compatible command line), [`demo_backend`].
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod buffer;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo_backend;
pub mod health;
pub mod http;
pub mod logging;
pub mod quick;
pub mod ready;
pub mod release;
pub mod routing;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod tcp;
pub mod timer;
pub mod token;
pub mod worker;
