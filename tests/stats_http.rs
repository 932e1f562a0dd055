//! Latency histograms end to end: HTTP requests through the proxy to a demo backend that
//! answers after a known delay (`?delay_ms=`); the percentiles in the SIGUSR2 dump fall within
//! the histogram's precision of it.
mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use util::*;

const DELAY_MS: f64 = 40.0;
/// 1% histogram precision, plus scheduling slack on a shared machine for the upper bounds.
const PRECISION: f64 = 0.01;

/// Sequential keep-alive GETs on one connection; checks every response is a 200.
fn get_many(addr: SocketAddr, n: usize, target: &str) -> Result<(), String> {
    let mut s = connect(addr);
    let mut buf = Vec::new();
    for i in 0..n {
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        // Head, then a Content-Length body.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).map_err(|e| format!("read {i}: {e}"))?;
            if k == 0 {
                return Err(format!("EOF before response {i}"));
            }
            buf.extend_from_slice(&chunk[..k]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(format!("response {i}: {head}"));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no content-length: {head}"))?;
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if k == 0 {
                return Err("EOF in body".into());
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        buf.drain(..head_end + len);
    }
    Ok(())
}

fn ms(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn latency_percentiles_match_the_injected_backend_delay() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 15;
    let backend = Proxy::start_args(
        &["demo-backend", "--listen", "127.0.0.1:0", "--id", "b1"],
        &["demo-backend"],
    );
    let baddr = backend.addr("demo-backend");
    let proxy = Proxy::start(&format!(
        "[server]\nworkers = 2\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"http\"\ncluster = \"app\"\n\n[[clusters]]\nname = \"app\"\nbackends = [\"{baddr}\"]\n"
    ));
    let addr = proxy.addr("web");
    let target = format!("/?delay_ms={DELAY_MS}");
    let hs: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let t = target.clone();
            spawn_small("http-client", move || get_many(addr, PER_CLIENT, &t))
        })
        .collect();
    for h in hs {
        join_timeout(h, Duration::from_secs(30), "http-client").expect("client");
    }
    let n = (CLIENTS * PER_CLIENT) as u64;
    let st = proxy.stats();
    let app = &st["clusters"]["app"];
    let lat = &app["latency_ms"]["request"];
    assert_eq!(lat["count"].as_u64(), Some(n), "{st}");
    let low = DELAY_MS * (1.0 - PRECISION);
    for k in ["p50", "p90", "p99", "p99_9", "max"] {
        let v = ms(lat, k);
        assert!(
            v >= low,
            "request {k} = {v} ms, below the {DELAY_MS} ms delay: {lat}"
        );
    }
    // The median is the delay within the histogram's precision plus a little proxying time.
    let p50 = ms(lat, "p50");
    assert!(
        p50 <= DELAY_MS * (1.0 + PRECISION) + 8.0,
        "request p50 = {p50} ms for a {DELAY_MS} ms backend: {lat}"
    );
    let ttfb = &app["latency_ms"]["ttfb"];
    assert_eq!(ttfb["count"].as_u64(), Some(n), "{st}");
    let t50 = ms(ttfb, "p50");
    assert!(
        t50 >= low && t50 <= DELAY_MS * (1.0 + PRECISION) + 8.0,
        "ttfb p50 = {t50}: {ttfb}"
    );
    assert!(
        ms(ttfb, "p50") <= p50 + 0.5,
        "ttfb after the response end? {st}"
    );
    // Connections were reused (keep-alive): a few connects, fast ones.
    let conn = &app["latency_ms"]["connect"];
    let connects = u64_at(conn, "/count");
    assert!((1..=n).contains(&connects), "{conn}");
    assert!(ms(conn, "p50") < DELAY_MS, "{conn}");
    // The process-wide histograms hold the same requests.
    assert_eq!(
        st["latency_ms"]["request"]["count"].as_u64(),
        Some(n),
        "{st}"
    );
    // Counters per listener, cluster and backend.
    let b = &app["backends"][baddr.to_string()];
    for (obj, what) in [
        (&st["listeners"]["web"], "listener"),
        (app, "cluster"),
        (b, "backend"),
    ] {
        assert_eq!(obj["requests"].as_u64(), Some(n), "{what}: {st}");
        assert_eq!(obj["responses_2xx"].as_u64(), Some(n), "{what}: {st}");
    }
    assert_eq!(b["state"], "up");
    assert_eq!(
        st["listeners"]["web"]["connections"].as_u64(),
        Some(CLIENTS as u64),
        "{st}"
    );
}
