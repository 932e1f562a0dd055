//! Certificate selection by SNI: exact names first, then a wildcard one level up
//! (`*.example.com` serves `a.example.com`, not `example.com` nor `a.b.example.com`), then the
//! listener's first certificate. The names come from the certificates themselves.
//!
//! Runs once per handshake: two hash lookups, no allocation.

use super::CertInfo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `example.com` for a certificate of `*.example.com`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// `keys[i]` is the certificate described by `infos[i]`; the first is the default. When
    /// two certificates claim a name, the earlier one wins.
    pub fn new(keys: Vec<Arc<CertifiedKey>>, infos: &[CertInfo]) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, info) in infos.iter().enumerate() {
            for n in &info.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            keys,
            exact,
            wildcard,
        }
    }

    /// The index of the certificate for `name`.
    pub fn pick(&self, name: Option<&str>) -> usize {
        let Some(name) = name else { return 0 };
        let mut low = [0u8; 253];
        if name.len() > low.len() {
            return 0;
        }
        let low = &mut low[..name.len()];
        low.copy_from_slice(name.as_bytes());
        low.make_ascii_lowercase();
        let Ok(name) = std::str::from_utf8(low) else {
            return 0;
        };
        let name = name.trim_end_matches('.');
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                return i;
            }
        }
        0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.pick(hello.server_name())).cloned()
    }
}
