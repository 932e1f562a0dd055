//! TLS material, built by the control plane: PEM files loaded into rustls configurations for
//! listeners (certificates chosen by SNI, client-certificate verification, resumption) and
//! for clusters (CA verification, SNI, a client certificate), and the facts about each
//! certificate that `/stats` and `/metrics` show (names, expiry).
//!
//! Nothing here runs per connection except [`SniResolver::resolve`] (once per handshake). The
//! data plane's side is [`crate::transport::tls`].
//!
//! Files are read at start-up, by `switchyard check`, and again at every reload, so a reload
//! picks up renewed certificates. A file that cannot be used fails the start-up (exit 64) or
//! the reload (the running certificates stay), naming the file.

mod sni;

pub use sni::SniResolver;

use crate::config::tls::{CertPair, ClusterTls, ListenerTls};
use crate::config::{Config, ConfigError, Protocol};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Certificates expiring within this long are logged at every load.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What one certificate is for and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The certificate file.
    pub file: PathBuf,
    /// DNS names it serves (subject alternative names, else the common name).
    pub names: Vec<String>,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// A listener's TLS: what the data plane's server connections are made from.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certs: Vec<CertInfo>,
    pub handshake_timeout: Duration,
    /// Hash of the files' bytes: a reload that reads the same bytes changes nothing.
    fingerprint: u64,
    settings: ListenerTls,
    /// Carried across reloads so resumption keeps working.
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.certs)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// A cluster's TLS: what upstream client connections are made from.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// SNI (and the name verified) for every backend; `None`: each backend's own host.
    pub server_name: Option<ServerName<'static>>,
    pub certs: Vec<CertInfo>,
    fingerprint: u64,
    settings: ClusterTls,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The name a connection to `backend` (`host:port` as written) presents and verifies.
    pub fn name_for(&self, backend: &str) -> Option<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Some(n.clone());
        }
        let host = match backend.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => backend,
        };
        ServerName::try_from(host.to_string()).ok()
    }
}

/// Every listener's and cluster's loaded TLS, by name.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub listeners: HashMap<String, Arc<ServerTls>>,
    pub clusters: HashMap<String, Arc<ClientTls>>,
}

impl Store {
    /// Loads what `cfg` names. `prev`: what runs now; a listener keeps its ticket keys and
    /// session cache across loads. `reread`: read every file again (a reload); otherwise an
    /// unchanged setting keeps what `prev` loaded.
    pub fn load(
        cfg: &Config,
        prev: Option<&Store>,
        reread: bool,
    ) -> Result<Store, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut out = Store::default();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let Some(t) = &l.tls else { continue };
            let old = prev.and_then(|p| p.listeners.get(&l.name));
            if let Some(o) = old.filter(|o| !reread && o.settings == *t) {
                out.listeners.insert(l.name.clone(), o.clone());
                continue;
            }
            let alpn = l.protocol == Protocol::Http;
            match load_server(&format!("listeners[{i}].tls"), t, alpn, old.map(|o| &**o)) {
                Ok(s) => {
                    let s = match old {
                        // The same bytes: keep the running config (and its state).
                        Some(o) if o.fingerprint == s.fingerprint && o.settings == *t => o.clone(),
                        _ => Arc::new(s),
                    };
                    out.listeners.insert(l.name.clone(), s);
                }
                Err(e) => errs.extend(e),
            }
        }
        for (i, c) in cfg.clusters.iter().enumerate() {
            let Some(t) = &c.tls else { continue };
            let old = prev.and_then(|p| p.clusters.get(&c.name));
            if let Some(o) = old.filter(|o| !reread && o.settings == *t) {
                out.clusters.insert(c.name.clone(), o.clone());
                continue;
            }
            match load_client(&format!("clusters[{i}].tls"), t) {
                Ok(s) => {
                    let s = match old {
                        Some(o) if o.fingerprint == s.fingerprint && o.settings == *t => o.clone(),
                        _ => Arc::new(s),
                    };
                    out.clusters.insert(c.name.clone(), s);
                }
                Err(e) => errs.extend(e),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        out.warn_expiring();
        Ok(out)
    }

    /// The same material as `other` (same objects, or the same bytes read).
    pub fn same_as(&self, other: &Store) -> bool {
        let l = self.listeners.len() == other.listeners.len()
            && self
                .listeners
                .iter()
                .all(|(k, v)| other.listeners.get(k).is_some_and(|o| Arc::ptr_eq(o, v)));
        let c = self.clusters.len() == other.clusters.len()
            && self
                .clusters
                .iter()
                .all(|(k, v)| other.clusters.get(k).is_some_and(|o| Arc::ptr_eq(o, v)));
        l && c
    }

    fn warn_expiring(&self) {
        let now = crate::snapshot::unix_ms() as i64 / 1000;
        let owners = self
            .listeners
            .iter()
            .map(|(n, s)| ("listener", n, &s.certs))
            .chain(self.clusters.iter().map(|(n, c)| ("cluster", n, &c.certs)));
        for (kind, name, certs) in owners {
            for c in certs {
                let left = c.not_after - now;
                if left <= 0 {
                    log::warn!(
                        "{kind} {name}: certificate {} ({}) has expired",
                        c.file.display(),
                        c.names.join(", ")
                    );
                } else if left < EXPIRY_WARNING.as_secs() as i64 {
                    log::warn!(
                        "{kind} {name}: certificate {} ({}) expires in {} days",
                        c.file.display(),
                        c.names.join(", "),
                        left / 86400
                    );
                }
            }
        }
    }
}

/// The crypto provider (ring), shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    static P: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn err(path: &str, message: String) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message,
    }
}

fn read(path: &str, file: &Path, h: &mut impl Hasher) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(file)
        .map_err(|e| err(path, format!("{}: cannot read: {e}", file.display())))?;
    bytes.hash(h);
    Ok(bytes)
}

/// A certificate chain from a PEM file (the end-entity certificate first).
fn read_chain(
    path: &str,
    file: &Path,
    h: &mut impl Hasher,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(path, file, h)?;
    let mut chain = Vec::new();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        match c {
            Ok(c) => chain.push(c),
            Err(e) => {
                return Err(err(
                    path,
                    format!("{}: not a PEM certificate file: {e}", file.display()),
                ))
            }
        }
    }
    if chain.is_empty() {
        return Err(err(
            path,
            format!(
                "{}: no certificate in the file (expected PEM \"CERTIFICATE\" blocks)",
                file.display()
            ),
        ));
    }
    Ok(chain)
}

fn read_key(
    path: &str,
    file: &Path,
    h: &mut impl Hasher,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read(path, file, h)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        err(
            path,
            format!("{}: no usable private key in the file: {e}", file.display()),
        )
    })
}

/// A certificate and its key, checked to belong together.
fn certified_key(
    path: &str,
    pair: &CertPair,
    h: &mut impl Hasher,
) -> Result<(CertifiedKey, CertInfo), ConfigError> {
    let chain = read_chain(&format!("{path}.cert"), &pair.cert, h)?;
    let key = read_key(&format!("{path}.key"), &pair.key, h)?;
    let info = cert_info(&pair.cert, &chain[0]).map_err(|m| {
        err(
            &format!("{path}.cert"),
            format!("{}: {m}", pair.cert.display()),
        )
    })?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        let m = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{}: the private key does not match the certificate in {}",
                pair.key.display(),
                pair.cert.display()
            ),
            other => format!("{}: unusable private key: {other}", pair.key.display()),
        };
        err(&format!("{path}.key"), m)
    })?;
    Ok((ck, info))
}

/// Names and expiry of an end-entity certificate.
pub fn cert_info(file: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        // No subject alternative names: the common name, as older clients read it.
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        file: file.to_path_buf(),
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn roots(
    path: &str,
    file: &Path,
    h: &mut impl Hasher,
) -> Result<rustls::RootCertStore, ConfigError> {
    let chain = read_chain(path, file, h)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in chain {
        roots.add(c).map_err(|e| {
            err(
                path,
                format!("{}: unusable CA certificate: {e}", file.display()),
            )
        })?;
    }
    Ok(roots)
}

fn load_server(
    path: &str,
    t: &ListenerTls,
    alpn_http: bool,
    prev: Option<&ServerTls>,
) -> Result<ServerTls, Vec<ConfigError>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut errs = Vec::new();
    let mut keys = Vec::new();
    let mut certs = Vec::new();
    for (i, pair) in t.certificates.iter().enumerate() {
        match certified_key(&format!("{path}.certificates[{i}]"), pair, &mut h) {
            Ok((k, info)) => {
                keys.push(Arc::new(k));
                certs.push(info);
            }
            Err(e) => errs.push(e),
        }
    }
    let verifier = match &t.client_ca {
        None => None,
        Some(ca) => {
            let p = format!("{path}.client_ca");
            match roots(&p, ca, &mut h).and_then(|r| {
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(r), provider())
                    .build()
                    .map_err(|e| err(&p, format!("{}: {e}", ca.display())))
            }) {
                Ok(v) => Some(v),
                Err(e) => {
                    errs.push(e);
                    None
                }
            }
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let resolver = SniResolver::new(keys, &certs);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| vec![err(path, format!("TLS versions: {e}"))])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    if alpn_http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    // Resumption: stateless tickets (TLS 1.2 and 1.3) and a session-id cache (TLS 1.2
    // clients without tickets), both carried across reloads.
    let ticketer = match prev {
        Some(p) => p.ticketer.clone(),
        None => rustls::crypto::ring::Ticketer::new()
            .map_err(|e| vec![err(path, format!("session tickets: {e}"))])?,
    };
    let sessions: Arc<dyn rustls::server::StoresServerSessions> = match prev {
        Some(p) => p.sessions.clone(),
        None => rustls::server::ServerSessionMemoryCache::new(
            crate::config::tls::defaults::SESSION_CACHE,
        ),
    };
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(ServerTls {
        config: Arc::new(config),
        certs,
        handshake_timeout: t.handshake_timeout,
        fingerprint: h.finish(),
        settings: t.clone(),
        ticketer,
        sessions,
    })
}

fn load_client(path: &str, t: &ClusterTls) -> Result<ClientTls, Vec<ConfigError>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| vec![err(path, format!("TLS versions: {e}"))])?;
    let builder = match (&t.ca, t.verify) {
        (Some(ca), true) => builder
            .with_root_certificates(roots(&format!("{path}.ca"), ca, &mut h).map_err(|e| vec![e])?),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
    };
    let mut certs = Vec::new();
    let config = match &t.client_cert {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let (ck, info) = certified_key(path, pair, &mut h).map_err(|e| vec![e])?;
            certs.push(info);
            builder
                .with_client_auth_cert(
                    ck.cert,
                    read_key(&format!("{path}.key"), &pair.key, &mut h).map_err(|e| vec![e])?,
                )
                .map_err(|e| {
                    vec![err(
                        &format!("{path}.key"),
                        format!("{}: {e}", pair.key.display()),
                    )]
                })?
        }
    };
    let server_name = t
        .server_name
        .as_ref()
        .and_then(|n| ServerName::try_from(n.clone()).ok());
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
        certs,
        fingerprint: h.finish(),
        settings: t.clone(),
    })
}

/// `verify = false`: any backend certificate is accepted (the handshake signatures are still
/// checked, so the peer holds the key of the certificate it showed).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
