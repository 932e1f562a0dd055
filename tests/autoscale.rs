//! Autoscaling over real sockets and real processes: wrk load through an LBaaS instance makes
//! the autoscaler run a hook script that starts a `switchyard demo-backend` and adds it
//! through the admin API (`switchyard ctl`); when the load stops, the hook is asked to take
//! one away. A failing hook and a hanging hook (killed at 10 s with what it started) are
//! logged and counted and hold up neither traffic nor the admin API. A webhook receives the
//! event, and the cooldown spaces the decisions.

mod util;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use util::client::call;
use util::*;

/// The hook of the load test: `scale_up` starts a demo backend on a free port and adds it to
/// the cluster through the admin API; `scale_down` removes the backend the autoscaler
/// suggests and stops it if it started it. Every call and its stdin event are recorded.
const SCALE_HOOK: &str = r#"#!/bin/sh
set -eu
dir="$(dirname "$0")"
cat > "$dir/event-$SWITCHYARD_ACTION.json"
echo "$SWITCHYARD_ACTION $SWITCHYARD_CLUSTER $SWITCHYARD_BACKENDS" >> "$dir/calls.log"
case "$SWITCHYARD_ACTION" in
scale_up)
  log="$dir/demo-$$.log"
  # Created here: the background job opens it only after the fork, and sed must not miss it.
  : > "$log"
  "$SWITCHYARD_EXE" demo-backend --listen 127.0.0.1:0 --id scaled >/dev/null 2>"$log" </dev/null &
  pid=$!
  addr=""
  for i in $(seq 1 100); do
    addr=$(sed -n 's/.*listening name=demo-backend .*addr=\([0-9.:]*\).*/\1/p' "$log")
    [ -n "$addr" ] && break
    sleep 0.05
  done
  echo "$addr $pid" >> "$dir/started"
  [ -n "$addr" ] || exit 1
  "$SWITCHYARD_EXE" ctl backend add "$SWITCHYARD_CLUSTER" "$addr"
  ;;
scale_down)
  "$SWITCHYARD_EXE" ctl backend delete "$SWITCHYARD_CLUSTER" "$SWITCHYARD_CANDIDATE"
  pid=$(awk -v a="$SWITCHYARD_CANDIDATE" '$1 == a { print $2 }' "$dir/started")
  [ -z "$pid" ] || kill "$pid"
  ;;
esac
"#;

/// Writes an executable script.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Kills the processes a hook recorded (`<pid>` per line, or `<addr> <pid>`), on drop.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for line in std::fs::read_to_string(&self.0).unwrap_or_default().lines() {
            if let Some(pid) = line.split_whitespace().last().and_then(|p| p.parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A child process (wrk) killed if the test fails while it runs.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn stats(admin: SocketAddr) -> Value {
    call(admin, "GET", "/stats", None).json()
}

fn scaling(admin: SocketAddr, cluster: &str) -> Value {
    stats(admin)["autoscale"][cluster].clone()
}

fn lb(admin: SocketAddr, body: Value) -> Value {
    let r = call(admin, "POST", "/lbaas", Some(&body.to_string()));
    assert_eq!(r.status, 200, "{body} -> {}", r.text());
    r.json()["info"].clone()
}

/// Creates project `p` (user `u`) and in it an instance; returns the instance's view.
fn new_instance(admin: SocketAddr, info: Value) -> Value {
    lb(
        admin,
        json!({"action": "create", "type": "project", "info": {"name": "p", "user": "u"}}),
    );
    lb(
        admin,
        json!({"action": "create", "type": "instance", "info": info}),
    )
}

fn entities(admin: SocketAddr, id: u64) -> Vec<String> {
    lb(
        admin,
        json!({"action": "info", "type": "instance", "info": {"id": id}}),
    )["backend"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn wrk_load_scales_an_instance_up_through_a_hook_and_back_down_after() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(dir.path(), "scale.sh", SCALE_HOOK);
    let _reaper = Reaper(dir.path().join("started"));
    let a = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "A"],
        &["demo-backend"],
    );
    let ea = a.addr("demo-backend");
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n[lbaas]\nport_range = \"21200-21209\"\n\
         [lbaas.autoscale]\nmetric = \"rps_per_backend\"\nscale_up_above = 200\nscale_down_below = 20\n\
         window = \"2s\"\ncooldown = \"2s\"\nmin_backends = 1\nmax_backends = 2\nhook = \"{}\"\n",
        hook.display()
    ));
    let admin = p.addr("admin");
    let inst = new_instance(
        admin,
        json!({
            "project": "p", "name": "web", "traffic_type": "http",
            "backend": {"entities": [ea.to_string()], "auto-scaling": true}}),
    );
    let id = inst["id"].as_u64().unwrap();
    let cluster = format!("lbaas-{id}");
    let address = inst["address"].as_str().unwrap().to_string();
    assert_eq!(inst["backend"]["auto-scaling"], true);
    // The idle instance is measured, and nothing happens at the minimum.
    wait_until(Duration::from_secs(5), "a first measurement", || {
        scaling(admin, &cluster)["value"].is_number()
    });
    let s = scaling(admin, &cluster);
    assert_eq!(
        s["decisions"],
        json!({"scale_up": 0, "scale_down": 0}),
        "{s}"
    );
    assert_eq!(s["lbaas_instance"].as_u64(), Some(id));

    // Load: wrk through the instance for a bounded time.
    let wrk = Command::new("wrk")
        .args(["-t1", "-c16", "-d8s", &format!("http://{address}/")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (Debian package wrk; .ci/run installs it)");
    let mut wrk = KillOnDrop(Some(wrk));
    let t0 = Instant::now();
    let mut most = 1;
    let added = poll_until(Duration::from_secs(8), "a second entity under load", || {
        let e = entities(admin, id);
        most = most.max(e.len());
        (e.len() == 2).then(|| e[1].clone())
    });
    // The new backend takes its share of the load.
    wait_until(
        Duration::from_secs(5),
        "requests on the new backend",
        || {
            stats(admin)["clusters"][&cluster]["backends"][&added]["requests"]
                .as_u64()
                .is_some_and(|n| n > 100)
        },
    );
    // Still loaded, but at max_backends: no more scaling up.
    while wrk.0.as_mut().unwrap().try_wait().unwrap().is_none()
        && t0.elapsed() < Duration::from_secs(20)
    {
        most = most.max(entities(admin, id).len());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = wrk.0.take().unwrap().wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {report}");
    assert!(!report.contains("Non-2xx"), "wrk saw errors: {report}");
    assert_eq!(most, 2, "never beyond max_backends");
    let s = scaling(admin, &cluster);
    assert_eq!(s["decisions"]["scale_up"], 1, "{s}");
    assert_eq!(s["last_decision"]["action"], "scale_up");
    assert_eq!(s["last_decision"]["reason"], "metric_above_threshold");
    assert_eq!(s["last_decision"]["outcome"], "ok", "{s}");
    assert!(s["last_decision"]["value"].as_f64().unwrap() > 200.0, "{s}");

    // The hook saw the event on stdin and the variables.
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("event-scale_up.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(event["action"], "scale_up");
    assert_eq!(event["cluster"], cluster.as_str());
    assert_eq!(event["backends"], 1);
    assert_eq!(event["metric"], "rps_per_backend");
    assert_eq!(event["max_backends"], 2);
    assert_eq!(
        event["lbaas_instance"],
        json!({"id": id, "name": "web", "project": "p"})
    );
    assert_eq!(event["backend_list"][0]["addr"], ea.to_string());
    assert_eq!(event["admin"], admin.to_string());

    // Load gone: after the cooldown and a fresh window, one backend goes.
    let t1 = Instant::now();
    wait_until(Duration::from_secs(15), "back to one entity", || {
        entities(admin, id) == [ea.to_string()]
    });
    assert!(t1.elapsed() >= Duration::from_secs(1), "{:?}", t1.elapsed());
    let s = scaling(admin, &cluster);
    assert_eq!(
        s["decisions"],
        json!({"scale_up": 1, "scale_down": 1}),
        "{s}"
    );
    assert_eq!(s["last_decision"]["reason"], "metric_below_threshold");
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("event-scale_down.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(event["candidate"], added.as_str(), "the idle newcomer goes");
    let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            format!("scale_up {cluster} 1"),
            format!("scale_down {cluster} 2")
        ],
        "one call each way: no flapping"
    );
    wait_until(Duration::from_secs(5), "the last action counted", || {
        scaling(admin, &cluster)["outcomes"]["ok"] == 2
    });
    // At the minimum, idle: nothing more.
    std::thread::sleep(Duration::from_secs(3));
    let s = scaling(admin, &cluster);
    assert_eq!(
        s["decisions"],
        json!({"scale_up": 1, "scale_down": 1}),
        "{s}"
    );
    assert_eq!(s["outcomes"], json!({"ok": 2, "failed": 0, "timeout": 0}));

    let log = p.stderr_text();
    assert!(
        log.contains(&format!(
            "autoscale: cluster {cluster}: scale_up (metric_above_threshold"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("autoscale: cluster {cluster}: scale_down")));
    let metrics = call(admin, "GET", "/metrics", None).text();
    for line in [
        format!(
            "switchyard_autoscale_decisions_total{{cluster=\"{cluster}\",action=\"scale_up\"}} 1"
        ),
        format!(
            "switchyard_autoscale_decisions_total{{cluster=\"{cluster}\",action=\"scale_down\"}} 1"
        ),
        format!("switchyard_autoscale_actions_total{{cluster=\"{cluster}\",outcome=\"ok\"}} 2"),
        format!("switchyard_autoscale_backends{{cluster=\"{cluster}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "missing {line}");
    }
    promtool_check(&metrics);
}

/// A TCP listener `front` → cluster `app` (one echo backend) whose autoscale policy asks for
/// two backends at least, so the hook runs at once.
fn below_min_config(hook: &Path, backend: SocketAddr, cooldown: &str) -> String {
    format!(
        "[server]\nworkers = 1\n[[listeners]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\ncluster = \"app\"\n\
         [[clusters]]\nname = \"app\"\nbackends = [\"{backend}\"]\n\
         [clusters.autoscale]\nmetric = \"active_per_backend\"\nscale_up_above = 100\nscale_down_below = 0\n\
         window = \"1s\"\ncooldown = \"{cooldown}\"\nmin_backends = 2\nmax_backends = 3\nhook = [\"{}\", \"an-arg\"]\n",
        hook.display()
    )
}

#[test]
fn a_failing_hook_is_logged_counted_and_tried_again_after_the_cooldown() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        dir.path(),
        "fail.sh",
        "#!/bin/sh\necho \"$1 $SWITCHYARD_ACTION $SWITCHYARD_REASON\" >> \"$(dirname \"$0\")/calls\"\necho 'no capacity' >&2\nexit 3\n",
    );
    let be = Backend::echo();
    let p = Proxy::start(&below_min_config(&hook, be.addr, "1s"));
    let admin = p.addr("admin");
    wait_until(Duration::from_secs(10), "two failed runs", || {
        scaling(admin, "app")["outcomes"]["failed"].as_u64() >= Some(2)
    });
    let s = scaling(admin, "app");
    assert_eq!(s["outcomes"]["ok"], 0);
    assert_eq!(s["last_decision"]["reason"], "below_min_backends");
    assert!(
        s["last_decision"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exit status: 3")),
        "{s}"
    );
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(
        calls.starts_with("an-arg scale_up below_min_backends\n"),
        "{calls}"
    );
    let log = p.stderr_text();
    assert!(
        log.contains("no capacity"),
        "the hook's stderr is in the log"
    );
    assert!(
        log.contains("autoscale: cluster app: action failed"),
        "{log}"
    );
    // The cooldown spaces the retries: 1 s after each failure (and the next tick), so not a
    // storm.
    let runs = calls.lines().count();
    std::thread::sleep(Duration::from_secs(3));
    let more = std::fs::read_to_string(dir.path().join("calls"))
        .unwrap()
        .lines()
        .count()
        - runs;
    assert!((1..=4).contains(&more), "{more} runs in 3 s");
    // Traffic flows meanwhile.
    echo_check(
        p.addr("front"),
        vec![payload(1, 4096)],
        Duration::from_secs(5),
    );
    let m = call(admin, "GET", "/metrics", None).text();
    assert!(m.contains("switchyard_autoscale_actions_total{cluster=\"app\",outcome=\"failed\"}"));
    promtool_check(&m);
    // The admin API may keep the hook but not set another program.
    let mut c = call(admin, "GET", "/v1/clusters/app", None).json();
    c.as_object_mut().unwrap().remove("status");
    c["autoscale"]["hook"] = json!("/bin/sh");
    let r = call(admin, "PUT", "/v1/clusters/app", Some(&c.to_string()));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "autoscale.hook");
    c["autoscale"]["hook"] = json!([hook.display().to_string(), "an-arg"]);
    c["autoscale"]["max_backends"] = json!(4);
    let r = call(admin, "PUT", "/v1/clusters/app", Some(&c.to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_hanging_hook_is_killed_at_10s_with_what_it_started_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The hook starts a child and waits for it: both must be gone after the kill.
    let hook = script(
        dir.path(),
        "hang.sh",
        "#!/bin/sh\nd=\"$(dirname \"$0\")\"\necho $$ >> \"$d/pids\"\nsleep 60 &\necho $! >> \"$d/pids\"\nwait\n",
    );
    let _reaper = Reaper(dir.path().join("pids"));
    let be = Backend::echo();
    // A long cooldown: the hook does not run again before the test ends.
    let p = Proxy::start(&below_min_config(&hook, be.addr, "10m"));
    let admin = p.addr("admin");
    let pids: Vec<i32> = poll_until(Duration::from_secs(5), "the hook running", || {
        let t = std::fs::read_to_string(dir.path().join("pids")).unwrap_or_default();
        let v: Vec<i32> = t.lines().filter_map(|l| l.parse().ok()).collect();
        (v.len() == 2).then_some(v)
    });
    assert!(pids.iter().all(|&p| alive(p)));
    let s = scaling(admin, "app");
    assert_eq!(s["running"], true, "{s}");

    // While it hangs: traffic flows, and the admin API answers and changes things at once.
    for i in 0..5 {
        echo_check(
            p.addr("front"),
            vec![payload(i, 1024)],
            Duration::from_secs(5),
        );
        let t = Instant::now();
        let r = call(
            admin,
            "POST",
            "/v1/clusters/app/backends",
            Some(&json!({"addr": format!("127.0.0.1:{}", 1000 + i)}).to_string()),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        // Far below the hook's 10 s, with room for a busy machine.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let r = call(
            admin,
            "DELETE",
            &format!("/v1/clusters/app/backends/127.0.0.1:{}", 1000 + i),
            None,
        );
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }

    wait_until(Duration::from_secs(15), "the hook timed out", || {
        scaling(admin, "app")["outcomes"]["timeout"] == 1
    });
    let s = scaling(admin, "app");
    let took = s["last_decision"]["took_ms"].as_u64().unwrap();
    assert!((10_000..12_000).contains(&took), "killed after {took} ms");
    assert_eq!(s["last_decision"]["outcome"], "timeout");
    assert_eq!(s["running"], false);
    wait_until(
        Duration::from_secs(2),
        "the hook and its child are gone",
        || pids.iter().all(|&p| !alive(p)),
    );
    wait_until(Duration::from_secs(5), "the timeout logged", || {
        p.stderr_text()
            .contains("autoscale: cluster app: action timed out after 10s")
    });
    let m = call(admin, "GET", "/metrics", None).text();
    assert!(m.contains("switchyard_autoscale_actions_total{cluster=\"app\",outcome=\"timeout\"} 1"));
}

/// Webhook calls received: when, and the JSON body.
type Calls = Arc<Mutex<Vec<(Instant, Value)>>>;

/// A webhook receiver: records each POST body with when it came, answers 200.
fn webhook_server() -> (SocketAddr, Calls) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut buf) else { break None };
                if n == 0 {
                    break None;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                let Some(i) = text.find("\r\n\r\n") else {
                    continue;
                };
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= i + 4 + len {
                    break serde_json::from_slice::<Value>(&got[i + 4..i + 4 + len]).ok();
                }
            };
            if let Some(b) = body {
                s2.lock().unwrap().push((Instant::now(), b));
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

#[test]
fn a_webhook_policy_from_the_api_gets_the_event_and_the_cooldown_spaces_decisions() {
    let (hook_addr, seen) = webhook_server();
    let (b1, b2) = (Backend::echo(), Backend::echo());
    let p = Proxy::start("[server]\nworkers = 1\n[lbaas]\nport_range = \"21210-21219\"\n");
    let admin = p.addr("admin");
    // No [lbaas.autoscale] in the config: the policy object is complete on its own.
    let inst = new_instance(
        admin,
        json!({
            "project": "p", "name": "tcp", "traffic_type": "tcp",
            "backend": {"entities": [b1.addr.to_string(), b2.addr.to_string()],
                        "health-check": false,
                        "auto-scaling": {"webhook": format!("http://{hook_addr}/scale"),
                                         "scale-up-above": 1000, "scale-down-below": 1,
                                         "window": 1, "cooldown": 2, "min_backends": 1}}}),
    );
    let cluster = format!("lbaas-{}", inst["id"]);
    // Idle with two backends: scale down; the receiver removes nothing, so the decision comes
    // again, but no sooner than the cooldown after the last answer.
    wait_until(Duration::from_secs(12), "three webhook calls", || {
        seen.lock().unwrap().len() >= 3
    });
    let calls = seen.lock().unwrap().clone();
    for w in calls.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(1900),
            "decisions {gap:?} apart"
        );
    }
    let e = &calls[0].1;
    assert_eq!(e["action"], "scale_down");
    assert_eq!(e["reason"], "metric_below_threshold");
    assert_eq!(e["cluster"], cluster.as_str());
    assert_eq!(e["backends"], 2);
    assert_eq!(e["value"], 0.0);
    assert_eq!(
        e["candidate"],
        b2.addr.to_string(),
        "the newest idle backend"
    );
    assert_eq!(e["backend_list"].as_array().unwrap().len(), 2);
    let s = scaling(admin, &cluster);
    assert!(s["outcomes"]["ok"].as_u64() >= Some(2), "{s}");
    assert_eq!(s["action"], "webhook");
    // At the minimum, nothing more is asked.
    let r = call(
        admin,
        "DELETE",
        &format!("/v1/clusters/{cluster}/backends/{}", b2.addr),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_secs(4));
    let n = seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        seen.lock().unwrap().len(),
        n,
        "no decisions at min_backends"
    );
}

#[test]
fn p99_latency_of_a_config_file_cluster_drives_a_webhook() {
    let (hook_addr, seen) = webhook_server();
    let slow = fixed_backend("slow", 200, Duration::from_millis(60));
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n\
         [[clusters]]\nname = \"app\"\nbackends = [\"{slow}\"]\n\
         [clusters.autoscale]\nmetric = \"p99_ms\"\nscale_up_above = 40\nscale_down_below = 5\n\
         window = \"1s\"\ncooldown = \"1m\"\nmax_backends = 2\nwebhook = \"http://{hook_addr}/up\"\n"
    ));
    let web = p.addr("web");
    // Slow answers, a few at a time, for a bounded while.
    let t0 = Instant::now();
    while seen.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        let hs: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || call(web, "GET", "/", None).status))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), 200);
        }
    }
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "one decision, then the cooldown");
    let e = &calls[0].1;
    assert_eq!(e["action"], "scale_up");
    assert_eq!(e["metric"], "p99_ms");
    let v = e["value"].as_f64().unwrap();
    assert!(
        (55.0..1000.0).contains(&v),
        "p99 {v} ms over a 60 ms backend"
    );
    let s = scaling(p.addr("admin"), "app");
    assert_eq!(s["metric"], "p99_ms");
    assert!(s["cooldown_until_unix_ms"].as_u64().is_some(), "{s}");
}
