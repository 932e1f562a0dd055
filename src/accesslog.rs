//! The HTTP access log: one line per request, JSON (every field) or NCSA combined, written
//! by its own thread.
//!
//! Each worker owns a bounded queue of fixed-size [`Record`]s (preallocated slots: sending
//! copies a record, never allocates, never blocks). When a queue is full the record is
//! dropped and counted (`http.access_log_dropped`): a slow disk costs log lines, never latency.
//! The writer thread drains all queues, formats, and flushes at least every 200 ms and when the
//! workers are gone.
//!
//! The writer always runs; [`Sink::enabled`] tells the workers whether anyone wants the lines,
//! so `access_log` can be switched on, off or moved by a reload ([`AccessLog::set`]), and the
//! file is reopened on SIGUSR1 / SIGHUP ([`AccessLog::reopen`]) for logrotate: lines already
//! queued go to the old file, later ones to the new, none is lost.

use crate::config::{AccessLogConfig, LogFormat};
use crossbeam_channel::{Receiver, Select, Sender};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Records queued per worker before new ones are dropped.
pub const QUEUE_LEN: usize = 4096;
/// Longest method, path and host kept (longer ones are truncated, marked with `…`).
pub const MAX_METHOD: usize = 16;
pub const MAX_PATH: usize = 256;
pub const MAX_HOST: usize = 96;
/// Listener and cluster names are at most 64 bytes (config validation).
pub const MAX_NAME: usize = 64;

/// A short byte string kept by value (no allocation on the hot path).
#[derive(Clone, Copy)]
pub struct Short<const N: usize> {
    bytes: [u8; N],
    len: u16,
    truncated: bool,
}

impl<const N: usize> Short<N> {
    pub const EMPTY: Self = Short {
        bytes: [0; N],
        len: 0,
        truncated: false,
    };
    pub fn set(&mut self, v: &[u8]) {
        let n = v.len().min(N);
        self.bytes[..n].copy_from_slice(&v[..n]);
        self.len = n as u16;
        self.truncated = v.len() > N;
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes[..self.len as usize]).into_owned();
        if self.truncated {
            s.push('…');
        }
        s
    }
}

/// One finished request, copied by value into the queue.
#[derive(Clone, Copy)]
pub struct Record {
    /// Completion time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub client: IpAddr,
    pub method: Short<MAX_METHOD>,
    pub path: Short<MAX_PATH>,
    pub host: Short<MAX_HOST>,
    pub listener: Short<MAX_NAME>,
    /// Empty when the request never reached a cluster (no route, bad request).
    pub cluster: Short<MAX_NAME>,
    /// The matched route's index in its listener, when a route (not the fallback) matched.
    pub route: Option<u16>,
    /// The X-Request-Id the proxy sent upstream (0: none was generated).
    pub request_id: u64,
    /// 0 when no response was sent (the client went away first).
    pub status: u16,
    /// Bytes sent to the client (head and body).
    pub bytes: u64,
    pub duration_us: u64,
    /// Upstream connect time (0 for a pooled connection).
    pub connect_us: u64,
    /// Request start to the first response byte from the backend.
    pub first_byte_us: Option<u64>,
    /// The upstream came from the keep-alive pool.
    pub reused: bool,
    /// The backend of the last attempt (also when it failed: 502, 504).
    pub backend: Option<SocketAddr>,
    /// Its index in the cluster's rotation, kept when the upstream is dropped on a failure.
    pub backend_index: Option<u32>,
    pub worker: u16,
    /// The L7 fault injected into this request, if any.
    pub fault: crate::faults::FaultCode,
}

impl Record {
    pub fn new(client: IpAddr) -> Record {
        Record {
            time_ms: 0,
            client,
            method: Short::EMPTY,
            path: Short::EMPTY,
            host: Short::EMPTY,
            listener: Short::EMPTY,
            cluster: Short::EMPTY,
            route: None,
            request_id: 0,
            status: 0,
            bytes: 0,
            duration_us: 0,
            connect_us: 0,
            first_byte_us: None,
            reused: false,
            backend: None,
            backend_index: None,
            worker: 0,
            fault: crate::faults::FaultCode::None,
        }
    }

    /// Starts a record for a new request of `client`, in place: every field is reset, but the
    /// fixed byte arrays are not cleared (their lengths say what is in them), so recycling a
    /// record costs a few stores, not a 600-byte copy.
    pub fn reset(&mut self, client: IpAddr) {
        self.time_ms = 0;
        self.client = client;
        for len in [
            &mut self.method.len,
            &mut self.path.len,
            &mut self.host.len,
            &mut self.listener.len,
            &mut self.cluster.len,
        ] {
            *len = 0;
        }
        self.method.truncated = false;
        self.path.truncated = false;
        self.host.truncated = false;
        self.listener.truncated = false;
        self.cluster.truncated = false;
        self.route = None;
        self.request_id = 0;
        self.status = 0;
        self.bytes = 0;
        self.duration_us = 0;
        self.connect_us = 0;
        self.first_byte_us = None;
        self.reused = false;
        self.backend = None;
        self.backend_index = None;
        self.worker = 0;
        self.fault = crate::faults::FaultCode::None;
    }

    /// Copies the method, path and host of a request head (truncating what does not fit).
    pub fn set_request(&mut self, method: &[u8], path: &[u8], host: &[u8]) {
        self.method.set(method);
        self.path.set(path);
        self.host.set(host);
    }

    fn time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.time_ms)
    }

    fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        let ms = |us: u64| us as f64 / 1000.0;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time()).to_string(),
            "request_id": (self.request_id != 0).then(|| format!("{:016x}", self.request_id)),
            "client": self.client.to_string(),
            "listener": opt(self.listener.text()),
            "host": opt(self.host.text()),
            "method": self.method.text(),
            "path": self.path.text(),
            "status": self.status,
            "bytes": self.bytes,
            "route": self.route,
            "cluster": opt(self.cluster.text()),
            "backend": self.backend.map(|b| b.to_string()),
            "connect_ms": self.backend.map(|_| ms(self.connect_us)),
            "reused": self.backend.map(|_| self.reused),
            "first_byte_ms": self.first_byte_us.map(ms),
            "duration_ms": ms(self.duration_us),
            "worker": self.worker,
            "fault": self.fault.name(),
        });
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }

    /// NCSA combined: `client - - [time] "METHOD path HTTP/1.1" status bytes "-" "-"`, then
    /// (as nginx's `$request_time` habit) the host, request id, backend and total seconds.
    fn write_combined(&self, out: &mut impl Write) -> io::Result<()> {
        // 30/Nov/2026:05:33:14 +0000 from the RFC 3339 form (UTC).
        let t = humantime::format_rfc3339_seconds(self.time()).to_string();
        let (date, clock) = t.split_once('T').unwrap_or((&t, ""));
        let mut d = date.splitn(3, '-');
        let (y, m, day) = (
            d.next().unwrap_or(""),
            d.next().unwrap_or(""),
            d.next().unwrap_or(""),
        );
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mon = m
            .parse::<usize>()
            .ok()
            .and_then(|i| MONTHS.get(i.wrapping_sub(1)))
            .copied()
            .unwrap_or("Jan");
        let clock = clock.trim_end_matches('Z');
        let quoted = |s: String| s.replace('\\', "\\\\").replace('"', "\\\"");
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        writeln!(
            out,
            "{} - - [{day}/{mon}/{y}:{clock} +0000] \"{} {} HTTP/1.1\" {} {} \"-\" \"-\" host={} rid={} backend={} rt={:.3}{}",
            self.client,
            quoted(self.method.text()),
            quoted(self.path.text()),
            self.status,
            self.bytes,
            dash(quoted(self.host.text())),
            if self.request_id == 0 {
                "-".to_string()
            } else {
                format!("{:016x}", self.request_id)
            },
            self.backend.map_or("-".to_string(), |b| b.to_string()),
            self.duration_us as f64 / 1e6,
            self.fault
                .name()
                .map_or(String::new(), |f| format!(" fault={f}")),
        )
    }
}

impl Line for Record {
    const WHAT: &'static str = "access log";
    fn write<W: Write>(&self, format: LogFormat, out: &mut W) -> io::Result<()> {
        match format {
            LogFormat::Json => self.write_json(out),
            // `text` is refused for the access log by the config; combined is its text form.
            LogFormat::Combined | LogFormat::Text => self.write_combined(out),
        }
    }
}

/// A fixed-size record a log file is made of (the access log's [`Record`], the connection
/// log's [`crate::connlog::ConnRecord`]): copied by value through the queues.
pub trait Line: Copy + Send + 'static {
    /// How the log is named in messages ("access log").
    const WHAT: &'static str;
    fn write<W: Write>(&self, format: LogFormat, out: &mut W) -> io::Result<()>;
}

/// The data plane's one call at the end of a request: names, times. Copies into the record's
/// fixed fields; no allocation.
pub fn finish(
    rec: &mut Record,
    snap: &crate::snapshot::Snapshot,
    listener: u32,
    cluster: Option<u32>,
    started: std::time::Instant,
    first_byte: Option<std::time::Instant>,
    now: std::time::Instant,
) {
    if let Some(l) = snap.listener(listener as usize) {
        rec.listener.set(l.name.as_bytes());
    }
    if let Some(c) = cluster.and_then(|c| snap.clusters.get(c as usize)) {
        rec.cluster.set(c.name.as_bytes());
    }
    rec.duration_us = now.saturating_duration_since(started).as_micros() as u64;
    rec.first_byte_us = first_byte.map(|t| t.saturating_duration_since(started).as_micros() as u64);
}

/// The worker's queue was full (or the writer gone): the record was dropped.
#[derive(Debug, Clone, Copy)]
pub struct QueueFull;

/// A worker's end: a bounded queue and the switch that says whether lines are wanted.
pub struct Sink<R = Record> {
    tx: Sender<R>,
    on: Arc<AtomicBool>,
}

impl<R: Line> Sink<R> {
    /// An access log is configured (checked before a record is built).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }
    /// Queues a record; `Err` when the queue is full (the record is dropped).
    #[inline]
    pub fn try_send(&self, r: R) -> Result<(), QueueFull> {
        self.tx.try_send(r).map_err(|_| QueueFull)
    }
}

enum Ctl {
    Reopen,
    /// The new setting, and where to say it is in effect.
    Set(Option<AccessLogConfig>, Sender<()>),
}

/// How long a reload waits for the writer to switch files (an open on a slow disk).
const SWITCH_WAIT: Duration = Duration::from_secs(2);

/// The control end, for the signal thread and reloads.
#[derive(Clone)]
pub struct AccessLog {
    ctl: Sender<Ctl>,
}

impl AccessLog {
    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.ctl.send(Ctl::Reopen);
    }
    /// Switches to another file or format, or off (a reload changed `access_log`), and waits
    /// (at most [`SWITCH_WAIT`]) until the writer has: requests that begin after a reload's
    /// answer are logged by the new setting.
    pub fn set(&self, cfg: Option<AccessLogConfig>) {
        let (done, applied) = crossbeam_channel::bounded(1);
        // Disconnected: the writer dropped the sender (done, or gone) — nothing to wait for.
        if self.ctl.send(Ctl::Set(cfg, done)).is_ok()
            && applied.recv_timeout(SWITCH_WAIT)
                == Err(crossbeam_channel::RecvTimeoutError::Timeout)
        {
            log::warn!("log switch: the writer did not answer within {SWITCH_WAIT:?}");
        }
    }
}

fn open(what: &str, path: &Path) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    if let Err(e) = start_on_a_fresh_line(&mut f) {
        // A full disk, say: the log fails the same way as any later write, not start-up.
        log::warn!("{what}: cannot end the torn last line: {e}");
    }
    Ok(f)
}

/// Opens (appends to) the configured file, if any, and starts the writer thread. Returns the
/// control end, one sink per worker and the thread (it ends when every sink is dropped).
pub fn start(
    cfg: Option<&AccessLogConfig>,
    workers: usize,
) -> io::Result<(AccessLog, Vec<Sink>, JoinHandle<()>)> {
    start_log::<Record>(cfg, workers)
}

/// [`start`] for any kind of [`Line`]: the same queues, writer thread, reopen and switch.
pub fn start_log<R: Line>(
    cfg: Option<&AccessLogConfig>,
    workers: usize,
) -> io::Result<(AccessLog, Vec<Sink<R>>, JoinHandle<()>)> {
    let file = match cfg {
        Some(c) => Some((open(R::WHAT, &c.path)?, c.clone())),
        None => None,
    };
    let on = Arc::new(AtomicBool::new(file.is_some()));
    let mut sinks = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_LEN);
        sinks.push(Sink { tx, on: on.clone() });
        receivers.push(rx);
    }
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name(R::WHAT.replace(' ', "-"))
        .spawn(move || Writer::<R>::new(file, on).run(receivers, ctl_rx))?;
    Ok((AccessLog { ctl: ctl_tx }, sinks, thread))
}

/// A process killed mid-write (kill -9, power loss) can leave a torn last line. Appending
/// to it would glue the next record onto it and spoil both; end it first, so every later
/// line is whole. Not applicable to pipes and terminals (`/dev/stdout`).
fn start_on_a_fresh_line(file: &mut File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, meta.len() - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
}

struct Writer<R> {
    out: Option<(BufWriter<File>, AccessLogConfig)>,
    on: Arc<AtomicBool>,
    failed: bool,
    kind: std::marker::PhantomData<R>,
}

impl<R: Line> Writer<R> {
    fn new(file: Option<(File, AccessLogConfig)>, on: Arc<AtomicBool>) -> Writer<R> {
        Writer {
            out: file.map(|(f, c)| (BufWriter::with_capacity(256 * 1024, f), c)),
            on,
            failed: false,
            kind: std::marker::PhantomData,
        }
    }

    fn flush(&mut self) {
        if let Some((w, _)) = &mut self.out {
            let _ = w.flush();
        }
    }

    fn write(&mut self, rec: &R) {
        let Some((w, cfg)) = &mut self.out else {
            return;
        };
        if let Err(e) = rec.write(cfg.format, w) {
            if !self.failed {
                log::error!("{}: write failed: {e}; lines are being lost", R::WHAT);
                self.failed = true;
            }
        }
    }

    fn control(&mut self, c: Ctl) {
        // Everything queued before the switch belongs to the old file.
        self.flush();
        match c {
            Ctl::Reopen => {
                let Some((_, cfg)) = &self.out else { return };
                let cfg = cfg.clone();
                match open(R::WHAT, &cfg.path) {
                    Ok(f) => {
                        self.out = Some((BufWriter::with_capacity(256 * 1024, f), cfg));
                        self.failed = false;
                        log::info!("{} reopened: {}", R::WHAT, self.path_shown());
                    }
                    Err(e) => log::error!(
                        "{}: cannot reopen {}: {e}; still writing to the old file",
                        R::WHAT,
                        cfg.path.display()
                    ),
                }
            }
            Ctl::Set(None, done) => {
                if self.out.take().is_some() {
                    log::info!("{}: off", R::WHAT);
                }
                self.on.store(false, Ordering::Relaxed);
                let _ = done.send(());
            }
            Ctl::Set(Some(cfg), done) => {
                // Answered however this ends: the sender is dropped on every path.
                let _done = done;
                if self.out.as_ref().is_some_and(|(_, c)| *c == cfg) {
                    return;
                }
                match open(R::WHAT, &cfg.path) {
                    Ok(f) => {
                        self.out = Some((BufWriter::with_capacity(256 * 1024, f), cfg));
                        self.failed = false;
                        self.on.store(true, Ordering::Relaxed);
                        log::info!("{}: {}", R::WHAT, self.path_shown());
                    }
                    Err(e) => log::error!(
                        "{}: cannot open {}: {e}; keeping the previous setting",
                        R::WHAT,
                        cfg.path.display()
                    ),
                }
            }
        }
    }

    fn path_shown(&self) -> String {
        self.out
            .as_ref()
            .map(|(_, c)| c.path.display().to_string())
            .unwrap_or_default()
    }

    /// Writes what the workers have queued so far (bounded: what is queued now, not what
    /// keeps arriving).
    fn drain(&mut self, receivers: &[Receiver<R>]) {
        for r in receivers {
            for _ in 0..r.len() {
                match r.try_recv() {
                    Ok(rec) => self.write(&rec),
                    Err(_) => break,
                }
            }
        }
    }

    fn run(mut self, mut receivers: Vec<Receiver<R>>, ctl: Receiver<Ctl>) {
        let mut ctl_open = true;
        while !receivers.is_empty() {
            let mut gone = None;
            {
                let mut sel = Select::new();
                for r in &receivers {
                    sel.recv(r);
                }
                let ctl_index = ctl_open.then(|| sel.recv(&ctl));
                match sel.select_timeout(Duration::from_millis(200)) {
                    Ok(op) if Some(op.index()) == ctl_index => match op.recv(&ctl) {
                        Ok(c) => {
                            // The select picks among ready queues at random: the records
                            // queued before the switch go to the old file first.
                            self.drain(&receivers);
                            self.control(c)
                        }
                        Err(_) => ctl_open = false,
                    },
                    Ok(op) => {
                        let i = op.index();
                        match op.recv(&receivers[i]) {
                            Ok(rec) => self.write(&rec),
                            // That worker exited.
                            Err(_) => gone = Some(i),
                        }
                    }
                    Err(_) => self.flush(),
                }
            }
            if let Some(i) = gone {
                receivers.swap_remove(i);
            }
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reopen that finds records queued (logrotate renamed the file, then signalled) writes
    /// them to the old file first: the writer's select would otherwise pick the reopen or a
    /// record at random.
    #[test]
    fn records_queued_before_a_reopen_go_to_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let cfg = AccessLogConfig {
            path: path.clone(),
            format: LogFormat::Json,
        };
        let file = open("access log", &path).unwrap();
        let on = Arc::new(AtomicBool::new(true));
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_LEN);
        for i in 0..50 {
            let mut r = Record::new("127.0.0.1".parse().unwrap());
            r.set_request(b"GET", format!("/{i}").as_bytes(), b"h");
            tx.try_send(r).unwrap();
        }
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        ctl_tx.send(Ctl::Reopen).unwrap();
        drop((tx, ctl_tx));
        Writer::<Record>::new(Some((file, cfg)), on).run(vec![rx], ctl_rx);
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(
            old.lines().count(),
            50,
            "every queued record in the old file"
        );
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new, "", "the new file starts empty");
    }

    #[test]
    fn a_torn_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, b"{\"whole\":1}\n{\"torn\":").unwrap();
        let cfg = AccessLogConfig {
            path: path.clone(),
            format: LogFormat::Json,
        };
        let (_ctl, sinks, thread) = start(Some(&cfg), 1).unwrap();
        let mut r = Record::new("127.0.0.1".parse().unwrap());
        r.set_request(b"GET", b"/next", b"h");
        sinks[0].try_send(r).unwrap();
        drop(sinks);
        drop(_ctl);
        thread.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["{\"whole\":1}", "{\"torn\":"]);
        let next: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(next["path"], "/next");
        // A file that ends cleanly gets nothing extra.
        let (ctl, sinks, thread) = start(Some(&cfg), 1).unwrap();
        drop(sinks);
        drop(ctl);
        thread.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    fn sample() -> Record {
        let mut r = Record::new("127.0.0.1".parse().unwrap());
        let long = format!("/a\"b\\c{}", "x".repeat(400));
        r.set_request(b"GET", long.as_bytes(), b"example.com");
        r.status = 200;
        r.bytes = 81;
        r.duration_us = 1500;
        r.first_byte_us = Some(1200);
        r.connect_us = 300;
        r.time_ms = 1_700_000_000_000;
        r.request_id = 0xabc;
        r.listener.set(b"web");
        r.cluster.set(b"app");
        r.backend = Some("127.0.0.1:9001".parse().unwrap());
        r
    }

    #[test]
    fn json_line_escapes_and_truncates() {
        let mut out = Vec::new();
        sample().write_json(&mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["first_byte_ms"], 1.2);
        assert_eq!(v["connect_ms"], 0.3);
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["request_id"], "0000000000000abc");
        assert_eq!(v["host"], "example.com");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["cluster"], "app");
        let path = v["path"].as_str().unwrap();
        assert!(path.starts_with("/a\"b\\c"));
        assert!(path.ends_with('…'));
        assert_eq!(path.chars().count(), MAX_PATH + 1);
    }

    #[test]
    fn combined_line() {
        let mut r = sample();
        r.set_request(b"GET", b"/x?\"q\"", b"example.com");
        let mut out = Vec::new();
        r.write_combined(&mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /x?\\\"q\\\" HTTP/1.1\" 200 81 \"-\" \"-\" \
             host=example.com rid=0000000000000abc backend=127.0.0.1:9001 rt=0.002\n"
        );
    }
}
