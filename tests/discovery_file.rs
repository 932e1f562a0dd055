//! File discovery over real sockets: a JSON or TOML file of clusters that the test rewrites.
//! Edits route within a couple of looks; a bad edit or a deleted file keeps the last good
//! set (and says so in `/v1/discovery`); discovered clusters survive SIGHUP, are not written
//! to the state files, cannot be edited through the admin API, lose to an operator's cluster
//! of the same name, and get the provider's cluster defaults (health checks included).

mod util;

use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use util::client::call;
use util::discovery::{provider, spread};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// Writes `text` to `path` through a rename, as a config tool would.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn wait_spread(
    addr: SocketAddr,
    path: &str,
    what: &str,
    want: impl Fn(&HashMap<String, usize>) -> bool,
) {
    let mut last = HashMap::new();
    let d = Deadline::after(Duration::from_secs(5));
    while !d.expired() {
        last = spread(addr, path, 20);
        if want(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: last spread {last:?}");
}

#[test]
fn edits_route_and_bad_edits_or_deletion_keep_the_last_good_set() {
    let a = demo("a");
    let b = demo("b");
    let (aa, ba) = (a.addr("demo-backend"), b.addr("demo-backend"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clusters.json");
    write_atomic(
        &file,
        &format!(r#"{{"clusters":[{{"name":"svc","backends":["{aa}"]}}]}}"#),
    );
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\n[[listeners]]\nname = \"faas\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nfaas = true\n\
         [[discovery]]\ntype = \"file\"\npath = \"{}\"\ninterval = \"100ms\"\nbackoff_max = \"400ms\"\n",
        file.display()
    ));
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    // The first look happens before the workers start: routed from the first request.
    assert_eq!(
        spread(web, "/svc/", 5),
        HashMap::from([("a".to_string(), 5)])
    );
    let st = provider(admin, "file");
    assert_eq!(st["state"], "ok", "{st}");
    assert_eq!(st["services"]["svc"]["backends"][0]["addr"], aa.to_string());

    // An edit: both backends, balanced.
    write_atomic(
        &file,
        &format!(
            r#"{{"clusters":[{{"name":"svc","backends":["{aa}",{{"addr":"{ba}","weight":1}}]}}]}}"#
        ),
    );
    wait_spread(web, "/svc/", "both backends after the edit", |s| {
        s.get("a").copied().unwrap_or(0) >= 5 && s.get("b").copied().unwrap_or(0) >= 5
    });

    // Bad edits: broken JSON, then a valid file with an invalid cluster. Nothing changes.
    for (bad, says) in [
        ("{\"clusters\": [".to_string(), "invalid JSON"),
        (
            format!(r#"{{"clusters":[{{"name":"svc","balance":"fastest","backends":["{aa}"]}}]}}"#),
            "unknown balance",
        ),
    ] {
        let errors_before = provider(admin, "file")["errors"].as_u64().unwrap();
        write_atomic(&file, &bad);
        wait_until(Duration::from_secs(5), "the bad edit reported", || {
            let st = provider(admin, "file");
            st["state"] == "failing"
                && st["errors"].as_u64().unwrap() > errors_before
                && st["error"].as_str().unwrap_or("").contains(says)
        });
        let s = spread(web, "/svc/", 20);
        assert_eq!(
            s.get("a").copied().unwrap_or(0) + s.get("b").copied().unwrap_or(0),
            20,
            "{s:?}"
        );
        assert!(s.contains_key("a") && s.contains_key("b"), "{s:?}");
    }
    assert!(
        p.stderr_text().contains("keeping the last good set"),
        "the failure is logged"
    );

    // Deleted: still the last good set.
    std::fs::remove_file(&file).unwrap();
    wait_until(Duration::from_secs(5), "the deletion reported", || {
        provider(admin, "file")["error"]
            .as_str()
            .unwrap_or("")
            .contains("No such file")
    });
    let s = spread(web, "/svc/", 10);
    assert_eq!(
        s.get("a").copied().unwrap_or(0) + s.get("b").copied().unwrap_or(0),
        10,
        "{s:?}"
    );

    // Back, with b only: recovered.
    write_atomic(
        &file,
        &format!(r#"{{"clusters":[{{"name":"svc","backends":["{ba}"]}}]}}"#),
    );
    wait_spread(web, "/svc/", "b alone", |s| s.get("b") == Some(&20));
    wait_until(Duration::from_secs(3), "state ok again", || {
        provider(admin, "file")["state"] == "ok"
    });
    assert!(p.stderr_text().contains("discovery file: recovered"));

    // An empty list removes the service: the original gateway's 400.
    write_atomic(&file, r#"{"clusters":[]}"#);
    let want = r#"{"Data":{"Msg":"no service found for key = svc","Code":10000}}"#;
    wait_spread(web, "/svc/", "the service gone", |s| {
        s.get(&format!("400 {want}")) == Some(&20)
    });
}

#[test]
fn discovered_clusters_survive_reload_are_not_persisted_and_are_read_only() {
    let a = demo("a");
    let mine = demo("mine");
    let aa = a.addr("demo-backend");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("clusters.toml");
    let config = format!(
        "[server]\nworkers = 1\nstate_dir = \"{}\"\n\
         [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         [[listeners.routes]]\npath_prefix = \"/api\"\nstrip_prefix = true\ncluster = \"api\"\n\
         [[discovery]]\nname = \"files\"\ntype = \"file\"\npath = \"{}\"\ninterval = \"100ms\"\nclusters = [\"api\"]\n",
        state.display(),
        file.display()
    );
    std::fs::create_dir_all(&state).unwrap();
    let p = Proxy::start(&config);
    let (web, admin) = (p.addr("web"), p.addr("admin"));
    // Declared but not found yet (no file): the cluster exists, empty → 503.
    let s = spread(web, "/api/", 3);
    assert!(s.keys().all(|k| k.starts_with("503")), "{s:?}");
    assert_eq!(provider(admin, "files")["state"], "failing");

    write_atomic(
        &file,
        &format!("[[clusters]]\nname = \"api\"\nbackends = [\"{aa}\"]\n[[clusters]]\nname = \"extra\"\nbackends = [\"{aa}\"]\n"),
    );
    wait_spread(web, "/api/", "api discovered", |s| s.get("a") == Some(&20));
    let c = call(admin, "GET", "/v1/clusters/api", None);
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["status"]["discovered"], "files");
    let version = call(admin, "GET", "/v1/config", None).json()["version"].clone();

    // The admin API cannot edit it, and discovery does not move the config version.
    let r = call(
        admin,
        "POST",
        "/v1/clusters/api/backends",
        Some(r#"{"addr":"127.0.0.1:1"}"#),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "discovered".to_string()),
        "{}",
        r.text()
    );
    let r = call(admin, "DELETE", "/v1/clusters/extra", None);
    assert_eq!(
        (r.status, r.code()),
        (409, "discovered".to_string()),
        "{}",
        r.text()
    );
    assert_eq!(
        call(admin, "GET", "/v1/config", None).json()["version"],
        version
    );

    // Not in the state files: those hold what the operator set.
    let persisted: String = ["state.0.json", "state.1.json"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(state.join(f)).ok())
        .collect();
    assert!(persisted.contains("\"web\""), "state written: {persisted}");
    assert!(
        !persisted.contains(&aa.to_string()),
        "discovered backends persisted: {persisted}"
    );

    // SIGHUP: the file is re-read, discovery stays.
    let path = p.config_path.clone().unwrap();
    std::fs::write(&path, format!("{config}# edited\n")).unwrap();
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "reloaded", || {
        p.stderr_text().contains("configuration reloaded")
    });
    assert_eq!(spread(web, "/api/", 10).get("a"), Some(&10));

    // An operator's cluster of a discovered (not declared) name wins; the conflict is shown.
    let r = call(
        admin,
        "PUT",
        "/v1/clusters/extra",
        Some(&format!(
            r#"{{"backends":["{}"]}}"#,
            mine.addr("demo-backend")
        )),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let st = provider(admin, "files");
    assert!(
        st["conflicts"][0]
            .as_str()
            .unwrap_or("")
            .contains("\"extra\""),
        "{st}"
    );
    assert!(
        call(admin, "GET", "/v1/clusters/extra", None).json()["status"]["discovered"].is_null()
    );

    // A restart finds the discovered cluster again, at its source.
    drop(p);
    let p = Proxy::start(&config);
    assert_eq!(spread(p.addr("web"), "/api/", 5).get("a"), Some(&5));
}

#[test]
fn provider_defaults_and_file_settings_shape_the_clusters() {
    let a = demo("a");
    let b = demo("b");
    let (aa, ba) = (a.addr("demo-backend"), b.addr("demo-backend"));
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clusters.json");
    // weighted 3:1 from the file; health checks from the provider's defaults.
    write_atomic(
        &file,
        &format!(
            r#"{{"clusters":[{{"name":"w","balance":"weighted","backends":[{{"addr":"{aa}","weight":3}},"{ba}"]}},
                {{"name":"h","backends":["{aa}","{dead}"]}}]}}"#
        ),
    );
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n[[listeners]]\nname = \"faas\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nfaas = true\n\
         [[discovery]]\ntype = \"file\"\npath = \"{}\"\ninterval = \"100ms\"\n\
         [discovery.defaults]\nconnect_attempts = 1\nretries = 0\n\
         [discovery.defaults.health]\nprotocol = \"http\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\nrise = 1\n",
        file.display()
    ));
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    let s = spread(web, "/w/", 40);
    assert_eq!(s.get("a"), Some(&30), "weights 3:1 → {s:?}");
    assert_eq!(s.get("b"), Some(&10), "weights 3:1 → {s:?}");
    wait_until(
        Duration::from_secs(5),
        "the dead discovered backend checked down",
        || {
            let v = call(admin, "GET", "/v1/clusters/h", None).json();
            v["status"]["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["addr"] == dead.to_string() && b["state"] == "down")
        },
    );
    // With one connect attempt and no retries, only the health check keeps errors away.
    assert_eq!(spread(web, "/h/", 20).get("a"), Some(&20));
}
