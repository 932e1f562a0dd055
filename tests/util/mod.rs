//! Integration-test harness: starts the real `switchyard` binary on configs written to a temp dir,
//! learns its ephemeral ports from the `listening name=... addr=...` stderr lines, asks for stats
//! with SIGUSR2, and provides real backends (plain std::net threads) and clients.
//!
//! Rules every helper follows: every wait has a deadline, every socket has read/write timeouts,
//! and every child process is killed when its guard is dropped, so no test can hang.
#![allow(dead_code)]

pub mod client;
pub mod discovery;
pub mod sd;
pub mod tls;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The I/O engine the suite runs on: `SWITCHYARD_ENGINE` (`mio` or `io_uring`). The binary
/// reads the same variable (it overrides `server.engine`), and every process a test starts
/// inherits it, so `SWITCHYARD_ENGINE=io_uring cargo test` runs the whole suite on io_uring.
/// `None`: the configs' own setting (default `auto`).
pub fn engine_under_test() -> Option<&'static str> {
    match std::env::var("SWITCHYARD_ENGINE").ok().as_deref() {
        Some("mio") => Some("mio"),
        Some("io_uring") => Some("io_uring"),
        _ => None,
    }
}

/// Default timeout for socket reads/writes in helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a process to announce its listeners.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Deadlines and polling
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    end: Instant,
}

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline {
            end: Instant::now() + d,
        }
    }
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }
}

/// Polls `f` every 10 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let d = Deadline::after(timeout);
    loop {
        if f() {
            return;
        }
        if d.expired() {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 10 ms until it returns Some; panics with `what` after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let d = Deadline::after(timeout);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if d.expired() {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns a named thread with a small stack (tests start many of them).
pub fn spawn_small<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn thread")
}

/// Joins a thread, but gives up (panics) after `timeout` instead of hanging.
pub fn join_timeout<T>(h: JoinHandle<T>, timeout: Duration, what: &str) -> T {
    let d = Deadline::after(timeout);
    while !h.is_finished() {
        if d.expired() {
            panic!("thread `{what}` did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    match h.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads and checksums
// ---------------------------------------------------------------------------------------------

fn splitmix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic pseudo-random byte stream, generated word by word so it can be streamed.
pub struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed, pos: 0 }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        // Unaligned head, byte by byte.
        while i < buf.len() && self.pos % 8 != 0 {
            buf[i] = splitmix(self.seed, self.pos / 8).to_le_bytes()[(self.pos % 8) as usize];
            i += 1;
            self.pos += 1;
        }
        let rest = &mut buf[i..];
        let mut chunks = rest.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&splitmix(self.seed, self.pos / 8).to_le_bytes());
            self.pos += 8;
        }
        for b in chunks.into_remainder() {
            *b = splitmix(self.seed, self.pos / 8).to_le_bytes()[(self.pos % 8) as usize];
            self.pos += 1;
        }
    }
}

/// `len` deterministic pseudo-random bytes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// Incremental, order-sensitive 64-bit checksum; independent of how the data is chunked.
#[derive(Clone, Debug)]
pub struct Checksum {
    h: u64,
    tail: [u8; 8],
    ntail: usize,
    len: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

impl Checksum {
    pub fn new() -> Checksum {
        Checksum {
            h: 0xcbf2_9ce4_8422_2325,
            tail: [0; 8],
            ntail: 0,
            len: 0,
        }
    }
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(0x0000_0100_0000_01B3 | 0x9E37_79B9_0000_0000);
        self.h = self.h.rotate_left(29);
    }
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.ntail > 0 {
            let take = (8 - self.ntail).min(data.len());
            self.tail[self.ntail..self.ntail + take].copy_from_slice(&data[..take]);
            self.ntail += take;
            data = &data[take..];
            if self.ntail == 8 {
                let w = u64::from_le_bytes(self.tail);
                self.mix(w);
                self.ntail = 0;
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            self.mix(w);
        }
        let rem = chunks.remainder();
        self.tail[..rem.len()].copy_from_slice(rem);
        self.ntail = rem.len();
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn finish(&self) -> u64 {
        let mut c = self.clone();
        if c.ntail > 0 {
            let mut t = [0u8; 8];
            t[..c.ntail].copy_from_slice(&c.tail[..c.ntail]);
            c.mix(u64::from_le_bytes(t));
        }
        c.mix(c.len);
        let mut z = c.h;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

pub fn checksum(data: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(data);
    c.finish()
}

/// Checksum of `Pattern::new(seed)`'s first `len` bytes, without holding them all.
pub fn pattern_checksum(seed: u64, len: usize) -> u64 {
    let mut p = Pattern::new(seed);
    let mut c = Checksum::new();
    let mut buf = vec![0u8; 256 * KIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        c.update(&buf[..n]);
        left -= n;
    }
    c.finish()
}

// ---------------------------------------------------------------------------------------------
// The proxy (or any switchyard subprocess) under test
// ---------------------------------------------------------------------------------------------

fn spawn_line_reader<R: Read + Send + 'static>(
    r: R,
    name: &str,
    mut sink: impl FnMut(String) + Send + 'static,
) -> JoinHandle<()> {
    spawn_small(name, move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    sink(String::from_utf8_lossy(&line).into_owned());
                }
            }
        }
    })
}

/// Parses `listening name=<n> protocol=<p> addr=<ip:port>` log lines.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let idx = line.find("listening name=")?;
    let rest = &line[idx + "listening ".len()..];
    let mut name = None;
    let mut addr = None;
    for tok in rest.split_whitespace() {
        if let Some(n) = tok.strip_prefix("name=") {
            name = Some(n.trim_matches('"').to_string());
        } else if let Some(a) = tok.strip_prefix("addr=") {
            addr = a.trim_matches('"').parse::<SocketAddr>().ok();
        }
    }
    Some((name?, addr?))
}

/// Tests run many proxies at once: unless a config names its own `admin` address, its admin
/// API goes to an ephemeral loopback port (announced as listener `admin`). Returns the config
/// and whether an admin API will be announced.
pub fn with_test_admin(config: &str) -> (String, bool) {
    if let Some(line) = config
        .lines()
        .find(|l| l.trim_start().starts_with("admin ") || l.trim_start().starts_with("admin="))
    {
        return (config.to_string(), !line.contains("\"off\""));
    }
    let mut out = String::with_capacity(config.len() + 32);
    let mut injected = false;
    for line in config.lines() {
        out.push_str(line);
        out.push('\n');
        if !injected && line.trim() == "[server]" {
            out.push_str("admin = \"127.0.0.1:0\"\n");
            injected = true;
        }
    }
    if !injected {
        out = format!("[server]\nadmin = \"127.0.0.1:0\"\n{out}");
    }
    (out, true)
}

/// What `Proxy::spawn` waits for before returning.
pub enum WaitFor {
    /// This many distinct `listening name=...` lines.
    Listeners(usize),
    /// These listener names.
    Names(Vec<String>),
}

/// A running `switchyard` process. Killed (SIGKILL) on drop.
pub struct Proxy {
    child: Mutex<Child>,
    pub pid: i32,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_rx: Mutex<Receiver<String>>,
    addrs: HashMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: Option<PathBuf>,
}

impl Proxy {
    /// `switchyard run -c <tempdir>/switchyard.toml`, waiting until every `[[listeners]]` table
    /// in `config` has announced its address.
    pub fn start(config: &str) -> Proxy {
        let (config, admin) = with_test_admin(config);
        let config = config.as_str();
        let n = config
            .lines()
            .filter(|l| l.trim() == "[[listeners]]")
            .count()
            + usize::from(admin);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config).expect("write config");
        let args: Vec<OsString> = vec!["run".into(), "-c".into(), path.clone().into()];
        Proxy::spawn(args, dir, Some(path), WaitFor::Listeners(n))
    }

    /// Starts the binary with arbitrary arguments (cwd = a fresh temp dir) and waits for the
    /// named listeners (e.g. quick mode's `quick`, demo-backend's `demo-backend`).
    pub fn start_args<S: AsRef<std::ffi::OsStr>>(args: &[S], names: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = args.iter().map(|a| a.as_ref().to_os_string()).collect();
        Proxy::spawn(
            args,
            dir,
            None,
            WaitFor::Names(names.iter().map(|s| s.to_string()).collect()),
        )
    }

    /// [`Proxy::start`] with environment changes (`None` removes a variable).
    pub fn start_env(config: &str, env: &[(&str, Option<&str>)]) -> Proxy {
        let (config, admin) = with_test_admin(config);
        let n = config
            .lines()
            .filter(|l| l.trim() == "[[listeners]]")
            .count()
            + usize::from(admin);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, &config).expect("write config");
        let args: Vec<OsString> = vec!["run".into(), "-c".into(), path.clone().into()];
        Proxy::spawn_env(args, dir, Some(path), WaitFor::Listeners(n), env)
    }

    pub fn spawn(
        args: Vec<OsString>,
        dir: tempfile::TempDir,
        config_path: Option<PathBuf>,
        wait: WaitFor,
    ) -> Proxy {
        Proxy::spawn_with(BIN.as_ref(), args, &[], dir, config_path, wait)
    }

    /// [`Proxy::spawn`] with environment changes (`None` removes a variable).
    pub fn spawn_env(
        args: Vec<OsString>,
        dir: tempfile::TempDir,
        config_path: Option<PathBuf>,
        wait: WaitFor,
        env: &[(&str, Option<&str>)],
    ) -> Proxy {
        let set: Vec<(&str, OsString)> = env
            .iter()
            .filter_map(|(k, v)| v.map(|v| (*k, OsString::from(v))))
            .collect();
        let remove: Vec<&str> = env
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        Proxy::spawn_full(BIN.as_ref(), args, &set, &remove, dir, config_path, wait)
    }

    /// [`Proxy::spawn`] with another program (a copy of the binary, or a wrapper such as
    /// `systemd-socket-activate`) and extra environment variables.
    pub fn spawn_with(
        program: &std::ffi::OsStr,
        args: Vec<OsString>,
        env: &[(&str, OsString)],
        dir: tempfile::TempDir,
        config_path: Option<PathBuf>,
        wait: WaitFor,
    ) -> Proxy {
        Proxy::spawn_full(program, args, env, &[], dir, config_path, wait)
    }

    fn spawn_full(
        program: &std::ffi::OsStr,
        args: Vec<OsString>,
        env: &[(&str, OsString)],
        remove: &[&str],
        dir: tempfile::TempDir,
        config_path: Option<PathBuf>,
        wait: WaitFor,
    ) -> Proxy {
        let mut cmd = Command::new(program);
        for k in remove {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?} {args:?}: {e}"));
        let pid = child.id() as i32;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = stderr.clone();
            let echo = std::env::var_os("SY_TEST_ECHO").is_some();
            spawn_line_reader(child.stderr.take().unwrap(), "proxy-stderr", move |l| {
                if echo {
                    eprintln!("[switchyard {pid}] {l}");
                }
                stderr.lock().unwrap().push(l);
            });
        }
        let (tx, rx) = mpsc::channel();
        spawn_line_reader(child.stdout.take().unwrap(), "proxy-stdout", move |l| {
            let _ = tx.send(l);
        });
        let mut proxy = Proxy {
            child: Mutex::new(child),
            pid,
            stderr,
            stdout_rx: Mutex::new(rx),
            addrs: HashMap::new(),
            dir,
            config_path,
        };
        let d = Deadline::after(START_TIMEOUT);
        loop {
            let mut addrs = HashMap::new();
            for l in proxy.stderr.lock().unwrap().iter() {
                if let Some((n, a)) = parse_listening(l) {
                    addrs.insert(n, a);
                }
            }
            let ready = match &wait {
                WaitFor::Listeners(n) => addrs.len() >= *n,
                WaitFor::Names(names) => names.iter().all(|n| addrs.contains_key(n)),
            };
            if ready {
                proxy.addrs = addrs;
                return proxy;
            }
            if let Some(st) = proxy.try_wait() {
                // Give the stderr reader a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "switchyard {args:?} exited with {st} before announcing its listeners; stderr:\n{}",
                    proxy.stderr_text()
                );
            }
            if d.expired() {
                panic!(
                    "switchyard {args:?} did not announce its listeners within {START_TIMEOUT:?}; stderr:\n{}",
                    proxy.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The announced address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no listener named {name:?}; have {:?}", self.addrs))
    }

    /// All announced listener addresses.
    pub fn addrs(&self) -> &HashMap<String, SocketAddr> {
        &self.addrs
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    fn stderr_tail(&self, n: usize) -> String {
        let l = self.stderr_lines();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Sends SIGUSR2 and returns the JSON object printed on stdout.
    pub fn stats(&self) -> Value {
        let rx = self.stdout_rx.lock().unwrap();
        while rx.try_recv().is_ok() {}
        self.signal(Signal::SIGUSR2);
        let d = Deadline::after(Duration::from_secs(5));
        loop {
            match rx.recv_timeout(d.remaining()) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v.is_object() {
                            return v;
                        }
                    }
                }
                Err(_) => panic!(
                    "no JSON stats line on stdout within 5 s after SIGUSR2 (process exited: {:?}); stderr tail:\n{}",
                    self.try_wait(),
                    self.stderr_tail(30)
                ),
            }
        }
    }

    /// The stdout lines that arrive within `wait` (and any already waiting).
    pub fn stdout_lines(&self, wait: Duration) -> Vec<String> {
        let rx = self.stdout_rx.lock().unwrap();
        let d = Deadline::after(wait);
        let mut out = Vec::new();
        while let Ok(l) = rx.recv_timeout(d.remaining()) {
            out.push(l);
        }
        out
    }

    /// One integer counter of the `tcp` stats object.
    pub fn tcp(&self, key: &str) -> u64 {
        let v = self.stats();
        tcp_of(&v, key)
    }

    /// Polls the `tcp.<key>` counter until `pred` holds; panics with the last value.
    pub fn wait_tcp(&self, key: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let d = Deadline::after(timeout);
        loop {
            let v = self.tcp(key);
            if pred(v) {
                return v;
            }
            if d.expired() {
                panic!("tcp.{key} = {v} did not reach the expected value within {timeout:?}; stats: {}", self.stats());
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let d = Deadline::after(timeout);
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if d.expired() {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// VmRSS of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- switchyard pid {} stderr (last 60 lines) ---\n{}",
                self.pid,
                self.stderr_tail(60)
            );
        }
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// An `http.<key>` counter of the proxy's stats; a missing key fails the test (never reads 0).
pub fn http_stat(p: &Proxy, key: &str) -> u64 {
    let st = p.stats();
    st["http"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats have no integer http.{key}: {st}"))
}

/// The integer at a JSON pointer (`"/engine/pipes_idle"`); a missing or non-integer value
/// fails the test (never reads 0).
pub fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {v}"))
}

/// An `http.<key>` counter of a stats object; a missing key fails the test.
pub fn http_of(stats: &Value, key: &str) -> u64 {
    stats["http"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats have no integer http.{key}: {stats}"))
}

pub fn tcp_of(stats: &Value, key: &str) -> u64 {
    stats["tcp"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats have no integer tcp.{key}: {stats}"))
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/pid/status");
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("VmRSS:") {
            return v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("VmRSS value");
        }
    }
    panic!("no VmRSS in /proc/{pid}/status");
}

/// Runs the binary to completion (for `check`, bad `run` invocations), killing it after `timeout`.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_to_exit<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    cwd: &Path,
    timeout: Duration,
) -> Finished {
    run_to_exit_env(args, cwd, timeout, &[])
}

/// [`run_to_exit`] with environment changes (`None` removes a variable).
pub fn run_to_exit_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    cwd: &Path,
    timeout: Duration,
    env: &[(&str, Option<&str>)],
) -> Finished {
    let mut cmd = Command::new(BIN);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchyard");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = {
        let out = out.clone();
        let r1 = spawn_line_reader(child.stdout.take().unwrap(), "out", move |l| {
            out.lock().unwrap().push(l)
        });
        let err = err.clone();
        let r2 = spawn_line_reader(child.stderr.take().unwrap(), "err", move |l| {
            err.lock().unwrap().push(l)
        });
        [r1, r2]
    };
    let d = Deadline::after(timeout);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if d.expired() {
            let _ = child.kill();
            let _ = child.wait();
            thread::sleep(Duration::from_millis(50));
            panic!(
                "switchyard {:?} still running after {timeout:?} (killed); stderr:\n{}",
                args.iter()
                    .map(|a| a.as_ref().to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
                err.lock().unwrap().join("\n")
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    // The pipes close when the process exits: the readers then finish with every line.
    for r in readers {
        join_timeout(r, Duration::from_secs(5), "output reader");
    }
    let stdout = out.lock().unwrap().join("\n");
    let stderr = err.lock().unwrap().join("\n");
    Finished {
        status,
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------
// Backends (real TCP servers in this test process, one thread per connection)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
    Error(String),
}

impl End {
    fn from_err(e: &io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => End::Reset,
            _ => End::Error(e.to_string()),
        }
    }
}

/// What a backend saw on one finished connection.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub received: u64,
    pub received_sum: u64,
    pub sent: u64,
    pub end: End,
}

#[derive(Default)]
pub struct BackendState {
    pub accepted: AtomicUsize,
    pub active: AtomicUsize,
    /// Bytes written to clients, over all connections, updated as they go.
    pub written: AtomicU64,
    /// Connections on which the client's EOF (FIN) has been seen so far.
    pub eofs: AtomicUsize,
    pub records: Mutex<Vec<ConnRecord>>,
}

impl BackendState {
    pub fn records(&self) -> Vec<ConnRecord> {
        self.records.lock().unwrap().clone()
    }
    fn record(&self, r: ConnRecord) {
        self.records.lock().unwrap().push(r);
    }
}

pub type Handler = Arc<dyn Fn(TcpStream, &BackendState) + Send + Sync + 'static>;

/// Binds 127.0.0.1:0 with an explicit accept backlog (std's default of 128 overflows when a
/// test opens hundreds of connections at once; the overflowed handshakes then stall for
/// seconds in SYN-ACK retransmits).
pub fn listen_local(backlog: i32) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.set_reuse_address(true).expect("SO_REUSEADDR");
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind backend");
    sock.listen(backlog).expect("listen");
    sock.into()
}

/// A TCP server on 127.0.0.1:<ephemeral>. Stops accepting on drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn spawn(handler: Handler) -> Backend {
        let listener = listen_local(4096);
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let state = state.clone();
            let stop = stop.clone();
            spawn_small("backend-accept", move || loop {
                match listener.accept() {
                    Ok((s, _)) => {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        state.accepted.fetch_add(1, Ordering::SeqCst);
                        state.active.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                        let state = state.clone();
                        let handler = handler.clone();
                        spawn_small("backend-conn", move || {
                            handler(s, &state);
                            state.active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        Backend {
            addr,
            state,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }
    pub fn eofs(&self) -> usize {
        self.state.eofs.load(Ordering::SeqCst)
    }
    pub fn written(&self) -> u64 {
        self.state.written.load(Ordering::SeqCst)
    }
    pub fn records(&self) -> Vec<ConnRecord> {
        self.state.records()
    }
    /// Waits until at least `n` connections have finished and returns their records.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Vec<ConnRecord> {
        poll_until(
            timeout,
            &format!("{n} finished backend connections"),
            || {
                let r = self.records();
                (r.len() >= n).then_some(r)
            },
        )
    }

    /// Echoes everything; on EOF from the client, shuts down its write side and closes.
    pub fn echo() -> Backend {
        Backend::spawn(Arc::new(|mut s: TcpStream, st: &BackendState| {
            let mut buf = vec![0u8; 64 * KIB];
            let mut sum = Checksum::new();
            let mut sent = 0u64;
            let end = loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        st.eofs.fetch_add(1, Ordering::SeqCst);
                        let _ = s.shutdown(Shutdown::Write);
                        break End::Eof;
                    }
                    Ok(n) => {
                        sum.update(&buf[..n]);
                        if let Err(e) = s.write_all(&buf[..n]) {
                            break End::from_err(&e);
                        }
                        sent += n as u64;
                        st.written.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break End::from_err(&e),
                }
            };
            st.record(ConnRecord {
                received: sum.len(),
                received_sum: sum.finish(),
                sent,
                end,
            });
        }))
    }

    /// Writes `<id>\n` on accept, then discards input until the client closes.
    pub fn id(id: &str) -> Backend {
        let line = format!("{id}\n");
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendState| {
            let mut sum = Checksum::new();
            let end = match s.write_all(line.as_bytes()) {
                Err(e) => End::from_err(&e),
                Ok(()) => {
                    st.written.fetch_add(line.len() as u64, Ordering::SeqCst);
                    drain(&mut s, &mut sum, st)
                }
            };
            st.record(ConnRecord {
                received: sum.len(),
                received_sum: sum.finish(),
                sent: line.len() as u64,
                end,
            });
        }))
    }

    /// Reads to EOF (checksumming), then replies with `Pattern(reply_seed)` of `reply_len`
    /// bytes and closes.
    pub fn sink_then_reply(reply_len: usize, reply_seed: u64) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendState| {
            let mut sum = Checksum::new();
            let end = drain(&mut s, &mut sum, st);
            let (sent, end) = if end == End::Eof {
                match write_pattern(&mut s, reply_seed, reply_len, st) {
                    Ok(n) => {
                        let _ = s.shutdown(Shutdown::Write);
                        (n, End::Eof)
                    }
                    Err(e) => (0, End::from_err(&e)),
                }
            } else {
                (0, end)
            };
            st.record(ConnRecord {
                received: sum.len(),
                received_sum: sum.finish(),
                sent,
                end,
            });
        }))
    }

    /// Writes `Pattern(seed)` of `len` bytes, shuts down its write side, then reads (and
    /// checksums) whatever the client sends until EOF, then closes.
    pub fn source(len: usize, seed: u64) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendState| {
            let mut sum = Checksum::new();
            let (sent, end) = match write_pattern(&mut s, seed, len, st) {
                Ok(n) => {
                    let _ = s.shutdown(Shutdown::Write);
                    (n, drain(&mut s, &mut sum, st))
                }
                Err(e) => (st.written.load(Ordering::SeqCst), End::from_err(&e)),
            };
            st.record(ConnRecord {
                received: sum.len(),
                received_sum: sum.finish(),
                sent,
                end,
            });
        }))
    }

    /// Reads `read_first` bytes (0 = none), then closes with SO_LINGER 0 (sends RST).
    pub fn resetting(read_first: usize) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendState| {
            let mut sum = Checksum::new();
            let mut buf = vec![0u8; 4096];
            while (sum.len() as usize) < read_first {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sum.update(&buf[..n]),
                }
            }
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
            drop(s);
            st.record(ConnRecord {
                received: sum.len(),
                received_sum: sum.finish(),
                sent: 0,
                end: End::Reset,
            });
        }))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept_thread.take() {
            let d = Deadline::after(Duration::from_secs(2));
            while !h.is_finished() && !d.expired() {
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn drain(s: &mut TcpStream, sum: &mut Checksum, st: &BackendState) -> End {
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                st.eofs.fetch_add(1, Ordering::SeqCst);
                return End::Eof;
            }
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return End::from_err(&e),
        }
    }
}

fn write_pattern(s: &mut TcpStream, seed: u64, len: usize, st: &BackendState) -> io::Result<u64> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * KIB];
    let mut left = len;
    let mut sent = 0u64;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n;
        sent += n as u64;
        st.written.fetch_add(n as u64, Ordering::SeqCst);
    }
    Ok(sent)
}

/// An address on which nothing listens (bound once, then released).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A listener whose accept queue is full and never drained: further SYNs are dropped, so
/// connects to it hang until the connector's own timeout.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.listen(0).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(150)) {
                Ok(s) => fillers.push(s),
                Err(_) => {
                    // Queue full: this connect hung. The blackhole is ready.
                    return Blackhole {
                        addr,
                        _listener: sock,
                        _fillers: fillers,
                    };
                }
            }
        }
        panic!("precondition: could not fill the accept queue of a backlog-0 listener (SYNs not dropped?)");
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects with a 3 s timeout; read/write timeouts `IO_TIMEOUT`.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.set_nodelay(true);
    s
}

/// Reads one `\n`-terminated line (without the newline), byte by byte.
pub fn read_line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => panic!(
                "EOF before end of line (got {:?})",
                String::from_utf8_lossy(&out)
            ),
            Ok(_) => {
                if b[0] == b'\n' {
                    return String::from_utf8_lossy(&out).into_owned();
                }
                out.push(b[0]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "reading line: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Reads until EOF; returns (bytes, checksum). Panics on error or timeout.
pub fn read_to_eof(s: &mut TcpStream) -> (u64, u64) {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (sum.len(), sum.finish()),
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read after {} bytes: {e}", sum.len()),
        }
    }
}

/// Expects EOF within `EOF_GRACE` (the peer has shut down its write side after `after`).
pub fn expect_eof(s: &mut TcpStream, after: &str) {
    s.set_read_timeout(Some(EOF_GRACE)).unwrap();
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(0) => {}
        Ok(_) => panic!("more data than expected after {after}"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!(
            "{after} arrived but no EOF within {EOF_GRACE:?} although the peer had shut down its \
             write side: the FIN was not passed on"
        )
        }
        Err(e) => panic!("after {after}, expected EOF, got error: {e}"),
    }
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// Reads exactly `len` bytes (checksummed), then expects EOF within `EOF_GRACE`. Panics with a
/// clear message when the data is short, too long, or the FIN never comes.
pub fn read_len_then_eof(s: &mut TcpStream, len: u64) -> u64 {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * KIB];
    while sum.len() < len {
        let want = ((len - sum.len()) as usize).min(buf.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => panic!("EOF after {} of {len} bytes", sum.len()),
            Ok(n) => sum.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read after {} of {len} bytes: {e}", sum.len()),
        }
    }
    expect_eof(s, &format!("all {len} bytes"));
    sum.finish()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Closed {
    Eof,
    Reset,
}

/// Waits up to `within` for the peer to close `s` (EOF or reset). Data that arrives meanwhile is
/// discarded. Returns how it closed and how long it took. Panics if still open.
pub fn expect_closed(s: &mut TcpStream, within: Duration) -> (Closed, Duration) {
    let t0 = Instant::now();
    let d = Deadline::after(within);
    let mut buf = [0u8; 4096];
    loop {
        let rem = d.remaining();
        if rem.is_zero() {
            panic!("connection still open after {within:?}");
        }
        s.set_read_timeout(Some(rem.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (Closed::Eof, t0.elapsed()),
            Ok(_) => continue,
            Err(e) => match e.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => return (Closed::Reset, t0.elapsed()),
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => continue,
                _ => panic!("unexpected read error while waiting for close: {e}"),
            },
        }
    }
}

/// Connects and waits for the proxy to close the connection (for paths where it closes at
/// once). A reset that already shows up in connect() counts as `Closed::Reset`.
pub fn connect_expect_closed(addr: SocketAddr, within: Duration) -> (Closed, Duration) {
    let t0 = Instant::now();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(mut c) => {
            let _ = c.write_all(b"anyone there?\n");
            let (how, _) = expect_closed(&mut c, within.saturating_sub(t0.elapsed()));
            (how, t0.elapsed())
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => (Closed::Reset, t0.elapsed()),
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

/// Round trip one message through an echo path.
pub fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("read echo");
    assert_eq!(got, msg, "echo mismatch");
}

/// Result of one connection driven by `echo_many`.
#[derive(Clone, Debug)]
pub struct EchoResult {
    pub sent: u64,
    pub sent_sum: u64,
    pub received: u64,
    pub received_sum: u64,
    pub error: Option<String>,
}

impl EchoResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.sent == self.received && self.sent_sum == self.received_sum
    }
}

/// How long after the whole echo has come back the EOF may take before it counts as lost.
pub const EOF_GRACE: Duration = Duration::from_secs(2);

/// Drives many already-connected sockets at once (one mio loop, full duplex): each sends its
/// payload, then shuts down its write side, and reads until EOF. Works for any size because
/// reading and writing are interleaved.
pub fn echo_many(
    streams: Vec<TcpStream>,
    payloads: Vec<Vec<u8>>,
    timeout: Duration,
) -> Vec<EchoResult> {
    echo_many_mode(streams, payloads, timeout, true)
}

/// Like `echo_many`; with `half_close = false` a connection never shuts down its write side and
/// is done (and dropped) as soon as its whole payload has come back.
pub fn echo_many_mode(
    streams: Vec<TcpStream>,
    payloads: Vec<Vec<u8>>,
    timeout: Duration,
    half_close: bool,
) -> Vec<EchoResult> {
    use mio::{Events, Interest, Poll, Token};
    assert_eq!(streams.len(), payloads.len());
    struct C {
        s: mio::net::TcpStream,
        payload: Vec<u8>,
        pos: usize,
        shut: bool,
        half_close: bool,
        rx: Checksum,
        /// When the whole payload had come back (waiting for EOF from then on).
        echoed_at: Option<Instant>,
        done: bool,
        err: Option<String>,
    }
    fn step(c: &mut C, buf: &mut [u8]) {
        while c.pos < c.payload.len() {
            let end = (c.pos + 256 * KIB).min(c.payload.len());
            match c.s.write(&c.payload[c.pos..end]) {
                Ok(0) => {
                    c.err = Some("write returned 0".into());
                    c.done = true;
                    return;
                }
                Ok(n) => c.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.err = Some(format!("write after {} bytes: {e}", c.pos));
                    c.done = true;
                    return;
                }
            }
        }
        if c.half_close && c.pos == c.payload.len() && !c.shut {
            c.shut = true;
            if let Err(e) = c.s.shutdown(Shutdown::Write) {
                c.err = Some(format!("shutdown(Write): {e}"));
                c.done = true;
                return;
            }
        }
        loop {
            match c.s.read(buf) {
                Ok(0) => {
                    c.done = true;
                    return;
                }
                Ok(n) => {
                    c.rx.update(&buf[..n]);
                    if c.rx.len() >= c.payload.len() as u64 && c.echoed_at.is_none() {
                        c.echoed_at = Some(Instant::now());
                        if !c.half_close {
                            c.done = true;
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.err = Some(format!("read after {} bytes: {e}", c.rx.len()));
                    c.done = true;
                    return;
                }
            }
        }
    }

    let mut poll = Poll::new().expect("mio poll");
    let mut conns = Vec::with_capacity(streams.len());
    for (i, (s, p)) in streams.into_iter().zip(payloads).enumerate() {
        s.set_nonblocking(true).unwrap();
        let mut s = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
            .expect("register");
        conns.push(C {
            s,
            payload: p,
            pos: 0,
            shut: false,
            half_close,
            rx: Checksum::new(),
            echoed_at: None,
            done: false,
            err: None,
        });
    }
    let mut buf = vec![0u8; 256 * KIB];
    let mut remaining = conns.len();
    for c in conns.iter_mut() {
        step(c, &mut buf);
        if c.done {
            remaining -= 1;
        }
    }
    let d = Deadline::after(timeout);
    let mut events = Events::with_capacity(1024);
    while remaining > 0 {
        if d.expired() {
            for c in conns.iter_mut().filter(|c| !c.done) {
                c.err = Some(format!(
                    "timed out after {timeout:?}: sent {}/{} bytes, received {}",
                    c.pos,
                    c.payload.len(),
                    c.rx.len()
                ));
            }
            break;
        }
        for c in conns.iter_mut().filter(|c| !c.done) {
            if c.echoed_at.is_some_and(|t| t.elapsed() > EOF_GRACE) {
                c.err = Some(format!(
                    "all {} bytes came back but no EOF within {EOF_GRACE:?} after the client's \
                     shutdown(Write) was echoed: the FIN was not passed on",
                    c.rx.len()
                ));
                c.done = true;
                remaining -= 1;
            }
        }
        if remaining == 0 {
            break;
        }
        match poll.poll(
            &mut events,
            Some(d.remaining().min(Duration::from_millis(100))),
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("poll: {e}"),
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if c.done {
                continue;
            }
            step(c, &mut buf);
            if c.done {
                remaining -= 1;
            }
        }
    }
    conns
        .into_iter()
        .map(|c| EchoResult {
            sent: c.pos as u64,
            sent_sum: checksum(&c.payload),
            received: c.rx.len(),
            received_sum: c.rx.finish(),
            error: c.err,
        })
        .collect()
}

/// Opens `payloads.len()` connections to `addr`, then runs them all with `echo_many`, and asserts
/// every one came back intact. Returns the results.
pub fn echo_check(addr: SocketAddr, payloads: Vec<Vec<u8>>, timeout: Duration) -> Vec<EchoResult> {
    let streams = payloads.iter().map(|_| connect(addr)).collect();
    let res = echo_many(streams, payloads, timeout);
    assert_all_echoed(&res);
    res
}

/// Like `echo_check`, but without half-close: each client closes once its payload is back. For
/// tests about something else than FIN propagation.
pub fn echo_check_no_half_close(
    addr: SocketAddr,
    payloads: Vec<Vec<u8>>,
    timeout: Duration,
) -> Vec<EchoResult> {
    let streams = payloads.iter().map(|_| connect(addr)).collect();
    let res = echo_many_mode(streams, payloads, timeout, false);
    assert_all_echoed(&res);
    res
}

pub fn assert_all_echoed(res: &[EchoResult]) {
    let bad: Vec<_> = res.iter().enumerate().filter(|(_, r)| !r.ok()).collect();
    assert!(
        bad.is_empty(),
        "{} of {} echo connections failed, first few: {:?}",
        bad.len(),
        res.len(),
        &bad[..bad.len().min(5)]
    );
}

/// A minimal config: one tcp listener `front` → cluster `app` with the given backends.
pub fn simple_config(server_extra: &str, cluster_extra: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"[server]
{server_extra}

[[listeners]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"

[[clusters]]
name = "app"
backends = [{}]
{cluster_extra}
"#,
        list.join(", ")
    )
}

/// A demo backend (`demo-backend --id slow`, which answers `?delay_ms=` requests that late)
/// and the config of a proxy in front of it: HTTP listener `web` → cluster `app`, with
/// `server` and `cluster` added to those tables.
pub fn slow_demo_config(server: &str, cluster: &str) -> (Proxy, String) {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "slow"],
        &["demo-backend"],
    );
    let cfg = format!(
        r#"[server]
{server}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{}"]
{cluster}
"#,
        demo.addr("demo-backend")
    );
    (demo, cfg)
}

/// `promtool check metrics` (Debian package `prometheus`; .ci/run installs it).
pub fn promtool_check(text: &str) {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, text).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not runnable ({e}); install the Debian package `prometheus`")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\n--- metrics ---\n{text}",
        out.status
    );
}

/// An HTTP backend that answers every request with `status` after `delay`, body `id`.
pub fn fixed_backend(id: &'static str, status: u16, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                thread::sleep(delay);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{id}",
                    id.len()
                );
            });
        }
    });
    addr
}
