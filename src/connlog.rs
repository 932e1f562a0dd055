//! The TCP connection log: one line per closed L4 connection (`tcp` and `foo` listeners),
//! JSON or `key=value` text, written by the access log's machinery (per-worker bounded
//! queues of fixed-size records, its own writer thread, reopened on SIGUSR1 / SIGHUP,
//! switched on, off or moved by a reload). A full queue drops the line and counts it
//! (`tcp.connection_log_dropped`).

use crate::accesslog::{Line, Short, MAX_NAME};
use crate::config::LogFormat;
use crate::session::CloseReason;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// One closed connection, copied by value into the queue.
#[derive(Clone, Copy)]
pub struct ConnRecord {
    /// Close time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub listener: Short<MAX_NAME>,
    /// The client (as a PROXY header named it, when the listener takes one).
    pub client: SocketAddr,
    pub cluster: Short<MAX_NAME>,
    /// The backend of the last connect attempt (none when no backend was picked).
    pub backend: Option<SocketAddr>,
    pub bytes_client_to_backend: u64,
    pub bytes_backend_to_client: u64,
    /// Accept to close.
    pub duration_us: u64,
    pub reason: CloseReason,
    pub worker: u16,
}

impl ConnRecord {
    pub fn new(client: SocketAddr, reason: CloseReason) -> ConnRecord {
        ConnRecord {
            time_ms: 0,
            listener: Short::EMPTY,
            client,
            cluster: Short::EMPTY,
            backend: None,
            bytes_client_to_backend: 0,
            bytes_backend_to_client: 0,
            duration_us: 0,
            reason,
            worker: 0,
        }
    }

    fn time(&self) -> String {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(self.time_ms),
        )
        .to_string()
    }

    fn write_json(&self, out: &mut impl Write) -> io::Result<()> {
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let line = serde_json::json!({
            "time": self.time(),
            "listener": opt(self.listener.text()),
            "client": self.client.to_string(),
            "cluster": opt(self.cluster.text()),
            "backend": self.backend.map(|b| b.to_string()),
            "bytes_client_to_backend": self.bytes_client_to_backend,
            "bytes_backend_to_client": self.bytes_backend_to_client,
            "duration_ms": self.duration_us as f64 / 1000.0,
            "reason": self.reason.name(),
            "worker": self.worker,
        });
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }

    /// `time listener=… client=… cluster=… backend=… bytes_client_to_backend=…
    /// bytes_backend_to_client=… duration_ms=… reason=… worker=…` (`-` for none).
    fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        writeln!(
            out,
            "{} listener={} client={} cluster={} backend={} bytes_client_to_backend={} \
             bytes_backend_to_client={} duration_ms={:.3} reason={} worker={}",
            self.time(),
            dash(self.listener.text()),
            self.client,
            dash(self.cluster.text()),
            self.backend.map_or("-".to_string(), |b| b.to_string()),
            self.bytes_client_to_backend,
            self.bytes_backend_to_client,
            self.duration_us as f64 / 1000.0,
            self.reason.name(),
            self.worker,
        )
    }
}

impl Line for ConnRecord {
    const WHAT: &'static str = "connection log";
    fn write<W: Write>(&self, format: LogFormat, out: &mut W) -> io::Result<()> {
        match format {
            LogFormat::Json => self.write_json(out),
            // `combined` is refused for the connection log by the config.
            LogFormat::Text | LogFormat::Combined => self.write_text(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnRecord {
        let mut r = ConnRecord::new("127.0.0.1:40000".parse().unwrap(), CloseReason::Done);
        r.time_ms = 1_700_000_000_000;
        r.listener.set(b"db");
        r.cluster.set(b"pg");
        r.backend = Some("127.0.0.1:5432".parse().unwrap());
        r.bytes_client_to_backend = 12;
        r.bytes_backend_to_client = 3400;
        r.duration_us = 2500;
        r.worker = 1;
        r
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        sample().write(LogFormat::Json, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["listener"], "db");
        assert_eq!(v["client"], "127.0.0.1:40000");
        assert_eq!(v["cluster"], "pg");
        assert_eq!(v["backend"], "127.0.0.1:5432");
        assert_eq!(v["bytes_client_to_backend"], 12);
        assert_eq!(v["bytes_backend_to_client"], 3400);
        assert_eq!(v["duration_ms"], 2.5);
        assert_eq!(v["reason"], "done");
        assert_eq!(v["worker"], 1);
    }

    #[test]
    fn text_line() {
        let mut r = sample();
        r.backend = None;
        r.reason = CloseReason::NoUpstream;
        let mut out = Vec::new();
        r.write(LogFormat::Text, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2023-11-14T22:13:20.000Z listener=db client=127.0.0.1:40000 cluster=pg backend=- \
             bytes_client_to_backend=12 bytes_backend_to_client=3400 duration_ms=2.500 \
             reason=no_backend worker=1\n"
        );
    }
}
