//! Fuzz targets for every parser that sees untrusted bytes. Each target is a plain function
//! `fn(&[u8])` that must never panic, hang or allocate without bound, whatever the input; it
//! also checks properties (split invariance, a second reading of the same bytes) and panics
//! when one fails, so AFL records it as a crash.
//!
//! `src/bin/<target>.rs` wraps each in `afl::fuzz!` (built with `cargo afl build --features
//! afl`) or, without the feature, replays the files named on the command line: the corpus
//! check CI runs. Adding a target: a function here, one line in [`TARGETS`], a two-line bin
//! (copy one), a seed corpus under `corpus/<target>/` (README.md).

pub mod framing;

use arbitrary::{Arbitrary, Unstructured};
use switchyard::http::chunked::{ChunkError, Chunked, MAX_CHUNK_SIZE};
use switchyard::http::head::{self, Limits, Method};

/// Every target, by name (the bin, corpus and `make fuzz` names).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("foo_sniffer", foo_sniffer),
    ("config", config),
    ("admin_api", admin_api),
    ("framing_diff", framing::differential),
    ("framing_structured", framing::structured),
    ("proxy_header", proxy_header),
    ("compat_api", compat_api),
];

/// Small limits so the fuzzer reaches them: a head over 2 KiB, 16 headers, a 512-byte target.
pub const FUZZ_LIMITS: Limits = Limits {
    max_head_bytes: 2048,
    max_headers: 16,
    max_uri_bytes: 512,
};

fn in_bounds(r: &std::ops::Range<usize>, len: usize) -> bool {
    r.start <= r.end && r.end <= len
}

/// HTTP request heads: `parse_request`, then everything the proxy does with an accepted head
/// (header walk, path/query split, the upstream rewrite).
pub fn request_head(data: &[u8]) {
    let Ok(Some(h)) = head::parse_request(data, &FUZZ_LIMITS) else {
        return;
    };
    assert!(h.head_len <= data.len() && h.head_len <= FUZZ_LIMITS.max_head_bytes);
    assert!(in_bounds(&h.target, h.head_len), "{h:?}");
    assert!(in_bounds(&h.method_range, h.head_len));
    if let Some(r) = &h.host {
        assert!(in_bounds(r, h.head_len));
    }
    assert!(h.target.len() <= FUZZ_LIMITS.max_uri_bytes);
    let _ = h.path(data);
    let _ = h.query(data);
    head::for_each_header(data, h.head_len, |n, _| assert!(!n.is_empty()));
    // The rewrite into a buffer that may be too small: an Overflow error, never a panic.
    let fwd = switchyard::http::rewrite::Forwarded {
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        client_text: if data.len() % 2 == 0 {
            b""
        } else {
            b"127.0.0.1"
        },
        proto: "http",
        strip_prefix: data.first().map_or(0, |&b| usize::from(b % 8)),
        request_id: b"0123456789abcdef",
    };
    for cap in [64usize, 4096] {
        let mut out = vec![0u8; cap];
        if let Ok(n) = switchyard::http::rewrite::write_request_head(data, &h, &fwd, &mut out) {
            assert!(n <= cap);
            // What we send upstream must itself be a valid request with the same framing.
            let again = head::parse_request(&out[..n], &Limits::default());
            match again {
                Ok(Some(h2)) => assert_eq!(h2.body, h.body, "rewritten framing differs"),
                other => panic!(
                    "rewritten head does not parse: {other:?}\n{:?}",
                    String::from_utf8_lossy(&out[..n])
                ),
            }
        }
    }
}

/// HTTP response heads, for each request method that changes their framing.
pub fn response_head(data: &[u8]) {
    for m in [Method::Get, Method::Head, Method::Connect] {
        if let Ok(Some(h)) = head::parse_response(data, m, &FUZZ_LIMITS) {
            assert!(h.head_len <= data.len());
            assert!(in_bounds(&h.reason, h.head_len));
            assert!((100..=599).contains(&h.status));
            head::for_each_header(data, h.head_len, |_, _| {});
        }
    }
}

/// Chunked bodies, request or response direction (the proxy uses one validator for both):
/// the outcome must not depend on how the bytes are split across reads, and every accepted
/// chunk size fits [`MAX_CHUNK_SIZE`].
pub fn chunked(data: &[u8]) {
    let Some((&split_seed, body)) = data.split_first() else {
        return;
    };
    let whole = feed(body, &[]);
    let cut = if body.is_empty() {
        0
    } else {
        usize::from(split_seed) % body.len()
    };
    let one_byte: Vec<usize> = (1..body.len().min(64)).collect();
    for cuts in [vec![cut], one_byte] {
        let split = feed(body, &cuts);
        assert_eq!(whole, split, "split at {cuts:?} changes the outcome");
    }
}

/// Feeds `body` cut at `cuts`; returns (consumed, done) or the error.
fn feed(body: &[u8], cuts: &[usize]) -> Result<(usize, bool), ChunkError> {
    let mut c = Chunked::new(256);
    let mut at = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&x| x <= body.len()).collect();
    bounds.push(body.len());
    for end in bounds {
        if end < at {
            continue;
        }
        let p = c.advance(&body[at..end])?;
        assert!(p.consumed <= end - at);
        assert!(c.data_remaining_hint() <= MAX_CHUNK_SIZE);
        at += p.consumed;
        if p.done {
            return Ok((at, true));
        }
        assert_eq!(at, end, "consumed less without finishing");
    }
    Ok((at, false))
}

/// The Foo line sniffer: any bytes, any split, the same counts.
pub fn foo_sniffer(data: &[u8]) {
    use switchyard::proto::foo::LineSniffer;
    let mut whole = LineSniffer::default();
    whole.feed(data);
    let mut bytes = LineSniffer::default();
    for b in data.chunks(1) {
        bytes.feed(b);
    }
    let (a, b) = (whole.counts, bytes.counts);
    assert_eq!(
        (a.req, a.ack, a.nak, a.invalid),
        (b.req, b.ack, b.nak, b.invalid)
    );
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    let seen = u64::from(a.req) + u64::from(a.ack) + u64::from(a.nak) + u64::from(a.invalid);
    assert!(seen <= lines + 1);
}

/// The config loader: TOML text → validated config, every error with a path. A config that
/// loads must load again, the same, from its own document (what the admin API and the state
/// files do).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match switchyard::config::parse_str(text) {
        Ok(cfg) => {
            let table = switchyard::config::parse_toml(text).expect("parsed once");
            let again = switchyard::config::parse_table(table).expect("loads again");
            assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
        }
        Err(errs) => assert!(!errs.is_empty()),
    }
}

/// An admin API request, built from the input (method, path, headers, JSON-ish body).
#[derive(Debug, Arbitrary)]
struct AdminInput {
    method: u8,
    path: AdminPath,
    headers: Vec<(u8, String)>,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum AdminPath {
    /// Anything at all.
    Raw(String),
    /// `/v1/{kind}/{name}[/backends[/{addr}]]`, the shape that reaches the control plane.
    Object {
        kind: bool,
        name: String,
        backends: bool,
        addr: Option<String>,
    },
}

const METHODS: &[&str] = &["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS"];
const HEADERS: &[&str] = &["If-Match", "Authorization", "Content-Type", "X-Other"];

/// A control plane over a fixed config (one TCP listener, two clusters), no workers, no
/// state_dir: every change runs the real validate → build → swap path.
fn admin_shared() -> switchyard::admin::Shared {
    use std::sync::Arc;
    use switchyard::control::{self, Control, Running};
    let base = "[server]\nadmin = \"off\"\n\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\
                cluster = \"app\"\n\n[[clusters]]\nname = \"app\"\nbackends = [\"127.0.0.1:9001\", \
                { addr = \"127.0.0.1:9002\", weight = 3 }]\n\n[[clusters]]\nname = \"spare\"\n\
                backends = [\"127.0.0.1:9003\"]\n";
    let table = switchyard::config::parse_toml(base).expect("base config");
    let boot = control::boot(table).expect("base config is valid");
    let snap = Arc::new(arc_swap::ArcSwap::from_pointee(
        switchyard::snapshot::Snapshot::build(&boot.config, 1, None),
    ));
    // The base listener counts as bound already, so a change does not bind it.
    let bind = "127.0.0.1:1".parse().expect("addr");
    let running = [(
        "l".to_string(),
        Running {
            slot: 0,
            bind,
            local: bind,
        },
    )]
    .into_iter()
    .collect();
    let control = Arc::new(Control::new(
        boot,
        running,
        std::collections::HashMap::new(),
        snap,
        Vec::new(),
        None,
    ));
    switchyard::admin::Shared::new(
        control,
        None,
        switchyard::admin::AdminSettings {
            token: Some("t0ken".into()),
            read_only: false,
            max_body: 1 << 20,
            discovery: None,
            extensions: Vec::new(),
        },
    )
}

/// The admin API's paths and JSON bodies, through `api::handle` (no socket).
pub fn admin_api(data: &[u8]) {
    let Ok(input) = AdminInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let method = METHODS[usize::from(input.method) % METHODS.len()];
    let path = match &input.path {
        AdminPath::Raw(p) => p.clone(),
        AdminPath::Object {
            kind,
            name,
            backends,
            addr,
        } => {
            let mut p = format!(
                "/v1/{}/{name}",
                if *kind { "clusters" } else { "listeners" }
            );
            if *backends {
                p.push_str("/backends");
                if let Some(a) = addr {
                    p.push('/');
                    p.push_str(a);
                }
            }
            p
        }
    };
    // A new listener would bind a port on every input: not what this target is about (the
    // config target covers listener validation).
    if method == "PUT" && path.contains("listeners") {
        return;
    }
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| {
            (
                HEADERS[usize::from(*n) % HEADERS.len()].to_string(),
                v.clone(),
            )
        })
        .collect();
    // Most inputs carry the right token, so the change paths get exercised.
    if !headers.iter().any(|(n, _)| n == "Authorization") {
        headers.push(("Authorization".into(), "Bearer t0ken".into()));
    }
    let req = switchyard::admin::Request {
        method: method.to_string(),
        path,
        headers,
        body: input.body,
        peer: "127.0.0.1:40000".parse().expect("addr"),
    };
    let shared = admin_shared();
    let resp = switchyard::admin::api::handle(&shared, &req);
    assert!((200..600).contains(&resp.status));
    if resp.status >= 400 {
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).expect("error bodies are JSON");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    assert_ne!(resp.status, 500, "no persistence here: a 500 is a bug");
}

/// The PROXY protocol header (`proto::proxy_protocol::parse`), v1 and v2: a complete header
/// lies within the input, every prefix of it is `Partial`, and a header with addresses
/// written back by our writer parses to the same addresses.
pub fn proxy_header(data: &[u8]) {
    use switchyard::proto::proxy_protocol::{parse, write, Parsed};
    const MAX: usize = 536;
    let Ok(Parsed::Complete(h)) = parse(data, MAX) else {
        return;
    };
    assert!(h.len > 0 && h.len <= data.len() && h.len <= MAX, "{h:?}");
    for cut in [h.len - 1, h.len / 2] {
        if cut > 0 {
            assert!(
                matches!(parse(&data[..cut], MAX), Ok(Parsed::Partial)),
                "a prefix of a valid header is partial ({cut} of {})",
                h.len
            );
        }
    }
    let mut out = [0u8; 600];
    let n = write(h.version, h.addrs, &mut out);
    if n > 0 {
        match parse(&out[..n], MAX) {
            // The writer sends an IPv4-mapped IPv6 address as the IPv4 address it is (on
            // purpose): compare canonical forms.
            Ok(Parsed::Complete(again)) => {
                type Pair = Option<(std::net::SocketAddr, std::net::SocketAddr)>;
                let canon = |a: Pair| {
                    a.map(|(s, d)| {
                        let c = |x: std::net::SocketAddr| {
                            std::net::SocketAddr::new(x.ip().to_canonical(), x.port())
                        };
                        (c(s), c(d))
                    })
                };
                assert_eq!((canon(again.addrs), again.len), (canon(h.addrs), n));
            }
            other => panic!("our own header does not parse: {other:?}"),
        }
    }
}

/// The compatibility APIs' JSON bodies on the admin address, through `api::handle` (no
/// socket): LBaaS (`/lbaas`, `/LB/...`), toxiproxy (`/proxies`, `/populate`, toxics) and the
/// chaos broker (`/broker`), plus `/v1/faults`, and the DSU cluster payload and config.json
/// parsers. The first byte picks the path, the second the
/// method; the rest is the body. Never a 500 (no persistence here), error bodies are JSON.
pub fn compat_api(data: &[u8]) {
    const PATHS: &[&str] = &[
        "/lbaas",
        "/LB/project/",
        "/LB/instance/",
        "/proxies",
        "/populate",
        "/proxies/p1",
        "/proxies/p1/toxics",
        "/proxies/p1/toxics/t1",
        "/reset",
        "/broker",
        "/broker/delete/percentage",
        "/v1/faults",
        // Not admin paths: the DSU compatibility parsers (the original's cluster payload on
        // its REST API, and its config.json for quick mode).
        "dsu:cluster",
        "dsu:config",
    ];
    const METHODS: &[&str] = &["POST", "GET", "PATCH", "DELETE", "PUT"];
    let [p, m, body @ ..] = data else {
        return;
    };
    let path = PATHS[usize::from(*p) % PATHS.len()];
    let method = METHODS[usize::from(*m) % METHODS.len()];
    match path {
        "dsu:cluster" => {
            use switchyard::release::dsu;
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                if let Err(r) = dsu::parse_cluster(&v, None, &|_| false) {
                    assert!(matches!(r.status, 400 | 501), "{r:?}");
                    assert!(!r.message.is_empty());
                }
            }
            return;
        }
        "dsu:config" => {
            let text = String::from_utf8_lossy(body);
            if let Err(errs) = switchyard::release::dsu::quick(&text, "config.json", None) {
                assert!(!errs.is_empty(), "an error names what is wrong");
            }
            return;
        }
        _ => {}
    }
    let req = switchyard::admin::Request {
        method: method.to_string(),
        path: path.to_string(),
        headers: vec![
            ("Authorization".into(), "Bearer t0ken".into()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: body.to_vec(),
        peer: "127.0.0.1:40000".parse().expect("addr"),
    };
    let shared = admin_shared();
    let resp = switchyard::admin::api::handle(&shared, &req);
    assert!((200..600).contains(&resp.status), "{}", resp.status);
    assert_ne!(resp.status, 500, "{method} {path}: a 500 is a bug here");
}

/// Runs `target` over every file in `dir` (regression replay of a corpus).
pub fn replay_dir(target: fn(&[u8]), dir: &std::path::Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                target(&data);
                n += 1;
            }
        }
    }
    n
}

/// The body of every bin: under AFL (`--features afl`) the fuzz loop; otherwise each argument
/// (a file or a directory of files) is replayed through the target.
pub fn run(target: fn(&[u8])) {
    #[cfg(feature = "afl")]
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
    #[cfg(not(feature = "afl"))]
    for arg in std::env::args_os().skip(1) {
        let p = std::path::PathBuf::from(arg);
        if p.is_dir() {
            let n = replay_dir(target, &p);
            eprintln!("{}: {n} inputs ok", p.display());
        } else if let Ok(data) = std::fs::read(&p) {
            target(&data);
        }
    }
}
