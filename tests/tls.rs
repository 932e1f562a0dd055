//! TLS termination and origination against real clients and servers: `curl`,
//! `openssl s_client`, Python's `ssl`, `wrk`, and Switchyard's own TLS listener as a TLS
//! backend. Certificates are made at test time (ECDSA P-256, `openssl`).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use util::tls::{curl, python, s_client, Certs};
use util::*;

fn demo(id: &str) -> Proxy {
    Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", id],
        &["demo-backend"],
    )
}

/// An http listener `web` with certificates a (default) and b, in front of `backend`.
fn tls_proxy(c: &Certs, backend: std::net::SocketAddr, extra_tls: &str, server: &str) -> Proxy {
    let server = if server.is_empty() {
        "workers = 1"
    } else {
        server
    };
    Proxy::start(&format!(
        r#"
[server]
{server}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[listeners.tls]
certificates = [{{ cert = "{a}", key = "{ak}" }}, {{ cert = "{b}", key = "{bk}" }}]
{extra_tls}
[[clusters]]
name = "app"
backends = ["{backend}"]
"#,
        a = c.p("a.pem"),
        ak = c.p("a.key"),
        b = c.p("b.pem"),
        bk = c.p("b.key"),
    ))
}

fn admin_get(p: &Proxy, path: &str) -> String {
    let mut s = TcpStream::connect(p.addr("admin")).expect("admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The serial number of the certificate `addr` serves for `sni` to a new connection
/// (`openssl s_client`).
fn served_serial(c: &Certs, addr: std::net::SocketAddr, sni: &str) -> String {
    let out = s_client(addr, &["-servername", sni, "-showcerts"], b"");
    let start = out
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from {addr}: {out}"));
    let end = start
        + out[start..]
            .find("-----END CERTIFICATE-----")
            .expect("its end")
        + 25;
    let file = format!("served-{}.pem", addr.port());
    std::fs::write(c.path(&file), &out[start..end]).expect("served");
    c.serial(&file)
}

fn subject(text: &str) -> String {
    text.lines()
        .find(|l| l.trim_start().starts_with("subject=") || l.contains("subject:"))
        .unwrap_or("")
        .to_string()
}

#[test]
fn sni_default_certificate_alpn_and_both_versions() {
    let c = Certs::new();
    let be = demo("be");
    let p = tls_proxy(&c, be.addr("demo-backend"), "", "");
    let web = p.addr("web");
    let ca = c.p("ca.pem");

    // curl: SNI picks each certificate (exact and wildcard), verified against the CA.
    for (host, cn) in [
        ("a.example", "CN=a.example"),
        ("b.example", "CN=b.example"),
        ("x.b.example", "CN=b.example"),
        ("y.a.example", "CN=a.example"),
    ] {
        let (ok, out) = curl(web, host, "/echo", &["-v", "--cacert", &ca]);
        assert!(ok, "{host}: {out}");
        assert!(out.contains(cn), "{host} should get {cn}: {out}");
        assert!(out.contains("ALPN: server accepted http/1.1"), "{out}");
        assert!(
            out.contains(r#"["X-Forwarded-Proto","https"]"#),
            "the backend hears it was https: {out}"
        );
    }
    // No SNI, or a name no certificate has: the first certificate.
    for args in [
        &["-noservername"][..],
        &["-servername", "nothing.example"][..],
    ] {
        let out = s_client(web, args, b"");
        assert!(subject(&out).contains("CN = a.example"), "{args:?}: {out}");
    }
    // TLS 1.2 and 1.3, ALPN http/1.1, and a request over each.
    for (v, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(
            web,
            &[
                v,
                "-alpn",
                "http/1.1",
                "-servername",
                "b.example",
                "-CAfile",
                &ca,
            ],
            b"GET / HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        );
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!("New, {name}")),
            "{name}: {out}"
        );
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{name}: {out}");
    }
    // TLS 1.1 is refused.
    let out = s_client(web, &["-tls1_1"], b"");
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    wait_until(Duration::from_secs(5), "handshakes counted", || {
        p.tcp("tls_handshakes") >= 8
    });
}

#[test]
fn resumption_with_python_ssl_for_tls12_and_tls13() {
    let c = Certs::new();
    let be = demo("be");
    let p = tls_proxy(&c, be.addr("demo-backend"), "", "");
    let program = r#"
import socket, ssl, sys
port, ca, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx.minimum_version = v
ctx.maximum_version = v
ctx.set_alpn_protocols(["http/1.1"])
session = None
for i in range(3):
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.example", session=session) as s:
            version, alpn = s.version(), s.selected_alpn_protocol()
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK"), data
            print(i, version, alpn, s.session_reused)
            session = s.session
"#;
    for v in ["1.2", "1.3"] {
        let (ok, out) = python(
            program,
            &[&p.addr("web").port().to_string(), &c.p("ca.pem"), v],
        );
        assert!(ok, "{out}");
        let want = format!("TLSv{v} http/1.1");
        assert!(out.contains(&format!("0 {want} False")), "{out}");
        assert!(out.contains(&format!("1 {want} True")), "resumed: {out}");
        assert!(
            out.contains(&format!("2 {want} True")),
            "resumed again: {out}"
        );
    }
    wait_until(Duration::from_secs(5), "resumptions counted", || {
        p.tcp("tls_resumed") >= 4
    });
}

#[test]
fn client_certificates_accepted_and_refused() {
    let c = Certs::new();
    let be = demo("be");
    let p = tls_proxy(
        &c,
        be.addr("demo-backend"),
        &format!("client_ca = \"{}\"", c.p("client_ca.pem")),
        "",
    );
    let web = p.addr("web");
    let ca = c.p("ca.pem");
    let (ok, out) = curl(
        web,
        "a.example",
        "/",
        &[
            "--cacert",
            &ca,
            "--cert",
            &c.p("client.pem"),
            "--key",
            &c.p("client.key"),
        ],
    );
    assert!(
        ok && out.contains("be"),
        "a trusted client certificate: {out}"
    );
    let (ok, out) = curl(web, "a.example", "/", &["--cacert", &ca]);
    assert!(!ok, "no client certificate must be refused: {out}");
    let (ok, out) = curl(
        web,
        "a.example",
        "/",
        &[
            "--cacert",
            &ca,
            "--cert",
            &c.p("stranger.pem"),
            "--key",
            &c.p("stranger.key"),
        ],
    );
    assert!(!ok, "a certificate of another CA must be refused: {out}");
    wait_until(Duration::from_secs(5), "refusals counted", || {
        p.tcp("tls_handshake_failures") >= 2
    });
}

#[test]
fn tcp_and_foo_listeners_terminate_tls_and_bulk_flows_stay_intact() {
    let c = Certs::new();
    let http_be = demo("be");
    let foo_be = Proxy::start_args(
        &[
            "demo-backend",
            "--listen",
            "127.0.0.1:0",
            "--protocol",
            "foo",
        ],
        &["demo-backend"],
    );
    let tls = format!(
        "[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
        c.p("a.pem"),
        c.p("a.key")
    );
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "http"
{tls}
[[listeners]]
name = "foo"
bind = "127.0.0.1:0"
protocol = "foo"
cluster = "foo"
{tls}
[[clusters]]
name = "http"
backends = ["{}"]
[[clusters]]
name = "foo"
backends = ["{}"]
"#,
        http_be.addr("demo-backend"),
        foo_be.addr("demo-backend")
    ));
    // 8 MiB up and the echo back: many records each way, with back-pressure.
    let body = payload(7, 8 * MIB);
    let file = c.path("body.bin");
    std::fs::write(&file, &body).expect("body");
    let (ok, out) = curl(
        p.addr("raw"),
        "a.example",
        "/echo",
        &[
            "--cacert",
            &c.p("ca.pem"),
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("\"body_len\":{}", body.len())),
        "{}",
        &out[..out.len().min(400)]
    );
    let out = s_client(
        p.addr("foo"),
        &["-quiet", "-servername", "a.example"],
        b"REQ 1 hello\nREQ 2 world\n",
    );
    assert!(
        out.contains("ACK 1 hello") && out.contains("ACK 2 world"),
        "{out}"
    );
    let stats = p.stats();
    assert!(
        tcp_of(&stats, "splice_starts") == 0,
        "TLS is never spliced: {stats}"
    );
}

#[test]
fn upstream_tls_verifies_pools_and_presents_a_client_certificate() {
    let c = Certs::new();
    let be = demo("be");
    // The TLS backend: a Switchyard listener that wants client certificates.
    let back = tls_proxy(
        &c,
        be.addr("demo-backend"),
        &format!("client_ca = \"{}\"", c.p("client_ca.pem")),
        "",
    );
    let front = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "good"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "tls"
[[listeners]]
name = "wrong-ca"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "wrong"
[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "tls"
[[clusters]]
name = "tls"
backends = ["{back}"]
[clusters.tls]
ca = "{ca}"
server_name = "b.example"
cert = "{cc}"
key = "{ck}"
[[clusters]]
name = "wrong"
backends = ["{back}"]
[clusters.tls]
ca = "{other}"
server_name = "b.example"
cert = "{cc}"
key = "{ck}"
"#,
        back = back.addr("web"),
        ca = c.p("ca.pem"),
        other = c.p("other_ca.pem"),
        cc = c.p("client.pem"),
        ck = c.p("client.key"),
    ));
    // Keep-alive requests through one client connection: one upstream TLS connection, reused.
    let mut s = TcpStream::connect(front.addr("good")).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    for i in 0..20 {
        write!(s, "GET /echo?i={i} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("length");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("body");
        assert!(String::from_utf8_lossy(&body).contains(&format!("/echo?i={i}")));
    }
    let stats = front.stats();
    assert!(
        http_of(&stats, "upstream_reused") >= 19,
        "pooled upstream TLS connections are reused: {stats}"
    );
    // TCP through TLS upstream.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}/", front.addr("raw")))
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("be"),
        "{out:?}"
    );
    // A backend certificate that does not verify: 502, and a failed handshake.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg(format!("http://{}/", front.addr("wrong-ca")))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502");
    assert!(tcp_of(&front.stats(), "tls_handshake_failures") >= 1);
}

#[test]
fn garbage_stalls_and_huge_client_hellos_are_closed_and_counted() {
    let c = Certs::new();
    let be = demo("be");
    let p = tls_proxy(
        &c,
        be.addr("demo-backend"),
        "handshake_timeout = \"1s\"",
        "",
    );
    let web = p.addr("web");
    // Plain HTTP on the TLS port.
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP"), "no plaintext answer");
    // Random bytes.
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let _ = s.write_all(&payload(3, 3000));
    let _ = s.read_to_end(&mut Vec::new());
    // A stalled handshake: half a ClientHello, then silence: closed after the timeout.
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(8))).ok();
    s.write_all(hello).expect("write");
    let n = s.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "closed after the 1s handshake timeout, not {took:?}"
    );
    // A huge ClientHello: a 1 MiB handshake message in 16 KiB records.
    let mut s = TcpStream::connect(web).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.set_write_timeout(Some(IO_TIMEOUT)).ok();
    let mut first = vec![0x01, 0x10, 0x00, 0x00]; // ClientHello, length 1 MiB
    first.extend_from_slice(&[0x03, 0x03]);
    let mut sent = 0usize;
    let mut refused = false;
    while sent < 1 << 20 {
        let mut rec = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        let mut body = if sent == 0 { first.clone() } else { Vec::new() };
        body.resize(0x4000, 0x41);
        rec.extend_from_slice(&body);
        if s.write_all(&rec).is_err() {
            refused = true;
            break;
        }
        sent += body.len();
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(refused || !rest.windows(4).any(|w| w == b"HTTP"), "refused");
    wait_until(
        Duration::from_secs(5),
        "failures and the timeout counted",
        || p.tcp("tls_handshake_failures") >= 3 && p.tcp("tls_handshake_timeouts") >= 1,
    );
    // A TCP listener connects upstream only once the handshake is done: garbage and a stalled
    // handshake never reach the backend; a real client does.
    let echo = Backend::echo();
    let raw = Proxy::start(&format!(
        r#"
[server]
workers = 1
[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
handshake_timeout = "500ms"
[[clusters]]
name = "echo"
backends = ["{}"]
"#,
        c.p("a.pem"),
        c.p("a.key"),
        echo.addr
    ));
    let mut s = TcpStream::connect(raw.addr("raw")).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let _ = s.read_to_end(&mut Vec::new());
    let mut s = TcpStream::connect(raw.addr("raw")).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let _ = s.write_all(hello);
    let _ = s.read_to_end(&mut Vec::new());
    assert_eq!(
        echo.accepted(),
        0,
        "no backend connection for a client that never shook hands"
    );
    let out = s_client(
        raw.addr("raw"),
        &["-quiet", "-servername", "a.example"],
        b"ping\n",
    );
    assert!(out.contains("ping"), "{out}");
    assert_eq!(echo.accepted(), 1);
    // The listener still serves.
    let (ok, out) = curl(web, "a.example", "/", &["--cacert", &c.p("ca.pem")]);
    assert!(ok && out.contains("be"), "{out}");
}

#[test]
fn missing_or_mismatched_files_exit_64_naming_the_file() {
    let c = Certs::new();
    let cases = [
        (
            c.p("missing.pem"),
            c.p("a.key"),
            "missing.pem",
            "cannot read",
        ),
        (c.p("a.pem"), c.p("b.key"), "b.key", "does not match"),
        (c.p("a.key"), c.p("a.key"), "a.key", "no certificate"),
        (c.p("a.pem"), c.p("a.pem"), "a.pem", "private key"),
    ];
    for (cert, key, file, what) in cases {
        let config = format!(
            r#"
[server]
admin = "off"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]
[[clusters]]
name = "app"
backends = ["127.0.0.1:9"]
"#
        );
        let path = c.path("bad.toml");
        std::fs::write(&path, &config).expect("config");
        for cmd in [&["check", "-c"][..], &["run", "-c"][..]] {
            let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            args.push(path.display().to_string());
            let f = run_to_exit(&args, c.dir.path(), Duration::from_secs(20));
            assert_eq!(f.status.code(), Some(64), "{args:?}: {}", f.stderr);
            assert!(
                f.stderr.contains("error: listeners[0].tls.certificates[0]")
                    && f.stderr.contains(file)
                    && f.stderr.contains(what),
                "{args:?} must name {file} ({what}): {}",
                f.stderr
            );
        }
    }
}

#[test]
fn reload_under_wrk_load_swaps_certificates_without_errors() {
    let c = Certs::new();
    let be = demo("be");
    let p = tls_proxy(&c, be.addr("demo-backend"), "", "workers = 2");
    let web = p.addr("web");
    let old_serial = c.serial("a.pem");
    let old_expiry = c.not_after("a.pem");
    let metrics = admin_get(&p, "/metrics");
    assert!(
        metrics.contains(&format!(
            "switchyard_tls_cert_expiry_seconds{{listener=\"web\",file=\"{}\",names=\"a.example,*.a.example,127.0.0.1\"}} {old_expiry}",
            c.p("a.pem")
        )),
        "{metrics}"
    );
    let stats = admin_get(&p, "/stats");
    assert!(
        stats.contains(&format!("\"not_after\":{old_expiry}")),
        "{stats}"
    );
    // Certificates expiring within 14 days are logged: a renewed one that lasts 5 days.
    let wrk = std::thread::spawn(move || {
        std::process::Command::new("wrk")
            .args(["-t2", "-c16", "-d4s", &format!("https://{web}/")])
            .output()
            .expect("wrk is needed for this test (make deps installs it)")
    });
    std::thread::sleep(Duration::from_millis(800));
    c.leaf(
        "a",
        "ca",
        "a.example",
        "DNS:a.example,DNS:*.a.example,IP:127.0.0.1",
        5,
    );
    p.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(5), "certificates reloaded", || {
        p.stderr_text().contains("certificates reloaded")
    });
    // A key that cannot be used: the reload is refused, the running certificates stay.
    let key = std::fs::read(c.path("a.key")).expect("key");
    std::fs::write(c.path("a.key"), b"garbage\n").expect("garbage");
    p.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the refused reload is logged",
        || {
            p.stderr_text()
                .contains(&format!("{}: no usable private key", c.p("a.key")))
        },
    );
    std::fs::write(c.path("a.key"), key).expect("restore");
    let out = wrk.join().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(text.contains("requests in"), "{text}");
    // New connections get the renewed certificate, and its expiry is shown and logged.
    let new_serial = c.serial("a.pem");
    assert_ne!(old_serial, new_serial);
    assert_eq!(
        served_serial(&c, web, "a.example"),
        new_serial,
        "the renewed certificate is served"
    );
    let new_expiry = c.not_after("a.pem");
    let metrics = admin_get(&p, "/metrics");
    assert!(metrics.contains(&format!("}} {new_expiry}\n")), "{metrics}");
    assert!(
        p.stderr_text().contains("expires in 4 days")
            || p.stderr_text().contains("expires in 5 days"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn close_delimited_responses_arrive_whole_and_end_with_close_notify() {
    let c = Certs::new();
    // A backend answering with a close-delimited 2 MiB body.
    let body = payload(11, 2 * MIB);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(&body);
            });
        }
    });
    let p = tls_proxy(&c, addr, "", "");
    let program = r#"
import socket, ssl, sys, zlib
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname="a.example", suppress_ragged_eofs=False) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: " + sys.argv[3].encode() + b"\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)  # raises SSLEOFError on a FIN without close_notify
            if not chunk:
                break
            data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode(), len(body))
"#;
    // The backend ends the body by closing; or the client asks to close after the response.
    for connection in ["keep-alive", "close"] {
        let (ok, out) = python(
            program,
            &[
                &p.addr("web").port().to_string(),
                &c.p("ca.pem"),
                connection,
            ],
        );
        assert!(ok, "{connection}: {out}");
        assert!(
            out.contains(&format!("HTTP/1.1 200 OK {}", 2 * MIB)),
            "{out}"
        );
    }
}

/// Certificates reload through the admin API too (`POST /v1/reload`, and any operator
/// change), not only on SIGHUP. A missing or unreadable file refuses the whole reload with
/// an error naming it: the running certificates keep serving, and nothing else in the same
/// reload (a renewed certificate of another listener, a new listener) is applied.
#[test]
fn admin_api_reload_picks_up_certificates_and_bad_files_change_nothing() {
    use util::client::call;
    let c = Certs::new();
    let be = demo("be");
    let p = Proxy::start(&format!(
        r#"
[server]
workers = 2
[[listeners]]
name = "one"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[listeners.tls]
certificates = [{{ cert = "{a}", key = "{ak}" }}]
[[listeners]]
name = "two"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"
[listeners.tls]
certificates = [{{ cert = "{b}", key = "{bk}" }}]
[[clusters]]
name = "app"
backends = ["{be}"]
"#,
        a = c.p("a.pem"),
        ak = c.p("a.key"),
        b = c.p("b.pem"),
        bk = c.p("b.key"),
        be = be.addr("demo-backend"),
    ));
    let (one, two, admin) = (p.addr("one"), p.addr("two"), p.addr("admin"));
    let ca = c.p("ca.pem");
    let renew = |name: &str| {
        c.leaf(
            name,
            "ca",
            &format!("{name}.example"),
            &format!("DNS:{name}.example,DNS:*.{name}.example,IP:127.0.0.1"),
            30,
        );
        c.serial(&format!("{name}.pem"))
    };
    let both_serve = |a: &str, b: &str, when: &str| {
        assert_eq!(served_serial(&c, one, "a.example"), a, "one, {when}");
        assert_eq!(served_serial(&c, two, "b.example"), b, "two, {when}");
        for (addr, host) in [(one, "a.example"), (two, "b.example")] {
            let (ok, out) = curl(addr, host, "/", &["--cacert", &ca]);
            assert!(ok && out.contains("be"), "{host}, {when}: {out}");
        }
    };
    let (a1, b1) = (c.serial("a.pem"), c.serial("b.pem"));
    both_serve(&a1, &b1, "at start");

    // A renewed certificate, then POST /v1/reload.
    let a2 = renew("a");
    assert_ne!(a1, a2);
    let r = call(admin, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    both_serve(&a2, &b1, "after POST /v1/reload");
    // Any operator change reads the files again as well.
    let b2 = renew("b");
    let r = call(
        admin,
        "PUT",
        "/v1/listeners/side",
        Some(r#"{"bind":"127.0.0.1:0","protocol":"http","cluster":"app"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    both_serve(&a2, &b2, "after an API change");
    let version = call(admin, "GET", "/v1/config", None).etag();

    // One reload brings a renewed `a`, a new listener, and a `b.key` that is missing or
    // unreadable (a directory: root reads any file, whatever its mode).
    let a3 = renew("a");
    let path = p.config_path.clone().unwrap();
    let file = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{file}\n[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\ncluster = \"app\"\n"
        ),
    )
    .unwrap();
    let b_key = c.path("b.key");
    let key = std::fs::read(&b_key).unwrap();
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Breakage<'_>> = vec![
        (
            "missing",
            Box::new(|| std::fs::remove_file(&b_key).unwrap()),
            "No such file",
        ),
        (
            "unreadable",
            Box::new(|| std::fs::create_dir(&b_key).unwrap()),
            "Is a directory",
        ),
    ];
    for (what, breakage, reason) in &cases {
        breakage();
        let r = call(admin, "POST", "/v1/reload", None);
        let text = r.text();
        assert_eq!(r.status, 422, "{what}: {text}");
        assert!(
            text.contains(&format!(
                "listeners[1].tls.certificates[0].key: {}: cannot read",
                c.p("b.key")
            )) && text.contains(reason),
            "{what}: {text}"
        );
        // Nothing of it applied: the running certificates (not the renewed `a`), no new
        // listener, the same config version.
        both_serve(&a2, &b2, what);
        assert_eq!(call(admin, "GET", "/v1/listeners/extra", None).status, 404);
        assert_eq!(call(admin, "GET", "/v1/config", None).etag(), version);
        // SIGHUP: the same refusal, logged.
        p.signal(nix::sys::signal::Signal::SIGHUP);
        wait_until(
            Duration::from_secs(10),
            "the refused reload is logged",
            || {
                p.stderr_text().lines().any(|l| {
                    l.contains("SIGHUP: reload rejected")
                        && l.contains(&c.p("b.key"))
                        && l.contains(reason)
                })
            },
        );
        both_serve(&a2, &b2, what);
        if b_key.is_dir() {
            std::fs::remove_dir(&b_key).unwrap();
        }
    }

    // Restored: the whole reload goes through.
    std::fs::write(&b_key, key).unwrap();
    let r = call(admin, "POST", "/v1/reload", None);
    assert_eq!(r.status, 200, "{}", r.text());
    both_serve(&a3, &b2, "after the files are back");
    assert_eq!(call(admin, "GET", "/v1/listeners/extra", None).status, 200);
    assert_ne!(call(admin, "GET", "/v1/config", None).etag(), version);
}
