//! A small stderr logger for the `log` facade: `<RFC 3339 time> <LEVEL> <message>`.
//! Level from `SWITCHYARD_LOG` (error, warn, info, debug, trace; default info).
//! Workers log at debug or below on per-connection paths, so the default level costs nothing
//! there.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{now} {level} {}", r.args());
    }
    fn flush(&self) {}
}

pub fn init() {
    let level = std::env::var("SWITCHYARD_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}
