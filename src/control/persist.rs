//! The runtime state file, `<state_dir>/state.json`: the listeners and clusters the proxy
//! runs (`config`) and those of the file they were derived from (`file`), so a restart can
//! merge a since-edited config file with the changes made at run time ([`super::doc::merge`]).
//!
//! Written atomically: temp file in the same directory, fsync, rename, fsync of the directory.
//! A torn or corrupt file is reported and moved aside; it never stops start-up.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use toml::Table;

pub const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Persisted {
    pub format: u32,
    /// Config version at the time of writing.
    pub version: u64,
    /// Unix seconds.
    pub written_at: u64,
    /// Listeners and clusters of the config file the state derives from.
    pub file: Table,
    /// Listeners and clusters running at the time of writing.
    pub config: Table,
}

impl Persisted {
    pub fn new(version: u64, file: Table, config: Table) -> Persisted {
        Persisted {
            format: FORMAT,
            version,
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            file,
            config,
        }
    }
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename itself must survive a crash too.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn save(dir: &Path, p: &Persisted) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(p).map_err(io::Error::other)?;
    write_atomic(&state_path(dir), &bytes)
}

/// What start-up found in the state directory.
#[derive(Debug)]
pub enum Loaded {
    None,
    Found(Persisted),
    /// Unreadable: the message says why; the file was moved to `moved_to` (if that worked).
    Corrupt {
        message: String,
        moved_to: Option<PathBuf>,
    },
}

pub fn load(dir: &Path) -> Loaded {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::None,
        Err(e) => {
            return Loaded::Corrupt {
                message: format!("cannot read {}: {e}", path.display()),
                moved_to: None,
            }
        }
    };
    let message = match serde_json::from_slice::<Persisted>(&bytes) {
        Ok(p) if p.format == FORMAT => return Loaded::Found(p),
        Ok(p) => format!("unknown format {} (expected {FORMAT})", p.format),
        Err(e) => format!("not valid state JSON: {e}"),
    };
    Loaded::Corrupt {
        message,
        moved_to: set_aside(&path),
    }
}

/// Renames a bad state file to `<name>.corrupt-<unix time>` so the next write starts clean
/// and an operator can still read what was there.
pub fn set_aside(path: &Path) -> Option<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = path.as_os_str().to_owned();
    to.push(format!(".corrupt-{secs}"));
    let to = PathBuf::from(to);
    fs::rename(path, &to).ok().map(|_| to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: Table = "[[clusters]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n"
            .parse()
            .unwrap();
        save(dir.path(), &Persisted::new(7, Table::new(), cfg.clone())).unwrap();
        match load(dir.path()) {
            Loaded::Found(p) => {
                assert_eq!(p.version, 7);
                assert_eq!(p.config, cfg);
            }
            other => panic!("{other:?}"),
        }
        let path = state_path(dir.path());
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        match load(dir.path()) {
            Loaded::Corrupt { moved_to, .. } => {
                assert!(moved_to.unwrap().exists());
                assert!(!path.exists());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(load(dir.path()), Loaded::None));
    }
}
