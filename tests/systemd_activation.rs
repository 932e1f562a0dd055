//! Socket activation with the descriptors passed exactly as systemd passes them: the sockets
//! are opened by systemd's own `systemd-socket-activate` (Debian package `systemd`), which
//! execs switchyard with them at fd 3 onwards and sets `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use util::client::call;
use util::sd::NotifySocket;
use util::*;

fn free_port() -> SocketAddr {
    // Bound and released: systemd-socket-activate needs a concrete port.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn inherited_sockets_are_matched_by_name_and_by_address_and_shared_by_the_workers() {
    let demo = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "d1"],
        &["demo-backend"],
    );
    let (a, b) = (free_port(), free_port());
    let config = format!(
        r#"[server]
workers = 2
admin = "127.0.0.1:0"

# Matched by name (fd 3 is named "web"): this bind address is not used.
[[listeners]]
name = "web"
bind = "127.0.0.1:1"
protocol = "http"
cluster = "app"

# Matched by address (fd 4 is unnamed).
[[listeners]]
name = "api"
bind = "{b}"
protocol = "http"
cluster = "app"

# No inherited socket: bound by switchyard.
[[listeners]]
name = "own"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[clusters]]
name = "app"
backends = ["{demo}"]
"#,
        demo = demo.addr("demo-backend"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, &config).unwrap();

    // systemd-socket-activate execs the service at the first connection attempt, as a
    // socket unit without Accept= does. This client is that first connection: it waits in
    // the backlog of the inherited socket and must be served once switchyard runs.
    let first = spawn_small("first-client", move || {
        let d = Deadline::after(Duration::from_secs(10));
        let mut s = loop {
            match TcpStream::connect(a) {
                Ok(s) => break s,
                Err(_) if !d.expired() => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("connect {a}: {e}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let notify = NotifySocket::abstract_socket();
    let p = Proxy::spawn_with(
        "systemd-socket-activate".as_ref(),
        vec![
            "-l".into(),
            a.to_string().into(),
            "-l".into(),
            b.to_string().into(),
            "--fdname=web:unknown".into(),
            "-E".into(),
            format!("NOTIFY_SOCKET={}", notify.env_value).into(),
            BIN.into(),
            "run".into(),
            "-c".into(),
            path.clone().into(),
        ],
        &[],
        dir,
        Some(path),
        WaitFor::Names(vec![
            "web".into(),
            "api".into(),
            "own".into(),
            "admin".into(),
        ]),
    );
    let text = p.stderr_text();
    assert!(text.contains("Execing"), "{text}");
    assert_eq!(p.addr("web"), a, "web took the socket named web");
    assert_eq!(p.addr("api"), b, "api took the socket at its address");
    assert_ne!(p.addr("own").port(), 0);
    assert!(
        text.contains("using the socket passed by the service manager"),
        "{text}"
    );
    notify.wait_for(0, Duration::from_secs(10), "READY=1", |n| n.has("READY=1"));

    let early = join_timeout(first, Duration::from_secs(20), "first client");
    assert!(early.starts_with("HTTP/1.1 200"), "{early}");
    assert!(early.ends_with("d1\n"), "{early}");
    for name in ["web", "api", "own"] {
        let r = call(p.addr(name), "GET", "/", None);
        assert_eq!((r.status, r.text().trim()), (200, "d1"), "{name}");
    }
    // Both workers accept from the one inherited socket: many connections, all served.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            spawn_small("c", move || {
                for _ in 0..25 {
                    let r = call(a, "GET", "/", None);
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for h in handles {
        join_timeout(h, Duration::from_secs(30), "clients");
    }
    let stats = call(p.addr("admin"), "GET", "/stats", None).json();
    assert!(
        stats["listeners"]["web"]["connections"]
            .as_u64()
            .unwrap_or(0)
            >= 201,
        "{stats}"
    );
}

#[test]
fn a_socket_that_matches_no_listener_is_reported_and_closed() {
    let a = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(
        &path,
        "[server]\nadmin = \"127.0.0.1:0\"\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ncluster = \"app\"\n[[clusters]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let trigger = spawn_small("trigger", move || {
        let d = Deadline::after(Duration::from_secs(10));
        while !d.expired() {
            if TcpStream::connect(a).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let p = Proxy::spawn_with(
        "systemd-socket-activate".as_ref(),
        vec![
            "-l".into(),
            a.to_string().into(),
            "--fdname=stray".into(),
            BIN.into(),
            "run".into(),
            "-c".into(),
            path.clone().into(),
        ],
        &[],
        dir,
        Some(path),
        WaitFor::Names(vec!["web".into(), "admin".into()]),
    );
    join_timeout(trigger, Duration::from_secs(15), "trigger");
    wait_until(Duration::from_secs(5), "the warning", || {
        p.stderr_text().contains("no listener matches the socket")
    });
    assert!(p.stderr_text().contains("named stray"));
    // Closed: nothing accepts there any more.
    wait_until(
        Duration::from_secs(5),
        "the stray socket to be closed",
        || TcpStream::connect(a).is_err(),
    );
}
