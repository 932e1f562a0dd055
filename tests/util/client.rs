//! A small blocking HTTP/1.1 client for tests: keep-alive, Content-Length bodies (the admin
//! API and demo-backend always send one), headers kept as written.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
    /// The `error.code` of an API error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn etag(&self) -> String {
        self.header("etag").unwrap_or("").to_string()
    }
}

pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    pending: Vec<u8>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: None,
            pending: Vec::new(),
        }
    }

    /// Sends one request on the kept-alive connection (reconnecting once if it was closed).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> io::Result<Resp> {
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) if self.stream.is_none() => self.try_request(method, path, headers, body),
            Err(e) => Err(e),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> io::Result<Resp> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.pending.clear();
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        let result = self.exchange(req.as_bytes());
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, req: &[u8]) -> io::Result<Resp> {
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no stream"))?;
        s.write_all(req)?;
        let mut buf = [0u8; 16384];
        let head_end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response",
                ));
            }
            self.pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        self.pending.drain(..head_end);
        while self.pending.len() < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed mid-body",
                ));
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
        let body: Vec<u8> = self.pending.drain(..len).collect();
        let close = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        if close {
            self.stream = None;
        }
        if status == 100 {
            // Interim: the real answer follows.
            return self.exchange(&[]);
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection; panics on transport errors.
pub fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    call_h(addr, method, path, &[], body)
}

pub fn call_h(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    Client::new(addr)
        .request(method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}
