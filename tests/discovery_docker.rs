//! Docker discovery against the real Docker Engine (Debian's docker.io; `.ci/run` installs
//! it and starts `dockerd`). No registry is reachable, so the test image is built here with
//! `docker import` from a tarball holding busybox; the switchyard binary and its libraries are
//! bind-mounted read-only and each container runs `switchyard demo-backend` on the host
//! network, bound to 127.0.0.1, one port per replica. Test traffic only ever goes to
//! 127.0.0.1.
//!
//! Covered: a new container routed within 3 s; two replicas balanced; a replica stopped under
//! load with no client errors; removal → the original gateway's JSON 400; the original
//! `GET /stats` shape; dockerd stopped → the last set kept, and recovery when it starts again
//! (a dockerd of the test's own, see [`PrivateEngine`]); the `switchyard faas` quick mode;
//! `faas.host`; swarm services, every task a backend.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};
use util::client::{call, Client};
use util::discovery::{provider, spread};
use util::*;

const ENGINE: &str = "/var/run/docker.sock";
const IMAGE: &str = "switchyard-test/busybox:discovery";

fn docker_try(args: &[&str]) -> Result<String, String> {
    docker_try_on(&[], args)
}

/// `docker` with `pre` before the command (`-H unix://...` for another engine).
fn docker_try_on(pre: &[&str], args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(pre)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The engine must answer: these tests need the real one. `.ci/run` starts dockerd.
fn engine() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        docker_try(&["info", "--format", "{{.ServerVersion}}"]).map(|_| ())?;
        build_image()
    });
    if let Err(e) = r {
        panic!(
            "the Docker Engine is needed for these tests and is not usable ({e}). Install \
             docker.io and start dockerd (.ci/run does both)."
        );
    }
}

/// `docker import` of a tarball with busybox as /bin/busybox and /bin/sh.
fn build_image() -> Result<(), String> {
    build_image_on(&[])
}

fn build_image_on(pre: &[&str]) -> Result<(), String> {
    if docker_try_on(pre, &["image", "inspect", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or("busybox is not installed (apt-get install busybox-static)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    let tar = dir.path().join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("tar failed".into());
    }
    docker_try_on(pre, &["import", &tar.display().to_string(), IMAGE]).map(|_| ())
}

/// Read-only bind mounts: the switchyard binary at /switchyard and the directories of the
/// shared libraries it needs, as `docker run -v` arguments.
fn mounts() -> Vec<String> {
    let mut v = vec![format!("{BIN}:/switchyard:ro")];
    let ldd = Command::new("ldd").arg(BIN).output().expect("ldd");
    let mut dirs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .filter_map(|p| Some(Path::new(p).parent()?.display().to_string()))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        v.push(format!("{d}:{d}:ro"));
    }
    v
}

/// Removes the containers (and services) a test made, whatever happens.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    services: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in &self.services {
            let _ = docker_try(&["service", "rm", s]);
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = docker_try(&args);
        }
    }
}

/// A short name for this test's objects: FaaS keys are `[a-z0-9]+`.
fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a labelled demo backend container on the host network at 127.0.0.1:`port`.
fn run_replica(c: &mut Cleanup, service: &str, id: &str, port: u16) -> String {
    let name = unique("sy");
    c.containers.push(name.clone());
    run_replica_on(&[], &name, service, id, port);
    name
}

/// [`run_replica`] on the engine `pre` names, as container `name`.
fn run_replica_on(pre: &[&str], name: &str, service: &str, id: &str, port: u16) {
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--label",
        &format!("faas.name={service}"),
        "--label",
        &format!("faas.port={port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in mounts() {
        args.push("-v".into());
        args.push(m);
    }
    args.extend(
        [
            IMAGE,
            "/switchyard",
            "demo-backend",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--id",
            id,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_try_on(pre, &args).unwrap_or_else(|e| panic!("{e}"));
}

fn faas_proxy(socket: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nworkers = 2\n[[listeners]]\nname = \"faas\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
         faas = true\nfaas_stats = true\n[[discovery]]\ntype = \"docker\"\nsocket = \"{socket}\"\n"
    ))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = Client::new(addr);
    match c.request("GET", path, &[], None) {
        Ok(r) => (r.status, r.text().trim().to_string()),
        Err(e) => (0, e.to_string()),
    }
}

fn backends_of(admin: SocketAddr, service: &str) -> Vec<String> {
    provider(admin, "docker")["services"][service]["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["addr"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn original_400(service: &str) -> String {
    format!(r#"{{"Data":{{"Msg":"no service found for key = {service}","Code":10000}}}}"#)
}

#[test]
fn containers_are_routed_within_3s_balanced_and_their_removal_gives_the_original_400() {
    engine();
    let mut c = Cleanup::default();
    let svc = unique("svc");
    let p = faas_proxy(ENGINE);
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    assert_eq!(get(web, &format!("/{svc}/")), (400, original_400(&svc)));

    let port1 = free_port();
    run_replica(&mut c, &svc, "r1", port1);
    let started = Instant::now();
    loop {
        if get(web, &format!("/{svc}/")) == (200, "r1".into()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a new container not routed within 3 s; discovery: {}",
            provider(admin, "docker")
        );
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "new container routed {:?} after docker run returned",
        started.elapsed()
    );
    // The FaaS dummy service through the gateway path, as in the original README.
    let r = call(web, "GET", &format!("/{svc}/api/v1/add?x=10&y=25"), None);
    assert_eq!(r.json()["Data"]["Result"], 35);

    // The original gateway's /stats shape.
    let stats = call(web, "GET", "/stats", None);
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let s = stats.json();
    assert_eq!(s["Data"]["ProviderName"], "docker");
    assert_eq!(s["Data"]["Services"][&svc]["Name"], svc.as_str());
    assert_eq!(s["Data"]["Services"][&svc]["Port"], port1);

    // A second replica: both take traffic.
    let port2 = free_port();
    let r2 = run_replica(&mut c, &svc, "r2", port2);
    wait_until(
        Duration::from_secs(5),
        "the second replica discovered",
        || backends_of(admin, &svc).len() == 2,
    );
    let s = spread(web, &format!("/{svc}/"), 100);
    assert_eq!(
        s.get("r1").unwrap_or(&0) + s.get("r2").unwrap_or(&0),
        100,
        "{s:?}"
    );
    assert!(
        s.get("r1").unwrap_or(&0) >= &30 && s.get("r2").unwrap_or(&0) >= &30,
        "{s:?}"
    );
    let src = provider(admin, "docker")["services"][&svc]["backends"][1]["source"].clone();
    assert!(
        src.as_str().unwrap_or("").starts_with("container "),
        "{src}"
    );

    // Removal: the service is gone, as the original answered.
    let mut rm = vec!["rm", "-f"];
    rm.extend(c.containers.iter().map(String::as_str));
    docker(&rm);
    let gone = Instant::now();
    wait_until(
        Duration::from_secs(3),
        "the removed service answers 400",
        || get(web, &format!("/{svc}/")) == (400, original_400(&svc)),
    );
    eprintln!("removal seen after {:?}", gone.elapsed());
    // Logged right after the change is committed (it may trail the first 400).
    wait_until(Duration::from_secs(2), "the removal is logged", || {
        p.stderr_text().contains(&format!("cluster {svc} is gone"))
    });
    drop(r2);
}

/// A container with no network of its own (`--network none`), labelled as given, idle.
fn run_unnetworked(c: &mut Cleanup, labels: &[String]) -> String {
    let name = unique("sy");
    let mut args = vec!["run", "-d", "--name", &name, "--network", "none"];
    for l in labels {
        args.extend(["--label", l]);
    }
    args.extend([IMAGE, "/bin/busybox", "sleep", "600"]);
    c.containers.push(name.clone());
    docker(&args);
    name
}

#[test]
fn faas_host_gives_the_backend_address() {
    engine();
    let mut c = Cleanup::default();
    let svc = unique("hosted");
    let p = faas_proxy(ENGINE);
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    // The service itself runs outside Docker, on 127.0.0.1; the container only announces it.
    let outside = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "outside"],
        &["demo-backend"],
    );
    let port = outside.addr("demo-backend").port();
    let with_host = run_unnetworked(
        &mut c,
        &[
            format!("faas.name={svc}"),
            format!("faas.port={port}"),
            "faas.host=127.0.0.1".into(),
        ],
    );
    // Without faas.host, a container with no network has no address: skipped, and said so.
    let without = run_unnetworked(
        &mut c,
        &[format!("faas.name={svc}"), format!("faas.port={port}")],
    );
    let bad = run_unnetworked(
        &mut c,
        &[
            format!("faas.name={svc}"),
            format!("faas.port={port}"),
            "faas.host=gateway.local".into(),
        ],
    );
    // All three seen (each `docker run` returned with its container running).
    let want_skipped = [
        format!("container {without}: no address (no network)"),
        format!("container {bad}: faas.host=\"gateway.local\" is not an IP address"),
    ];
    let mut st = serde_json::Value::Null;
    wait_until(Duration::from_secs(5), "all three containers seen", || {
        st = provider(admin, "docker");
        let skipped = st["skipped"].as_array().cloned().unwrap_or_default();
        want_skipped
            .iter()
            .all(|w| skipped.iter().any(|s| s.as_str() == Some(w)))
    });
    assert_eq!(
        st["services"][&svc]["backends"],
        serde_json::json!([{"addr": format!("127.0.0.1:{port}"), "weight": 1,
                            "source": format!("container {with_host}")}]),
        "{st}"
    );
    assert_eq!(
        spread(web, &format!("/{svc}/"), 10).get("outside"),
        Some(&10)
    );
}

#[test]
fn a_replica_stopped_under_load_costs_no_client_error() {
    engine();
    let mut c = Cleanup::default();
    let svc = unique("load");
    let p = faas_proxy(ENGINE);
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    run_replica(&mut c, &svc, "keep", free_port());
    let doomed = run_replica(&mut c, &svc, "doomed", free_port());
    wait_until(Duration::from_secs(5), "both replicas discovered", || {
        backends_of(admin, &svc).len() == 2
    });

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let doomed_hits = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let path = format!("/{svc}/");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, doomed_hits, errors, path) = (
                stop.clone(),
                ok.clone(),
                doomed_hits.clone(),
                errors.clone(),
                path.clone(),
            );
            thread::spawn(move || {
                let mut cl = Client::new(web);
                let end = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    match cl.request("GET", &path, &[], None) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.text().trim() == "doomed" {
                                doomed_hits.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(r) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.text())),
                        Err(e) => {
                            errors.lock().unwrap().push(e.to_string());
                            cl = Client::new(web);
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(800));
    let before = doomed_hits.load(Ordering::Relaxed);
    docker(&["stop", "-t", "1", &doomed]);
    wait_until(Duration::from_secs(5), "the stopped replica leaves", || {
        backends_of(admin, &svc).len() == 1
    });
    thread::sleep(Duration::from_millis(500));
    let after_gone = doomed_hits.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let total = ok.load(Ordering::Relaxed);
    eprintln!("{total} requests under load, {before} to the doomed replica before its stop");
    assert!(
        before > 0,
        "the doomed replica took traffic before it stopped"
    );
    assert_eq!(
        doomed_hits.load(Ordering::Relaxed),
        after_gone,
        "traffic after it left"
    );
    assert!(total > 200, "load ran: {total}");
    assert!(
        errors.is_empty(),
        "client errors: {:?}",
        &errors[..errors.len().min(5)]
    );
}

/// A Docker Engine of the test's own: a dockerd on a socket in a temporary directory, with
/// its own data and exec roots (its own containerd too), no bridge, no iptables rules, and
/// live restore, so that its containers keep running while it is stopped. The test stops and
/// starts this one; the machine's engine, which the other tests use meanwhile, is left alone.
struct PrivateEngine {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateEngine {
    fn start() -> PrivateEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let mut e = PrivateEngine { dir, child: None };
        e.up().unwrap_or_else(|err| panic!("{err}"));
        let host = e.host();
        build_image_on(&["-H", &host]).unwrap_or_else(|err| panic!("{err}"));
        e
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `docker` arguments that address this engine.
    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let host = self.host();
        docker_try_on(&["-H", &host], args)
    }

    fn up(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.host())
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--live-restore",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run dockerd (root is needed): {e}"))?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        while self
            .docker(&["info", "--format", "{{.ServerVersion}}"])
            .is_err()
        {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > end {
                let log = std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(format!(
                    "the test's own dockerd did not start ({exited:?}): {tail:?}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops dockerd as a service manager would (SIGTERM), and waits for it to exit.
    fn down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // Its containers outlive a stopped dockerd: start it to remove them.
        if self.child.is_some() || self.up().is_ok() {
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.split_whitespace());
                if args.len() > 2 {
                    let _ = self.docker(&args);
                }
            }
        }
        self.down();
        // dockerd leaves mounts of its own under its roots (its data root, the network
        // namespace): unmounted, deepest first, before the directory goes.
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(String::from)
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

#[test]
fn quick_mode_keeps_the_last_set_while_dockerd_is_stopped() {
    let svc = unique("quick");
    let mut own = PrivateEngine::start();
    let sock_s = own.socket().display().to_string();
    let p = Proxy::start_args(
        &[
            "faas",
            "-port",
            "0",
            "-http",
            "127.0.0.1:0",
            "-socket",
            &sock_s,
        ],
        &["faas", "admin"],
    );
    let web = SocketAddr::from(([127, 0, 0, 1], p.addr("faas").port()));
    let admin = p.addr("admin");
    let host = own.host();
    run_replica_on(&["-H", &host], &unique("sy"), &svc, "q1", free_port());
    wait_until(Duration::from_secs(5), "routed in quick mode", || {
        get(web, &format!("/{svc}/")) == (200, "q1".into())
    });
    assert_eq!(
        call(web, "GET", "/stats", None).json()["Data"]["ProviderName"],
        "docker"
    );

    // dockerd stops (its container lives on: live restore). Errors counted and shown, the
    // service still routed to the replica.
    own.down();
    assert!(own.docker(&["info"]).is_err(), "dockerd is down");
    wait_until(Duration::from_secs(5), "the failure reported", || {
        let st = provider(admin, "docker");
        st["state"] == "failing"
            && st["errors"].as_u64().is_some_and(|n| n >= 1)
            && st["error"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("cannot connect to {sock_s}"))
    });
    assert_eq!(spread(web, &format!("/{svc}/"), 20).get("q1"), Some(&20));
    assert_eq!(backends_of(admin, &svc).len(), 1, "last good set kept");
    // Still failing a while later (retried with backoff): logged once all the same.
    thread::sleep(Duration::from_secs(2));
    let st = provider(admin, "docker");
    assert_eq!(st["state"], "failing", "{st}");
    let warnings = p
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("keeping the last good set"))
        .count();
    assert_eq!(warnings, 1, "logged once per state change");

    // dockerd back: recovered, the same replica found again.
    let down_at = Instant::now();
    own.up().unwrap_or_else(|e| panic!("{e}"));
    wait_until(Duration::from_secs(40), "recovered", || {
        provider(admin, "docker")["state"] == "ok"
    });
    eprintln!(
        "recovered {:?} after dockerd was started again",
        down_at.elapsed()
    );
    assert!(p.stderr_text().contains("discovery docker: recovered"));
    assert_eq!(backends_of(admin, &svc).len(), 1);
    assert_eq!(spread(web, &format!("/{svc}/"), 10).get("q1"), Some(&10));
}

/// Joins a swarm for the test (leaving it afterwards only if it was not in one before).
struct Swarm {
    joined_here: bool,
}

impl Swarm {
    fn ensure() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state == "active" {
            return Swarm { joined_here: false };
        }
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        Swarm { joined_here: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.joined_here {
            let _ = docker_try(&["swarm", "leave", "--force"]);
        }
    }
}

/// `n` consecutive free ports after a base: returns the base.
fn free_run(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base > 60_000 {
            continue;
        }
        let held: Vec<_> = (1..=n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
}

#[test]
fn swarm_services_every_task_is_a_backend() {
    engine();
    let _swarm = Swarm::ensure();
    let mut c = Cleanup::default();
    let svc = unique("swarm");
    let p = faas_proxy(ENGINE);
    let (web, admin) = (p.addr("faas"), p.addr("admin"));
    let base = free_run(2);
    let name = unique("sysvc");
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--replicas",
        "2",
        "--container-label",
        &format!("faas.name={svc}"),
        "--label",
        &format!("faas.port={base}+slot"),
        "--env",
        "SLOT={{.Task.Slot}}",
        "--env",
        &format!("BASE={base}"),
        "--restart-condition",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in mounts() {
        let mut parts = m.split(':');
        let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
        args.push("--mount".into());
        args.push(format!("type=bind,src={src},dst={dst},ro"));
    }
    args.extend(
        [
            IMAGE,
            "sh",
            "-c",
            "exec /switchyard demo-backend --listen 127.0.0.1:$((BASE+SLOT)) --id slot$SLOT",
        ]
        .map(String::from),
    );
    c.services.push(name.clone());
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());

    wait_until(Duration::from_secs(60), "both tasks routed", || {
        let s = spread(web, &format!("/{svc}/"), 20);
        s.contains_key("slot1") && s.contains_key("slot2")
    });
    let mut addrs = backends_of(admin, &svc);
    addrs.sort();
    assert_eq!(
        addrs,
        [
            format!("127.0.0.1:{}", base + 1),
            format!("127.0.0.1:{}", base + 2)
        ]
    );
    let st = provider(admin, "docker");
    assert!(
        st["services"][&svc]["backends"][0]["source"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("of service {name}")),
        "{st}"
    );
    let s = spread(web, &format!("/{svc}/"), 60);
    assert!(
        s["slot1"] >= 15 && s["slot2"] >= 15,
        "balanced over the tasks: {s:?}"
    );

    // Scaled down: the task that stops leaves the cluster.
    docker(&["service", "scale", "--detach", &format!("{name}=1")]);
    wait_until(Duration::from_secs(30), "one task left", || {
        backends_of(admin, &svc).len() == 1
    });
    // Removed: the original 400.
    docker(&["service", "rm", &name]);
    c.services.clear();
    wait_until(
        Duration::from_secs(30),
        "the removed service answers 400",
        || get(web, &format!("/{svc}/")) == (400, original_400(&svc)),
    );
}
