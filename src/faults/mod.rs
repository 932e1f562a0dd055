//! Fault injection, the control-plane side: the model of L4 toxics (toxiproxy's names,
//! attributes and units), L7 faults, the chaos broker's weights and toxiproxy proxies; their
//! validation (every bad input is a 400 with the reason, and nothing is half-applied); and
//! what the workers read: a live [`ToxicCell`] per listener and an [`L7Table`] in the
//! snapshot.
//!
//! Faults are runtime state, never persisted: a restart clears them (see README, "Fault
//! injection"). Every change goes through [`crate::control::Control::apply_faults`]: the
//! whole new fault state is validated against the running config, proxies are bound, and one
//! snapshot is published.
//!
//! Where they act: L4 toxics in the transport seam ([`crate::transport::toxics`]), on every
//! engine; L7 faults in the HTTP session ([`crate::session::http`], `fault.rs`). Both cost one
//! check of an `Option` per connection or request when no fault is set.

pub mod api;

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::control::ApiError;

/// Toxics per listener (both streams), so per-connection state stays small and fixed.
pub const MAX_TOXICS: usize = 16;
/// Longest duration an attribute may ask for (30 days, as config durations).
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// Which way the data a toxic acts on flows (toxiproxy's `stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Client → backend.
    Upstream,
    /// Backend → client.
    Downstream,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// An L4 toxic's kind and attributes, in toxiproxy's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToxicKind {
    /// Each write waits `latency` ± `jitter` ms.
    Latency { latency: u64, jitter: u64 },
    /// At most `rate` KB/s (1 KB = 1000 bytes).
    Bandwidth { rate: u64 },
    /// Writes cut into slices of `average_size` ± `size_variation` bytes, `delay` µs apart.
    Slicer {
        average_size: u64,
        size_variation: u64,
        delay: u64,
    },
    /// The close (FIN) waits `delay` ms.
    SlowClose { delay: u64 },
    /// Nothing gets through; the connection closes after `timeout` ms (0: never).
    Timeout { timeout: u64 },
    /// At the first data, wait `timeout` ms, then reset the connection (RST).
    ResetPeer { timeout: u64 },
    /// Close the stream (FIN) after `bytes` bytes.
    LimitData { bytes: u64 },
}

impl ToxicKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    /// Index into the per-kind counters (`tcp.fault_*`).
    pub fn index(&self) -> usize {
        match self {
            ToxicKind::Latency { .. } => 0,
            ToxicKind::Bandwidth { .. } => 1,
            ToxicKind::Slicer { .. } => 2,
            ToxicKind::SlowClose { .. } => 3,
            ToxicKind::Timeout { .. } => 4,
            ToxicKind::ResetPeer { .. } => 5,
            ToxicKind::LimitData { .. } => 6,
        }
    }

    fn attributes(&self) -> Json {
        match *self {
            ToxicKind::Latency { latency, jitter } => json!({"latency": latency, "jitter": jitter}),
            ToxicKind::Bandwidth { rate } => json!({ "rate": rate }),
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => {
                json!({"average_size": average_size, "size_variation": size_variation, "delay": delay})
            }
            ToxicKind::SlowClose { delay } => json!({ "delay": delay }),
            ToxicKind::Timeout { timeout } => json!({ "timeout": timeout }),
            ToxicKind::ResetPeer { timeout } => json!({ "timeout": timeout }),
            ToxicKind::LimitData { bytes } => json!({ "bytes": bytes }),
        }
    }
}

/// One toxic as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    pub name: String,
    pub kind: ToxicKind,
    pub stream: Stream,
    /// Probability that the toxic applies to a connection (drawn once per connection).
    pub toxicity: f32,
}

impl Toxic {
    /// toxiproxy's JSON shape.
    pub fn to_json(&self) -> Json {
        json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.name(),
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        })
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, "bad_fault", msg)
}

fn as_object<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>, ApiError> {
    v.as_object()
        .ok_or_else(|| bad(format!("{what} must be a JSON object")))
}

/// A non-negative whole number attribute (toxiproxy's are integers).
fn whole(v: &Json, key: &str, max: u64) -> Result<u64, ApiError> {
    if let Some(n) = v.as_u64() {
        if n > max {
            return Err(bad(format!("{key}: {n} is too large (at most {max})")));
        }
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f < 0.0 => Err(bad(format!("{key}: {f} is negative"))),
        // 100.0 from a client that writes every number as a float.
        Some(f) if f.fract() == 0.0 && f <= max as f64 => Ok(f as u64),
        Some(f) => Err(bad(format!("{key}: {f} must be a whole number"))),
        None => Err(bad(format!("{key}: expected a number, got {v}"))),
    }
}

fn probability(v: &Json, key: &str) -> Result<f64, ApiError> {
    match v.as_f64() {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Some(p) => Err(bad(format!("{key}: {p} is outside 0–1"))),
        None => Err(bad(format!(
            "{key}: expected a number between 0 and 1, got {v}"
        ))),
    }
}

/// Parses a toxic's `type` and `attributes` (missing attributes are 0, as in toxiproxy;
/// `base` gives the values an update starts from).
fn toxic_kind(
    ty: &str,
    attrs: Option<&Json>,
    base: Option<ToxicKind>,
) -> Result<ToxicKind, ApiError> {
    let empty = Map::new();
    let a = match attrs {
        None | Some(Json::Null) => &empty,
        Some(v) => as_object(v, "attributes")?,
    };
    let known: &[&str] = match ty {
        "latency" => &["latency", "jitter"],
        "bandwidth" => &["rate"],
        "slicer" => &["average_size", "size_variation", "delay"],
        "slow_close" => &["delay"],
        "timeout" => &["timeout"],
        "reset_peer" => &["timeout"],
        "limit_data" => &["bytes"],
        other => {
            return Err(bad(format!(
                "invalid toxic type {other:?} (latency, bandwidth, slicer, slow_close, timeout, \
                 reset_peer, limit_data)"
            )))
        }
    };
    if let Some(k) = a.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(format!(
            "attributes.{k}: unknown attribute of a {ty} toxic (known: {})",
            known.join(", ")
        )));
    }
    let base_attrs = base.map(|b| b.attributes());
    let get = |k: &str, max: u64| -> Result<u64, ApiError> {
        match a.get(k) {
            Some(v) => whole(v, &format!("attributes.{k}"), max),
            None => Ok(base_attrs
                .as_ref()
                .and_then(|b| b.get(k))
                .and_then(Json::as_u64)
                .unwrap_or(0)),
        }
    };
    let kind = match ty {
        "latency" => ToxicKind::Latency {
            latency: get("latency", MAX_MS)?,
            jitter: get("jitter", MAX_MS)?,
        },
        "bandwidth" => ToxicKind::Bandwidth {
            rate: get("rate", u64::from(u32::MAX))?,
        },
        "slicer" => ToxicKind::Slicer {
            average_size: get("average_size", 1 << 30)?,
            size_variation: get("size_variation", 1 << 30)?,
            delay: get("delay", MAX_MS * 1000)?,
        },
        "slow_close" => ToxicKind::SlowClose {
            delay: get("delay", MAX_MS)?,
        },
        "timeout" => ToxicKind::Timeout {
            timeout: get("timeout", MAX_MS)?,
        },
        "reset_peer" => ToxicKind::ResetPeer {
            timeout: get("timeout", MAX_MS)?,
        },
        _ => ToxicKind::LimitData {
            bytes: get("bytes", u64::MAX >> 1)?,
        },
    };
    if let ToxicKind::Slicer {
        average_size,
        size_variation,
        ..
    } = kind
    {
        if size_variation > average_size {
            return Err(bad(format!(
                "attributes.size_variation: {size_variation} is larger than average_size \
                 {average_size}"
            )));
        }
    }
    Ok(kind)
}

/// A toxic from toxiproxy's JSON (`name` defaults to `<type>_<stream>`, `stream` to
/// downstream, `toxicity` to 1).
pub fn toxic_from_json(v: &Json) -> Result<Toxic, ApiError> {
    let o = as_object(v, "a toxic")?;
    if let Some(k) = o
        .keys()
        .find(|k| !["name", "type", "stream", "toxicity", "attributes"].contains(&k.as_str()))
    {
        return Err(bad(format!("{k}: unknown field of a toxic")));
    }
    let ty = match o.get("type") {
        Some(Json::String(s)) => s.as_str(),
        Some(other) => return Err(bad(format!("type: expected a string, got {other}"))),
        None => return Err(bad("type: missing (the toxic's type is required)")),
    };
    let stream = match o.get("stream").map(|s| s.as_str()) {
        None | Some(Some("downstream")) => Stream::Downstream,
        Some(Some("upstream")) => Stream::Upstream,
        Some(_) => {
            return Err(bad(
                "stream was invalid, can be either upstream or downstream",
            ))
        }
    };
    let toxicity = match o.get("toxicity") {
        None => 1.0,
        Some(v) => probability(v, "toxicity")? as f32,
    };
    let kind = toxic_kind(ty, o.get("attributes"), None)?;
    let name = match o.get("name") {
        None => format!("{ty}_{}", stream.name()),
        Some(Json::String(s)) if s.is_empty() => format!("{ty}_{}", stream.name()),
        Some(Json::String(s)) => s.clone(),
        Some(other) => return Err(bad(format!("name: expected a string, got {other}"))),
    };
    check_name(&name, "toxic name")?;
    Ok(Toxic {
        name,
        kind,
        stream,
        toxicity,
    })
}

/// A toxic update (toxiproxy's `POST/PATCH /proxies/{p}/toxics/{t}`): `attributes` and
/// `toxicity` change; what is not given stays.
pub fn toxic_update(old: &Toxic, v: &Json) -> Result<Toxic, ApiError> {
    let o = as_object(v, "a toxic update")?;
    let mut t = old.clone();
    if let Some(a) = o.get("attributes") {
        t.kind = toxic_kind(old.kind.type_name(), Some(a), Some(old.kind))?;
    }
    if let Some(p) = o.get("toxicity") {
        t.toxicity = probability(p, "toxicity")? as f32;
    }
    if let Some(s) = o.get("stream").and_then(Json::as_str) {
        if s != old.stream.name() {
            return Err(bad(
                "stream cannot be changed; delete the toxic and add it again",
            ));
        }
    }
    if let Some(ty) = o.get("type").and_then(Json::as_str) {
        if ty != old.kind.type_name() {
            return Err(bad(
                "type cannot be changed; delete the toxic and add it again",
            ));
        }
    }
    Ok(t)
}

fn check_name(name: &str, what: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} {name:?}: use 1–64 characters of [A-Za-z0-9._-]"
        )))
    }
}

// ------------------------------------------------------------------------------ L7 faults

/// What an L7 fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Kind {
    /// Answer `status` without forwarding; 0: reset the client connection instead.
    Abort { status: u16 },
    /// Hold the request `ms` before forwarding it, or (`answer`) hold the response.
    Delay { ms: u64, answer: bool },
    /// Never forward; close the client connection without an answer.
    Drop,
    /// Send the request to the backend twice; the client gets the first answer. Only
    /// idempotent methods unless `force`; never a request with a body.
    Duplicate { force: bool },
    /// Flip `bytes` bytes of the response body.
    Corrupt { bytes: u32 },
}

impl L7Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            L7Kind::Abort { .. } => "abort",
            L7Kind::Delay { .. } => "delay",
            L7Kind::Drop => "drop",
            L7Kind::Duplicate { .. } => "duplicate",
            L7Kind::Corrupt { .. } => "corrupt",
        }
    }

    /// The access log's `fault` value and the index of the `http.fault_*` counter.
    pub fn code(&self) -> FaultCode {
        match self {
            L7Kind::Abort { .. } => FaultCode::Abort,
            L7Kind::Delay { .. } => FaultCode::Delay,
            L7Kind::Drop => FaultCode::Drop,
            L7Kind::Duplicate { .. } => FaultCode::Duplicate,
            L7Kind::Corrupt { .. } => FaultCode::Corrupt,
        }
    }
}

/// An injected L7 fault, as the access log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultCode {
    #[default]
    None,
    Abort,
    Delay,
    Drop,
    Duplicate,
    Corrupt,
}

impl FaultCode {
    pub fn name(self) -> Option<&'static str> {
        match self {
            FaultCode::None => None,
            FaultCode::Abort => Some("abort"),
            FaultCode::Delay => Some("delay"),
            FaultCode::Drop => Some("drop"),
            FaultCode::Duplicate => Some("duplicate"),
            FaultCode::Corrupt => Some("corrupt"),
        }
    }
}

/// An L7 fault as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct L7Fault {
    pub name: String,
    pub kind: L7Kind,
    pub probability: f64,
    pub listener: Option<String>,
    /// Index of the route in its listener's `routes` (needs `listener`).
    pub route: Option<usize>,
    pub cluster: Option<String>,
}

impl L7Fault {
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(self.kind.type_name()));
        m.insert("probability".into(), json!(self.probability));
        if let Some(l) = &self.listener {
            m.insert("listener".into(), json!(l));
        }
        if let Some(r) = self.route {
            m.insert("route".into(), json!(r));
        }
        if let Some(c) = &self.cluster {
            m.insert("cluster".into(), json!(c));
        }
        match self.kind {
            L7Kind::Abort { status: 0 } => {
                m.insert("reset".into(), json!(true));
            }
            L7Kind::Abort { status } => {
                m.insert("status".into(), json!(status));
            }
            L7Kind::Delay { ms, answer } => {
                m.insert("ms".into(), json!(ms));
                m.insert(
                    "when".into(),
                    json!(if answer { "answer" } else { "forward" }),
                );
            }
            L7Kind::Drop => {}
            L7Kind::Duplicate { force } => {
                m.insert("force".into(), json!(force));
            }
            L7Kind::Corrupt { bytes } => {
                m.insert("bytes".into(), json!(bytes));
            }
        }
        Json::Object(m)
    }

    pub fn from_json(v: &Json) -> Result<L7Fault, ApiError> {
        let o = as_object(v, "an http fault")?;
        let ty = o
            .get("type")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("type: missing (abort, delay, drop, duplicate, corrupt)"))?;
        let allowed: &[&str] = match ty {
            "abort" => &["status", "reset"],
            "delay" => &["ms", "when"],
            "drop" => &[],
            "duplicate" => &["force"],
            "corrupt" => &["bytes"],
            other => {
                return Err(bad(format!(
                    "type: invalid fault type {other:?} (abort, delay, drop, duplicate, corrupt)"
                )))
            }
        };
        let common = [
            "name",
            "type",
            "probability",
            "listener",
            "route",
            "cluster",
        ];
        if let Some(k) = o
            .keys()
            .find(|k| !common.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
        {
            return Err(bad(format!("{k}: unknown field of a {ty} fault")));
        }
        let name = match o.get("name") {
            Some(Json::String(s)) => s.clone(),
            None => ty.to_string(),
            Some(other) => return Err(bad(format!("name: expected a string, got {other}"))),
        };
        check_name(&name, "fault name")?;
        let probability = match o.get("probability") {
            Some(p) => probability(p, "probability")?,
            None => 1.0,
        };
        let opt_str = |k: &str| -> Result<Option<String>, ApiError> {
            match o.get(k) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!("{k}: expected a name, got {other}"))),
            }
        };
        let listener = opt_str("listener")?;
        let cluster = opt_str("cluster")?;
        let route = match o.get("route") {
            None | Some(Json::Null) => None,
            Some(v) => Some(whole(v, "route", 4096)? as usize),
        };
        if route.is_some() && listener.is_none() {
            return Err(bad(
                "route: a route is named by its index in a listener; give listener too",
            ));
        }
        if listener.is_none() && cluster.is_none() {
            return Err(bad(
                "an http fault needs a listener (with an optional route) or a cluster",
            ));
        }
        let kind = match ty {
            "abort" => {
                let reset = match o.get("reset") {
                    None => false,
                    Some(Json::Bool(b)) => *b,
                    Some(other) => {
                        return Err(bad(format!("reset: expected true or false, got {other}")))
                    }
                };
                match (o.get("status"), reset) {
                    (Some(_), true) => return Err(bad("abort: give status or reset, not both")),
                    (None, true) => L7Kind::Abort { status: 0 },
                    (None, false) => L7Kind::Abort { status: 503 },
                    (Some(s), false) => {
                        let s = whole(s, "status", 999)?;
                        if !(200..=599).contains(&s) {
                            return Err(bad(format!(
                                "status: {s} is not a final status (200–599)"
                            )));
                        }
                        L7Kind::Abort { status: s as u16 }
                    }
                }
            }
            "delay" => {
                let ms = match o.get("ms") {
                    Some(v) => whole(v, "ms", MAX_MS)?,
                    None => return Err(bad("ms: missing (how long to delay, in milliseconds)")),
                };
                let answer = match o.get("when").map(|w| w.as_str()) {
                    None | Some(Some("forward")) => false,
                    Some(Some("answer")) => true,
                    Some(_) => return Err(bad("when: \"forward\" or \"answer\"")),
                };
                L7Kind::Delay { ms, answer }
            }
            "drop" => L7Kind::Drop,
            "duplicate" => L7Kind::Duplicate {
                force: match o.get("force") {
                    None => false,
                    Some(Json::Bool(b)) => *b,
                    Some(other) => {
                        return Err(bad(format!("force: expected true or false, got {other}")))
                    }
                },
            },
            _ => L7Kind::Corrupt {
                bytes: match o.get("bytes") {
                    None => 1,
                    Some(v) => {
                        let n = whole(v, "bytes", 1 << 20)?;
                        if n == 0 {
                            return Err(bad("bytes: at least 1"));
                        }
                        n as u32
                    }
                },
            },
        };
        Ok(L7Fault {
            name,
            kind,
            probability,
            listener,
            route,
            cluster,
        })
    }
}

// ------------------------------------------------------------------------------ the broker

/// The chaos broker's weights, in percent. `pNothing` is what the others leave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerWeights {
    pub duplicate: f64,
    pub delete: f64,
    pub salt: f64,
    pub slow: f64,
    /// How long `slow` holds a request.
    pub slow_ms: u64,
}

impl Default for BrokerWeights {
    fn default() -> Self {
        BrokerWeights {
            duplicate: 0.0,
            delete: 0.0,
            salt: 0.0,
            slow: 0.0,
            slow_ms: 5000,
        }
    }
}

impl BrokerWeights {
    pub fn active(&self) -> bool {
        self.duplicate + self.delete + self.salt + self.slow > 0.0
    }

    pub fn nothing(&self) -> f64 {
        (100.0 - (self.duplicate + self.delete + self.salt + self.slow)).max(0.0)
    }

    /// The original API's shape (plus `slowMs`, ours).
    pub fn to_json(&self) -> Json {
        // Whole percentages print as integers, as the original's did.
        let n = |f: f64| {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                json!(f as i64)
            } else {
                json!(f)
            }
        };
        json!({
            "pDuplicate": n(self.duplicate),
            "pDelete": n(self.delete),
            "pSalt": n(self.salt),
            "pSlow": n(self.slow),
            "pNothing": n(self.nothing()),
            "slowMs": self.slow_ms,
        })
    }

    /// Applies a PATCH body. The percentages after it (with `pNothing` if given) must add up
    /// to at most 100.
    pub fn patch(&self, v: &Json) -> Result<BrokerWeights, ApiError> {
        let o = as_object(v, "the broker's settings")?;
        let mut w = *self;
        let mut nothing = 0.0;
        for (k, v) in o {
            let pct = || -> Result<f64, ApiError> {
                match v.as_f64() {
                    Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
                    Some(p) => Err(bad(format!("{k}: {p} is not a percentage (0–100)"))),
                    None => Err(bad(format!("{k}: expected a number, got {v}"))),
                }
            };
            match k.as_str() {
                "pDuplicate" => w.duplicate = pct()?,
                "pDelete" => w.delete = pct()?,
                "pSalt" => w.salt = pct()?,
                "pSlow" => w.slow = pct()?,
                "pNothing" => nothing = pct()?,
                "slowMs" => w.slow_ms = whole(v, "slowMs", MAX_MS)?,
                other => {
                    return Err(bad(format!(
                        "{other}: unknown key (pDuplicate, pDelete, pSalt, pSlow, pNothing, \
                         slowMs)"
                    )))
                }
            }
        }
        let total = w.duplicate + w.delete + w.salt + w.slow + nothing;
        if total > 100.0 + 1e-9 {
            return Err(bad(format!(
                "the percentages add up to {total}, more than 100 (pDuplicate {} + pDelete {} + \
                 pSalt {} + pSlow {}{})",
                w.duplicate,
                w.delete,
                w.salt,
                w.slow,
                if nothing > 0.0 {
                    format!(" + pNothing {nothing}")
                } else {
                    String::new()
                }
            )));
        }
        Ok(w)
    }
}

// ------------------------------------------------------------------------------ the state

/// Per listener: up or down, and its toxics.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerFaults {
    pub enabled: bool,
    pub toxics: Vec<Toxic>,
}

impl Default for ListenerFaults {
    fn default() -> Self {
        ListenerFaults {
            enabled: true,
            toxics: Vec::new(),
        }
    }
}

/// A proxy made through the toxiproxy API: a TCP listener with a one-backend cluster, both
/// named after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub listen: String,
    pub upstream: String,
}

/// Everything fault injection holds (the API's document; not persisted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultState {
    /// By listener name (config listeners and proxies alike).
    pub listeners: BTreeMap<String, ListenerFaults>,
    pub http: Vec<L7Fault>,
    /// Listeners where `x-switchyard-fault` request headers are obeyed.
    pub header_faults: Vec<String>,
    /// The broker's weights for all HTTP listeners, and per listener where set.
    pub broker: BrokerWeights,
    pub broker_by_listener: BTreeMap<String, BrokerWeights>,
    pub proxies: BTreeMap<String, Proxy>,
}

impl FaultState {
    pub fn is_empty(&self) -> bool {
        self.listeners
            .values()
            .all(|l| l.enabled && l.toxics.is_empty())
            && self.http.is_empty()
            && self.header_faults.is_empty()
            && !self.broker.active()
            && self.broker_by_listener.values().all(|b| !b.active())
            && self.proxies.is_empty()
    }

    pub fn listener(&self, name: &str) -> ListenerFaults {
        self.listeners.get(name).cloned().unwrap_or_default()
    }

    /// `GET /v1/faults`.
    pub fn to_json(&self) -> Json {
        let listeners: Map<String, Json> = self
            .listeners
            .iter()
            .filter(|(_, l)| !l.enabled || !l.toxics.is_empty())
            .map(|(n, l)| {
                (
                    n.clone(),
                    json!({"enabled": l.enabled, "toxics": l.toxics.iter().map(Toxic::to_json).collect::<Vec<_>>()}),
                )
            })
            .collect();
        let by: Map<String, Json> = self
            .broker_by_listener
            .iter()
            .map(|(n, b)| (n.clone(), b.to_json()))
            .collect();
        let proxies: Map<String, Json> = self
            .proxies
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    json!({"listen": p.listen, "upstream": p.upstream}),
                )
            })
            .collect();
        json!({
            "listeners": listeners,
            "http": self.http.iter().map(L7Fault::to_json).collect::<Vec<_>>(),
            "header_faults": self.header_faults,
            "broker": self.broker.to_json(),
            "broker_listeners": by,
            "proxies": proxies,
        })
    }

    /// `PUT /v1/faults`: the whole state from its JSON (missing keys are empty).
    pub fn from_json(v: &Json) -> Result<FaultState, ApiError> {
        let o = as_object(v, "the fault document")?;
        let known = [
            "listeners",
            "http",
            "header_faults",
            "broker",
            "broker_listeners",
            "proxies",
            "version",
        ];
        if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(format!(
                "{k}: unknown key (known: {})",
                known.join(", ")
            )));
        }
        let mut s = FaultState::default();
        if let Some(l) = o.get("listeners") {
            for (name, lf) in as_object(l, "listeners")? {
                let lo = as_object(lf, &format!("listeners.{name}"))?;
                if let Some(k) = lo.keys().find(|k| *k != "enabled" && *k != "toxics") {
                    return Err(bad(format!(
                        "listeners.{name}.{k}: unknown key (enabled, toxics)"
                    )));
                }
                let enabled = match lo.get("enabled") {
                    None => true,
                    Some(Json::Bool(b)) => *b,
                    Some(other) => {
                        return Err(bad(format!(
                            "listeners.{name}.enabled: expected true or false, got {other}"
                        )))
                    }
                };
                let mut toxics = Vec::new();
                if let Some(t) = lo.get("toxics") {
                    let arr = t
                        .as_array()
                        .ok_or_else(|| bad(format!("listeners.{name}.toxics must be a list")))?;
                    for (i, t) in arr.iter().enumerate() {
                        toxics
                            .push(toxic_from_json(t).map_err(|e| {
                                prefix(e, &format!("listeners.{name}.toxics[{i}]"))
                            })?);
                    }
                }
                s.listeners
                    .insert(name.clone(), ListenerFaults { enabled, toxics });
            }
        }
        if let Some(h) = o.get("http") {
            let arr = h.as_array().ok_or_else(|| bad("http must be a list"))?;
            for (i, f) in arr.iter().enumerate() {
                s.http
                    .push(L7Fault::from_json(f).map_err(|e| prefix(e, &format!("http[{i}]")))?);
            }
        }
        if let Some(h) = o.get("header_faults") {
            let arr = h
                .as_array()
                .ok_or_else(|| bad("header_faults must be a list of listener names"))?;
            for n in arr {
                let n = n
                    .as_str()
                    .ok_or_else(|| bad("header_faults must be a list of listener names"))?;
                s.header_faults.push(n.to_string());
            }
        }
        if let Some(b) = o.get("broker") {
            s.broker = BrokerWeights::default()
                .patch(&strip_nothing(b))
                .map_err(|e| prefix(e, "broker"))?;
        }
        if let Some(b) = o.get("broker_listeners") {
            for (n, w) in as_object(b, "broker_listeners")? {
                let w = BrokerWeights::default()
                    .patch(&strip_nothing(w))
                    .map_err(|e| prefix(e, &format!("broker_listeners.{n}")))?;
                s.broker_by_listener.insert(n.clone(), w);
            }
        }
        if let Some(p) = o.get("proxies") {
            for (n, pv) in as_object(p, "proxies")? {
                let po = as_object(pv, &format!("proxies.{n}"))?;
                let get = |k: &str| {
                    po.get(k)
                        .and_then(Json::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("proxies.{n}.{k}: missing")))
                };
                s.proxies.insert(
                    n.clone(),
                    Proxy {
                        listen: get("listen")?,
                        upstream: get("upstream")?,
                    },
                );
            }
        }
        Ok(s)
    }

    /// The document the control plane validates and runs: the operator's, plus a listener
    /// and a cluster for each proxy, minus listeners that are down (so their port refuses
    /// connections).
    /// `pins`: listeners taken down earlier, with the address they had; one that comes back
    /// up binds the same port again when its `bind` asks for port 0.
    pub fn overlay_doc(
        &self,
        doc: &toml::Table,
        pins: &std::collections::HashMap<String, std::net::SocketAddr>,
    ) -> toml::Table {
        use crate::control::doc::{self as d, Kind};
        let mut out = doc.clone();
        for (name, addr) in pins {
            if !self.listener(name).enabled {
                continue;
            }
            let Some(toml::Value::Table(l)) = d::find(&out, Kind::Listener, name).cloned() else {
                continue;
            };
            let zero = l
                .get("bind")
                .and_then(toml::Value::as_str)
                .is_some_and(|b| b.ends_with(":0"));
            if zero {
                let mut l = l;
                l.insert("bind".into(), toml::Value::String(addr.to_string()));
                d::put(&mut out, Kind::Listener, name, toml::Value::Table(l));
            }
        }
        for (name, p) in &self.proxies {
            let mut l = toml::Table::new();
            l.insert("name".into(), toml::Value::String(name.clone()));
            l.insert("bind".into(), toml::Value::String(p.listen.clone()));
            l.insert("protocol".into(), toml::Value::String("tcp".into()));
            l.insert("cluster".into(), toml::Value::String(name.clone()));
            d::put(&mut out, Kind::Listener, name, toml::Value::Table(l));
            let mut c = toml::Table::new();
            c.insert("name".into(), toml::Value::String(name.clone()));
            c.insert(
                "backends".into(),
                toml::Value::Array(vec![toml::Value::String(p.upstream.clone())]),
            );
            // One attempt, as toxiproxy: a refused upstream closes the client at once.
            c.insert("connect_attempts".into(), toml::Value::Integer(1));
            d::put(&mut out, Kind::Cluster, name, toml::Value::Table(c));
        }
        for (name, l) in &self.listeners {
            if !l.enabled {
                d::remove(&mut out, Kind::Listener, name);
            }
        }
        out
    }

    /// After an operator's change (API, reload): faults naming listeners, routes or clusters
    /// that are gone are dropped, so the next fault change does not fail on them. (Listeners
    /// that are down are not in `cfg`; they stay.)
    pub fn prune(&mut self, cfg: &crate::config::Config, doc: &toml::Table) {
        use crate::control::doc::{self as d, Kind};
        let listener = |n: &str| cfg.listeners.iter().find(|l| l.name == n);
        let proxies = &self.proxies;
        self.listeners
            .retain(|n, _| proxies.contains_key(n) || d::find(doc, Kind::Listener, n).is_some());
        self.http.retain(|f| {
            let l_ok = f.listener.as_deref().is_none_or(|n| {
                listener(n).is_some_and(|l| f.route.is_none_or(|r| r < l.routes.len()))
            });
            let c_ok = f
                .cluster
                .as_deref()
                .is_none_or(|c| cfg.cluster(c).is_some());
            l_ok && c_ok
        });
        self.header_faults.retain(|n| listener(n).is_some());
        self.broker_by_listener.retain(|n, _| listener(n).is_some());
    }

    /// Checks the state against the config it will run with (listener, route and cluster
    /// names exist; toxic names unique per listener; limits).
    pub fn validate(&self, cfg: &crate::config::Config, doc: &toml::Table) -> Result<(), ApiError> {
        use crate::control::doc::{self as d, Kind};
        let listener_exists = |n: &str| {
            cfg.listeners.iter().any(|l| l.name == n) || d::find(doc, Kind::Listener, n).is_some()
        };
        for (name, l) in &self.listeners {
            if !listener_exists(name) && !self.proxies.contains_key(name) {
                return Err(ApiError::new(
                    404,
                    "not_found",
                    format!("no listener named {name:?}"),
                ));
            }
            if l.toxics.len() > MAX_TOXICS {
                return Err(bad(format!(
                    "listeners.{name}: {} toxics; at most {MAX_TOXICS} per listener",
                    l.toxics.len()
                )));
            }
            for (i, t) in l.toxics.iter().enumerate() {
                if l.toxics[..i].iter().any(|o| o.name == t.name) {
                    return Err(ApiError::new(
                        409,
                        "exists",
                        format!("listener {name:?} already has a toxic named {:?}", t.name),
                    ));
                }
            }
        }
        for (i, f) in self.http.iter().enumerate() {
            if self.http[..i].iter().any(|o| o.name == f.name) {
                return Err(ApiError::new(
                    409,
                    "exists",
                    format!("an http fault named {:?} exists", f.name),
                ));
            }
            if let Some(l) = &f.listener {
                let Some(lc) = cfg.listeners.iter().find(|x| &x.name == l) else {
                    return Err(bad(format!(
                        "http fault {:?}: no listener named {l:?}",
                        f.name
                    )));
                };
                if lc.protocol != crate::config::Protocol::Http {
                    return Err(bad(format!(
                        "http fault {:?}: listener {l:?} is not an http listener (use toxics)",
                        f.name
                    )));
                }
                if let Some(r) = f.route {
                    if r >= lc.routes.len() {
                        return Err(bad(format!(
                            "http fault {:?}: listener {l:?} has {} route(s); route {r} does not exist",
                            f.name,
                            lc.routes.len()
                        )));
                    }
                }
            }
            if let Some(c) = &f.cluster {
                if cfg.cluster(c).is_none() {
                    return Err(bad(format!(
                        "http fault {:?}: no cluster named {c:?}",
                        f.name
                    )));
                }
            }
        }
        for n in self
            .header_faults
            .iter()
            .chain(self.broker_by_listener.keys())
        {
            match cfg.listeners.iter().find(|l| &l.name == n) {
                Some(l) if l.protocol == crate::config::Protocol::Http => {}
                Some(_) => return Err(bad(format!("listener {n:?} is not an http listener"))),
                None => {
                    return Err(ApiError::new(
                        404,
                        "not_found",
                        format!("no listener named {n:?}"),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn strip_nothing(v: &Json) -> Json {
    // A document read back from GET carries the derived pNothing: it is not a setting.
    let mut v = v.clone();
    if let Json::Object(m) = &mut v {
        m.remove("pNothing");
    }
    v
}

fn prefix(mut e: ApiError, at: &str) -> ApiError {
    e.message = format!("{at}: {}", e.message);
    e
}

// ------------------------------------------------------------------------------ runtime

/// The toxics of one listener as the workers see them, published as a whole.
#[derive(Debug, Default)]
pub struct ToxicSet {
    /// Changes with every publish (a connection re-draws its toxics when it moves).
    pub gen: u64,
    /// The listener is down: live connections under toxics are cut at their next I/O.
    pub down: bool,
    pub toxics: Vec<Toxic>,
}

/// A listener's live toxic set, shared across snapshots by listener name, so connections
/// accepted earlier see toxics added or removed later (as toxiproxy's do).
#[derive(Debug, Default)]
pub struct ToxicCell {
    pub set: ArcSwap<ToxicSet>,
}

/// One L7 fault, compiled.
#[derive(Debug, Clone, Copy)]
pub struct L7Rule {
    pub kind: L7Kind,
    /// Fires when a uniform 64-bit draw is below this.
    pub threshold: u64,
}

/// The broker's draw: cumulative thresholds for duplicate, delete, salt, slow.
#[derive(Debug, Clone, Copy)]
pub struct BrokerDraw {
    pub cumulative: [u64; 4],
    pub slow: Duration,
}

/// L7 faults of one HTTP listener.
#[derive(Debug, Default)]
pub struct ListenerL7 {
    pub rules: Vec<L7Rule>,
    /// (route index, its rules).
    pub routes: Vec<(usize, Vec<L7Rule>)>,
    /// (cluster index, rules for requests of this listener routed there).
    pub by_cluster: Vec<(usize, Vec<L7Rule>)>,
    pub header: bool,
    pub broker: Option<BrokerDraw>,
}

/// Everything the HTTP sessions consult, in the snapshot (`None` there when no L7 fault is
/// set anywhere).
#[derive(Debug, Default)]
pub struct L7Table {
    /// By listener slot.
    pub listeners: Vec<Option<ListenerL7>>,
    /// By cluster index.
    pub clusters: Vec<Vec<L7Rule>>,
}

/// splitmix64's output function: a well-mixed 64-bit value from a counter (the fault draws'
/// generator: per request over the request id, per connection over a per-worker counter).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `p` (0..=1) as a threshold on a uniform u64 draw.
pub fn threshold(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else if p <= 0.0 {
        0
    } else {
        (p * 18_446_744_073_709_551_616.0) as u64
    }
}

impl FaultState {
    /// The L7 table for a snapshot whose listeners sit in `slots` (`None`: no L7 fault).
    pub fn compile_l7(&self, cfg: &crate::config::Config, slots: &[usize]) -> Option<Arc<L7Table>> {
        let any_broker =
            self.broker.active() || self.broker_by_listener.values().any(BrokerWeights::active);
        if self.http.is_empty() && self.header_faults.is_empty() && !any_broker {
            return None;
        }
        let rule = |f: &L7Fault| L7Rule {
            kind: f.kind,
            threshold: threshold(f.probability),
        };
        let draw = |w: &BrokerWeights| {
            let t = |p: f64| threshold(p / 100.0);
            let a = w.duplicate;
            let b = a + w.delete;
            let c = b + w.salt;
            let d = c + w.slow;
            BrokerDraw {
                cumulative: [t(a), t(b), t(c), t(d)],
                slow: Duration::from_millis(w.slow_ms),
            }
        };
        let mut t = L7Table {
            listeners: Vec::new(),
            clusters: vec![Vec::new(); cfg.clusters.len()],
        };
        for (l, &slot) in cfg.listeners.iter().zip(slots) {
            if l.protocol != crate::config::Protocol::Http {
                continue;
            }
            let mut ll = ListenerL7 {
                header: self.header_faults.contains(&l.name),
                ..ListenerL7::default()
            };
            for f in self
                .http
                .iter()
                .filter(|f| f.listener.as_deref() == Some(l.name.as_str()) && f.cluster.is_none())
            {
                match f.route {
                    None => ll.rules.push(rule(f)),
                    Some(r) => match ll.routes.iter_mut().find(|(i, _)| *i == r) {
                        Some((_, v)) => v.push(rule(f)),
                        None => ll.routes.push((r, vec![rule(f)])),
                    },
                }
            }
            let w = self.broker_by_listener.get(&l.name).unwrap_or(&self.broker);
            if w.active() {
                ll.broker = Some(draw(w));
            }
            if t.listeners.len() <= slot {
                t.listeners.resize_with(slot + 1, || None);
            }
            t.listeners[slot] = Some(ll);
        }
        for f in self.http.iter().filter(|f| f.cluster.is_some()) {
            if let Some(ci) = cfg
                .clusters
                .iter()
                .position(|c| Some(&c.name) == f.cluster.as_ref())
            {
                // A rule naming both a listener and a cluster: requests of that listener to
                // that cluster (the listener is checked at the draw).
                if f.listener.is_none() {
                    t.clusters[ci].push(rule(f));
                } else if let Some(slot) = cfg
                    .listeners
                    .iter()
                    .position(|l| Some(&l.name) == f.listener.as_ref())
                    .and_then(|i| slots.get(i))
                {
                    if let Some(Some(ll)) = t.listeners.get_mut(*slot) {
                        match ll.by_cluster.iter_mut().find(|(i, _)| *i == ci) {
                            Some((_, v)) => v.push(rule(f)),
                            None => ll.by_cluster.push((ci, vec![rule(f)])),
                        }
                    }
                }
            }
        }
        Some(Arc::new(t))
    }
}

impl FaultState {
    /// Listeners whose new connections go through toxics: those with toxics, those down
    /// (their live connections are cut) and every proxy (toxiproxy's toxics apply to live
    /// connections, so its proxies always carry the cell).
    fn needs_cell(&self, name: &str) -> bool {
        self.proxies.contains_key(name)
            || self
                .listeners
                .get(name)
                .is_some_and(|l| !l.enabled || !l.toxics.is_empty())
    }

    /// The cells the next snapshot attaches: existing ones are kept (their live connections
    /// follow the change), new ones made.
    pub fn cells(
        &self,
        existing: &std::collections::HashMap<String, Arc<ToxicCell>>,
    ) -> std::collections::HashMap<String, Arc<ToxicCell>> {
        let names = self.listeners.keys().chain(self.proxies.keys());
        let mut out = std::collections::HashMap::new();
        for n in names {
            if self.needs_cell(n) && !out.contains_key(n) {
                let c = existing.get(n).cloned().unwrap_or_default();
                out.insert(n.clone(), c);
            }
        }
        out
    }
}

/// Puts the faults into a snapshot about to be published.
pub fn attach(
    snap: &mut crate::snapshot::Snapshot,
    fs: &FaultState,
    cells: &std::collections::HashMap<String, Arc<ToxicCell>>,
    l7: Option<Arc<L7Table>>,
) {
    for route in snap.listeners.iter_mut().flatten() {
        route.toxics = if fs.needs_cell(&route.name) {
            cells.get(&route.name).cloned()
        } else {
            None
        };
    }
    snap.faults = l7;
}

/// After the swap: every cell, old or new, gets its listener's new toxic set (a cell no
/// longer needed gets an empty one, so its live connections run clean).
pub fn publish_sets(
    fs: &FaultState,
    old: &std::collections::HashMap<String, Arc<ToxicCell>>,
    new: &std::collections::HashMap<String, Arc<ToxicCell>>,
    gen: u64,
) {
    for (name, cell) in old.iter().chain(new.iter()) {
        let lf = fs.listener(name);
        cell.set.store(Arc::new(ToxicSet {
            gen,
            down: !lf.enabled,
            toxics: lf.toxics,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxic_defaults_and_round_trip() {
        let t = toxic_from_json(&json!({"type": "bandwidth", "attributes": {"rate": 5}})).unwrap();
        assert_eq!(t.name, "bandwidth_downstream");
        assert_eq!((t.stream, t.toxicity), (Stream::Downstream, 1.0));
        assert_eq!(toxic_from_json(&t.to_json()).unwrap(), t);
        let u = toxic_update(&t, &json!({"toxicity": 0.25})).unwrap();
        assert_eq!((u.kind, u.toxicity), (t.kind, 0.25));
        assert!(toxic_update(&t, &json!({"type": "latency"})).is_err());
        // Whole numbers written as floats are taken; fractions and negatives are not.
        assert!(
            toxic_from_json(&json!({"type": "latency", "attributes": {"latency": 5.0}})).is_ok()
        );
        assert!(
            toxic_from_json(&json!({"type": "latency", "attributes": {"latency": 5.5}})).is_err()
        );
        assert!(
            toxic_from_json(&json!({"type": "latency", "attributes": {"latency": -1}})).is_err()
        );
    }

    #[test]
    fn broker_weights_add_up_to_at_most_100() {
        let w = BrokerWeights::default();
        assert_eq!(w.nothing(), 100.0);
        let w = w.patch(&json!({"pDelete": 10, "pSlow": 10})).unwrap();
        assert_eq!(w.nothing(), 80.0);
        assert!(w.patch(&json!({"pNothing": 81})).is_err(), "20 + 81 > 100");
        assert!(w.patch(&json!({"pNothing": 80})).is_ok());
        assert!(w.patch(&json!({"pSalt": 90})).is_err());
        assert!(w.patch(&json!({"pSalt": -1})).is_err());
        assert!(w.patch(&json!({"slowMs": 1.5})).is_err());
        assert_eq!(w.to_json()["pNothing"], json!(80));
    }

    #[test]
    fn thresholds_cover_the_range() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        let half = threshold(0.5);
        assert!(half.abs_diff(1 << 63) < 1 << 20);
    }

    #[test]
    fn the_whole_state_round_trips_through_its_json() {
        let v = json!({
            "listeners": {"web": {"enabled": false, "toxics": [{"type": "latency", "attributes": {"latency": 10}}]}},
            "http": [{"name": "a", "type": "abort", "status": 500, "probability": 0.5, "listener": "web"}],
            "header_faults": ["web"],
            "broker": {"pDelete": 5, "slowMs": 100},
            "proxies": {"p": {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}}
        });
        let s = FaultState::from_json(&v).unwrap();
        assert_eq!(FaultState::from_json(&s.to_json()).unwrap(), s);
        assert!(FaultState::from_json(&json!({"bogus": 1})).is_err());
        assert!(!s.is_empty());
        assert!(FaultState::default().is_empty());
    }
}
