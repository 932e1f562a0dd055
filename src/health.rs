//! Active health checks: one thread, one `mio::Poll`, every check non-blocking (TCP connect,
//! or HTTP GET with the status line checked), each bounded by its timeout. Far from the
//! workers: a verdict change goes through [`Control::report_check`], which publishes a new
//! snapshot (the backend leaves or rejoins the rotation).
//!
//! Per backend: `fall` consecutive failures take an up backend down, `rise` consecutive
//! successes bring a down one back. Checks run every `interval`, each moved by up to
//! ±`jitter` × interval so that many backends (and many proxies) do not probe in lockstep.

use crate::config::health::{CheckKind, HealthConfig};
use crate::control::{CheckTarget, Control};
use crate::snapshot::HealthState;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the checker looks for config changes (and moves slow starts along).
const RECONCILE: Duration = Duration::from_millis(200);
/// The most of a response the checker reads (the status line is all it needs).
const MAX_RESPONSE: usize = 4096;

enum Phase {
    Connecting,
    Writing { sent: usize },
    Reading,
}

struct Probe {
    stream: TcpStream,
    phase: Phase,
    started: Instant,
    deadline: Instant,
    request: Vec<u8>,
    response: Vec<u8>,
}

struct Target {
    cluster: String,
    backend: SocketAddr,
    check: HealthConfig,
    state: HealthState,
    /// Consecutive results of the current streak (positive: successes, negative: failures).
    streak: i64,
    next: Instant,
    probe: Option<Probe>,
}

/// A small xorshift generator for jitter (no crate, no global state).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Checker {
    control: Arc<Control>,
    poll: Poll,
    targets: Vec<Target>,
    /// Config version the targets were built from.
    version: u64,
    rng: Rng,
    stop: Arc<AtomicBool>,
}

/// Starts the checker thread; it exits when `stop` is set (checked at least every 200 ms).
pub fn start(
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
        | 1;
    let mut c = Checker {
        control,
        poll: Poll::new()?,
        targets: Vec::new(),
        version: 0,
        rng: Rng(seed),
        stop,
    };
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || c.run())
}

impl Checker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_reconcile = Instant::now() - RECONCILE;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now.duration_since(last_reconcile) >= RECONCILE {
                self.reconcile(now);
                self.control.tick();
                last_reconcile = now;
            }
            self.start_due(now);
            let timeout = self.next_wakeup(now).min(RECONCILE);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("health: poll failed: {e}; checks stop");
                    return;
                }
            }
            for ev in events.iter() {
                self.advance(ev.token().0);
            }
            self.expire(Instant::now());
        }
    }

    /// Brings the target list in line with the running config, keeping the state of
    /// backends whose check did not change.
    fn reconcile(&mut self, now: Instant) {
        let (version, wanted) = self.control.health_targets();
        if version == self.version {
            return;
        }
        self.version = version;
        let mut old: HashMap<(String, SocketAddr), Target> = self
            .targets
            .drain(..)
            .map(|t| ((t.cluster.clone(), t.backend), t))
            .collect();
        for CheckTarget {
            cluster,
            backend,
            check,
        } in wanted
        {
            match old.remove(&(cluster.clone(), backend)) {
                Some(mut t) if t.check == check => {
                    t.probe = None; // tokens are renumbered below; an in-flight probe restarts
                    t.next = t.next.min(now + check.interval);
                    self.targets.push(t);
                }
                _ => {
                    // New (or its check changed): the state the control plane holds (unknown
                    // for a backend never checked: checked at once), first check soon.
                    let state = self.control.health_state(&cluster, backend);
                    let first = if state == HealthState::Unknown {
                        Duration::ZERO
                    } else {
                        check
                            .interval
                            .mul_f64(self.rng.next_f64() * 0.5)
                            .min(Duration::from_millis(500))
                    };
                    self.targets.push(Target {
                        cluster,
                        backend,
                        check,
                        state,
                        streak: 0,
                        next: now + first,
                        probe: None,
                    });
                }
            }
        }
    }

    fn next_wakeup(&self, now: Instant) -> Duration {
        self.targets
            .iter()
            .map(|t| match &t.probe {
                Some(p) => p.deadline,
                None => t.next,
            })
            .min()
            .map_or(RECONCILE, |at| at.saturating_duration_since(now))
    }

    fn start_due(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.probe.is_some() || t.next > now {
                continue;
            }
            let addr = match t.check.port {
                Some(p) => SocketAddr::new(t.backend.ip(), p),
                None => t.backend,
            };
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::WRITABLE | Interest::READABLE,
                    ) {
                        self.finish(i, false, &format!("cannot watch the socket: {e}"));
                        continue;
                    }
                    let t = &mut self.targets[i];
                    let host = t
                        .check
                        .host
                        .clone()
                        .unwrap_or_else(|| t.backend.to_string());
                    let request = format!(
                        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health\r\n\
                         Accept: */*\r\nConnection: close\r\n\r\n",
                        t.check.path
                    )
                    .into_bytes();
                    t.probe = Some(Probe {
                        stream,
                        phase: Phase::Connecting,
                        started: now,
                        deadline: now + t.check.timeout,
                        request,
                        response: Vec::new(),
                    });
                }
                Err(e) => self.finish(i, false, &format!("connect: {e}")),
            }
        }
    }

    /// Drives probe `i` after a readiness event.
    fn advance(&mut self, i: usize) {
        let Some(t) = self.targets.get_mut(i) else {
            return;
        };
        let kind = t.check.kind;
        let Some(p) = t.probe.as_mut() else {
            return;
        };
        loop {
            match p.phase {
                Phase::Connecting => {
                    match p.stream.take_error() {
                        Ok(Some(e)) | Err(e) => {
                            return self.finish(i, false, &format!("connect: {e}"))
                        }
                        Ok(None) => {}
                    }
                    match p.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotConnected => return, // not yet
                        Err(e) => return self.finish(i, false, &format!("connect: {e}")),
                    }
                    if kind == CheckKind::Tcp {
                        return self.finish(i, true, "connected");
                    }
                    p.phase = Phase::Writing { sent: 0 };
                }
                Phase::Writing { sent } => match p.stream.write(&p.request[sent..]) {
                    Ok(n) if sent + n == p.request.len() => p.phase = Phase::Reading,
                    Ok(n) => p.phase = Phase::Writing { sent: sent + n },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return self.finish(i, false, &format!("send: {e}")),
                },
                Phase::Reading => {
                    let mut buf = [0u8; 1024];
                    match p.stream.read(&mut buf) {
                        Ok(0) => {
                            let verdict = status_of(&p.response);
                            return self.judge(i, verdict);
                        }
                        Ok(n) => {
                            p.response.extend_from_slice(&buf[..n]);
                            let verdict = status_of(&p.response);
                            if verdict.is_some() || p.response.len() >= MAX_RESPONSE {
                                return self.judge(i, verdict);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return self.finish(i, false, &format!("receive: {e}")),
                    }
                }
            }
        }
    }

    fn judge(&mut self, i: usize, status: Option<u16>) {
        match status {
            Some(s) if self.targets[i].check.accepts(s) => {
                self.finish(i, true, &format!("status {s}"))
            }
            Some(s) => self.finish(i, false, &format!("status {s} not expected")),
            None => self.finish(i, false, "no HTTP status line in the response"),
        }
    }

    fn expire(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if self.targets[i]
                .probe
                .as_ref()
                .is_some_and(|p| now >= p.deadline)
            {
                let t = &self.targets[i];
                let msg = format!("timeout after {:?}", t.check.timeout);
                self.finish(i, false, &msg);
            }
        }
    }

    /// Ends probe `i` (if any) with a result, updates the streak and reports it.
    fn finish(&mut self, i: usize, ok: bool, detail: &str) {
        let now = Instant::now();
        let jitter = self.rng.next_f64() * 2.0 - 1.0;
        let Some(t) = self.targets.get_mut(i) else {
            return;
        };
        let took = match t.probe.take() {
            Some(mut p) => {
                let _ = self.poll.registry().deregister(&mut p.stream);
                now.duration_since(p.started)
            }
            None => Duration::ZERO,
        };
        t.streak = match (ok, t.streak) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        match t.state {
            // The first check decides on its own (HAProxy's init-state).
            HealthState::Unknown => {
                t.state = if ok {
                    HealthState::Up
                } else {
                    HealthState::Down
                }
            }
            HealthState::Up if -t.streak >= i64::from(t.check.fall) => t.state = HealthState::Down,
            HealthState::Down if t.streak >= i64::from(t.check.rise) => t.state = HealthState::Up,
            _ => {}
        }
        let interval = t.check.interval.as_secs_f64() * (1.0 + t.check.jitter * jitter);
        t.next = now + Duration::from_secs_f64(interval.max(0.001));
        self.control
            .report_check(&t.cluster, t.backend, ok, detail, took, t.state);
    }
}

/// The status code of an HTTP response, once its status line is complete.
fn status_of(resp: &[u8]) -> Option<u16> {
    let end = resp.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&resp[..end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 Busy\r\nx"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), None); // incomplete
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000 OK\r\n"), None);
    }
}
