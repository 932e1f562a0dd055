//! The stats renderers behind `StatsHandle` (what the admin server serves as `GET /stats` and
//! `GET /metrics`), driven in-process through the real aggregator thread and channel: the
//! Prometheus text passes `promtool check metrics`, and Foo quick mode answers the Foo JSON.
//! These pin exact values; `stats_admin.rs` checks the same over the real admin server.

mod util;

use std::time::Duration;

use serde_json::Value;
use switchyard::config;
use switchyard::snapshot::{self, Snapshot};
use util::promtool_check;

use switchyard::stats::{
    Aggregator, FooCounts, HttpCounters, RequestDone, StatsConfig, StatsHandle, StatsMsg,
    TcpCounters, WorkerStats,
};

const CONFIG: &str = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
cluster = "app"

[[listeners]]
name = "foo.legacy-1"
bind = "127.0.0.1:0"
protocol = "foo"
cluster = "legacy"

[[clusters]]
name = "app"
balance = "weighted"
backends = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]

[[clusters]]
name = "legacy"
backends = ["127.0.0.1:8001"]
"#;

/// An aggregator thread over a real snapshot, fed one worker delta with some traffic.
fn aggregator(
    opts: StatsConfig,
) -> (
    StatsHandle,
    std::thread::JoinHandle<()>,
    crossbeam_channel::Sender<StatsMsg>,
) {
    let cfg = config::parse_str(CONFIG).expect("config");
    let snap = snapshot::shared(Snapshot::build(&cfg, 1, None));
    let (tx, rx) = crossbeam_channel::unbounded();
    let agg = Aggregator::new(rx, tx.clone(), Vec::new(), snap.clone(), &opts);
    let handle = agg.handle();
    let t = std::thread::spawn(move || agg.run());

    let s = snap.load_full();
    let mut w = WorkerStats::default();
    for _ in 0..3 {
        w.accepted(&s, 0);
    }
    w.connected(&s, 0, 0, Some(0), Duration::from_micros(300));
    w.connected(&s, 0, 0, Some(1), Duration::from_micros(900));
    w.connect_failed(&s, 0, Some(1), false);
    for (i, status) in [200u16, 200, 404, 502, 504].into_iter().enumerate() {
        w.request_done(
            &s,
            &RequestDone {
                listener: 0,
                cluster: Some(0),
                backend: Some((i % 2) as u32),
                status,
                bytes_out: 100,
                latency: Duration::from_millis(10 * (i as u64 + 1)),
                ttfb: Some(Duration::from_millis(5)),
                release: switchyard::release::Tag::NONE,
            },
        );
    }
    w.retry(&s, 0);
    w.closed(&s, 0);
    w.accepted(&s, 1);
    w.bytes(&s, 1, 1, Some(0), 1000, 2000);
    w.foo = FooCounts {
        req: 10,
        ack: 8,
        nak: 2,
        invalid: 1,
    };
    let mut tcp = TcpCounters {
        accepted: 4,
        closed: 1,
        ..Default::default()
    };
    tcp.bytes_client_to_backend = 1000;
    let http = HttpCounters {
        requests: 5,
        ..Default::default()
    };
    tx.send(StatsMsg::Delta {
        worker: 0,
        seq: 0,
        since: std::time::Instant::now(),
        tcp,
        http,
        detail: w.take_delta(),
        gauges: switchyard::engine::Gauges {
            engine: "mio",
            connections: 3,
            ..Default::default()
        },
    })
    .unwrap();
    (handle, t, tx)
}

fn stop(t: std::thread::JoinHandle<()>, tx: crossbeam_channel::Sender<StatsMsg>) {
    tx.send(StatsMsg::Stop).unwrap();
    t.join().unwrap();
}

#[test]
fn prometheus_text_passes_promtool_and_has_labelled_series() {
    let (h, t, tx) = aggregator(StatsConfig::default());
    let (ctype, text) = h.metrics();
    stop(t, tx);
    assert_eq!(ctype, "text/plain; version=0.0.4");
    for want in [
        "switchyard_listener_connections_total{listener=\"web\",protocol=\"http\"} 3\n",
        "switchyard_listener_active_connections{listener=\"web\",protocol=\"http\"} 2\n",
        "switchyard_listener_connections_total{listener=\"foo.legacy-1\",protocol=\"foo\"} 1\n",
        "switchyard_cluster_requests_total{cluster=\"app\"} 5\n",
        "switchyard_cluster_responses_total{cluster=\"app\",class=\"2xx\"} 2\n",
        "switchyard_cluster_errors_total{cluster=\"app\",kind=\"upstream\"} 1\n",
        "switchyard_cluster_errors_total{cluster=\"app\",kind=\"timeout\"} 1\n",
        "switchyard_cluster_retries_total{cluster=\"app\"} 1\n",
        "switchyard_backend_errors_total{cluster=\"app\",backend=\"127.0.0.1:9002\",kind=\"connect\"} 1\n",
        "switchyard_backend_weight{cluster=\"app\",backend=\"127.0.0.1:9002\"} 3\n",
        "switchyard_backend_bytes_total{cluster=\"legacy\",backend=\"127.0.0.1:8001\",direction=\"out\"} 2000\n",
        "switchyard_foo_messages_total{type=\"req\"} 10\n",
        "switchyard_tcp_accepted_total 4\n",
        "switchyard_request_duration_seconds_bucket{cluster=\"app\",le=\"+Inf\"} 5\n",
        "switchyard_request_duration_seconds_count{cluster=\"app\"} 5\n",
        "switchyard_backend_connect_duration_seconds_count{cluster=\"app\"} 2\n",
        "# TYPE switchyard_time_to_first_byte_seconds histogram\n",
        "process_open_fds ",
        "switchyard_engine_info{engine=\"mio\"} 1\n",
        "switchyard_engine_connections 3\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // 10..50 ms: three requests at or under 25 ms... buckets are cumulative.
    assert!(
        text.contains(
            "switchyard_request_duration_seconds_bucket{cluster=\"app\",le=\"0.025\"} 2\n"
        ),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn foo_quick_mode_metrics_and_stats_are_the_foo_json() {
    let (h, t, tx) = aggregator(StatsConfig {
        foo_compat: true,
        recovery_path: None,
        inherit: false,
    });
    let (ctype, body) = h.metrics();
    let stats = h.stats_json();
    stop(t, tx);
    assert_eq!(ctype, "application/json");
    for text in [&body, &stats] {
        let v: Value = serde_json::from_str(text).expect("JSON");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            &keys[..8],
            [
                "msg_total",
                "msg_req",
                "msg_ack",
                "msg_nak",
                "request_rate_1s",
                "request_rate_10s",
                "response_rate_1s",
                "response_rate_10s"
            ]
        );
        assert_eq!(v["msg_total"], 20);
        assert_eq!(v["msg_invalid"], 1);
        assert_eq!(
            v["clusters"]["app"]["backends"]["127.0.0.1:9002"]["state"],
            "up"
        );
        let lat = &v["clusters"]["app"]["latency_ms"]["request"];
        assert_eq!(lat["count"], 5);
        let p50 = lat["p50"].as_f64().unwrap();
        assert!((p50 - 30.0).abs() <= 0.3, "{lat}");
        let max = lat["max"].as_f64().unwrap();
        assert!((max - 50.0).abs() <= 0.5, "{lat}");
        // The listener has its own: the same requests, and its connects.
        let l = &v["listeners"]["web"]["latency_ms"];
        assert_eq!(l["request"]["count"], 5, "{l}");
        let p50 = l["request"]["p50"].as_f64().unwrap();
        assert!((p50 - 30.0).abs() <= 0.3, "{l}");
        assert_eq!(l["connect"]["count"], 2, "{l}");
        assert_eq!(l["ttfb"]["count"], 5, "{l}");
        // A listener that saw no request or connect shows empty histograms.
        let foo = &v["listeners"]["foo.legacy-1"]["latency_ms"]["request"];
        assert_eq!(foo["count"], 0, "{foo}");
    }
}

#[test]
fn a_handle_without_an_aggregator_answers_an_error_not_a_hang() {
    let (h, t, tx) = aggregator(StatsConfig::default());
    stop(t, tx);
    let started = std::time::Instant::now();
    let v: Value = serde_json::from_str(&h.stats_json()).expect("JSON");
    assert!(v.get("error").is_some(), "{v}");
    assert!(started.elapsed() < Duration::from_secs(1));
}
