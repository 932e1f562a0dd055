//! The process log: a small stderr logger for the `log` facade.
//!
//! - On a terminal or a plain file: `<RFC 3339 time> <LEVEL> <message>`.
//! - Under systemd, when `JOURNAL_STREAM` names the very file stderr is (device and inode, as
//!   sd-daemon(3) says to check), each line starts with its syslog priority instead (`<3>`
//!   error, `<4>` warning, `<6>` info, `<7>` debug and trace) and carries no time: the journal
//!   stamps it, and `journalctl -p warning` then filters as operators expect.
//!
//! Level: `SWITCHYARD_LOG` (error, warn, info, debug, trace, off) wins over the config's
//! `server.log_level`; the default is info. A bad `SWITCHYARD_LOG` is warned about, never
//! silently ignored. Workers log at debug or below on per-connection paths, so the default
//! level costs nothing there.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Lines carry a syslog priority prefix for the journal.
static JOURNAL: AtomicBool = AtomicBool::new(false);
/// `SWITCHYARD_LOG` held a valid level (it then wins over the config).
static FROM_ENV: AtomicBool = AtomicBool::new(false);

struct StderrLogger;

/// The syslog priority of a level (sd-daemon(3) prefixes).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        if JOURNAL.load(Ordering::Relaxed) {
            let _ = writeln!(err, "<{}>{}", priority(r.level()), r.args());
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
        let _ = writeln!(err, "{now} {level} {}", r.args());
    }
    fn flush(&self) {}
}

/// The accepted level names, for messages.
pub const LEVELS: &str = "error, warn, info, debug, trace, off";

/// Parses a level name (case-insensitive).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.trim().parse::<LevelFilter>().ok()
}

/// `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected; it counts only when
/// stderr is still that stream (a redirect in a unit's script would make it a lie).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // st_dev / st_ino are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    match nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::io::stderr())) {
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// Installs the logger. Level from `SWITCHYARD_LOG` (default info) until [`apply_config`].
pub fn init() {
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
    let env = std::env::var("SWITCHYARD_LOG").ok();
    let parsed = env.as_deref().map(parse_level);
    if log::set_logger(&StderrLogger).is_err() {
        return;
    }
    match parsed {
        Some(Some(level)) => {
            FROM_ENV.store(true, Ordering::Relaxed);
            log::set_max_level(level);
        }
        Some(None) => {
            log::set_max_level(LevelFilter::Info);
            log::warn!(
                "SWITCHYARD_LOG={:?} is not a log level (expected one of: {LEVELS}); ignoring it",
                env.unwrap_or_default()
            );
        }
        None => log::set_max_level(LevelFilter::Info),
    }
}

/// The config's `server.log_level`, unless `SWITCHYARD_LOG` set one. Called at start-up and
/// on every reload.
pub fn apply_config(level: Option<LevelFilter>) {
    if FROM_ENV.load(Ordering::Relaxed) {
        return;
    }
    log::set_max_level(level.unwrap_or(LevelFilter::Info));
}

/// Lines carry journald priority prefixes.
pub fn journal() -> bool {
    JOURNAL.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_priorities() {
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Trace), 7);
    }
}
