//! The raw config document the control plane edits: the TOML file's tables (`server`,
//! `[[listeners]]`, `[[clusters]]`) as a `toml::Table`, addressed by object name.
//!
//! Every change (admin API, SIGHUP, start-up merge with the persisted state) edits a copy of
//! the document and puts the whole result through the same validation as a file.

use std::collections::HashSet;
use toml::{Table, Value};

/// The kinds of named objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Listener,
    Cluster,
    /// Versioned services with a release strategy (`[[services]]`).
    Service,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Listener, Kind::Cluster, Kind::Service];
}

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::Listener => "listeners",
            Kind::Cluster => "clusters",
            Kind::Service => "services",
        }
    }
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::Cluster => "cluster",
            Kind::Service => "service",
        }
    }
}

/// The `name` of an object table.
pub fn name_of(v: &Value) -> Option<&str> {
    v.get("name")?.as_str()
}

/// The objects of one kind, in document order.
pub fn objects(doc: &Table, kind: Kind) -> &[Value] {
    match doc.get(kind.key()) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

fn objects_mut(doc: &mut Table, kind: Kind) -> &mut Vec<Value> {
    let entry = doc
        .entry(kind.key())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

pub fn find<'a>(doc: &'a Table, kind: Kind, name: &str) -> Option<&'a Value> {
    objects(doc, kind).iter().find(|v| name_of(v) == Some(name))
}

pub fn find_mut<'a>(doc: &'a mut Table, kind: Kind, name: &str) -> Option<&'a mut Value> {
    objects_mut(doc, kind)
        .iter_mut()
        .find(|v| name_of(v) == Some(name))
}

/// Replaces the object named `name` in place, or appends it. Returns true when it is new.
pub fn put(doc: &mut Table, kind: Kind, name: &str, value: Value) -> bool {
    let list = objects_mut(doc, kind);
    match list.iter_mut().find(|v| name_of(v) == Some(name)) {
        Some(slot) => {
            *slot = value;
            false
        }
        None => {
            list.push(value);
            true
        }
    }
}

/// Removes the object named `name`; false when there was none.
pub fn remove(doc: &mut Table, kind: Kind, name: &str) -> bool {
    let list = objects_mut(doc, kind);
    let before = list.len();
    list.retain(|v| name_of(v) != Some(name));
    list.len() != before
}

/// Three-way merge, per object: where the file's definition of an object changed since `base`
/// (the file the running state was derived from), the new file wins; otherwise the running
/// (`effective`) definition wins, so changes made through the API survive reloads and
/// restarts until the file's own definition of that object changes. Deletions count as
/// changes on either side. The `server` table always comes from the new file.
pub fn merge(new_file: &Table, base: &Table, effective: &Table) -> Table {
    let mut out = new_file.clone();
    for kind in Kind::ALL {
        let mut names: Vec<&str> = Vec::new();
        let mut seen = HashSet::new();
        for v in objects(new_file, kind)
            .iter()
            .chain(objects(effective, kind))
        {
            if let Some(n) = name_of(v) {
                if seen.insert(n) {
                    names.push(n);
                }
            }
        }
        let mut merged = Vec::new();
        for n in names {
            let nf = find(new_file, kind, n);
            let b = find(base, kind, n);
            let pick = if nf != b {
                nf
            } else {
                find(effective, kind, n)
            };
            if let Some(v) = pick {
                merged.push(v.clone());
            }
        }
        if merged.is_empty() {
            out.remove(kind.key());
        } else {
            out.insert(kind.key().into(), Value::Array(merged));
        }
    }
    out
}

/// The runtime changes a reload of `new_file` overrides or drops, one line each (what, old →
/// new): objects whose running definition differs from `base` (changed through the API) and
/// whose file definition changed too, so [`merge`] takes the file's.
pub fn overridden(new_file: &Table, base: &Table, effective: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        for v in objects(effective, kind) {
            let Some(n) = name_of(v) else { continue };
            let (nf, b) = (find(new_file, kind, n), find(base, kind, n));
            let changed_at_runtime = b != Some(v);
            if !changed_at_runtime || nf == b || nf == Some(v) {
                continue;
            }
            let what = format!("{} {n}", kind.noun());
            match nf {
                None => out.push(format!(
                    "{what}: removed by the file (it had runtime changes)"
                )),
                Some(f) => out.extend(table_diff(v, f).into_iter().map(|d| format!("{what}: {d}"))),
            }
        }
    }
    out
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
}

/// Field by field, `old → new`; backends by address.
fn table_diff(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_table(), new.as_table()) else {
        return vec![format!("{old} → {new}")];
    };
    let mut out = Vec::new();
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (a, b) = (o.get(k), n.get(k));
        if a == b {
            continue;
        }
        if k == "backends" {
            out.extend(backends_diff(a, b));
        } else {
            out.push(format!("{k}: {} → {}", show(a), show(b)));
        }
    }
    out
}

fn backends_diff(old: Option<&Value>, new: Option<&Value>) -> Vec<String> {
    let list = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let (old, new) = (list(old), list(new));
    let find = |l: &[Value], a: &str| l.iter().find(|b| backend_addr(b) == Some(a)).cloned();
    let field = |b: &Value, k: &str| b.as_table().and_then(|t| t.get(k)).cloned();
    let mut out = Vec::new();
    for b in &old {
        let Some(a) = backend_addr(b) else { continue };
        match find(&new, a) {
            None => out.push(format!("backend {a} dropped")),
            Some(nb) => {
                for k in ["weight", "drain"] {
                    let (x, y) = (field(b, k), field(&nb, k));
                    if x != y {
                        out.push(format!(
                            "backend {a} {k}: {} → {}",
                            show(x.as_ref()),
                            show(y.as_ref())
                        ));
                    }
                }
            }
        }
    }
    for b in &new {
        if let Some(a) = backend_addr(b) {
            if find(&old, a).is_none() {
                out.push(format!("backend {a} added"));
            }
        }
    }
    out
}

/// Only the named objects of a document (what the state file keeps).
pub fn objects_only(doc: &Table) -> Table {
    let mut t = Table::new();
    for kind in Kind::ALL {
        if let Some(v) = doc.get(kind.key()) {
            t.insert(kind.key().into(), v.clone());
        }
    }
    t
}

/// A backend entry's address as written (`"host:port"` or `{ addr = "host:port", .. }`).
pub fn backend_addr(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Table(t) => t.get("addr")?.as_str(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Table {
        s.parse().expect("toml")
    }

    #[test]
    fn merge_keeps_runtime_changes_unless_the_file_changed_that_object() {
        let base = t(r#"
[[clusters]]
name = "a"
backends = ["127.0.0.1:1"]
[[clusters]]
name = "b"
backends = ["127.0.0.1:2"]
[[clusters]]
name = "gone"
backends = ["127.0.0.1:9"]
"#);
        // Runtime: a gained a backend, b untouched, c added, gone deleted.
        let eff = t(r#"
[[clusters]]
name = "a"
backends = ["127.0.0.1:1", "127.0.0.1:3"]
[[clusters]]
name = "b"
backends = ["127.0.0.1:2"]
[[clusters]]
name = "c"
backends = ["127.0.0.1:4"]
"#);
        // The file now changes b and keeps a and gone as they were.
        let new_file = t(r#"
[server]
workers = 1
[[clusters]]
name = "a"
backends = ["127.0.0.1:1"]
[[clusters]]
name = "b"
backends = ["127.0.0.1:5"]
[[clusters]]
name = "gone"
backends = ["127.0.0.1:9"]
"#);
        let m = merge(&new_file, &base, &eff);
        let a = find(&m, Kind::Cluster, "a").unwrap();
        assert_eq!(
            a["backends"].as_array().unwrap().len(),
            2,
            "runtime add kept"
        );
        let b = find(&m, Kind::Cluster, "b").unwrap();
        assert_eq!(
            b["backends"][0].as_str(),
            Some("127.0.0.1:5"),
            "file edit wins"
        );
        assert!(
            find(&m, Kind::Cluster, "c").is_some(),
            "runtime-created kept"
        );
        assert!(
            find(&m, Kind::Cluster, "gone").is_none(),
            "runtime delete kept"
        );
        assert_eq!(m["server"]["workers"].as_integer(), Some(1));
    }

    #[test]
    fn put_and_remove() {
        let mut d = Table::new();
        assert!(put(&mut d, Kind::Listener, "x", t("name = \"x\"").into()));
        assert!(!put(
            &mut d,
            Kind::Listener,
            "x",
            t("name = \"x\"\nbind=\"1\"").into()
        ));
        assert_eq!(objects(&d, Kind::Listener).len(), 1);
        assert!(remove(&mut d, Kind::Listener, "x"));
        assert!(!remove(&mut d, Kind::Listener, "x"));
    }
}
