//! The live status page `/ui` in real headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol by `tests/scripts/ui_browser.py`: the figures move under load, every
//! backend is listed with its state, latency is shown per listener and per cluster, and the
//! Drain, Undrain and Weight buttons change the backend (through the admin API, the token
//! asked for by the page's prompt). Screenshots are kept in `target/ui-test/`.
mod util;

use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::client::{call, call_h, Client};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

#[test]
fn ui_page_is_self_contained_html() {
    let b = demo("one");
    let p = Proxy::start(&simple_config("", "", &[b.addr("demo-backend")]));
    let r = call(p.addr("admin"), "GET", "/ui", None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.text();
    assert!(html.contains("<title>Switchyard status</title>"));
    for outside in ["http://", "https://", "src=\"//", "@import"] {
        assert!(!html.contains(outside), "the page loads {outside}…");
    }
    assert_eq!(call(p.addr("admin"), "POST", "/ui", Some("")).status, 405);
}

#[test]
fn ui_in_chromium_shows_live_figures_and_drains_undrains_and_reweights_a_backend() {
    let b1 = demo("one");
    let b2 = demo("two");
    let (a1, a2) = (b1.addr("demo-backend"), b2.addr("demo-backend"));
    let dir = tempfile::tempdir().unwrap();
    let token = "ui-test-token";
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    // `weighted`: round robin ignores weights, and the table shows the weight in effect.
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\nadmin_token_file = {:?}\n\n[[listeners]]\nname = \"web\"\n\
         bind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\n[[clusters]]\n\
         name = \"app\"\nbalance = \"weighted\"\nbackends = [\"{a1}\", \"{a2}\"]\n[clusters.health]\nprotocol = \"http\"\n\
         path = \"/health\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n",
        token_path.display().to_string()
    ));
    let web = p.addr("web");
    let admin = p.addr("admin");

    // Load for as long as the browser looks (bounded: 60 s at most).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(web);
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                if let Ok(r) = c.request("GET", "/", &[], None) {
                    if r.status == 200 {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-test");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/ui_browser.py");
    let run = Command::new("python3")
        .arg(script)
        .arg(format!("http://{admin}/ui"))
        .arg(&out_dir)
        .arg("app")
        .arg(a2.to_string())
        .arg(token)
        .arg("7")
        .output()
        .expect("run python3 ui_browser.py");
    stop.store(true, Ordering::Relaxed);
    join_timeout(load, Duration::from_secs(10), "load thread");
    assert!(
        run.status.success(),
        "browser run failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        p.stderr_text()
    );
    let seen: Value = serde_json::from_slice(&run.stdout).expect("browser output is JSON");
    assert!(sent.load(Ordering::Relaxed) > 50, "the load ran");

    // Live figures: the listener's request rate shown is above zero and changes.
    let samples = seen["samples"].as_array().expect("samples");
    let rates: Vec<f64> = samples
        .iter()
        .filter_map(|s| {
            s["cards"]
                .as_array()?
                .iter()
                .find(|c| c["key"] == "l:web")?["rate"]
                .as_f64()
        })
        .collect();
    assert!(rates.len() >= 4, "{rates:?}");
    assert!(rates.iter().any(|&r| r > 5.0), "rates shown: {rates:?}");
    let polls: Vec<u64> = samples.iter().map(|s| u64_at(s, "/polls")).collect();
    // It keeps polling (a poll may take longer than its second on a busy machine).
    assert!(
        polls.windows(2).all(|w| w[1] >= w[0]) && polls[polls.len() - 1] >= polls[0] + 2,
        "polls: {polls:?}"
    );
    let last = samples.last().unwrap();
    assert_eq!(last["external"], 0, "no outside assets");
    // p50/p99 latency per listener and per cluster, as figures in milliseconds.
    for key in ["l:web", "c:app"] {
        let nums = last["cards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .and_then(|c| c["nums"].as_str())
            .unwrap_or_else(|| panic!("no {key} card: {last}"));
        for q in ["p50 ", "p99 "] {
            let ms: f64 = nums
                .split(q)
                .nth(1)
                .and_then(|rest| rest.split(" ms").next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key}: no {q}figure in {nums:?}"));
            assert!(ms > 0.0 && ms < 10_000.0, "{key} {q}{ms}: {nums:?}");
        }
    }
    // Every backend, with its state (health-checked: up), weight and a last check.
    let rows = last["rows"].as_array().unwrap();
    for a in [a1, a2] {
        let row = rows
            .iter()
            .find(|r| r["backend"] == a.to_string())
            .unwrap_or_else(|| panic!("no row for {a}: {last}"));
        assert_eq!(row["state"], "up", "{row}");
        let cells: Vec<&str> = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap_or(""))
            .collect();
        assert_eq!(cells[3], "1", "weight: {cells:?}");
        assert!(cells[7].starts_with("passed"), "last check: {cells:?}");
    }
    // Readable on a phone: nothing wider than the screen but the backends table's own scroll.
    assert!(
        seen["phone"]["overflow"].as_i64().unwrap_or(99) <= 1,
        "phone layout overflows: {}",
        seen["phone"]
    );

    // The drain button asked for the token (once: the tab keeps it) and drained through the
    // API; Undrain put the backend back; Weight… (its own prompt) set the weight.
    let dialogs = seen["dialogs"].as_array().expect("dialogs");
    assert_eq!(dialogs.len(), 2, "{seen}");
    assert!(
        dialogs[0].as_str().unwrap_or("").contains("token"),
        "{dialogs:?}"
    );
    assert!(
        dialogs[1].as_str().unwrap_or("").starts_with("New weight"),
        "{dialogs:?}"
    );
    let api = |k: &str| seen[k].clone();
    assert_eq!(api("api_after_drain")["state"], "draining", "{seen}");
    assert_eq!(api("api_after_undrain")["state"], "up", "{seen}");
    assert_eq!(api("api_after_undrain")["weight"], 1, "{seen}");
    assert_eq!(api("api_after_weight")["weight"], 7, "{seen}");
    let r = call_h(admin, "GET", "/v1/clusters/app", &[], None);
    let st = r.json()["status"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == a2.to_string())
        .cloned()
        .unwrap();
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(st["weight"], 7, "{st}");
    let audits = p
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("audit:"))
        .count();
    assert!(audits >= 3, "each change was audited: {}", p.stderr_text());
    for shot in ["ui-wide.png", "ui-phone.png", "ui-drained.png"] {
        let len = std::fs::metadata(out_dir.join(shot)).map_or(0, |m| m.len());
        assert!(len > 5_000, "{shot}: {len} bytes");
    }
    let _: SocketAddr = a1;
}
