//! Rollback hooks: a program (`hook_exec`, the event JSON on its stdin and in
//! `SWITCHYARD_EVENT`) or a webhook (`hook_url`, the event JSON POSTed), each bounded by
//! `hook_timeout`. Their outcome is logged; a failing hook changes nothing.

use super::api::Event;
use crate::config::services::Hook;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs one hook to completion (or its timeout). Blocking: call from a thread of its own.
pub fn run(h: &Hook, e: &Event, timeout: Duration) {
    let body = serde_json::to_string(e).unwrap_or_default();
    let what = format!("{} {} {}", e.event, e.service, e.version);
    let result = match h {
        Hook::Exec(argv) => exec(argv, e, &body, timeout),
        Hook::Url(url) => post(url, &body, timeout),
    };
    match result {
        Ok(detail) => log::info!("release: hook for {what}: {detail}"),
        Err(detail) => log::error!("release: hook for {what} failed: {detail}"),
    }
}

fn exec(argv: &[String], e: &Event, body: &str, timeout: Duration) -> Result<String, String> {
    let (prog, args) = argv.split_first().ok_or("no program")?;
    let mut child = Command::new(prog)
        .args(args)
        .env("SWITCHYARD_EVENT", body)
        .env("SWITCHYARD_SERVICE", &e.service)
        .env("SWITCHYARD_VERSION", &e.version)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run {prog}: {err}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(body.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(format!("{prog} exited 0")),
            Ok(Some(st)) => return Err(format!("{prog} {st}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{prog} still running after {timeout:?}: killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => return Err(format!("waiting for {prog}: {err}")),
        }
    }
}

/// POSTs `body` to `http://host:port/path`; a 2xx answer is success.
fn post(url: &str, body: &str, timeout: Duration) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|err| format!("{authority}: {err}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to nothing"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|err| format!("{addr}: {err}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nUser-Agent: switchyard\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|err| format!("{url}: {err}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(err) => return Err(format!("{url}: {err}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    if (200..300).contains(&status) {
        Ok(format!("{url} answered {status}"))
    } else {
        Err(format!("{url} answered {status}"))
    }
}
