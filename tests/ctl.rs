//! `switchyard ctl` against a running proxy, one test per verb: exit status (0 done, 1
//! refused, 64 usage, 69 unreachable) and output (tables by default, the API's JSON with
//! --json), the token file, and settings taken from the config.

mod util;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use util::*;

const T: Duration = Duration::from_secs(20);

fn ctl(dir: &Path, args: &[&str]) -> Finished {
    let mut all = vec!["ctl"];
    all.extend_from_slice(args);
    run_to_exit(&all, dir, T)
}

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// A proxy with a token-protected admin API, cluster `app` on backend `one`, and a second
/// demo backend `two` to add.
struct Env {
    dir: tempfile::TempDir,
    token: PathBuf,
    cfg: String,
    proxy: Proxy,
    b2: String,
    _b: (Proxy, Proxy),
}

impl Env {
    fn new() -> Env {
        let b1 = demo("one");
        let b2 = demo("two");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-123\n").unwrap();
        let cfg_path = dir.path().join("switchyard.toml");
        let cfg = format!(
            "[server]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n\
             [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\
             [[clusters]]\nname = \"app\"\nbackends = [\"{}\"]\n",
            token.display(),
            b1.addr("demo-backend")
        );
        std::fs::write(&cfg_path, &cfg).unwrap();
        let proxy = Proxy::spawn(
            vec!["run".into(), "-c".into(), cfg_path.clone().into()],
            tempfile::tempdir().unwrap(),
            Some(cfg_path),
            WaitFor::Names(vec!["web".into(), "admin".into()]),
        );
        Env {
            b2: b2.addr("demo-backend").to_string(),
            dir,
            token,
            cfg,
            proxy,
            _b: (b1, b2),
        }
    }

    fn admin(&self) -> String {
        self.proxy.addr("admin").to_string()
    }

    /// `ctl --admin ADDR --token-file FILE <args>`.
    fn run(&self, args: &[&str]) -> Finished {
        let admin = self.admin();
        let mut v = vec!["--admin", &admin, "--token-file"];
        let tf = self.token.to_str().unwrap();
        v.push(tf);
        v.extend_from_slice(args);
        ctl(self.dir.path(), &v)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "ctl {args:?}: {}\n{}",
            out.stderr,
            out.stdout
        );
        out.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("--json prints JSON")
    }
}

/// The row of a table whose first column is `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
        .split_whitespace()
        .collect()
}

#[test]
fn clusters_lists_a_table() {
    let e = Env::new();
    let out = e.ok(&["clusters"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert_eq!(row(&out, "app"), ["app", "round_robin", "1"]);
    assert_eq!(e.json(&["clusters"])["clusters"][0]["name"], "app");
}

#[test]
fn backend_add_prints_the_backends_table_and_refuses_a_duplicate() {
    let e = Env::new();
    let out = e.ok(&["backend", "add", "app", &e.b2, "--weight", "3"]);
    assert!(out.starts_with("ADDR"), "{out}");
    assert_eq!(row(&out, &e.b2)[1..3], ["3", "up"]);
    let out = e.run(&["backend", "add", "app", &e.b2]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("409") && out.stderr.contains("exists"),
        "{}",
        out.stderr
    );
}

#[test]
fn backend_set_changes_the_weight() {
    let e = Env::new();
    e.ok(&["backend", "add", "app", &e.b2]);
    let out = e.ok(&["backend", "set", "app", &e.b2, "--weight", "5"]);
    assert_eq!(row(&out, &e.b2)[1], "5", "{out}");
    let v = e.json(&["backends", "app"]);
    assert_eq!(v["backends"][1]["weight"], 5, "{v}");
}

#[test]
fn backend_drain_and_undo() {
    let e = Env::new();
    e.ok(&["backend", "add", "app", &e.b2]);
    let out = e.ok(&["backend", "drain", "app", &e.b2]);
    assert_eq!(row(&out, &e.b2)[2], "draining", "{out}");
    assert_eq!(e.json(&["backends", "app"])["backends"][1]["drain"], true);
    let out = e.ok(&["backend", "drain", "app", &e.b2, "--undo"]);
    assert_eq!(row(&out, &e.b2)[2], "up", "{out}");
}

#[test]
fn backend_delete_removes_it() {
    let e = Env::new();
    e.ok(&["backend", "add", "app", &e.b2]);
    let out = e.ok(&["backend", "delete", "app", &e.b2]);
    assert!(out.starts_with("ADDR") && !out.contains(&e.b2), "{out}");
    let out = e.run(&["backend", "delete", "app", &e.b2]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
}

#[test]
fn backends_lists_a_table() {
    let e = Env::new();
    let out = e.ok(&["backends", "app"]);
    assert!(out.starts_with("ADDR"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = e.run(&["backends", "ghost"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
}

#[test]
fn cluster_set_get_delete_print_tables() {
    let e = Env::new();
    let out = e.ok(&[
        "cluster",
        "set",
        "extra",
        &format!("{{\"backends\":[\"{}\"]}}", e.b2),
    ]);
    assert_eq!(row(&out, "extra"), ["extra", "round_robin", "1"], "{out}");
    let out = e.ok(&["cluster", "get", "extra"]);
    assert_eq!(row(&out, "extra")[2], "1", "{out}");
    let v = e.json(&["cluster", "get", "extra"]);
    assert_eq!(v["backends"][0], e.b2.as_str());
    let out = e.ok(&["cluster", "delete", "extra"]);
    assert!(
        out.starts_with("DELETED") && row(&out, "extra").len() == 2,
        "{out}"
    );
    let out = e.run(&["cluster", "get", "extra"]);
    assert_eq!(out.status.code(), Some(1));
    // In use by a listener: refused.
    let out = e.run(&["cluster", "delete", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("in_use"), "{}", out.stderr);
}

#[test]
fn listener_set_from_a_toml_file_get_and_delete() {
    let e = Env::new();
    e.ok(&[
        "cluster",
        "set",
        "extra",
        &format!("{{\"backends\":[\"{}\"]}}", e.b2),
    ]);
    let lfile = e.dir.path().join("side.toml");
    std::fs::write(
        &lfile,
        "bind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"extra\"\n",
    )
    .unwrap();
    let out = e.ok(&["listener", "set", "side", lfile.to_str().unwrap()]);
    let r = row(&out, "side");
    assert_eq!(r[1..4], ["127.0.0.1:0", "http", "extra"], "{out}");
    let side: SocketAddr = r[4].parse().expect("listening address");
    assert_eq!(
        util::client::call(side, "GET", "/", None).text().trim(),
        "two"
    );
    let out = e.ok(&["listener", "get", "side"]);
    assert_eq!(row(&out, "side")[4], side.to_string());
    let out = e.ok(&["listener", "delete", "side"]);
    assert!(out.starts_with("DELETED"), "{out}");
    let out = e.run(&["listener", "get", "side"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn listeners_lists_a_table() {
    let e = Env::new();
    let out = e.ok(&["listeners"]);
    assert!(out.starts_with("NAME"), "{out}");
    let r = row(&out, "web");
    assert_eq!(r[1..4], ["127.0.0.1:0", "http", "app"], "{out}");
    assert_eq!(r[4], e.proxy.addr("web").to_string());
}

#[test]
fn config_prints_the_running_json() {
    let e = Env::new();
    let v: Value = serde_json::from_str(&e.ok(&["config"])).expect("JSON");
    assert_eq!(v["clusters"][0]["name"], "app");
    assert!(v["version"].as_u64().is_some());
}

#[test]
fn reload_keeps_the_version_when_nothing_changed_and_checks_if_match() {
    let e = Env::new();
    let version = e.json(&["config"])["version"].as_u64().unwrap();
    let out = e.run(&["--if-match", "999", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("412"), "{}", out.stderr);
    let out = e.ok(&["--if-match", &version.to_string(), "reload"]);
    assert_eq!(out, format!("reloaded: version {version}"));
    // A real change bumps it.
    let path = e.proxy.config_path.clone().unwrap();
    std::fs::write(
        &path,
        e.cfg
            .replace("name = \"app\"\n", "name = \"app\"\nretries = 1\n"),
    )
    .unwrap();
    let out = e.ok(&["reload"]);
    assert_eq!(out, format!("reloaded: version {}", version + 1));
}

#[test]
fn stats_and_metrics() {
    let e = Env::new();
    let v: Value = serde_json::from_str(&e.ok(&["stats"])).expect("stats JSON");
    assert!(v["listeners"]["web"].is_object(), "{v}");
    let m = e.ok(&["metrics"]);
    assert!(m.contains("switchyard_build_info{version=\""), "{m}");
}

#[test]
fn health_exits_0_and_69_when_unreachable() {
    let e = Env::new();
    assert_eq!(e.ok(&["health"]), "ok");
    let out = ctl(
        e.dir.path(),
        &["--admin", &dead_addr().to_string(), "clusters"],
    );
    assert_eq!(out.status.code(), Some(69), "{}", out.stderr);
}

#[test]
fn without_the_token_changes_are_refused_and_the_config_supplies_it() {
    let e = Env::new();
    let admin = e.admin();
    let out = ctl(
        e.dir.path(),
        &["--admin", &admin, "backend", "add", "app", "127.0.0.1:9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    // The config names admin = 127.0.0.1:0, so point -c at a copy with the real port.
    let copy = e.dir.path().join("copy.toml");
    std::fs::write(
        &copy,
        e.cfg.replace(
            "127.0.0.1:0\"\nadmin_token",
            &format!("{admin}\"\nadmin_token"),
        ),
    )
    .unwrap();
    let out = ctl(
        e.dir.path(),
        &[
            "-c",
            copy.to_str().unwrap(),
            "backend",
            "add",
            "app",
            "127.0.0.1:9",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_64_and_every_verb_has_help() {
    let e = Env::new();
    let out = e.run(&["cluster", "set", "x", "{not json"]);
    assert_eq!(out.status.code(), Some(64));
    let out = ctl(e.dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(64));
    for verb in [
        &["backend", "add"][..],
        &["backend", "set"],
        &["backend", "drain"],
        &["backend", "delete"],
        &["cluster", "set"],
        &["listener", "get"],
        &["backends"],
    ] {
        let mut a = verb.to_vec();
        a.push("--help");
        let out = ctl(e.dir.path(), &a);
        assert_eq!(out.status.code(), Some(0), "{verb:?}");
        // Every argument line carries a description.
        let args: Vec<&str> = out
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("Arguments:"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert!(!args.is_empty() || verb == ["backends"], "{}", out.stdout);
        for l in args {
            assert!(
                l.split_whitespace().count() > 1,
                "{verb:?}: undocumented argument {l:?}"
            );
        }
    }
}
