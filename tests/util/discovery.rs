//! Helpers of the discovery tests: a provider's `/v1/discovery` entry, and how a run of
//! requests spreads over backends.

use super::client::{call, Client};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The `/v1/discovery` entry of provider `name`.
pub fn provider(admin: SocketAddr, name: &str) -> Value {
    let v = call(admin, "GET", "/v1/discovery", None).json();
    v["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no provider {name} in {v}"))
}

/// `n` keep-alive GETs of `path`: answers by body (200), `"<status> <body>"` or
/// `"error <e>"`.
pub fn spread(addr: SocketAddr, path: &str, n: usize) -> HashMap<String, usize> {
    let mut c = Client::new(addr);
    let mut out = HashMap::new();
    for _ in 0..n {
        let key = match c.request("GET", path, &[], None) {
            Ok(r) if r.status == 200 => r.text().trim().to_string(),
            Ok(r) => format!("{} {}", r.status, r.text().trim()),
            Err(e) => {
                c = Client::new(addr);
                format!("error {e}")
            }
        };
        *out.entry(key).or_default() += 1;
    }
    out
}
