//! The file provider: a JSON or TOML file of clusters that another tool writes, re-read when
//! it changes (checked every `interval`: size, modification time and inode, so an atomic
//! rename counts too).
//!
//! ```json
//! {"clusters": [{"name": "api", "backends": ["127.0.0.1:9001", {"addr": "127.0.0.1:9002", "weight": 2}]}]}
//! ```
//! or the same as `[[clusters]]` tables in TOML. Each cluster may carry any `[[clusters]]`
//! key. The file is taken whole or not at all: a syntax error or an invalid cluster fails the
//! look (the last good set stays). A file that cannot be read — deleted, say — fails too, so a
//! tool that deletes and rewrites the file never empties the clusters in between; to remove
//! every cluster, write an empty list.

use super::{Endpoint, Fetched, Service, Source};
use crate::config::discovery::FileFormat;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;
use toml::{Table, Value};

/// The largest file read (a bigger one is an error, not a truncated read).
const MAX_FILE: u64 = 16 << 20;

pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    format: FileFormat,
    /// (len, mtime ns, inode) of the last file parsed, and what it gave.
    seen: Option<((u64, i128, u64), Vec<Service>)>,
}

impl FileSource {
    pub fn new(path: PathBuf, interval: Duration, format: FileFormat) -> FileSource {
        FileSource {
            path,
            interval,
            format,
            seen: None,
        }
    }
}

impl Source for FileSource {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn fetch(&mut self) -> Result<Fetched, String> {
        let shown = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| format!("{shown}: {e}"))?;
        let stamp = (
            meta.len(),
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            meta.ino(),
        );
        if let Some((seen, services)) = &self.seen {
            if *seen == stamp {
                return Ok(Fetched {
                    services: services.clone(),
                    strict: true,
                    ..Fetched::default()
                });
            }
        }
        if meta.len() > MAX_FILE {
            return Err(format!("{shown}: larger than {MAX_FILE} bytes"));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| format!("{shown}: {e}"))?;
        let services = parse(&text, self.format).map_err(|e| format!("{shown}: {e}"))?;
        self.seen = Some((stamp, services.clone()));
        Ok(Fetched {
            services,
            strict: true,
            ..Fetched::default()
        })
    }
}

/// The file's text → services. Backends are checked here for their shape only; the
/// clusters are validated in full by the caller, like `[[clusters]]` tables.
pub fn parse(text: &str, format: FileFormat) -> Result<Vec<Service>, String> {
    let doc: Table = match format {
        FileFormat::Json => {
            let j: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            match Value::try_from(j) {
                Ok(Value::Table(t)) => t,
                Ok(_) => return Err("expected a JSON object with \"clusters\"".into()),
                Err(e) => return Err(format!("unusable JSON (null is not allowed): {e}")),
            }
        }
        FileFormat::Toml => text.parse().map_err(|e: toml::de::Error| {
            format!(
                "TOML syntax: {}",
                e.to_string().trim_end().replace('\n', " | ")
            )
        })?,
    };
    if let Some(k) = doc.keys().find(|k| *k != "clusters") {
        return Err(format!("{k}: unknown key (expected only \"clusters\")"));
    }
    let list = match doc.get("clusters") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("clusters: expected a list of cluster tables".into()),
    };
    let mut out = Vec::with_capacity(list.len());
    let mut names = std::collections::HashSet::new();
    for (i, v) in list.iter().enumerate() {
        let Value::Table(t) = v else {
            return Err(format!("clusters[{i}]: expected a table"));
        };
        let name = match t.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => return Err(format!("clusters[{i}].name: missing (a string)")),
        };
        if !names.insert(name.clone()) {
            return Err(format!(
                "clusters[{i}].name: duplicate cluster name {name:?}"
            ));
        }
        let mut backends = Vec::new();
        if let Some(list) = t.get("backends") {
            let Value::Array(items) = list else {
                return Err(format!("clusters[{i}].backends: expected a list"));
            };
            for (j, b) in items.iter().enumerate() {
                backends
                    .push(endpoint(b).map_err(|e| format!("clusters[{i}].backends[{j}]: {e}"))?);
            }
        }
        let mut extra = t.clone();
        extra.remove("name");
        extra.remove("backends");
        out.push(Service {
            name,
            backends,
            extra: Some(extra),
        });
    }
    Ok(out)
}

/// `"ip:port"` or `{addr = "ip:port", weight = n}`. Host names are resolved, as in a
/// config file.
fn endpoint(v: &Value) -> Result<Endpoint, String> {
    let (addr, weight) = match v {
        Value::String(s) => (s.as_str(), 1),
        Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "addr" && *k != "weight") {
                return Err(format!("{k}: unknown key"));
            }
            let addr = t
                .get("addr")
                .and_then(Value::as_str)
                .ok_or("addr: missing (a string \"host:port\")")?;
            let weight = match t.get("weight") {
                None => 1,
                Some(Value::Integer(w)) if (1..=10_000).contains(w) => *w as u32,
                Some(_) => return Err("weight: expected an integer in 1..=10000".into()),
            };
            (addr, weight)
        }
        _ => return Err("expected \"host:port\" or {addr, weight}".into()),
    };
    let sa = crate::config::parse_backend_addr(addr)?;
    Ok(Endpoint {
        addr: sa,
        weight,
        source: "file".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_files() {
        let j = parse(
            r#"{"clusters":[{"name":"a","balance":"weighted","backends":["127.0.0.1:1",{"addr":"127.0.0.1:2","weight":3}]}]}"#,
            FileFormat::Json,
        )
        .unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].backends[1].weight, 3);
        assert_eq!(
            j[0].extra.as_ref().unwrap()["balance"].as_str(),
            Some("weighted")
        );
        let t = parse(
            "[[clusters]]\nname = \"b\"\nbackends = [\"127.0.0.1:5\"]\n",
            FileFormat::Toml,
        )
        .unwrap();
        assert_eq!(t[0].backends[0].addr.port(), 5);
        assert!(parse("{}", FileFormat::Json).unwrap().is_empty());
    }

    #[test]
    fn bad_files_say_where() {
        for (text, want) in [
            ("{", "invalid JSON"),
            (r#"{"clusters":{}}"#, "clusters: expected a list"),
            (r#"{"clusters":[{"backends":[]}]}"#, "clusters[0].name"),
            (
                r#"{"clusters":[{"name":"a","backends":["nope"]}]}"#,
                "clusters[0].backends[0]",
            ),
            (r#"{"clusters":[{"name":"a"},{"name":"a"}]}"#, "duplicate"),
            (r#"{"other":1}"#, "other: unknown key"),
        ] {
            let e = parse(text, FileFormat::Json).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
