//! The PROXY protocol, v1 and v2: read on listeners with `accept_proxy`, written by clusters
//! with `send_proxy`, byte for byte as the specification lays it out, and against HAProxy as
//! a real peer both ways. Clients connect from 127.0.0.5 (and .6) so that the address a header
//! carries differs from the one the next hop sees (127.0.0.1).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// A TCP connection from `from` (a loopback address) to `to`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("addr");
    sock.bind(&local.into()).expect("bind the client address");
    sock.connect(&to.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s
}

/// Sends `bytes` and reads the whole answer (the server closes: `Connection: close`).
fn exchange(mut s: TcpStream, bytes: &[u8]) -> String {
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// Every X-Forwarded-For value the demo backend's `/echo` saw, joined with ", ".
fn forwarded_for(answer: &str) -> String {
    let key = r#"["x-forwarded-for",""#;
    let lower = answer.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find(key) {
        let start = at + i + key.len();
        let end = start + answer[start..].find('"').unwrap_or(0);
        out.push(answer[start..end].to_string());
        at = end;
    }
    out.join(", ")
}

const GET_ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn v2_header(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

#[test]
fn accepted_headers_set_the_client_address_everywhere() {
    let be = demo("be");
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
access_log = "access.log"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
[[clusters]]
name = "app"
backends = ["{}"]
"#,
        be.addr("demo-backend")
    ));
    let web = p.addr("web");
    let v1 = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".as_slice(),
        GET_ECHO,
    ]
    .concat();
    let out = exchange(TcpStream::connect(web).expect("connect"), &v1);
    assert_eq!(forwarded_for(&out), "192.0.2.7", "{out}");
    let v6 = [
        b"PROXY TCP6 2001:db8::9 2001:db8::1 1000 80\r\n".as_slice(),
        GET_ECHO,
    ]
    .concat();
    let out = exchange(TcpStream::connect(web).expect("connect"), &v6);
    assert_eq!(forwarded_for(&out), "2001:db8::9", "{out}");
    let v2 = [
        v2_header([198, 51, 100, 3], [10, 0, 0, 1], 4000, 80),
        GET_ECHO.to_vec(),
    ]
    .concat();
    let out = exchange(TcpStream::connect(web).expect("connect"), &v2);
    assert_eq!(forwarded_for(&out), "198.51.100.3", "{out}");
    // The header and the request in separate writes, the header itself split.
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.write_all(b"PROXY TCP4 203.0.113.").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"4 10.0.0.1 1 2\r\n").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    let out = exchange(s, GET_ECHO);
    assert_eq!(forwarded_for(&out), "203.0.113.4", "{out}");
    // UNKNOWN (v1) and LOCAL (v2): the connection's own address stands.
    let out = exchange(
        TcpStream::connect(web).expect("connect"),
        &[b"PROXY UNKNOWN\r\n".as_slice(), GET_ECHO].concat(),
    );
    assert_eq!(forwarded_for(&out), "127.0.0.1", "{out}");
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    local.extend_from_slice(GET_ECHO);
    let out = exchange(TcpStream::connect(web).expect("connect"), &local);
    assert_eq!(forwarded_for(&out), "127.0.0.1", "{out}");
    // The access log names the carried client.
    let log = p.dir().join("access.log");
    wait_until(Duration::from_secs(5), "access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 6)
    });
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains(r#""client":"192.0.2.7""#), "{text}");
    assert!(text.contains(r#""client":"2001:db8::9""#), "{text}");
}

const GET_ROOT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// The demo backend's id in an answer to `GET /`.
fn served_by(answer: &str) -> String {
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default()
}

/// `hash_on = "client_ip"` behind `accept_proxy`: the backend is picked by the address the
/// header carries, exactly as for a client connecting from that address itself, on HTTP and
/// TCP listeners; the access log and the per-backend stats account for it the same way.
#[test]
fn hashing_on_the_client_ip_uses_the_carried_address_and_stats_and_log_follow() {
    let backends = [demo("b1"), demo("b2"), demo("b3")];
    let addr_of: std::collections::HashMap<String, SocketAddr> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("b{}", i + 1), b.addr("demo-backend")))
        .collect();
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 2
access_log = "access.log"
[[listeners]]
name = "direct"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"
accept_proxy = true
[[clusters]]
name = "app"
balance = "hash"
hash_on = "client_ip"
backends = ["{}", "{}", "{}"]
"#,
        addr_of["b1"], addr_of["b2"], addr_of["b3"]
    ));
    let (direct, web, tcp) = (p.addr("direct"), p.addr("web"), p.addr("tcp"));
    // Sixteen client addresses. Every PROXY connection comes from 127.0.0.1: were the peer
    // hashed, they would all land on one backend.
    let clients: Vec<String> = (10..26).map(|i| format!("127.0.0.{i}")).collect();
    let mut picked = std::collections::BTreeMap::new();
    for (n, ip) in clients.iter().enumerate() {
        // The reference: the client connects from that address itself.
        let own = served_by(&exchange(connect_from(ip, direct), GET_ROOT));
        let v1 = format!("PROXY TCP4 {ip} 10.0.0.1 {} 80\r\n", 40000 + n);
        let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        let v2 = v2_header(
            [octets[0], octets[1], octets[2], octets[3]],
            [10, 0, 0, 1],
            40000 + n as u16,
            80,
        );
        for (what, to, header) in [
            ("http v1", web, v1.as_bytes().to_vec()),
            ("http v2", web, v2.clone()),
            ("tcp v1", tcp, v1.as_bytes().to_vec()),
            ("tcp v2", tcp, v2),
        ] {
            let out = exchange(
                connect_from("127.0.0.1", to),
                &[header.as_slice(), GET_ROOT].concat(),
            );
            assert_eq!(served_by(&out), own, "{what} carrying {ip}");
        }
        picked.insert(ip.clone(), own);
    }
    let used: std::collections::BTreeSet<&String> = picked.values().collect();
    assert!(
        used.len() >= 2,
        "sixteen addresses on one backend: {picked:?}"
    );

    // Stats: per backend, three HTTP requests (direct, web v1, web v2) per client it owns.
    let stats = p.stats();
    for (id, addr) in &addr_of {
        let owned = picked.values().filter(|b| *b == id).count() as u64;
        let b = &stats["clusters"]["app"]["backends"][addr.to_string()];
        assert_eq!(b["requests"].as_u64(), Some(3 * owned), "{id}: {b}");
    }
    let web_stats = &stats["listeners"]["web"];
    assert_eq!(web_stats["requests"].as_u64(), Some(32), "{web_stats}");
    assert_eq!(
        stats["listeners"]["tcp"]["connections"].as_u64(),
        Some(32),
        "{stats}"
    );

    // The access log: each request through `web` names the carried client and the backend
    // that client's own connection reached.
    let log = p.dir().join("access.log");
    let lines = poll_until(Duration::from_secs(10), "access log lines", || {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 48).then_some(lines)
    });
    let mut seen = 0;
    for l in lines.iter().filter(|l| l["listener"] == "web") {
        let client = l["client"].as_str().expect("client");
        let owner = picked
            .get(client)
            .unwrap_or_else(|| panic!("client {client} is not a carried address: {l}"));
        assert_eq!(
            l["backend"].as_str(),
            Some(addr_of[owner].to_string().as_str()),
            "{l}"
        );
        seen += 1;
    }
    assert_eq!(seen, 32, "{lines:?}");
}

#[test]
fn missing_malformed_late_and_untrusted_headers_are_closed_and_counted() {
    let be = demo("be");
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
proxy_timeout = "500ms"
[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "app"
accept_proxy = true
[[listeners]]
name = "picky"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
trusted_proxies = ["10.0.0.0/8", "127.0.0.9"]
[[clusters]]
name = "app"
backends = ["{}"]
"#,
        be.addr("demo-backend")
    ));
    let web = p.addr("web");
    for bad in [
        GET_ECHO.to_vec(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c".to_vec(),
    ] {
        let out = exchange(TcpStream::connect(web).expect("connect"), &bad);
        assert!(
            out.is_empty(),
            "{:?} must be closed unanswered: {out}",
            String::from_utf8_lossy(&bad)
        );
    }
    // The TCP listener never connects upstream for a bad header.
    let out = exchange(
        TcpStream::connect(p.addr("tcp")).expect("connect"),
        GET_ECHO,
    );
    assert!(out.is_empty(), "{out}");
    // Silence: closed after proxy_timeout.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let n = s.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "closed after 500ms, not {took:?}"
    );
    // Untrusted source: refused even with a valid header; a trusted one gets through.
    let ok_header = [
        b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n".as_slice(),
        GET_ECHO,
    ]
    .concat();
    let out = exchange(connect_from("127.0.0.5", p.addr("picky")), &ok_header);
    assert!(out.is_empty(), "{out}");
    let out = exchange(connect_from("127.0.0.9", p.addr("picky")), &ok_header);
    assert_eq!(forwarded_for(&out), "192.0.2.1", "{out}");
    wait_until(Duration::from_secs(5), "counted", || {
        p.tcp("proxy_header_errors") >= 6
            && p.tcp("tls_handshake_timeouts") >= 1
            && p.tcp("proxy_untrusted") == 1
    });
}

/// A backend that records the first bytes of every connection it gets, then answers an HTTP
/// response and closes.
fn capture_backend() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The request head after the header (a v2 header itself holds CRLF CRLF).
            while !(got.ends_with(b"\r\n\r\n") && got.windows(4).any(|w| w == b"GET ")) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = tx.send(got);
        }
    });
    (addr, rx)
}

#[test]
fn sent_headers_are_byte_exact_per_connection() {
    let (cap, got) = capture_backend();
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "v1"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "v1"
[[listeners]]
name = "v2"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "v2"
[[listeners]]
name = "http"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "v1"
[[clusters]]
name = "v1"
backends = ["{cap}"]
send_proxy = "v1"
[[clusters]]
name = "v2"
backends = ["{cap}"]
send_proxy = "v2"
"#
    ));
    for (listener, v2) in [("v1", false), ("v2", true), ("http", false)] {
        let to = p.addr(listener);
        let s = connect_from("127.0.0.5", to);
        let port = s.local_addr().expect("local").port();
        let out = exchange(s, GET_ECHO);
        assert!(out.ends_with("ok"), "{out}");
        let first = got.recv_timeout(Duration::from_secs(5)).expect("captured");
        let want = if v2 {
            v2_header([127, 0, 0, 5], [127, 0, 0, 1], port, to.port())
        } else {
            format!("PROXY TCP4 127.0.0.5 127.0.0.1 {port} {}\r\n", to.port()).into_bytes()
        };
        assert!(
            first.starts_with(&want),
            "{listener}: {:?} should start with {:?}",
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&want)
        );
        let rest = &first[want.len()..];
        assert!(
            rest.starts_with(b"GET /echo HTTP/1.1\r\n"),
            "then the request: {:?}",
            String::from_utf8_lossy(rest)
        );
    }
}

/// One HTTP response with a Content-Length body, head and body as text.
fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("response head");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body");
    format!("{head}{}", String::from_utf8_lossy(&body))
}

/// HAProxy 2.x with `config`, in the foreground; killed on drop.
struct Haproxy(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts HAProxy and waits until `port` (a frontend whose traffic the test does not count)
/// accepts.
fn haproxy(config: &str, port: u16) -> Haproxy {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(
        &path,
        format!(
            "global\n  maxconn 1000\ndefaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{config}"
        ),
    )
    .expect("config");
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haproxy is needed for this test (make deps installs it)");
    let h = Haproxy(child, dir);
    wait_until(Duration::from_secs(10), "haproxy listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    h
}

#[test]
fn haproxy_send_proxy_v2_into_switchyard() {
    let be = demo("be");
    let (cap, got) = capture_backend();
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
accept_proxy = true
trusted_proxies = ["127.0.0.1"]
[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "cap"
accept_proxy = true
[[clusters]]
name = "app"
backends = ["{}"]
[[clusters]]
name = "cap"
backends = ["{cap}"]
send_proxy = "v1"
"#,
        be.addr("demo-backend")
    ));
    let (f1, f2) = (free_port(), free_port());
    let _h = haproxy(
        &format!(
            "frontend web\n  mode tcp\n  bind 127.0.0.1:{f1}\n  default_backend sy\n\
             backend sy\n  mode tcp\n  server s {} send-proxy-v2\n\
             frontend tcp\n  mode tcp\n  bind 127.0.0.1:{f2}\n  default_backend sytcp\n\
             backend sytcp\n  mode tcp\n  server s {} send-proxy-v2\n",
            p.addr("web"),
            p.addr("tcp")
        ),
        f1,
    );
    let front: SocketAddr = format!("127.0.0.1:{f1}").parse().expect("addr");
    for from in ["127.0.0.5", "127.0.0.6"] {
        let out = exchange(connect_from(from, front), GET_ECHO);
        assert_eq!(forwarded_for(&out), from, "{out}");
    }
    // Through the TCP listener, and on with our own v1 header: the client HAProxy saw.
    let front: SocketAddr = format!("127.0.0.1:{f2}").parse().expect("addr");
    let s = connect_from("127.0.0.5", front);
    let port = s.local_addr().expect("local").port();
    let out = exchange(s, GET_ECHO);
    assert!(out.ends_with("ok"), "{out}");
    let first = got.recv_timeout(Duration::from_secs(5)).expect("captured");
    let want = format!("PROXY TCP4 127.0.0.5 127.0.0.1 {port} {f2}\r\n");
    assert!(
        first.starts_with(want.as_bytes()),
        "{:?} should start with {want:?}",
        String::from_utf8_lossy(&first)
    );
    assert_eq!(p.tcp("proxy_header_errors"), 0);
}

#[test]
fn switchyard_send_proxy_into_haproxy_accept_proxy() {
    let be = demo("be");
    let (h1, h2) = (free_port(), free_port());
    let _h = haproxy(
        &format!(
            "frontend v1\n  mode http\n  option forwardfor\n  bind 127.0.0.1:{h1} accept-proxy\n  default_backend demo\n\
             frontend v2\n  mode http\n  option forwardfor\n  bind 127.0.0.1:{h2} accept-proxy\n  default_backend demo\n\
             backend demo\n  mode http\n  server d {}\n",
            be.addr("demo-backend")
        ),
        h2,
    );
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "http-v1"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "v1"
[[listeners]]
name = "tcp-v2"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "v2"
[[clusters]]
name = "v1"
backends = ["127.0.0.1:{h1}"]
send_proxy = "v1"
[[clusters]]
name = "v2"
backends = ["127.0.0.1:{h2}"]
send_proxy = "v2"
"#
    ));
    // HTTP: we add X-Forwarded-For ourselves; HAProxy adds the client the header named (127.0.0.1
    // without it).
    // Keep-alive upstream connections are reused only for the client they were opened for.
    for from in ["127.0.0.5", "127.0.0.6", "127.0.0.5"] {
        let mut s = connect_from(from, p.addr("http-v1"));
        for _ in 0..2 {
            s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let out = read_response(&mut s);
            assert_eq!(forwarded_for(&out), format!("{from}, {from}"), "{out}");
        }
    }
    // TCP: only HAProxy adds the header, from the PROXY v2 header we sent.
    let out = exchange(connect_from("127.0.0.6", p.addr("tcp-v2")), GET_ECHO);
    assert_eq!(forwarded_for(&out), "127.0.0.6", "{out}");
}
