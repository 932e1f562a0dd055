//! The services admin API as for clusters: list/get/put/delete with ETags and If-Match,
//! version add/remove, promote and rollback, the 4xx answers for bad input on every key (and
//! nothing half-applied), in_use protection both ways, persistence across kill -9 and
//! restart, SIGHUP, and `switchyard check` on bad [[services]].

mod util;

use nix::sys::signal::Signal;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use util::client::{call, call_h};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

fn config(server_extra: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"[server]
workers = 1
admin = "127.0.0.1:0"
{server_extra}

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
service = "shop"

[[clusters]]
name = "a"
backends = ["{a}"]

[[clusters]]
name = "b"
backends = ["{b}"]

[[services]]
name = "shop"
strategy = "session"
versions = [{{ version = "1.0", cluster = "a" }}]
"#
    )
}

fn start_file(path: &Path) -> Proxy {
    let cwd = tempfile::tempdir().unwrap();
    Proxy::spawn(
        vec!["run".into(), "-c".into(), path.as_os_str().to_owned()],
        cwd,
        Some(path.to_path_buf()),
        WaitFor::Names(vec!["web".into(), "admin".into()]),
    )
}

fn get_id(web: SocketAddr) -> String {
    call(web, "GET", "/", None).text().trim().to_string()
}

#[test]
fn services_api_versions_etags_and_every_bad_input() {
    let va = demo("va");
    let vb = demo("vb");
    let p = Proxy::start(&config(
        "",
        va.addr("demo-backend"),
        vb.addr("demo-backend"),
    ));
    let admin = p.addr("admin");
    let web = p.addr("web");

    let r = call(admin, "GET", "/v1/services", None);
    assert_eq!(r.status, 200);
    let v0 = r.json()["version"].as_u64().unwrap();
    assert_eq!(r.etag(), format!("\"{v0}\""));
    assert_eq!(r.json()["services"][0]["name"], "shop");
    assert_eq!(r.json()["services"][0]["status"]["serving"], "1.0");
    let cfg = call(admin, "GET", "/v1/config", None).json();
    assert_eq!(cfg["services"][0]["strategy"], "session");

    // Add a version; If-Match must be current.
    let body = r#"{"version":"1.1","cluster":"b"}"#;
    let r = call_h(
        admin,
        "POST",
        "/v1/services/shop/versions",
        &[("If-Match", "\"999\"")],
        Some(body),
    );
    assert_eq!(r.status, 412, "{}", r.text());
    let r = call_h(
        admin,
        "POST",
        "/v1/services/shop/versions",
        &[("If-Match", &format!("\"{v0}\""))],
        Some(body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.etag(), format!("\"{}\"", v0 + 1));
    assert_eq!(r.json()["status"]["serving"], "1.1");
    assert_eq!(get_id(web), "vb");

    // Bad input on every key of the version API: a clear error, nothing changed.
    let version_before = r.json();
    for (body, status, field) in [
        ("not json", 400, None),
        ("[1]", 400, None),
        (r#"{"cluster":"b"}"#, 422, Some("version")),
        (r#"{"version":"2"}"#, 422, Some("cluster")),
        (r#"{"version":2,"cluster":"b"}"#, 422, Some("version")),
        (
            r#"{"version":"2","cluster":"b","weight":1}"#,
            422,
            Some("weight"),
        ),
        (
            r#"{"version":"2","cluster":"nope"}"#,
            422,
            Some("versions[2].cluster"),
        ),
        (
            r#"{"version":"2 0","cluster":"b"}"#,
            422,
            Some("versions[2].version"),
        ),
        (
            r#"{"version":"2","cluster":"b","id":"a;b"}"#,
            422,
            Some("versions[2].id"),
        ),
        (r#"{"version":"1.1","cluster":"a"}"#, 409, Some("version")),
    ] {
        let r = call(admin, "POST", "/v1/services/shop/versions", Some(body));
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(
            r.json()["error"]["field"].as_str(),
            field,
            "{body}: {}",
            r.text()
        );
    }
    let now = call(admin, "GET", "/v1/services/shop", None).json();
    assert_eq!(
        now["versions"], version_before["versions"],
        "nothing half-applied"
    );

    // Bad input on every key of a whole service (PUT): 422 naming the field.
    for (body, field) in [
        (json!({"strategy":"blue"}), "strategy"),
        (json!({"versions":[]}), "versions"),
        (
            json!({"versions":[{"version":"1","cluster":"a","x":1}]}),
            "versions[0].x",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"session_timeout":"soon","strategy":"session"}),
            "session_timeout",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"strategy":"gradual"}),
            "percentage_per_request",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"strategy":"gradual","ramp":"1m","percentage_per_request":1}),
            "ramp",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"strategy":"canary"}),
            "weights",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"strategy":"canary","weights":{"1":-1}}),
            "weights.1",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"force_header":"a b"}),
            "force_header",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"promoted":"9"}),
            "promoted",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"rollback":{}}),
            "rollback.max_error_rate",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"rollback":{"max_error_rate":0.1,"window":"x"}}),
            "rollback.window",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"rollback":{"max_error_rate":0.1,"min_requests":0}}),
            "rollback.min_requests",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"rollback":{"max_error_rate":0.1,"hook_url":"ftp://x"}}),
            "rollback.hook_url",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"rollback":{"max_error_rate":0.1,"hook_exec":[]}}),
            "rollback.hook_exec",
        ),
        (
            json!({"versions":[{"version":"1","cluster":"a"}],"colour":"red"}),
            "colour",
        ),
    ] {
        let r = call(admin, "PUT", "/v1/services/shop", Some(&body.to_string()));
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{body}: {}", r.text());
    }
    let r = call(
        admin,
        "PUT",
        "/v1/services/shop",
        Some(r#"{"name":"other","versions":[]}"#),
    );
    assert_eq!((r.status, r.code().as_str()), (422, "invalid"));
    let r = call(
        admin,
        "PUT",
        "/v1/services/shop",
        Some(r#"{"versions":null}"#),
    );
    assert_eq!(r.status, 400);
    let now = call(admin, "GET", "/v1/services/shop", None).json();
    assert_eq!(
        now["versions"], version_before["versions"],
        "nothing half-applied"
    );

    // Promote / rollback bodies.
    for (path, body, status) in [
        ("/v1/services/shop/rollback", r#"{"version":1}"#, 422),
        ("/v1/services/shop/rollback", r#"{"versoin":"1.1"}"#, 422),
        ("/v1/services/shop/rollback", r#"[]"#, 400),
        ("/v1/services/shop/rollback", r#"{"version":"7"}"#, 404),
        ("/v1/services/shop/promote", r#"{"version":"7"}"#, 404),
        ("/v1/services/nope/promote", "", 404),
        ("/v1/services/shop/nothing", "", 404),
    ] {
        let r = call(admin, "POST", path, (!body.is_empty()).then_some(body));
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
    }
    let r = call(admin, "GET", "/v1/services/shop/rollback", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = call(admin, "DELETE", "/v1/services/shop/versions/7", None);
    assert_eq!(r.status, 404);

    // in_use both ways.
    let r = call(admin, "DELETE", "/v1/clusters/b", None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "in_use"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("service \\\"shop\\\""), "{}", r.text());
    let r = call(admin, "DELETE", "/v1/services/shop", None);
    assert_eq!((r.status, r.code().as_str()), (409, "in_use"));

    // A second service through PUT; a listener moves to it; the first one can go.
    let r = call(
        admin,
        "PUT",
        "/v1/services/shop2",
        Some(
            r#"{"strategy":"canary","versions":[{"version":"3","cluster":"a"},{"version":"4","cluster":"b"}],"weights":{"3":0,"4":1}}"#,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"]["versions"][1]["weight"], 1);
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/web",
        Some(r#"{"bind":"127.0.0.1:0","protocol":"http","service":"shop2"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(admin, "DELETE", "/v1/services/shop", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(admin, "GET", "/v1/services/shop", None);
    assert_eq!(r.status, 404);
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/web",
        Some(r#"{"bind":"127.0.0.1:0","protocol":"http","service":"ghost"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("service"))
    );
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/t",
        Some(r#"{"bind":"127.0.0.1:0","protocol":"tcp","service":"shop2"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (422, Some("service"))
    );
}

#[test]
fn service_changes_survive_kill_9_and_restart_and_sighup() {
    let va = demo("va");
    let vb = demo("vb");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        config(
            &format!("state_dir = \"{}\"", state.display()),
            va.addr("demo-backend"),
            vb.addr("demo-backend"),
        ),
    )
    .unwrap();
    let p = start_file(&path);
    let admin = p.addr("admin");
    let r = call(
        admin,
        "POST",
        "/v1/services/shop/versions",
        Some(r#"{"version":"1.1","cluster":"b"}"#),
    );
    assert_eq!(r.status, 201);
    assert_eq!(get_id(p.addr("web")), "vb");
    let r = call(
        admin,
        "POST",
        "/v1/services/shop/rollback",
        Some(r#"{"version":"1.1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_id(p.addr("web")), "va");
    p.signal(Signal::SIGKILL);
    p.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(p);

    // The rolled-back version stays rolled back after a restart.
    let p = start_file(&path);
    let s = call(p.addr("admin"), "GET", "/v1/services/shop", None).json();
    assert_eq!(s["versions"][1]["rolled_back"], true, "{s}");
    assert_eq!(s["status"]["serving"], "1.0");
    assert_eq!(get_id(p.addr("web")), "va");
    // SIGHUP with an unchanged file keeps the runtime state (the file did not touch shop).
    p.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "reload", || {
        p.stderr_text().contains("configuration reloaded")
    });
    assert_eq!(get_id(p.addr("web")), "va");
    // A file that changes the service wins.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "versions = [{ version = \"1.0\", cluster = \"a\" }]",
            "versions = [{ version = \"1.0\", cluster = \"a\" }, { version = \"3.0\", cluster = \"b\" }]",
        );
    std::fs::write(&path, text).unwrap();
    let r = call(p.addr("admin"), "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_id(p.addr("web")), "vb");
    let s = call(p.addr("admin"), "GET", "/v1/services/shop", None).json();
    assert_eq!(s["versions"].as_array().unwrap().len(), 2);
}

#[test]
fn check_reports_every_bad_service_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
service = "ghost"
[[listeners]]
name = "t"
bind = "127.0.0.1:0"
service = "shop"
[[listeners]]
name = "both"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "a"
service = "shop"
[[listeners.routes]]
service = "nobody"
[[clusters]]
name = "a"
backends = ["127.0.0.1:1"]
[[services]]
name = "shop"
strategy = "gradual"
versions = [{ version = "1", cluster = "a" }, { version = "1", cluster = "zz" }]
ramp = "0s"
[services.rollback]
max_error_rate = 0
"#,
    )
    .unwrap();
    let f = run_to_exit(
        &["check", "-c", path.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(f.status.code(), Some(64), "{}", f.stderr);
    for want in [
        "error: listeners[0].service: unknown service \"ghost\"",
        "error: listeners[1].service: services are for http listeners",
        "error: listeners[2].service: give cluster or service, not both",
        "error: listeners[2].routes[0].service: unknown service \"nobody\"",
        "error: services[0].versions[1].cluster: unknown cluster \"zz\"",
        "error: services[0].ramp: must be greater than zero",
        "error: services[0].rollback.max_error_rate:",
    ] {
        assert!(f.stderr.contains(want), "missing {want:?} in\n{}", f.stderr);
    }
}
