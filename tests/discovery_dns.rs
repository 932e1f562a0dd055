//! DNS discovery against a real DNS server: dnsmasq on 127.0.0.1, serving A records from a
//! hosts file the test rewrites (dnsmasq re-reads it on SIGHUP) and SRV records from its
//! command line, with the TTL the test picks (`--local-ttl`). Backends listen on 127.0.0.x
//! addresses of the loopback range, so one name can have several A records.
//!
//! Covered: changes seen within the TTL; the TTL clamped to `min_ttl` / `max_ttl`; AAAA
//! records beside A records (a backend on ::1, the IPv6 loopback); SRV targets and ports
//! (lowest priority only); the server going away keeps the last set.

mod util;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::discovery::{provider, spread};
use util::*;

/// A dnsmasq on 127.0.0.1:`port`, killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(hosts: &Path, ttl: u32, extra: &[String]) -> Dnsmasq {
        let bin = which("dnsmasq")
            .expect("dnsmasq is not installed (apt-get install dnsmasq-base; .ci/run installs it)");
        // A free port for both UDP and TCP (the kernel picks it for UDP; TCP is checked).
        let port = loop {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        };
        let mut cmd = Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            // Authoritative for .test: NODATA / NXDOMAIN answered here, never forwarded.
            "--local=/test/",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            &format!("--port={port}"),
            &format!("--local-ttl={ttl}"),
            &format!("--addn-hosts={}", hosts.display()),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn dnsmasq");
        let d = Dnsmasq { child, port };
        wait_until(Duration::from_secs(5), "dnsmasq listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        d
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Re-read the hosts file.
    fn reload(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGHUP).expect("SIGHUP dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn demo_on(id: &str, addr: SocketAddr) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", &addr.to_string(), "--id", id],
        &["demo-backend"],
    )
}

/// A port free on each of these loopback addresses.
fn common_port(ips: &[[u8; 4]]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind(SocketAddr::from((ips[0], 0))).unwrap();
        let port = l.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::from((*ip, port))).is_ok())
        {
            return port;
        }
    }
}

/// Waits until 20 requests spread as `want` says; returns how long that took.
fn wait_spread(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    what: &str,
    want: impl Fn(&HashMap<String, usize>) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = HashMap::new();
    while start.elapsed() < within {
        last = spread(addr, path, 20);
        if want(&last) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not within {within:?}: last spread {last:?}");
}

fn has(s: &HashMap<String, usize>, k: &str) -> bool {
    s.get(k).copied().unwrap_or(0) > 0
}

#[test]
fn a_records_are_followed_within_their_ttl_and_kept_when_the_server_goes() {
    let port = common_port(&[[127, 0, 0, 2], [127, 0, 0, 3]]);
    let b2 = demo_on("b2", SocketAddr::from(([127, 0, 0, 2], port)));
    let b3 = demo_on("b3", SocketAddr::from(([127, 0, 0, 3], port)));
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.2 api.test\n").unwrap();
    let dns = Dnsmasq::start(&hosts, 1, &[]);
    let p = Proxy::start(&format!(
        "[server]\nworkers = 2\n\
         [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"api\"\n\
         [[listeners.routes]]\npath_prefix = \"/slow\"\nstrip_prefix = true\ncluster = \"api-slow\"\n\
         [[discovery]]\nname = \"fast\"\ntype = \"dns\"\nhost = \"api.test\"\nport = {port}\nserver = \"{}\"\n\
         cluster = \"api\"\nmin_ttl = \"1s\"\nmax_ttl = \"10s\"\ntimeout = \"300ms\"\nbackoff_max = \"1s\"\n\
         [[discovery]]\nname = \"slow\"\ntype = \"dns\"\nhost = \"api.test\"\nport = {port}\nserver = \"{}\"\n\
         cluster = \"api-slow\"\nmin_ttl = \"3s\"\n",
        dns.addr(),
        dns.addr()
    ));
    let (web, admin) = (p.addr("web"), p.addr("admin"));
    wait_until(Duration::from_secs(10), "first looks done", || {
        provider(admin, "fast")["state"] == "ok" && provider(admin, "slow")["state"] == "ok"
    });
    assert_eq!(spread(web, "/", 10).get("b2"), Some(&10));
    let fast = provider(admin, "fast");
    assert_eq!(fast["state"], "ok", "{fast}");
    assert_eq!(fast["ttl_ms"], 1000, "the record's TTL: {fast}");
    assert_eq!(
        provider(admin, "slow")["ttl_ms"],
        3000,
        "clamped up to min_ttl"
    );
    let slow_syncs = provider(admin, "slow")["syncs"].as_u64().unwrap();

    // A second address: seen within the 1 s TTL (plus a look and some slack).
    std::fs::write(&hosts, "127.0.0.2 api.test\n127.0.0.3 api.test\n").unwrap();
    dns.reload();
    let took = wait_spread(web, "/", Duration::from_secs(4), "both addresses", |s| {
        has(s, "b2") && has(s, "b3")
    });
    eprintln!("A record added: routed after {took:?}");
    // The first one gone.
    std::fs::write(&hosts, "127.0.0.3 api.test\n").unwrap();
    dns.reload();
    wait_spread(web, "/", Duration::from_secs(4), "b3 alone", |s| {
        s.get("b3") == Some(&20)
    });
    // The slow provider looked at most every 3 s meanwhile.
    let slow = provider(admin, "slow");
    let elapsed_looks = slow["syncs"].as_u64().unwrap() - slow_syncs;
    assert!(
        elapsed_looks <= 3,
        "min_ttl = 3s but {elapsed_looks} looks: {slow}"
    );
    wait_spread(
        web,
        "/slow",
        Duration::from_secs(8),
        "slow provider catches up",
        |s| s.get("b3") == Some(&20),
    );

    // The server goes away: timeouts, counted and shown; the last set stays.
    drop(dns);
    wait_until(Duration::from_secs(5), "the failure reported", || {
        let st = provider(admin, "fast");
        // A closed UDP port answers "connection refused"; a silent one times out.
        st["state"] == "failing"
            && u64_at(&st, "/errors") >= 1
            && st["error"]
                .as_str()
                .unwrap_or("")
                .contains("api.test @127.0.0.1")
    });
    assert_eq!(spread(web, "/", 20).get("b3"), Some(&20));
    assert!(p.stderr_text().contains("discovery fast:"));
    drop((b2, b3));
}

#[test]
fn srv_records_give_targets_and_ports_and_max_ttl_caps_a_long_ttl() {
    let p1 = common_port(&[[127, 0, 0, 1], [127, 0, 0, 5]]);
    let s1 = demo_on("s1", SocketAddr::from(([127, 0, 0, 1], p1)));
    let s2 = demo_on("s2", SocketAddr::from(([127, 0, 0, 1], 0)));
    let p2 = s2.addr("demo-backend").port();
    let s5 = demo_on("s5", SocketAddr::from(([127, 0, 0, 5], p1)));
    let backup = demo_on("backup", SocketAddr::from(([127, 0, 0, 1], 0)));
    let pb = backup.addr("demo-backend").port();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 t1.test t2.test\n").unwrap();
    // TTL of an hour: only max_ttl makes the provider look again.
    let dns = Dnsmasq::start(
        &hosts,
        3600,
        &[
            format!("--srv-host=_http._tcp.api.test,t1.test,{p1},10,1"),
            format!("--srv-host=_http._tcp.api.test,t2.test,{p2},10,3"),
            format!("--srv-host=_http._tcp.api.test,t1.test,{pb},20,1"),
        ],
    );
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n\
         [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"api\"\n\
         [[discovery]]\ntype = \"dns\"\nrecord = \"srv\"\nhost = \"_http._tcp.api.test\"\nserver = \"{}\"\n\
         cluster = \"api\"\nmax_ttl = \"2s\"\ntimeout = \"1s\"\n[discovery.defaults]\nbalance = \"weighted\"\n",
        dns.addr()
    ));
    let (web, admin) = (p.addr("web"), p.addr("admin"));
    wait_until(Duration::from_secs(10), "first look done", || {
        provider(admin, "dns")["state"] == "ok"
    });
    let st = provider(admin, "dns");
    assert_eq!(st["ttl_ms"], 2000, "3600 s capped by max_ttl: {st}");
    let mut backends: Vec<String> = st["services"]["api"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}/{}", b["addr"].as_str().unwrap(), b["weight"]))
        .collect();
    backends.sort();
    let mut want = [format!("127.0.0.1:{p1}/1"), format!("127.0.0.1:{p2}/3")];
    want.sort();
    assert_eq!(backends, want, "priority 10 only, SRV weights kept");
    let s = spread(web, "/", 40);
    assert_eq!((s.get("s1"), s.get("s2")), (Some(&10), Some(&30)), "{s:?}");

    // t1 moves to 127.0.0.5: seen within max_ttl although the TTL says an hour.
    std::fs::write(&hosts, "127.0.0.5 t1.test\n127.0.0.1 t2.test\n").unwrap();
    dns.reload();
    let took = wait_spread(web, "/", Duration::from_secs(5), "t1's new address", |s| {
        has(s, "s5") && !has(s, "s1")
    });
    eprintln!("SRV target moved: routed after {took:?}");
    drop((s1, s2, s5, backup));
}

#[test]
fn aaaa_records_are_backends_beside_a_records() {
    // One port free on 127.0.0.1 and on ::1, the loopback addresses of both families.
    let port = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            break port;
        }
    };
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let b4 = demo_on("v4", v4);
    let b6 = demo_on("v6", v6);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 dual.test\n::1 dual.test\n").unwrap();
    let dns = Dnsmasq::start(&hosts, 1, &[]);
    let p = Proxy::start(&format!(
        "[server]\nworkers = 1\n\
         [[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"dual\"\n\
         [[discovery]]\ntype = \"dns\"\nhost = \"dual.test\"\nport = {port}\nserver = \"{}\"\n\
         cluster = \"dual\"\nmin_ttl = \"1s\"\ntimeout = \"300ms\"\n",
        dns.addr()
    ));
    let (web, admin) = (p.addr("web"), p.addr("admin"));
    wait_until(Duration::from_secs(10), "first look done", || {
        provider(admin, "dns")["state"] == "ok"
    });
    let st = provider(admin, "dns");
    let mut found: Vec<(String, String)> = st["services"]["dual"]["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends: {st}"))
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap_or("?").to_string(),
                b["source"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (v4.to_string(), "A record".to_string()),
            (v6.to_string(), "AAAA record".to_string())
        ],
        "{st}"
    );
    let s = spread(web, "/", 20);
    assert_eq!((s.get("v4"), s.get("v6")), (Some(&10), Some(&10)), "{s:?}");

    // The A record goes: the name is IPv6 only, followed within its TTL.
    std::fs::write(&hosts, "::1 dual.test\n").unwrap();
    dns.reload();
    let took = wait_spread(web, "/", Duration::from_secs(4), "v6 alone", |s| {
        s.get("v6") == Some(&20)
    });
    eprintln!("A record removed, AAAA alone routed after {took:?}");
    assert_eq!(
        provider(admin, "dns")["services"]["dual"]["backends"][0]["addr"],
        v6.to_string()
    );
    drop((b4, b6));
}
