//! Prometheus text exposition (format 0.0.4) of the aggregator's state: counters, gauges and
//! histograms with `listener`, `cluster` and `backend` labels. Checked by
//! `promtool check metrics` in the tests.

use super::hist::{HistKind, Hists};
use super::{Aggregator, ClusterAgg, Traffic};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Escapes a label value.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Prometheus text being written. [`super::Section`]s add their families through it.
pub struct Out(String);

impl Out {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
            let _ = writeln!(self.0, " {}", v as i64);
        } else {
            let _ = writeln!(self.0, " {v}");
        }
    }
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &hdrhistogram::Histogram<u64>) {
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let bucket = format!("{name}_bucket");
        let les: Vec<String> = BUCKETS.iter().map(|b| b.to_string()).collect();
        for (b, le) in BUCKETS.iter().zip(&les) {
            let us = (b * 1e6) as u64;
            let n = if h.is_empty() {
                0
            } else {
                h.count_between(0, us)
            };
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, n as f64);
            with_le.pop();
        }
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, h.len() as f64);
        let sum = if h.is_empty() {
            0.0
        } else {
            h.mean() * h.len() as f64 / 1e6
        };
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, h.len() as f64);
    }
}

/// (field, metric suffix, extra label, help of the family).
type TrafficMetric = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static str,
);

/// Counter families rendered from [`Traffic`] fields.
const TRAFFIC: [TrafficMetric; 15] = [
    (
        "connections",
        "connections_total",
        None,
        "Connections (listener: accepted from clients; cluster/backend: established to backends).",
    ),
    (
        "closed",
        "closed_connections_total",
        None,
        "Client connections closed.",
    ),
    (
        "bytes_in",
        "bytes_total",
        Some(("direction", "in")),
        "Bytes forwarded, by direction (in: client to backend, out: to the client).",
    ),
    ("bytes_out", "bytes_total", Some(("direction", "out")), ""),
    (
        "requests",
        "requests_total",
        None,
        "HTTP requests finished.",
    ),
    (
        "responses_1xx",
        "responses_total",
        Some(("class", "1xx")),
        "HTTP responses by status class.",
    ),
    (
        "responses_2xx",
        "responses_total",
        Some(("class", "2xx")),
        "",
    ),
    (
        "responses_3xx",
        "responses_total",
        Some(("class", "3xx")),
        "",
    ),
    (
        "responses_4xx",
        "responses_total",
        Some(("class", "4xx")),
        "",
    ),
    (
        "responses_5xx",
        "responses_total",
        Some(("class", "5xx")),
        "",
    ),
    (
        "connect_errors",
        "errors_total",
        Some(("kind", "connect")),
        "Errors by kind: connect (refused/failed), connect_timeout, upstream (502), timeout (504).",
    ),
    (
        "connect_timeouts",
        "errors_total",
        Some(("kind", "connect_timeout")),
        "",
    ),
    (
        "upstream_errors",
        "errors_total",
        Some(("kind", "upstream")),
        "",
    ),
    ("timeouts", "errors_total", Some(("kind", "timeout")), ""),
    (
        "retries",
        "retries_total",
        None,
        "HTTP requests retried on a fresh connection.",
    ),
];

fn field(t: &Traffic, name: &str) -> u64 {
    t.fields()
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

/// One `switchyard_<level>_<suffix>` family per suffix, with a sample per entity.
fn traffic_families(o: &mut Out, level: &str, rows: &[(Vec<(&str, &str)>, Traffic)]) {
    let mut i = 0;
    while i < TRAFFIC.len() {
        let suffix = TRAFFIC[i].1;
        let name = format!("switchyard_{level}_{suffix}");
        o.family(&name, "counter", TRAFFIC[i].3);
        let mut j = i;
        while j < TRAFFIC.len() && TRAFFIC[j].1 == suffix {
            for (labels, t) in rows {
                let mut l = labels.clone();
                if let Some(extra) = TRAFFIC[j].2 {
                    l.push(extra);
                }
                o.sample(&name, &l, field(t, TRAFFIC[j].0) as f64);
            }
            j += 1;
        }
        i = j;
    }
}

pub fn render(a: &Aggregator) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    let snap = a.snapshot.load();

    let p = super::ProcessFigures::now();
    o.family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, seconds.",
    );
    o.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
    o.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, bytes.",
    );
    o.sample("process_resident_memory_bytes", &[], p.rss_bytes as f64);
    o.family("process_open_fds", "gauge", "Open file descriptors.");
    o.sample("process_open_fds", &[], p.open_fds as f64);
    o.family("process_max_fds", "gauge", "Open file descriptor limit.");
    o.sample("process_max_fds", &[], p.max_fds as f64);
    if let Some(h) = crate::heap::figures() {
        o.family(
            "switchyard_heap_allocated_bytes",
            "gauge",
            "Bytes in live heap allocations (the allocator's count).",
        );
        o.sample("switchyard_heap_allocated_bytes", &[], h.allocated as f64);
        o.family(
            "switchyard_heap_resident_bytes",
            "gauge",
            "Resident bytes the allocator holds: live data, its metadata, free pages not yet returned.",
        );
        o.sample("switchyard_heap_resident_bytes", &[], h.resident as f64);
    }
    o.family(
        "process_start_time_seconds",
        "gauge",
        "Start time, seconds since the Unix epoch.",
    );
    o.sample("process_start_time_seconds", &[], a.started_unix.floor());
    o.family("switchyard_uptime_seconds", "gauge", "Seconds since start.");
    o.sample(
        "switchyard_uptime_seconds",
        &[],
        a.started.elapsed().as_secs_f64(),
    );
    o.family(
        "switchyard_build_info",
        "gauge",
        "Always 1; the labels say which build is running.",
    );
    o.sample(
        "switchyard_build_info",
        &[
            ("version", crate::build_info::VERSION),
            ("commit", crate::build_info::COMMIT),
            ("rustc", crate::build_info::RUSTC),
        ],
        1.0,
    );
    o.family("switchyard_workers", "gauge", "Worker threads.");
    o.sample("switchyard_workers", &[], a.workers.len() as f64);
    let g = a.engine_total();
    o.family(
        "switchyard_engine_info",
        "gauge",
        "Always 1; the label says which I/O engine the workers run (mio or io_uring).",
    );
    o.sample(
        "switchyard_engine_info",
        &[("engine", a.engine_name())],
        1.0,
    );
    for (k, v, help) in [
        (
            "connections",
            g.connections,
            "Open connections, both sides.",
        ),
        (
            "ops_in_flight",
            g.ops_in_flight,
            "I/O operations submitted and not completed.",
        ),
        (
            "buffers_in_use",
            g.buffers_in_use,
            "Pool buffers held by sessions or operations.",
        ),
        (
            "buffers_provided",
            g.buffers_provided,
            "Pool buffers lent to the kernel for receives (io_uring).",
        ),
        (
            "buffers_warm",
            g.buffers_warm,
            "Pool buffers that may hold memory (used since their pages were last given back).",
        ),
        ("pipes_in_use", g.pipes_in_use, "Splice pipes in use."),
        (
            "pipes_idle",
            g.pipes_idle,
            "Empty splice pipes kept open for reuse.",
        ),
    ] {
        let name = format!("switchyard_engine_{k}");
        o.family(&name, "gauge", help);
        o.sample(&name, &[], v as f64);
    }
    o.family(
        "switchyard_engine_loop_max_seconds",
        "gauge",
        "The longest event-loop turn of any worker since start (from one poll's return to the next).",
    );
    o.sample(
        "switchyard_engine_loop_max_seconds",
        &[],
        g.loop_max_us as f64 / 1e6,
    );
    o.family(
        "switchyard_engine_slow_turns_total",
        "counter",
        "Event-loop turns of 50 ms or longer (worker stalls), all workers.",
    );
    o.sample(
        "switchyard_engine_slow_turns_total",
        &[],
        g.slow_turns as f64,
    );

    // Process-wide counters, one family each.
    for (k, v) in a.tcp.fields() {
        let name = format!("switchyard_tcp_{k}_total");
        o.family(
            &name,
            "counter",
            &format!("TCP layer: {}.", k.replace('_', " ")),
        );
        o.sample(&name, &[], v as f64);
    }
    o.family(
        "switchyard_tcp_active_connections",
        "gauge",
        "Client connections open.",
    );
    o.sample(
        "switchyard_tcp_active_connections",
        &[],
        a.tcp.accepted.saturating_sub(a.tcp.closed) as f64,
    );
    for (k, v) in a.http.fields() {
        let name = format!("switchyard_http_{k}_total");
        o.family(
            &name,
            "counter",
            &format!("HTTP layer: {}.", k.replace('_', " ")),
        );
        o.sample(&name, &[], v as f64);
    }

    // Foo analyzer.
    o.family(
        "switchyard_foo_messages_total",
        "counter",
        "Foo protocol messages seen, by type.",
    );
    for (t, v) in [
        ("req", a.foo.req),
        ("ack", a.foo.ack),
        ("nak", a.foo.nak),
        ("invalid", a.foo.invalid),
    ] {
        o.sample("switchyard_foo_messages_total", &[("type", t)], v as f64);
    }
    for (name, win, help) in [
        (
            "switchyard_foo_request_rate",
            &a.windows.foo_req,
            "Foo REQ messages per second over a moving window.",
        ),
        (
            "switchyard_foo_response_rate",
            &a.windows.foo_resp,
            "Foo ACK and NAK messages per second over a moving window.",
        ),
    ] {
        o.family(name, "gauge", help);
        for (w, s) in [("1s", 1), ("10s", 10), ("60s", 60)] {
            o.sample(name, &[("window", w)], a.rate(win, s));
        }
    }

    // Listeners.
    let rows: Vec<(Vec<(&str, &str)>, Traffic)> = snap
        .listeners
        .iter()
        .flatten()
        .map(|l| {
            (
                vec![
                    ("listener", l.name.as_str()),
                    ("protocol", l.protocol.as_str()),
                ],
                a.listeners.get(&l.name).copied().unwrap_or_default(),
            )
        })
        .collect();
    o.family(
        "switchyard_listener_active_connections",
        "gauge",
        "Client connections open, per listener.",
    );
    for (l, t) in &rows {
        o.sample(
            "switchyard_listener_active_connections",
            l,
            t.connections.saturating_sub(t.closed) as f64,
        );
    }
    traffic_families(&mut o, "listener", &rows);

    // Certificates: when each expires.
    o.family(
        "switchyard_tls_cert_expiry_seconds",
        "gauge",
        "When a certificate in use expires (notAfter), seconds since the Unix epoch.",
    );
    let owners = snap
        .listeners
        .iter()
        .flatten()
        .filter_map(|l| Some(("listener", l.name.as_str(), &l.tls.as_ref()?.certs)))
        .chain(
            snap.clusters
                .iter()
                .filter_map(|c| Some(("cluster", c.name.as_str(), &c.tls.as_ref()?.certs))),
        );
    for (kind, name, certs) in owners {
        for c in certs {
            let file = c.file.display().to_string();
            let names = c.names.join(",");
            o.sample(
                "switchyard_tls_cert_expiry_seconds",
                &[(kind, name), ("file", &file), ("names", &names)],
                c.not_after as f64,
            );
        }
    }

    // Clusters and backends.
    let empty = ClusterAgg::default();
    let aggs: Vec<(&str, &ClusterAgg)> = snap
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), a.clusters.get(&c.name).unwrap_or(&empty)))
        .collect();
    let rows: Vec<(Vec<(&str, &str)>, Traffic)> = aggs
        .iter()
        .map(|(n, agg)| (vec![("cluster", *n)], agg.traffic))
        .collect();
    traffic_families(&mut o, "cluster", &rows);

    // Every backend with its state (see `backend_states`).
    let backends: Vec<(usize, &crate::snapshot::Backend, bool)> = snap
        .clusters
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| super::backend_states(c).map(move |(b, st)| (ci, b, st == "up")))
        .collect();
    let addrs: Vec<String> = backends
        .iter()
        .map(|(_, b, _)| b.addr.to_string())
        .collect();
    let rows: Vec<(Vec<(&str, &str)>, Traffic)> = backends
        .iter()
        .zip(&addrs)
        .map(|((ci, _, _), addr)| {
            let (name, agg) = aggs[*ci];
            let t = agg.backends.get(addr).copied().unwrap_or_default();
            (vec![("cluster", name), ("backend", addr.as_str())], t)
        })
        .collect();
    o.family(
        "switchyard_backend_up",
        "gauge",
        "1 when the backend is up and in rotation; 0 when down or draining.",
    );
    for ((l, _), (_, _, up)) in rows.iter().zip(&backends) {
        o.sample("switchyard_backend_up", l, if *up { 1.0 } else { 0.0 });
    }
    o.family(
        "switchyard_backend_last_check_ok",
        "gauge",
        "1 when the backend's last active health check passed, 0 when it failed (absent: no checks).",
    );
    for ((l, _), (_, b, _)) in rows.iter().zip(&backends) {
        match b.live.last_check.load(Ordering::Relaxed) {
            1 => o.sample("switchyard_backend_last_check_ok", l, 1.0),
            2 => o.sample("switchyard_backend_last_check_ok", l, 0.0),
            _ => {}
        }
    }
    o.family(
        "switchyard_backend_active_connections",
        "gauge",
        "Connections open to the backend.",
    );
    for ((l, _), (_, b, _)) in rows.iter().zip(&backends) {
        o.sample(
            "switchyard_backend_active_connections",
            l,
            f64::from(b.live.active.load(Ordering::Relaxed)),
        );
    }
    o.family(
        "switchyard_backend_weight",
        "gauge",
        "Balancing weight (as configured; less during slow start).",
    );
    for ((l, _), (_, b, _)) in rows.iter().zip(&backends) {
        o.sample(
            "switchyard_backend_weight",
            l,
            super::weight_value(b.weight),
        );
    }
    traffic_families(&mut o, "backend", &rows);

    // Latency histograms per cluster.
    let none = Hists::new();
    for (kind, name, help) in [
        (
            HistKind::Request,
            "switchyard_request_duration_seconds",
            "HTTP request latency: request head complete to response complete.",
        ),
        (
            HistKind::Connect,
            "switchyard_backend_connect_duration_seconds",
            "Backend connect time.",
        ),
        (
            HistKind::Ttfb,
            "switchyard_time_to_first_byte_seconds",
            "HTTP request start to the first byte of the backend's response.",
        ),
    ] {
        o.family(name, "histogram", help);
        for (cname, agg) in &aggs {
            if let Some(h) = agg.hists.as_ref().or(none.as_ref()) {
                o.histogram(name, &[("cluster", cname)], h.get(kind));
            }
        }
    }
    services(&mut o, a, &snap);
    for s in &a.sections {
        s.prometheus(&mut o);
    }
    o.0
}

/// Per-version counters and latency (labels `service`, `version`), and per service the
/// rollbacks and gradual's share.
fn services(o: &mut Out, a: &Aggregator, snap: &crate::snapshot::Snapshot) {
    let empty = super::VersionAgg::default();
    type Row<'a> = (
        String,
        String,
        &'a super::VersionAgg,
        bool,
        bool,
        Option<&'a Hists>,
    );
    let mut labels: Vec<Row<'_>> = Vec::new();
    for s in &snap.services {
        for (i, v) in s.versions.iter().enumerate() {
            let id = String::from_utf8_lossy(&v.id).into_owned();
            let agg = a.versions.get(&(s.name.clone(), id)).unwrap_or(&empty);
            labels.push((
                s.name.clone(),
                super::version_label(s, i),
                agg,
                !v.rolled_back,
                i == s.newest as usize,
                a.version_hists(v, agg),
            ));
        }
    }
    let rows: Vec<(Vec<(&str, &str)>, Traffic)> = labels
        .iter()
        .map(|(s, v, agg, _, _, _)| {
            (
                vec![("service", s.as_str()), ("version", v.as_str())],
                agg.traffic,
            )
        })
        .collect();
    o.family(
        "switchyard_version_live",
        "gauge",
        "1 while the version takes traffic, 0 once rolled back.",
    );
    for ((l, _), (_, _, _, live, _, _)) in rows.iter().zip(&labels) {
        o.sample("switchyard_version_live", l, if *live { 1.0 } else { 0.0 });
    }
    o.family(
        "switchyard_version_serving",
        "gauge",
        "1 for the version new requests go to (the newest live one, or the promoted one).",
    );
    for ((l, _), (_, _, _, _, serving, _)) in rows.iter().zip(&labels) {
        o.sample(
            "switchyard_version_serving",
            l,
            if *serving { 1.0 } else { 0.0 },
        );
    }
    traffic_families(o, "version", &rows);
    for (field, help) in [
        ("fallbacks", "concurrent: requests the version failed (5xx, unreachable, timeout) that the previous version answered."),
        ("mirrored", "concurrent: requests mirrored to the version (the previous one of the newest)."),
        ("mirror_status_mismatches", "concurrent: mirrored requests where the version (the newest) and the previous one answered with different statuses (no answer is status 0)."),
        ("mirror_body_mismatches", "concurrent: mirrored requests where both versions answered whole with different bodies (length or hash)."),
    ] {
        let name = format!("switchyard_version_{field}_total");
        o.family(&name, "counter", help);
        for ((l, _), (_, _, agg, _, _, _)) in rows.iter().zip(&labels) {
            let n = agg
                .counts
                .fields()
                .iter()
                .find(|(k, _)| *k == field)
                .map_or(0, |(_, v)| *v);
            o.sample(&name, l, n as f64);
        }
    }
    let none = Hists::new();
    o.family(
        "switchyard_version_request_duration_seconds",
        "histogram",
        "HTTP request latency per service version.",
    );
    for ((l, _), (_, _, _, _, _, hists)) in rows.iter().zip(&labels) {
        if let Some(h) = hists.or(none.as_ref()) {
            o.histogram(
                "switchyard_version_request_duration_seconds",
                l,
                h.get(HistKind::Request),
            );
        }
    }
    o.family(
        "switchyard_service_rollbacks_total",
        "counter",
        "Versions rolled back, by reason (auto: error rate over the threshold; manual: API).",
    );
    for s in &snap.services {
        let h = a.release_history(&s.name);
        let manual = (h.rollbacks - h.auto_rollbacks) as f64;
        o.sample(
            "switchyard_service_rollbacks_total",
            &[("service", &s.name), ("reason", "auto")],
            h.auto_rollbacks as f64,
        );
        o.sample(
            "switchyard_service_rollbacks_total",
            &[("service", &s.name), ("reason", "manual")],
            manual,
        );
    }
    o.family(
        "switchyard_service_gradual_share",
        "gauge",
        "gradual: the newest version's share of clients, percent.",
    );
    let now = std::time::Instant::now();
    for s in snap
        .services
        .iter()
        .filter(|s| s.strategy == crate::config::services::Strategy::Gradual)
    {
        o.sample(
            "switchyard_service_gradual_share",
            &[("service", &s.name)],
            s.share(now),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("m", &[("l", "x\"y")], 2.0);
        o.sample("m", &[], 0.25);
        assert_eq!(o.0, "m{l=\"x\\\"y\"} 2\nm 0.25\n");
    }
}
