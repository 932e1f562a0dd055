//! `switchyard ctl` against a running proxy: every verb, tables and --json, exit codes (0 done,
//! 1 refused, 64 usage, 69 unreachable), the token file, and settings taken from the config.

mod util;

use std::net::SocketAddr;
use std::path::Path;
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

#[test]
fn every_verb_with_tables_json_and_exit_codes() {
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
    let p = Proxy::spawn(
        vec!["run".into(), "-c".into(), cfg_path.clone().into()],
        tempfile::tempdir().unwrap(),
        Some(cfg_path.clone()),
        WaitFor::Names(vec!["web".into(), "admin".into()]),
    );
    let admin = p.addr("admin").to_string();
    let d = dir.path();
    let tf = token.to_str().unwrap();
    let a = |rest: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--admin".to_string(),
            admin.clone(),
            "--token-file".into(),
            tf.into(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let run = |rest: &[&str]| {
        let args = a(rest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl(d, &refs)
    };

    let out = run(&["clusters"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    assert!(
        out.stdout.contains("app") && out.stdout.contains("round_robin"),
        "{}",
        out.stdout
    );

    let b2a = b2.addr("demo-backend").to_string();
    let out = run(&["backend", "add", "app", &b2a, "--weight", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&b2a) && out.stdout.contains(" 3 "),
        "{}",
        out.stdout
    );
    // Adding it again: refused by the API → exit 1 with the API's message.
    let out = run(&["backend", "add", "app", &b2a]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("409") && out.stderr.contains("exists"),
        "{}",
        out.stderr
    );

    let out = run(&["backend", "set", "app", &b2a, "--weight", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let out = run(&["backend", "drain", "app", &b2a]);
    assert!(out.stdout.contains("draining"), "{}", out.stdout);
    let out = run(&["--json", "backends", "app"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["backends"][1]["weight"], 5);
    assert_eq!(v["backends"][1]["drain"], true);
    let out = run(&["backend", "drain", "app", &b2a, "--undo"]);
    assert!(!out.stdout.contains("draining"), "{}", out.stdout);
    let out = run(&["backend", "delete", "app", &b2a]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(!out.stdout.contains(&b2a));

    // Objects from inline JSON and from a TOML file.
    let out = run(&[
        "cluster",
        "set",
        "extra",
        &format!("{{\"backends\":[\"{b2a}\"]}}"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let lfile = d.join("side.toml");
    std::fs::write(
        &lfile,
        "bind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"extra\"\n",
    )
    .unwrap();
    let out = run(&["listener", "set", "side", lfile.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let out = run(&["listeners"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("side"))
        .expect("side listed");
    let side: SocketAddr = line.split_whitespace().last().unwrap().parse().unwrap();
    let r = util::client::call(side, "GET", "/", None);
    assert_eq!(r.text().trim(), "two");
    let out = run(&["cluster", "get", "extra"]);
    assert!(out.stdout.contains(&b2a));
    let out = run(&["cluster", "delete", "extra"]);
    assert_eq!(out.status.code(), Some(1), "in use by side: {}", out.stdout);
    assert_eq!(run(&["listener", "delete", "side"]).status.code(), Some(0));
    assert_eq!(run(&["cluster", "delete", "extra"]).status.code(), Some(0));
    let out = run(&["listener", "get", "side"]);
    assert_eq!(out.status.code(), Some(1));

    // Config, reload (and a stale --if-match), health.
    let out = run(&["config"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let version = v["version"].as_u64().unwrap();
    let out = run(&["--if-match", "1", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("412"), "{}", out.stderr);
    let out = run(&["--if-match", &version.to_string(), "reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("version {}", version + 1)),
        "{}",
        out.stdout
    );
    assert_eq!(run(&["health"]).status.code(), Some(0));

    // Without the token: refused (401 → exit 1). Settings from the config file work too.
    let out = ctl(
        d,
        &["--admin", &admin, "backend", "add", "app", "127.0.0.1:9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    // The config names admin = 127.0.0.1:0, so point -c at a copy with the real port.
    let copy = d.join("copy.toml");
    std::fs::write(
        &copy,
        cfg.replace(
            "127.0.0.1:0\"\nadmin_token",
            &format!("{admin}\"\nadmin_token"),
        ),
    )
    .unwrap();
    let out = ctl(
        d,
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

    // Unreachable admin → 69; usage errors → 64.
    let out = ctl(d, &["--admin", &dead_addr().to_string(), "clusters"]);
    assert_eq!(out.status.code(), Some(69), "{}", out.stderr);
    let out = run(&["cluster", "set", "x", "{not json"]);
    assert_eq!(out.status.code(), Some(64));
    let out = ctl(d, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(64));
}
