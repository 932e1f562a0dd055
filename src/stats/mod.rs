//! Statistics: workers count into plain local structs and ship deltas over a crossbeam channel
//! to one aggregator thread, every [`FLUSH_INTERVAL`] and on demand (a dump asks every worker
//! to flush first, so a dump is never stale). No atomics or locks on the hot path.
//!
//! The SIGUSR2 dump is one JSON line on stdout. (The Foo-compatible keys and the Prometheus
//! exposition arrive with the observability work; they extend this tree, they don't replace it.)

use crate::worker::{Ctrl, WorkerHandle};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::time::{Duration, Instant};

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a dump waits for workers to answer a flush request.
const FLUSH_WAIT: Duration = Duration::from_millis(250);

/// Declares a counter struct once: fields, merge and JSON come from the same list.
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: u64),* }
        impl $name {
            pub fn merge(&mut self, o: &Self) { $(self.$field += o.$field;)* }
            pub fn is_zero(&self) -> bool { *self == Self::default() }
            pub fn to_json(&self, out: &mut Map<String, Value>) {
                $(out.insert(stringify!($field).to_string(), Value::from(self.$field));)*
            }
        }
    };
}

counters! {
    /// TCP proxy counters (one instance per worker; deltas merged by the aggregator).
    pub struct TcpCounters {
        /// Client connections accepted.
        accepted,
        /// Client connections closed (for any reason).
        closed,
        bytes_client_to_backend,
        bytes_backend_to_client,
        /// Backend connect attempts that failed (refused, unreachable, error).
        connect_failed,
        /// Connect attempts after the first for one client connection.
        connect_retries,
        connect_timeouts,
        idle_timeouts,
        /// Client connections closed because no backend could be reached.
        no_backend,
        backend_resets,
        client_resets,
        /// Times a session had to wait for a pool buffer (back-pressure).
        buffer_waits,
        /// Times a bounded loop hit its bound and yielded (fairness).
        loop_bound_hits,
        accept_errors,
        /// Sessions force-closed at the shutdown deadline.
        shutdown_aborted,
        /// Bulk flows handed to a kernel pipe (zero-copy splice).
        splice_starts,
    }
}

counters! {
    /// HTTP counters (one instance per worker).
    pub struct HttpCounters {
        /// Request heads received and accepted.
        requests,
        responses_1xx,
        responses_2xx,
        responses_3xx,
        responses_4xx,
        responses_5xx,
        /// Malformed or refused requests (400/414/431/505), smuggling attempts included.
        bad_requests,
        /// No route (404) or FaaS routing errors (400).
        no_route,
        /// No backend could be had (503).
        no_backend,
        /// The backend failed: unreachable, broken or malformed response (502, or an aborted
        /// response).
        upstream_errors,
        /// Backend timeouts (504).
        timeouts,
        /// Requests sent again after a reused upstream connection died.
        retries,
        /// Upstream connections opened.
        upstream_new,
        /// Requests sent on a pooled upstream connection.
        upstream_reused,
        /// Access-log lines dropped because the writer fell behind.
        access_log_dropped,
    }
}

impl HttpCounters {
    /// Counts a response status by class.
    pub fn count_status(&mut self, status: u16) {
        match status / 100 {
            1 => self.responses_1xx += 1,
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            5 => self.responses_5xx += 1,
            _ => {}
        }
    }
}

// Deltas are the common message; boxing them would allocate on every flush for no gain.
#[allow(clippy::large_enum_variant)]
pub enum StatsMsg {
    Delta {
        worker: usize,
        /// The highest flush request this delta answers (0 for periodic ones).
        seq: u64,
        tcp: TcpCounters,
        http: HttpCounters,
    },
    /// Print the dump to stdout (SIGUSR2).
    Dump,
    Stop,
}

pub struct Aggregator {
    rx: Receiver<StatsMsg>,
    workers: Vec<WorkerHandle>,
    answered: Vec<u64>,
    seq: u64,
    tcp: TcpCounters,
    http: HttpCounters,
    started: Instant,
}

impl Aggregator {
    pub fn new(rx: Receiver<StatsMsg>, workers: Vec<WorkerHandle>) -> Aggregator {
        let n = workers.len();
        Aggregator {
            rx,
            workers,
            answered: vec![0; n],
            seq: 0,
            tcp: TcpCounters::default(),
            http: HttpCounters::default(),
            started: Instant::now(),
        }
    }

    pub fn run(mut self) {
        loop {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(StatsMsg::Delta {
                    worker,
                    seq,
                    tcp,
                    http,
                }) => self.apply(worker, seq, &tcp, &http),
                Ok(StatsMsg::Dump) => self.dump(),
                Ok(StatsMsg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn apply(&mut self, worker: usize, seq: u64, tcp: &TcpCounters, http: &HttpCounters) {
        self.tcp.merge(tcp);
        self.http.merge(http);
        if let Some(a) = self.answered.get_mut(worker) {
            *a = (*a).max(seq);
        }
    }

    /// Asks every worker for its latest counters, waits briefly for the answers, then prints.
    fn dump(&mut self) {
        self.seq += 1;
        let seq = self.seq;
        for w in &self.workers {
            w.send(Ctrl::FlushStats(seq));
        }
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut pending_dumps = 0;
        while self.answered.iter().any(|&a| a < seq) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(StatsMsg::Delta {
                    worker,
                    seq,
                    tcp,
                    http,
                }) => self.apply(worker, seq, &tcp, &http),
                Ok(StatsMsg::Dump) => pending_dumps += 1,
                Ok(StatsMsg::Stop) | Err(_) => break,
            }
        }
        let line = self.to_json().to_string();
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the proxy down; there is nobody to tell.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        if pending_dumps > 0 {
            self.dump();
        }
    }

    pub fn to_json(&self) -> Value {
        let mut tcp = Map::new();
        self.tcp.to_json(&mut tcp);
        tcp.insert(
            "active".into(),
            Value::from(self.tcp.accepted.saturating_sub(self.tcp.closed)),
        );
        let mut http = Map::new();
        self.http.to_json(&mut http);
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "workers": self.workers.len(),
            "tcp": tcp,
            "http": http,
        })
    }
}

/// The sending half workers hold.
pub type StatsSender = Sender<StatsMsg>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_json() {
        let mut a = TcpCounters {
            accepted: 2,
            closed: 1,
            ..Default::default()
        };
        a.merge(&TcpCounters {
            accepted: 3,
            no_backend: 1,
            ..Default::default()
        });
        assert_eq!(a.accepted, 5);
        assert_eq!(a.no_backend, 1);
        let mut m = Map::new();
        a.to_json(&mut m);
        assert_eq!(m["accepted"], 5);
        assert_eq!(m["closed"], 1);
        assert!(!a.is_zero());
        assert!(TcpCounters::default().is_zero());
    }
}
