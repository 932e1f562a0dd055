//! The dynamic-software-update proxy's quick mode and REST API (compat.md §2), driven with
//! payloads shaped like the original project's `config_for_curl/` examples: the round trip
//! (PUT → 202 + uuid, GET one and all, DELETE → 202), every 400 case with its message, 404s,
//! the session and gradual cookies as the original's README shows them, auto-rollback
//! instead of deleting a cluster on a dial error, and bad config files.

mod util;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use util::client::{call, call_h, Client};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// `switchyard -configFile <dir>/config.json` with this config.json.
fn dsu(dir: &Path, config: &Value) -> Proxy {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    Proxy::start_args(
        &["-configFile", path.to_str().unwrap(), "-logLevel", "INFO"],
        &["proxy", "admin"],
    )
}

/// The original's config.json: the proxy and the API on loopback (port 0: any free port).
fn original_config(first: SocketAddr) -> Value {
    json!({
        "proxy": {"ip": "127.0.0.1", "port": 0},
        "configService": {"ip": "127.0.0.1", "port": 0},
        "cluster": {
            "servers": [{"hostname": "127.0.0.1", "port": first.port()}],
            "version": 1.0
        }
    })
}

fn put(api: SocketAddr, body: &str) -> util::client::Resp {
    call(api, "PUT", "/configuration/cluster", Some(body))
}

fn id_of(web: SocketAddr, cookie: Option<&str>) -> (String, Vec<String>) {
    let mut h = vec![];
    if let Some(c) = cookie {
        h.push(("Cookie", c));
    }
    let r = call_h(web, "GET", "/", &h, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .collect();
    (r.text().trim().to_string(), set)
}

#[test]
fn rest_round_trip_with_the_original_payloads() {
    let v1 = demo("v1");
    let v2 = demo("v2");
    let v3 = demo("v3");
    let dir = tempfile::tempdir().unwrap();
    let p = dsu(dir.path(), &original_config(v1.addr("demo-backend")));
    let web = p.addr("proxy");
    let api = p.addr("admin");
    assert_eq!(id_of(web, None).0, "v1");

    // GET all: one cluster, the initial one (INSTANT).
    let r = call(api, "GET", "/configuration/cluster/", None);
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let first = list[0]["cluster"]["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        list[0]["cluster"]["upgradeTransition"],
        json!({"mode": "INSTANT"})
    );
    assert_eq!(list[0]["cluster"]["version"], "1.0");
    assert_eq!(
        list[0]["cluster"]["servers"],
        json!([{"hostname": "127.0.0.1", "port": v1.addr("demo-backend").port()}])
    );

    // config_for_curl/config_curl_instant_upgrade.json, shaped (hostname 0.0.0.0 as there).
    let instant = format!(
        r#"{{
    "cluster": {{
        "servers": [
            {{
                "hostname": "0.0.0.0",
                "port": {}
            }}
        ],
        "version": "3.9.2"
    }}
}}
"#,
        v2.addr("demo-backend").port()
    );
    let r = put(api, &instant);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let second = r.text();
    assert_eq!(second.len(), 36, "{second}");
    assert_eq!(id_of(web, None).0, "v2");

    // The README's SESSION example: version 1.1 is older than 3.9.2, so it does not take over.
    let session = format!(
        r#"{{"cluster": {{"servers":[{{"hostname": "127.0.0.1", "port": {}}}],"version": 1.1,"upgradeTransition": {{ "mode": "SESSION", "sessionTimeout": 60 }}}}}}"#,
        v3.addr("demo-backend").port()
    );
    let r = put(api, &session);
    assert_eq!(r.status, 202, "{}", r.text());
    let third = r.text();
    assert_eq!(id_of(web, None).0, "v2", "3.9.2 is still the newest");

    // A 3.10.0 with SESSION mode: numerically newer than 3.9.2 (the original compared strings).
    let newer = format!(
        r#"{{"cluster": {{"servers":[{{"hostname": "127.0.0.1", "port": {}}}],"version": "3.10.0","upgradeTransition": {{ "mode": "SESSION", "sessionTimeout": 60 }}}}}}"#,
        v3.addr("demo-backend").port()
    );
    let r = put(api, &newer);
    assert_eq!(r.status, 202, "{}", r.text());
    let fourth = r.text();
    let (id, set) = id_of(web, None);
    assert_eq!(id, "v3");
    assert_eq!(
        set,
        [format!(
            "dynsoftup={fourth}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        )]
    );
    // A client whose cookie names an older live cluster stays there (the README's curl).
    let (id, set) = id_of(web, Some(&format!("dynsoftup={second};")));
    assert_eq!(id, "v2");
    assert_eq!(
        set[0],
        format!("dynsoftup={second}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax")
    );
    // The README's large-request example: a cookie among others.
    let (id, _) = id_of(
        web,
        Some(&format!(
            "dynsoftup={first}; __utmb=110886291.4.10.1403464391; __utmc=110886291"
        )),
    );
    assert_eq!(id, "v1");

    // GET one: the original's body; GET all: newest first.
    let r = call(
        api,
        "GET",
        &format!("/configuration/cluster/{fourth}"),
        None,
    );
    assert_eq!(r.status, 200);
    let c = &r.json()["cluster"];
    assert_eq!(c["uuid"], fourth.as_str());
    assert_eq!(c["version"], "3.10.0");
    assert_eq!(
        c["upgradeTransition"],
        json!({"mode": "SESSION", "sessionTimeout": 60})
    );
    let all = call(api, "GET", "/configuration/cluster", None).json();
    let order: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["version"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["3.10.0", "3.9.2", "1.1", "1.0"]);
    let uuids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(
        uuids,
        [
            fourth.as_str(),
            second.as_str(),
            third.as_str(),
            first.as_str()
        ]
    );

    // DELETE: 202 with an empty body; then 404; requests go back to 3.9.2.
    let r = call(
        api,
        "DELETE",
        &format!("/configuration/cluster/{fourth}"),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(id_of(web, None).0, "v2");
    let r = call(
        api,
        "DELETE",
        &format!("/configuration/cluster/{fourth}"),
        None,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 page not found\n");
    let r = call(
        api,
        "GET",
        &format!("/configuration/cluster/{fourth}"),
        None,
    );
    assert_eq!(r.status, 404);
    // A cookie naming the deleted cluster goes to the newest.
    assert_eq!(id_of(web, Some(&format!("dynsoftup={fourth}"))).0, "v2");
    // Everything is also visible through the /v1 API and /stats on the same port.
    let s = call(api, "GET", "/v1/services/dsu", None).json();
    assert_eq!(s["versions"].as_array().unwrap().len(), 3);
    let st = call(api, "GET", "/stats", None).json();
    assert!(
        st["services"]["dsu"]["versions"]["3.9.2"]["requests"]
            .as_u64()
            .unwrap()
            >= 3
    );
    // The last cluster cannot go.
    for u in [&second, &third] {
        assert_eq!(
            call(api, "DELETE", &format!("/configuration/cluster/{u}"), None).status,
            202
        );
    }
    let r = call(
        api,
        "DELETE",
        &format!("/configuration/cluster/{first}"),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(id_of(web, None).0, "v1");
}

#[test]
fn every_bad_request_is_a_400_with_the_reason_and_changes_nothing() {
    let v1 = demo("v1");
    let dir = tempfile::tempdir().unwrap();
    let p = dsu(dir.path(), &original_config(v1.addr("demo-backend")));
    let api = p.addr("admin");
    let servers = r#""servers":[{"hostname":"127.0.0.1","port":1036}]"#;
    let cases: Vec<(String, u16, &str)> = vec![
        // config_for_curl/config_curl_error.json: cut short.
        (
            "{\n    \"cluster\": {\n        \"containers\": [\n            {\n                \"image\": \"mysql\",".into(),
            400,
            "while decoding json",
        ),
        ("not json".into(), 400, "Error "),
        (r#"{"server":{}}"#.into(), 400, "Invalid cluster configuration - \"cluster\" config missing"),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"SESSION"}}}}}}"#),
            400,
            "Error parsing cluster configuration - Invalid cluster configuration - \"sessionTimeout\" must be specified in \"upgradeTransition\" for mode \"SESSION\"",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"GRADUAL"}}}}}}"#),
            400,
            "\"percentageTransitionPerRequest\" must be specified in \"upgradeTransition\" for mode \"GRADUAL\"",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"INSTANT","sessionTimeout":10}}}}}}"#),
            400,
            "\"sessionTimeout\" should not be specified when \"mode\" is not \"SESSION\"",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"CONCURRENT","percentageTransitionPerRequest":1}}}}}}"#),
            400,
            "\"percentageTransitionPerRequest\" should not be specified when \"mode\" is not \"GRADUAL\"",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"BLUE_GREEN"}}}}}}"#),
            400,
            "\"upgradeTransition.mode\" should be \"INSTANT\", \"SESSION\", \"GRADUAL\" or \"CONCURRENT\"",
        ),
        (
            r#"{"cluster":{"version":"1.2"}}"#.into(),
            400,
            "\"cluster\" must contain \"servers\" or \"containers\" list",
        ),
        (
            r#"{"cluster":{"servers":[],"version":"1.2"}}"#.into(),
            400,
            "\"servers\" list must contain at least one entry",
        ),
        (
            r#"{"cluster":{"servers":[{"hostname":"127.0.0.1"}]}}"#.into(),
            400,
            "Invalid server address [127.0.0.1:<missing>]",
        ),
        (
            r#"{"cluster":{"servers":[{"hostname":"no-such-host.invalid","port":80}]}}"#.into(),
            400,
            "no-such-host.invalid",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"version":{{}}}}}}"#),
            400,
            "\"version\" must be a number or a string",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"SESSION","sessionTimeout":-5}}}}}}"#),
            400,
            "\"sessionTimeout\" must be a number of seconds",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"upgradeTransition":{{"mode":"GRADUAL","percentageTransitionPerRequest":0}}}}}}"#),
            400,
            "\"percentageTransitionPerRequest\" must be a number above 0",
        ),
        (
            format!(r#"{{"cluster":{{{servers},"uuid":"x"}}}}"#),
            400,
            "\"uuid\" must be a uuid",
        ),
        // config_for_curl/config_curl_docker.json-shaped: containers are not supported yet.
        (
            r#"{"cluster":{"containers":[{"image":"nginx","tag":"latest","portToProxy":80,"name":"web"}],"version":"1.2"}}"#.into(),
            501,
            "\"containers\" are not supported by switchyard yet",
        ),
        // CONCURRENT may not share an address with the highest version (the original's rule).
        (
            format!(
                r#"{{"cluster":{{"servers":[{{"hostname":"127.0.0.1","port":{}}}],"version":"2","upgradeTransition":{{"mode":"CONCURRENT"}}}}}}"#,
                v1.addr("demo-backend").port()
            ),
            400,
            "conflicting address",
        ),
    ];
    let before = call(api, "GET", "/configuration/cluster/", None).text();
    let v_before = call(api, "GET", "/v1/config", None).json()["version"].clone();
    for (body, status, want) in &cases {
        let r = put(api, body);
        assert_eq!(r.status, *status, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{body}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    // Nothing was applied.
    assert_eq!(
        call(api, "GET", "/configuration/cluster/", None).text(),
        before
    );
    assert_eq!(
        call(api, "GET", "/v1/config", None).json()["version"],
        v_before
    );
    // A uuid given twice.
    let body =
        format!(r#"{{"cluster":{{{servers},"uuid":"fec3636f-32f8-11e4-aea1-28cfe9158b63"}}}}"#);
    assert_eq!(put(api, &body).status, 202);
    let r = put(api, &body);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("already exists"), "{}", r.text());
    // Wrong methods and unknown ids.
    let r = call(api, "POST", "/configuration/cluster", Some("{}"));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, PUT")));
    let r = call(
        api,
        "PUT",
        "/configuration/cluster/fec3636f-32f8-11e4-aea1-28cfe9158b63",
        Some("{}"),
    );
    assert_eq!(r.status, 405);
    assert_eq!(
        call(api, "DELETE", "/configuration/cluster/nothing", None).status,
        404
    );
    // The /v1 API stays a JSON API on the same port.
    assert_eq!(call(api, "GET", "/v1/nothing", None).code(), "not_found");
}

#[test]
fn gradual_moves_the_readme_client_after_six_requests() {
    let v1 = demo("v1");
    let v2 = demo("v2");
    let dir = tempfile::tempdir().unwrap();
    let p = dsu(dir.path(), &original_config(v1.addr("demo-backend")));
    let (web, api) = (p.addr("proxy"), p.addr("admin"));
    let r = put(
        api,
        &format!(
            r#"{{"cluster":{{"servers":[{{"hostname":"127.0.0.1","port":{}}}],"version":"2","upgradeTransition":{{"mode":"GRADUAL","percentageTransitionPerRequest":0.5}}}}}}"#,
            v2.addr("demo-backend").port()
        ),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let new = r.text();
    // README: "Upgrade happens after 6 request if percentageTransitionPerRequest is set to
    // 0.5" for transition=952c8557-2088-11e4-87e3-600308a8245e (bucket 3).
    let mut c = Client::new(web);
    let mut seen = Vec::new();
    for _ in 0..10 {
        let r = c
            .request(
                "GET",
                "/",
                &[(
                    "Cookie",
                    "  transition=952c8557-2088-11e4-87e3-600308a8245e;",
                )],
                None,
            )
            .unwrap();
        seen.push(r.text().trim().to_string());
        let sets: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        let expect = if r.text().trim() == "v2" {
            new.as_str()
        } else {
            ""
        };
        if !expect.is_empty() {
            assert!(
                sets[0].starts_with(&format!("dynsoftup={expect};")),
                "{sets:?}"
            );
        }
        assert_eq!(
            sets.len(),
            1,
            "the transition cookie is kept, not reset: {sets:?}"
        );
    }
    assert_eq!(
        seen,
        ["v1", "v1", "v1", "v1", "v1", "v1", "v2", "v2", "v2", "v2"]
    );
}

#[test]
fn a_failing_cluster_is_rolled_back_not_deleted() {
    let v1 = demo("v1");
    let dir = tempfile::tempdir().unwrap();
    let p = dsu(dir.path(), &original_config(v1.addr("demo-backend")));
    let (web, api) = (p.addr("proxy"), p.addr("admin"));
    // A cluster nobody listens on (the original deleted it on the first dial error).
    let dead = dead_addr();
    let r = put(
        api,
        &format!(
            r#"{{"cluster":{{"servers":[{{"hostname":"127.0.0.1","port":{}}}],"version":"2"}}}}"#,
            dead.port()
        ),
    );
    assert_eq!(r.status, 202);
    let uuid = r.text();
    let mut failed = 0;
    let d = Deadline::after(Duration::from_secs(15));
    loop {
        let r = call(web, "GET", "/", None);
        if r.status == 200 {
            assert_eq!(r.text().trim(), "v1");
            break;
        }
        assert_eq!(r.status, 502, "{}", r.text());
        failed += 1;
        assert!(!d.expired(), "no rollback after {failed} failures");
    }
    assert!(failed >= 20, "the minimum of 20 requests: {failed}");
    let c = call(api, "GET", &format!("/configuration/cluster/{uuid}"), None).json();
    assert_eq!(
        c["cluster"]["state"], "rolled_back",
        "kept, not deleted: {c}"
    );
    for _ in 0..20 {
        assert_eq!(call(web, "GET", "/", None).text().trim(), "v1");
    }
    assert!(
        p.stderr_text().contains("rolled back (auto"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn bad_config_files_and_flags_exit_64_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |json: &str, extra: &[&str]| {
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        let mut args = vec![
            "-configFile".to_string(),
            path.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_to_exit(&args, dir.path(), Duration::from_secs(10))
    };
    let f = run("{\"proxy\": ", &[]);
    assert_eq!(f.status.code(), Some(64));
    assert!(
        f.stderr.contains("config.json: invalid JSON"),
        "{}",
        f.stderr
    );
    let f = run(
        r#"{"proxy":{"port":"x"},"cluster":{"servers":[{"hostname":"h","port":1}],"upgradeTransition":{"mode":"SESSION"}},"colour":1}"#,
        &[],
    );
    assert_eq!(f.status.code(), Some(64));
    for want in [
        "config.json: proxy.port: expected a port number",
        "config.json: configService.port: missing",
        "config.json: colour: unknown key",
        "config.json: cluster: \"sessionTimeout\" must be specified",
    ] {
        assert!(f.stderr.contains(want), "{want}: {}", f.stderr);
    }
    let f = run(
        r#"{"proxy":{"port":0},"configService":{"port":0},"cluster":{"servers":[{"hostname":"h","port":1}]}}"#,
        &["-logLevel", "LOUD"],
    );
    assert_eq!(f.status.code(), Some(64));
    assert!(
        f.stderr.contains("-logLevel: unknown level"),
        "{}",
        f.stderr
    );
    let f = run("{}", &["-listen", ":1"]);
    assert_eq!(f.status.code(), Some(64));
    let f = run_to_exit(
        &["-configFile", "/nonexistent/config.json"],
        dir.path(),
        Duration::from_secs(10),
    );
    assert_eq!(f.status.code(), Some(64));
    assert!(
        f.stderr
            .contains("error: /nonexistent/config.json: cannot read"),
        "{}",
        f.stderr
    );
}

#[test]
fn dockerhost_is_accepted_with_a_warning_and_the_api_is_read_only_off_loopback_v1() {
    let v1 = demo("v1");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = original_config(v1.addr("demo-backend"));
    cfg["dockerHost"] = json!({"ip": "192.168.50.5", "port": 2375});
    cfg["configService"] = json!({"port": 0});
    let p = dsu(dir.path(), &cfg);
    let err = p.stderr_text();
    assert!(err.contains("\"dockerHost\" is ignored"), "{err}");
    assert!(err.contains("without authentication"), "{err}");
    // Bound on every interface as the original; reach it on loopback.
    let api: SocketAddr = format!("127.0.0.1:{}", p.addr("admin").port())
        .parse()
        .unwrap();
    let r = call(api, "DELETE", "/v1/services/dsu", None);
    assert_eq!(
        r.status,
        403,
        "the /v1 API is read-only there: {}",
        r.text()
    );
    let r = put(
        api,
        &format!(
            r#"{{"cluster":{{"servers":[{{"hostname":"127.0.0.1","port":{}}}],"version":"2"}}}}"#,
            v1.addr("demo-backend").port()
        ),
    );
    assert_eq!(
        r.status, 202,
        "the DSU API takes changes as the original did"
    );
}
