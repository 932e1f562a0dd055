//! The runtime state in `state_dir`: the listeners and clusters the proxy runs (`config`) and
//! those of the config file they were derived from (`file`), so a restart can merge a
//! since-edited config file with the changes made at run time ([`super::doc::merge`]).
//!
//! Two files, `state.0.json` and `state.1.json`, written alternately, each write rewriting the
//! older one in place (same size: padded, so only data blocks change) and `fdatasync`ing it
//! before the change is acknowledged. Each holds the JSON, then a line with its checksum.
//! Reading takes the valid one with the higher version. A crash in the middle of a write tears
//! only the file being written (the checksum tells); the other still holds the previous
//! version. One data flush per change and no directory operations, so persisting a change is
//! cheap.
//!
//! A torn or corrupt file is reported and moved aside; it never stops start-up.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use toml::Table;

pub const STATE_FILES: [&str; 2] = ["state.0.json", "state.1.json"];
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
    /// State of modules that keep their own records next to the config (by module name, e.g.
    /// `lbaas`), written in the same file so that both change together.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub ext: serde_json::Map<String, serde_json::Value>,
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
            ext: serde_json::Map::new(),
        }
    }

    pub fn with_ext(mut self, ext: serde_json::Map<String, serde_json::Value>) -> Persisted {
        self.ext = ext;
        self
    }
}

pub fn state_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(STATE_FILES[slot % 2])
}

/// Writes the state files of one directory, alternately.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    files: [Option<File>; 2],
    /// The slot the next write goes to (the one not holding the newest version).
    next: usize,
}

impl Store {
    /// `newest`: the slot that holds the newest valid state, if any (from [`load`]).
    pub fn new(dir: &Path, newest: Option<usize>) -> Store {
        Store {
            dir: dir.to_path_buf(),
            files: [None, None],
            next: newest.map_or(0, |s| 1 - s % 2),
        }
    }

    /// Persists `p` durably (fdatasync) before returning.
    ///
    /// The file keeps its size from write to write (the content is padded with spaces up to a
    /// capacity that only grows), so `fdatasync` flushes the data block alone, with no
    /// journal commit for a size change. A checksum line after the JSON tells a torn write
    /// from a whole one.
    pub fn save(&mut self, p: &Persisted) -> io::Result<()> {
        let json = serde_json::to_vec(p).map_err(io::Error::other)?;
        let mut bytes = json.clone();
        bytes.extend_from_slice(format!("\n{:016x}\n", fnv64(&json)).as_bytes());
        let slot = self.next;
        if self.files[slot].is_none() {
            fs::create_dir_all(&self.dir)?;
            let path = state_path(&self.dir, slot);
            let created = !path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            if created {
                // The new file's name must survive a crash too.
                File::open(&self.dir)?.sync_all()?;
            }
            self.files[slot] = Some(f);
        }
        let Some(f) = self.files[slot].as_mut() else {
            return Err(io::Error::other("state file not open"));
        };
        let result = (|| {
            let capacity = f.metadata()?.len() as usize;
            if bytes.len() > capacity {
                // Grow (rarely): room for twice this state, in whole pages.
                let cap = (bytes.len() * 2).div_ceil(4096) * 4096;
                f.set_len(cap as u64)?;
                bytes.resize(cap, b' ');
            } else {
                bytes.resize(capacity, b' ');
            }
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&bytes)?;
            f.sync_data()
        })();
        if result.is_err() {
            // Reopen next time rather than trust a file in an unknown state.
            self.files[slot] = None;
        } else {
            self.next = 1 - slot;
        }
        result
    }
}

/// Checks, before anything runs, that `dir` can hold the state files: an existing directory
/// we may write into, or a path that can be created as one. A file there, or a directory on
/// a read-only file system or without write permission, would otherwise start fine and then
/// refuse every change with 500. (A full disk is not caught here: it can pass; changes then
/// fail with 500 until there is room, and are not applied.)
pub fn check_dir(dir: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let shown = dir.display();
    // The nearest part of the path that exists: itself, or the ancestor it would be made in.
    let mut existing = dir;
    loop {
        match fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if existing == dir => return Err(format!("{shown} is not a directory")),
            Ok(_) => {
                return Err(format!(
                    "cannot create {shown}: {} is not a directory",
                    existing.display()
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                match existing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => existing = p,
                    _ => return Ok(()), // relative, made in the working directory
                }
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
    }
    access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        let what = if existing == dir {
            format!("{shown} is not writable")
        } else {
            format!("cannot create {shown} in {}", existing.display())
        };
        format!("{what}: {}", io::Error::from(e))
    })
}

/// What start-up found in the state directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest valid state and its slot.
    pub found: Option<(Persisted, usize)>,
    /// Files that could not be used: why, and where they were moved.
    pub problems: Vec<String>,
}

pub fn load(dir: &Path) -> Loaded {
    let mut out = Loaded::default();
    for slot in 0..2 {
        let path = state_path(dir, slot);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.problems
                    .push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        if bytes.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
            continue; // created, never completed a write: nothing to keep
        }
        let why = match checked_json(&bytes).and_then(|j| {
            serde_json::from_slice::<Persisted>(j).map_err(|e| format!("not valid state JSON: {e}"))
        }) {
            Ok(p) if p.format == FORMAT => {
                if out
                    .found
                    .as_ref()
                    .is_none_or(|(f, _)| p.version > f.version)
                {
                    out.found = Some((p, slot));
                }
                continue;
            }
            Ok(p) => format!("unknown format {} (expected {FORMAT})", p.format),
            Err(e) => e,
        };
        let moved = set_aside(&path);
        out.problems.push(format!(
            "{}: {why}{}",
            path.display(),
            moved
                .map(|m| format!(" (moved to {})", m.display()))
                .unwrap_or_default()
        ));
    }
    out
}

/// FNV-1a, 64 bits: a checksum against torn writes (not against tampering).
fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The JSON of a state file whose checksum line matches it.
fn checked_json(bytes: &[u8]) -> Result<&[u8], String> {
    let torn = || "torn or damaged (checksum missing or wrong)".to_string();
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or_else(torn)?;
    let (json, rest) = (&bytes[..nl], &bytes[nl + 1..]);
    let sum = rest
        .get(..16)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(torn)?;
    match u64::from_str_radix(sum, 16) {
        Ok(v) if v == fnv64(json) => Ok(json),
        _ => Err(torn()),
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

    fn cfg(n: u16) -> Table {
        format!("[[clusters]]\nname = \"a\"\nbackends = [\"127.0.0.1:{n}\"]\n")
            .parse()
            .unwrap()
    }

    #[test]
    fn alternating_files_newest_wins_and_a_torn_write_leaves_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::new(dir.path(), None);
        for v in 1..=5 {
            s.save(&Persisted::new(v, Table::new(), cfg(v as u16)))
                .unwrap();
        }
        let l = load(dir.path());
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let (p, slot) = l.found.unwrap();
        assert_eq!((p.version, p.config), (5, cfg(5)));
        // Version 5 went to slot 0 (1, 3, 5 alternate with 2, 4): tear it.
        assert_eq!(slot, 0);
        let path = state_path(dir.path(), 0);
        // A write that stopped half way: the first half new, the rest still old.
        let mut bytes = fs::read(&path).unwrap();
        let end = bytes.iter().position(|&b| b == b'\n').unwrap();
        bytes[end / 2..end].fill(b'x');
        fs::write(&path, &bytes).unwrap();
        let l = load(dir.path());
        assert_eq!(l.found.as_ref().map(|(p, _)| p.version), Some(4));
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        assert!(!path.exists(), "the torn file was moved aside");
        // A store resumed from there writes over the older slot next.
        let mut s = Store::new(dir.path(), Some(1));
        s.save(&Persisted::new(6, Table::new(), cfg(6))).unwrap();
        assert_eq!(load(dir.path()).found.map(|(p, _)| p.version), Some(6));
    }

    #[test]
    fn nothing_there() {
        let dir = tempfile::tempdir().unwrap();
        let l = load(&dir.path().join("absent"));
        assert!(l.found.is_none() && l.problems.is_empty());
    }
}
