//! `[clusters.autoscale]` (and the `[lbaas.autoscale]` defaults): when a cluster's load
//! passes `scale_up_above` over `window`, ask for more backends; when it falls under
//! `scale_down_below`, for fewer. The asking is a hook program or a webhook; the autoscaler
//! itself (`crate::autoscale`) never adds or removes backends.

use super::{duration_field, int_field, raw_part, Errors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod defaults {
    use std::time::Duration;
    pub const METRIC: &str = "rps_per_backend";
    pub const WINDOW: Duration = Duration::from_secs(30);
    pub const COOLDOWN: Duration = Duration::from_secs(60);
    pub const MIN_BACKENDS: u64 = 1;
    pub const MAX_BACKENDS: u64 = 10;
    /// A hook or webhook that takes longer is killed (abandoned) and counted as failed.
    pub const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
}

/// What the load is measured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// HTTP requests per second (TCP clusters: new backend connections per second) over the
    /// window, divided by the backends in rotation.
    RpsPerBackend,
    /// Open backend connections, averaged over the window, per backend in rotation.
    ActivePerBackend,
    /// 99th percentile of HTTP request latency over the window, milliseconds.
    P99Ms,
}

impl Metric {
    pub const NAMES: &'static str = "rps_per_backend, active_per_backend, p99_ms";
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "rps_per_backend" => Some(Metric::RpsPerBackend),
            "active_per_backend" => Some(Metric::ActivePerBackend),
            "p99_ms" => Some(Metric::P99Ms),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RpsPerBackend => "rps_per_backend",
            Metric::ActivePerBackend => "active_per_backend",
            Metric::P99Ms => "p99_ms",
        }
    }
}

/// How the autoscaler asks for backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A program (argv, no shell) run with `SWITCHYARD_*` variables and the event JSON on
    /// stdin.
    Hook(Vec<String>),
    /// `POST` of the event JSON to this `http://` URL.
    Webhook(WebhookUrl),
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// As written.
    pub url: String,
    /// `host:port` to connect to (port 80 when absent).
    pub authority: String,
    /// The `Host` header.
    pub host: String,
    pub path: String,
}

impl WebhookUrl {
    pub fn parse(s: &str) -> Result<WebhookUrl, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            format!("invalid webhook {s:?}: only http:// URLs are supported (e.g. \"http://127.0.0.1:9000/scale\")")
        })?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad_char = |b: u8| b <= b' ' || b == 0x7f || b == b'#';
        if hostport.is_empty() || hostport.contains('@') || hostport.bytes().any(bad_char) {
            return Err(format!("invalid webhook {s:?}: bad host"));
        }
        if path.bytes().any(bad_char) {
            return Err(format!("invalid webhook {s:?}: bad path"));
        }
        let has_port = match hostport.rfind(':') {
            Some(i) => !hostport[i..].contains(']'),
            None => false,
        };
        if has_port {
            let port = &hostport[hostport.rfind(':').unwrap_or(0) + 1..];
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("invalid webhook {s:?}: bad port"));
            }
        }
        Ok(WebhookUrl {
            url: s.to_string(),
            authority: if has_port {
                hostport.to_string()
            } else {
                format!("{hostport}:80")
            },
            host: hostport.to_string(),
            path: path.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub metric: Metric,
    pub scale_up_above: f64,
    pub scale_down_below: f64,
    /// The metric is measured over this long; a decision needs a full window of samples.
    pub window: Duration,
    /// After an action ends, no new decision for this long.
    pub cooldown: Duration,
    pub min_backends: u32,
    pub max_backends: u32,
    pub action: Action,
}

/// The table as written. Dashed spellings are accepted for the LBaaS API's JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RawAutoscale {
    metric: Option<String>,
    #[serde(alias = "scale-up-above")]
    scale_up_above: Option<f64>,
    #[serde(alias = "scale-down-below")]
    scale_down_below: Option<f64>,
    window: Option<String>,
    cooldown: Option<String>,
    #[serde(alias = "min-backends")]
    min_backends: Option<u64>,
    #[serde(alias = "max-backends")]
    max_backends: Option<u64>,
    hook: Option<toml::Value>,
    webhook: Option<String>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

/// The keys of an autoscale table (the LBaaS API checks policies against them).
pub const KEYS: [&str; 9] = [
    "metric",
    "scale_up_above",
    "scale_down_below",
    "window",
    "cooldown",
    "min_backends",
    "max_backends",
    "hook",
    "webhook",
];

fn hook_argv(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<Vec<String>> {
    let argv: Vec<String> = match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                match x.as_str() {
                    Some(s) => out.push(s.to_string()),
                    None => errs.add(format!("{p}.hook[{i}]"), "expected a string"),
                }
            }
            out
        }
        _ => {
            errs.add(
                format!("{p}.hook"),
                "expected a program path or an array [program, args...]",
            );
            return None;
        }
    };
    match argv.first() {
        None => {
            errs.add(format!("{p}.hook"), "empty (expected a program)");
            None
        }
        Some(prog) if prog.is_empty() || prog.contains('\0') => {
            errs.add(format!("{p}.hook"), "invalid program path");
            None
        }
        Some(_) => Some(argv),
    }
}

fn threshold(p: &str, key: &str, v: Option<f64>, errs: &mut Errors) -> Option<f64> {
    let v = v?;
    if !v.is_finite() || v < 0.0 {
        errs.add(format!("{p}.{key}"), "expected a number >= 0");
        return None;
    }
    Some(v)
}

/// Validates `[clusters.autoscale]`. With `partial` (the `[lbaas.autoscale]` defaults) every
/// key may be left out, and only the keys present are checked.
pub(crate) fn validate(
    p: &str,
    v: &toml::Value,
    partial: bool,
    errs: &mut Errors,
) -> Option<AutoscaleConfig> {
    let a = raw_part::<RawAutoscale>(p, v.clone(), errs)?;
    errs.unknown::<RawAutoscale>(p, &a.unknown);
    let metric = match a.metric.as_deref() {
        None => Metric::parse(defaults::METRIC),
        Some(m) => {
            let parsed = Metric::parse(m);
            if parsed.is_none() {
                errs.add(
                    format!("{p}.metric"),
                    format!("unknown metric {m:?} (expected one of: {})", Metric::NAMES),
                );
            }
            parsed
        }
    };
    let up = threshold(p, "scale_up_above", a.scale_up_above, errs);
    let down = threshold(p, "scale_down_below", a.scale_down_below, errs);
    if let (Some(u), Some(d)) = (up, down) {
        if d >= u {
            errs.add(
                format!("{p}.scale_down_below"),
                format!(
                    "must be below scale_up_above ({u}): the gap between them is what keeps the \
                     autoscaler from flapping"
                ),
            );
        }
    }
    if !partial {
        for (key, missing) in [
            ("scale_up_above", a.scale_up_above.is_none()),
            ("scale_down_below", a.scale_down_below.is_none()),
        ] {
            if missing {
                errs.add(format!("{p}.{key}"), "missing");
            }
        }
    }
    let window = duration_field(
        format!("{p}.window"),
        a.window.as_ref(),
        defaults::WINDOW,
        errs,
    );
    if window < Duration::from_secs(1) {
        errs.add(format!("{p}.window"), "at least 1s");
    }
    let cooldown = duration_field(
        format!("{p}.cooldown"),
        a.cooldown.as_ref(),
        defaults::COOLDOWN,
        errs,
    );
    let min = int_field(
        &format!("{p}.min_backends"),
        a.min_backends,
        defaults::MIN_BACKENDS,
        1,
        1000,
        errs,
    );
    let max_default = defaults::MAX_BACKENDS.max(min);
    let max = int_field(
        &format!("{p}.max_backends"),
        a.max_backends,
        max_default,
        1,
        1000,
        errs,
    );
    if max < min {
        errs.add(
            format!("{p}.max_backends"),
            format!("{max} is below min_backends ({min})"),
        );
    }
    let hook = a.hook.as_ref().and_then(|h| hook_argv(p, h, errs));
    let webhook = a.webhook.as_deref().and_then(|w| {
        WebhookUrl::parse(w)
            .map_err(|e| errs.add(format!("{p}.webhook"), e))
            .ok()
    });
    let action = match (hook, webhook, a.hook.is_some(), a.webhook.is_some()) {
        (_, _, true, true) => {
            errs.add(
                format!("{p}.webhook"),
                "give either hook or webhook, not both",
            );
            None
        }
        (Some(h), _, _, _) => Some(Action::Hook(h)),
        (_, Some(w), _, _) => Some(Action::Webhook(w)),
        (None, None, false, false) => {
            if !partial {
                errs.add(
                    p,
                    "no action: set hook (a program) or webhook (an http:// URL)",
                );
            }
            None
        }
        _ => None, // reported above
    };
    Some(AutoscaleConfig {
        metric: metric?,
        scale_up_above: up?,
        scale_down_below: down?,
        window,
        cooldown,
        min_backends: min as u32,
        max_backends: max as u32,
        action: action?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, partial: bool) -> (Option<AutoscaleConfig>, Vec<String>) {
        let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap().into();
        let mut errs = Errors::default();
        let a = validate("a", &v, partial, &mut errs);
        (a, errs.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn full_table_with_defaults() {
        let (a, e) = check(
            "scale_up_above = 100\nscale_down_below = 20.5\nhook = [\"/bin/scale\", \"-v\"]",
            false,
        );
        assert!(e.is_empty(), "{e:?}");
        let a = a.unwrap();
        assert_eq!(a.metric, Metric::RpsPerBackend);
        assert_eq!((a.min_backends, a.max_backends), (1, 10));
        assert_eq!(a.window, defaults::WINDOW);
        assert_eq!(
            a.action,
            Action::Hook(vec!["/bin/scale".into(), "-v".into()])
        );
    }

    #[test]
    fn every_error_has_its_path() {
        let (_, e) = check(
            "metric = \"cpu\"\nscale_up_above = 10\nscale_down_below = 10\nwindow = \"10ms\"\nmin_backends = 5\nmax_backends = 2\nhook = \"/x\"\nwebhook = \"https://x\"\nbogus = 1",
            false,
        );
        for want in [
            "a.metric",
            "a.scale_down_below",
            "a.window",
            "a.max_backends",
            "a.webhook",
            "a.bogus",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want} in {e:?}");
        }
        let (_, e) = check("metric = \"p99_ms\"", false);
        for want in ["a.scale_up_above", "a.scale_down_below", "a"] {
            assert!(e.iter().any(|x| x == want), "missing {want} in {e:?}");
        }
        // Defaults tables may leave everything out.
        let (a, e) = check("hook = \"/x\"", true);
        assert!(e.is_empty() && a.is_none(), "{e:?}");
    }

    #[test]
    fn webhook_urls() {
        let w = WebhookUrl::parse("http://127.0.0.1:9000/scale?x=1").unwrap();
        assert_eq!(
            (w.authority.as_str(), w.path.as_str()),
            ("127.0.0.1:9000", "/scale?x=1")
        );
        let w = WebhookUrl::parse("http://scaler.local").unwrap();
        assert_eq!(
            (w.authority.as_str(), w.path.as_str()),
            ("scaler.local:80", "/")
        );
        let w = WebhookUrl::parse("http://[::1]/x").unwrap();
        assert_eq!(w.authority, "[::1]:80");
        for bad in [
            "https://x",
            "http://",
            "http://a b/",
            "http://x:0/",
            "http://u@x/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
