//! The HTTP access log: one JSON line per request (time, client, method, path, status, bytes,
//! duration, backend, worker), written by its own thread.
//!
//! Each worker owns a bounded queue of fixed-size [`Record`]s (preallocated slots: sending
//! copies a record, never allocates, never blocks). When a queue is full the record is
//! dropped and counted (`http.access_log_dropped`): a slow disk costs log lines, never latency.
//! The writer thread drains all queues, formats, and flushes at least every 200 ms and when the
//! workers are gone.

use crossbeam_channel::{Receiver, Select, Sender};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

/// Records queued per worker before new ones are dropped.
pub const QUEUE_LEN: usize = 4096;
/// Longest method and path kept (longer ones are truncated, marked with `…`).
pub const MAX_METHOD: usize = 16;
pub const MAX_PATH: usize = 256;

/// One finished request, copied by value into the queue.
#[derive(Clone, Copy)]
pub struct Record {
    /// Completion time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub client: IpAddr,
    pub method: [u8; MAX_METHOD],
    pub method_len: u8,
    pub path: [u8; MAX_PATH],
    pub path_len: u16,
    /// The full path did not fit.
    pub truncated: bool,
    /// 0 when no response was sent (the client went away first).
    pub status: u16,
    /// Bytes sent to the client (head and body).
    pub bytes: u64,
    pub duration_us: u64,
    pub backend: Option<SocketAddr>,
    pub worker: u16,
}

impl Record {
    pub fn new(client: IpAddr) -> Record {
        Record {
            time_ms: 0,
            client,
            method: [0; MAX_METHOD],
            method_len: 0,
            path: [0; MAX_PATH],
            path_len: 0,
            truncated: false,
            status: 0,
            bytes: 0,
            duration_us: 0,
            backend: None,
            worker: 0,
        }
    }

    /// Copies the method and path of a request head (truncating what does not fit).
    pub fn set_request(&mut self, method: &[u8], path: &[u8]) {
        let m = method.len().min(MAX_METHOD);
        self.method[..m].copy_from_slice(&method[..m]);
        self.method_len = m as u8;
        let p = path.len().min(MAX_PATH);
        self.path[..p].copy_from_slice(&path[..p]);
        self.path_len = p as u16;
        self.truncated = path.len() > MAX_PATH;
    }

    fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        let method = String::from_utf8_lossy(&self.method[..self.method_len as usize]);
        let mut path = String::from_utf8_lossy(&self.path[..self.path_len as usize]).into_owned();
        if self.truncated {
            path.push('…');
        }
        let line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + Duration::from_millis(self.time_ms)
            ).to_string(),
            "client": self.client.to_string(),
            "method": method,
            "path": path,
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": self.duration_us as f64 / 1000.0,
            "backend": self.backend.map(|b| b.to_string()),
            "worker": self.worker,
        });
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }
}

/// Opens (appends to) the log file and starts the writer thread. Returns one sender per
/// worker.
pub fn start(path: &Path, workers: usize) -> io::Result<(Vec<Sender<Record>>, JoinHandle<()>)> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    if let Err(e) = start_on_a_fresh_line(&mut file) {
        // A full disk, say: the log fails the same way as any later write, not start-up.
        log::warn!("access log: cannot end the torn last line: {e}");
    }
    let mut senders = Vec::with_capacity(workers);
    let mut receivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_LEN);
        senders.push(tx);
        receivers.push(rx);
    }
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer(file, receivers))?;
    Ok((senders, thread))
}

/// A process killed mid-write (kill -9, power loss) can leave a torn last line. Appending
/// to it would glue the next record onto it and spoil both; end it first, so every later
/// line is whole JSON. Not applicable to pipes and terminals (`/dev/stdout`).
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

fn writer(file: File, mut receivers: Vec<Receiver<Record>>) {
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut failed = false;
    while !receivers.is_empty() {
        let mut gone = None;
        {
            let mut sel = Select::new();
            for r in &receivers {
                sel.recv(r);
            }
            match sel.select_timeout(Duration::from_millis(200)) {
                Ok(op) => {
                    let i = op.index();
                    match op.recv(&receivers[i]) {
                        Ok(rec) => {
                            if let Err(e) = rec.write_json(&mut out) {
                                if !failed {
                                    log::error!(
                                        "access log: write failed: {e}; lines are being lost"
                                    );
                                    failed = true;
                                }
                            }
                        }
                        // That worker exited.
                        Err(_) => gone = Some(i),
                    }
                }
                Err(_) => {
                    let _ = out.flush();
                }
            }
        }
        if let Some(i) = gone {
            receivers.swap_remove(i);
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::fs::write(&path, b"{\"whole\":1}\n{\"torn\":").unwrap();
        let (senders, thread) = start(&path, 1).unwrap();
        let mut r = Record::new("127.0.0.1".parse().unwrap());
        r.set_request(b"GET", b"/next");
        senders[0].send(r).unwrap();
        drop(senders);
        thread.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["{\"whole\":1}", "{\"torn\":"]);
        let next: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(next["path"], "/next");
        // A file that ends cleanly gets nothing extra; nor does an empty one.
        let (senders, thread) = start(&path, 1).unwrap();
        drop(senders);
        thread.join().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn json_line_escapes_and_truncates() {
        let mut r = Record::new("127.0.0.1".parse().unwrap());
        let long = format!("/a\"b\\c{}", "x".repeat(400));
        r.set_request(b"GET", long.as_bytes());
        r.status = 200;
        r.bytes = 81;
        r.duration_us = 1500;
        r.time_ms = 1_700_000_000_000;
        r.backend = Some("127.0.0.1:9001".parse().unwrap());
        let mut out = Vec::new();
        r.write_json(&mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["backend"], "127.0.0.1:9001");
        let path = v["path"].as_str().unwrap();
        assert!(path.starts_with("/a\"b\\c"));
        assert!(path.ends_with('…'));
        assert_eq!(path.chars().count(), MAX_PATH + 1);
    }
}
