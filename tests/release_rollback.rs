//! Auto-rollback under load: wrk drives a service whose newest version answers 500; the
//! proxy rolls it back within its window, no request routed after the decision fails (checked
//! request by request in the access log), the webhook gets the event, and /stats and
//! /metrics count it. Also the exec hook on a manual rollback through `switchyard ctl`.

mod util;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, UNIX_EPOCH};
use util::client::call;
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// A keep-alive HTTP backend answering every request with `status` and body `id`.
fn status_backend(status: u16, id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = Vec::new();
                let mut b = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{id}",
                            id.len()
                        );
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// A webhook receiver: the body of each POST arrives on the channel.
fn webhook() -> (SocketAddr, mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            let _ = tx.send((
                line.trim().to_string(),
                String::from_utf8_lossy(&body).into(),
            ));
        }
    });
    (addr, rx)
}

fn wrk_number(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label).map(str::trim))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_version_is_rolled_back_under_wrk_load_and_no_request_fails_after_the_decision() {
    let good = demo("good");
    let bad = status_backend(500, "bad");
    let (hook, hooks) = webhook();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = Proxy::start(&format!(
        r#"[server]
workers = 2
access_log = "{}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
service = "shop"

[[clusters]]
name = "stable"
backends = ["{}"]

[[clusters]]
name = "next"
backends = ["{bad}"]

[[services]]
name = "shop"
strategy = "session"
versions = [{{ version = "2.9", cluster = "stable" }}, {{ version = "2.10", cluster = "next" }}]
[services.rollback]
max_error_rate = 0.5
window = "2s"
min_requests = 50
hook_url = "http://{hook}/events"
"#,
        log.display(),
        good.addr("demo-backend"),
    ));
    let web = p.addr("web");
    let admin = p.addr("admin");
    let wrk = thread::spawn(move || {
        let out = Command::new("wrk")
            .args(["-t2", "-c16", "-d5s", &format!("http://{web}/")])
            .output()
            .expect("wrk (apt-get install wrk)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    // The decision, as the admin API shows it.
    let event = poll_until(Duration::from_secs(10), "the auto-rollback", || {
        let st = call(admin, "GET", "/v1/services/shop", None).json();
        let s = &st["status"];
        (s["auto_rollbacks"] == 1).then(|| s.clone())
    });
    assert_eq!(event["serving"], "2.9");
    let versions = event["versions"].as_array().unwrap();
    assert_eq!(versions[1]["version"], "2.10");
    assert_eq!(versions[1]["state"], "rolled_back");
    let last = &event["last_rollback"];
    assert_eq!(last["reason"], "auto");
    assert_eq!(last["now_serving"], "2.9");
    assert!(last["error_rate"].as_f64().unwrap() > 0.5, "{last}");
    assert!(last["requests"].as_u64().unwrap() >= 50, "{last}");
    let decided_ms = last["at_unix_ms"].as_u64().unwrap();

    let wrk_out = join_timeout(wrk, Duration::from_secs(30), "wrk");
    let non_2xx = wrk_number(&wrk_out, "Non-2xx or 3xx responses:");
    assert!(non_2xx >= 50, "the bad version answered first:\n{wrk_out}");

    // Request by request: every request that started after the decision succeeded.
    let p_stats = p.stats();
    let total = p_stats["http"]["requests"].as_u64().unwrap();
    let text = poll_until(Duration::from_secs(5), "the access log", || {
        let t = std::fs::read_to_string(&log).ok()?;
        (t.lines().count() as u64 >= total).then_some(t)
    });
    let (mut after, mut failed_before, mut first_bad_ms) = (0u64, 0u64, u64::MAX);
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let end = humantime::parse_rfc3339(r["time"].as_str().unwrap())
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let start = end.saturating_sub(r["duration_ms"].as_f64().unwrap().ceil() as u64);
        let status = r["status"].as_u64().unwrap();
        if status == 500 {
            first_bad_ms = first_bad_ms.min(start);
        }
        // The log's clock is the worker's loop time (ms); allow a few ms of slack.
        if start > decided_ms + 5 {
            after += 1;
            assert_eq!(status, 200, "a request after the decision failed: {line}");
            assert_eq!(
                r["backend"].as_str(),
                Some(good.addr("demo-backend").to_string().as_str())
            );
        } else if status != 200 {
            failed_before += 1;
        }
    }
    eprintln!(
        "wrk non-2xx {non_2xx}; failed before the decision {failed_before}; after it {after} \
         requests, all 200; decided {} ms after the first failure",
        decided_ms.saturating_sub(first_bad_ms)
    );
    assert!(
        after > 500,
        "load went on after the decision ({after} requests)"
    );
    assert!(failed_before >= 50);
    // Rolled back within the window (2 s) of the first failure.
    assert!(
        decided_ms.saturating_sub(first_bad_ms) < 2000,
        "decided {} ms after the first failure",
        decided_ms - first_bad_ms
    );

    // The webhook got the event.
    let (line, body) = hooks
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook");
    assert_eq!(line, "POST /events HTTP/1.1");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["event"], "rollback");
    assert_eq!(e["service"], "shop");
    assert_eq!(e["version"], "2.10");
    assert_eq!(e["reason"], "auto");
    assert_eq!(e["at_unix_ms"].as_u64(), Some(decided_ms));

    // Counted and shown.
    let s = &p_stats["services"]["shop"];
    assert_eq!(s["auto_rollbacks"], 1);
    assert_eq!(s["versions"]["2.10"]["state"], "rolled_back");
    assert!(s["versions"]["2.10"]["responses_5xx"].as_u64().unwrap() >= 50);
    let m = call(admin, "GET", "/metrics", None).text();
    assert!(
        m.contains("switchyard_service_rollbacks_total{service=\"shop\",reason=\"auto\"} 1"),
        "{m}"
    );
    assert!(m.contains("switchyard_version_live{service=\"shop\",version=\"2.10\"} 0"));
    assert!(m.contains("switchyard_version_serving{service=\"shop\",version=\"2.9\"} 1"));
    promtool_check(&m);
    assert!(p.stderr_text().contains("rolled back (auto"), "logged");
}

#[test]
fn manual_rollback_and_promote_through_ctl_run_the_exec_hook() {
    let v1 = demo("v1");
    let v2 = demo("v2");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.json");
    let p = Proxy::start(&format!(
        r#"[server]
workers = 1

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[listeners.routes]]
path_prefix = "/shop"
strip_prefix = true
service = "shop"

[[clusters]]
name = "a"
backends = ["{}"]

[[clusters]]
name = "b"
backends = ["{}"]

[[services]]
name = "shop"
versions = [{{ version = "1.0", cluster = "a" }}, {{ version = "1.1", cluster = "b" }}]
[services.rollback]
max_error_rate = 0.9
hook_exec = ["/bin/sh", "-c", "cat > {}.tmp && mv {}.tmp {}"]
"#,
        v1.addr("demo-backend"),
        v2.addr("demo-backend"),
        out.display(),
        out.display(),
        out.display()
    ));
    let admin = p.addr("admin").to_string();
    let get = || {
        call(p.addr("web"), "GET", "/shop/", None)
            .text()
            .trim()
            .to_string()
    };
    assert_eq!(get(), "v2");
    let ctl = |args: &[&str]| {
        let mut a = vec!["ctl", "--admin", admin.as_str()];
        a.extend_from_slice(args);
        run_to_exit(&a, dir.path(), Duration::from_secs(20))
    };
    let r = ctl(&["services"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(r.stdout.contains("shop  instant   1.1"), "{}", r.stdout);
    let r = ctl(&["rollback", "shop"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        r.stdout.contains("1.1      1.1  b        rolled_back"),
        "{}",
        r.stdout
    );
    assert_eq!(get(), "v1");
    // The hook ran with the event on stdin.
    let e: Value = poll_until(Duration::from_secs(10), "the exec hook", || {
        serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()
    });
    assert_eq!(e["event"], "rollback");
    assert_eq!(e["reason"], "manual");
    assert_eq!(e["version"], "1.1");
    assert_eq!(e["now_serving"], "1.0");
    // Nothing left to roll back to.
    let r = ctl(&["rollback", "shop"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(r.stderr.contains("409 last_version"), "{}", r.stderr);
    // Promote brings it back, for everyone.
    let r = ctl(&["promote", "shop", "1.1"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(r.stdout.contains("promoted"), "{}", r.stdout);
    assert_eq!(get(), "v2");
    let r = ctl(&["--json", "service", "get", "shop"]);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["promoted"], "1.1");
    assert_eq!(j["status"]["promotions"], 1);
    assert_eq!(j["status"]["rollbacks"], 1);
    // Versions come and go through ctl too.
    let r = ctl(&["version", "add", "shop", "2.0", "a", "--id", "two"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert!(
        r.stdout.contains("2.0      two  a        live"),
        "{}",
        r.stdout
    );
    assert_eq!(
        get(),
        "v1",
        "2.0 (cluster a) is the newest; the promotion ended"
    );
    let r = ctl(&["version", "delete", "shop", "two"]);
    assert!(r.status.success(), "{}", r.stderr);
    assert_eq!(get(), "v2");
    let r = ctl(&["listeners"]);
    assert!(r.stdout.contains("web"), "{}", r.stdout);
}
