//! The recovery file: totals and the 10-second window, rewritten about once a second,
//! atomically (temp file in the same directory, fsync, rename, fsync of the directory).
//!
//! Format (the original Foo proxy's keys first, still readable by its tools):
//! `{"index":i,"time_stamp":unix_secs,"requests_10s":[10],"responses_10s":[10],"version":1,
//! "saved_at_ms":..,"msg_total":..,"msg_req":..,"msg_ack":..,"msg_nak":..,"msg_invalid":..,
//! "tcp":{..},"http":{..}}`. Slot `j` of `requests_10s` holds the REQs of the second `s` with
//! `s % 10 == j` among the ten seconds ending at `time_stamp`; `index = time_stamp % 10`.
//!
//! On start a file at most [`MAX_AGE_S`] seconds old is restored: totals, and the window slots
//! (seconds between the save and now count as lost, zero). Older files are ignored; a torn or
//! corrupt file is reported and ignored. Never fatal.

use serde_json::{Map, Value};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const MAX_AGE_S: u64 = 10;
pub const SLOTS: usize = 10;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    pub time_stamp: u64,
    /// (Unix second, REQs, ACK+NAKs) for the ten seconds ending at `time_stamp`.
    pub seconds: Vec<(u64, u64, u64)>,
    /// Every other key of the file (totals).
    pub rest: Map<String, Value>,
}

/// The JSON text of a recovery file. `slot(sec)` gives (requests, responses) of a second.
pub fn render(
    time_stamp: u64,
    saved_at_ms: u64,
    slot: impl Fn(u64) -> (u64, u64),
    totals: Map<String, Value>,
) -> String {
    let mut req = [0u64; SLOTS];
    let mut resp = [0u64; SLOTS];
    for s in time_stamp.saturating_sub(SLOTS as u64 - 1)..=time_stamp {
        let (a, b) = slot(s);
        req[(s % SLOTS as u64) as usize] = a;
        resp[(s % SLOTS as u64) as usize] = b;
    }
    let mut m = Map::new();
    m.insert("index".into(), Value::from(time_stamp % SLOTS as u64));
    m.insert("time_stamp".into(), Value::from(time_stamp));
    m.insert("requests_10s".into(), Value::from(req.to_vec()));
    m.insert("responses_10s".into(), Value::from(resp.to_vec()));
    m.insert("version".into(), Value::from(1));
    m.insert("saved_at_ms".into(), Value::from(saved_at_ms));
    for (k, v) in totals {
        m.insert(k, v);
    }
    Value::Object(m).to_string()
}

/// Parses a recovery file's text; `Err` says what is wrong with it.
pub fn parse(text: &str) -> Result<Saved, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(mut m) = v else {
        return Err("not a JSON object".into());
    };
    let num = |m: &Map<String, Value>, k: &str| -> Result<u64, String> {
        m.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("missing or invalid {k:?}"))
    };
    let time_stamp = num(&m, "time_stamp")?;
    let index = num(&m, "index")?;
    if index >= SLOTS as u64 {
        return Err(format!("\"index\" {index} is out of range"));
    }
    let slots = |m: &Map<String, Value>, k: &str| -> Result<Vec<u64>, String> {
        let a = m
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("missing or invalid {k:?}"))?;
        if a.len() != SLOTS {
            return Err(format!("{k:?} must have {SLOTS} slots"));
        }
        a.iter()
            .map(|x| x.as_u64().ok_or_else(|| format!("{k:?}: not a count")))
            .collect()
    };
    let req = slots(&m, "requests_10s")?;
    let resp = slots(&m, "responses_10s")?;
    // The slot of the save's own second is `index`; the others are the nine seconds before.
    let newest = time_stamp;
    let seconds = (0..SLOTS as u64)
        .filter_map(|back| {
            let s = newest.checked_sub(back)?;
            let j = ((index + SLOTS as u64 - back % SLOTS as u64) % SLOTS as u64) as usize;
            Some((s, req[j], resp[j]))
        })
        .collect();
    for k in [
        "index",
        "time_stamp",
        "requests_10s",
        "responses_10s",
        "version",
        "saved_at_ms",
    ] {
        m.remove(k);
    }
    Ok(Saved {
        time_stamp,
        seconds,
        rest: m,
    })
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    Restored(Saved),
    /// No file: a first start.
    Missing,
    /// Older than [`MAX_AGE_S`] (age in seconds).
    TooOld(u64),
    /// Torn, corrupt or from the future.
    Bad(String),
}

pub fn load(path: &Path, now_s: u64) -> Loaded {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Bad(e.to_string()),
    };
    match parse(&text) {
        Ok(s) if s.time_stamp > now_s + 1 => Loaded::Bad(format!(
            "saved {} s in the future (clock change?)",
            s.time_stamp - now_s
        )),
        Ok(s) if now_s.saturating_sub(s.time_stamp) > MAX_AGE_S => {
            Loaded::TooOld(now_s - s.time_stamp)
        }
        Ok(s) => Loaded::Restored(s),
        Err(e) => Loaded::Bad(e),
    }
}

/// Writes `text` to `path` atomically: a crash leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_slots_and_totals() {
        let mut totals = Map::new();
        totals.insert("msg_req".into(), Value::from(42));
        let text = render(1007, 1_007_500, |s| (s - 990, 2 * (s - 990)), totals);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["index"], 7);
        assert_eq!(v["time_stamp"], 1007);
        // Second 1007 → slot 7, second 998 → slot 8.
        assert_eq!(v["requests_10s"][7], 17);
        assert_eq!(v["requests_10s"][8], 8);
        let s = parse(&text).unwrap();
        assert_eq!(s.time_stamp, 1007);
        assert_eq!(s.rest["msg_req"], 42);
        assert!(!s.rest.contains_key("requests_10s"));
        let mut secs = s.seconds.clone();
        secs.sort_unstable();
        assert_eq!(secs.len(), 10);
        for (sec, req, resp) in secs {
            assert!((998..=1007).contains(&sec));
            assert_eq!(req, sec - 990);
            assert_eq!(resp, 2 * (sec - 990));
        }
    }

    #[test]
    fn the_original_format_is_readable() {
        let s = parse(r#"{"index":3,"time_stamp":500,"requests_10s":[1,2,3,4,5,6,7,8,9,10],"responses_10s":[0,0,0,0,0,0,0,0,0,0]}"#).unwrap();
        let newest = s.seconds.iter().find(|x| x.0 == 500).unwrap();
        assert_eq!(newest.1, 4);
        let oldest = s.seconds.iter().find(|x| x.0 == 491).unwrap();
        assert_eq!(oldest.1, 5);
    }

    #[test]
    fn torn_and_corrupt_files_are_errors() {
        for t in [
            "",
            "{\"index\":3,\"time_st",
            "[]",
            r#"{"index":3,"time_stamp":5,"requests_10s":[1],"responses_10s":[]}"#,
            r#"{"index":12,"time_stamp":5,"requests_10s":[0,0,0,0,0,0,0,0,0,0],"responses_10s":[0,0,0,0,0,0,0,0,0,0]}"#,
        ] {
            assert!(parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn load_checks_age_and_writes_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/recovery.json");
        assert!(matches!(load(&p, 100), Loaded::Missing));
        write_atomic(&p, &render(100, 0, |_| (1, 1), Map::new())).unwrap();
        assert!(matches!(load(&p, 110), Loaded::Restored(_)));
        assert!(matches!(load(&p, 111), Loaded::TooOld(11)));
        assert!(matches!(load(&p, 50), Loaded::Bad(_)));
        fs::write(&p, "{\"index\":1,").unwrap();
        assert!(matches!(load(&p, 100), Loaded::Bad(_)));
        // No temp files left behind.
        let n = fs::read_dir(p.parent().unwrap()).unwrap().count();
        assert_eq!(n, 1);
    }
}
