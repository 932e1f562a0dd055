//! Cluster resilience settings: retries with a budget, passive outlier detection
//! (`[clusters.outlier]`) and connection limits.

use super::{duration_field, int_field, raw_part, Errors, RawCluster};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod defaults {
    use std::time::Duration;
    pub const RETRIES: u64 = 1;
    pub const RETRY_BUDGET: f64 = 0.2;
    pub const MAX_PENDING: u64 = 1024;
    pub const OUTLIER_CONSECUTIVE: u64 = 5;
    pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(10);
    pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
    pub const OUTLIER_MAX_EJECTED_PERCENT: u64 = 50;
}

/// Passive outlier detection (`[clusters.outlier]`; the workers' side is
/// `balance::outlier`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend.
    pub consecutive: u32,
    /// The first ejection's length; each further one doubles it...
    pub base_ejection: Duration,
    /// ...up to this.
    pub max_ejection: Duration,
    /// At most this share of a cluster's backends is ejected at once (at least one may be).
    pub max_ejected_percent: u32,
}

/// When a request that was already sent may be sent again, to another backend.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first (0 disables these retries).
    pub retries: u32,
    /// The connection broke before any response byte.
    pub on_reset: bool,
    /// The backend answered 5xx (the answer is discarded and the request sent elsewhere).
    pub on_5xx: bool,
    /// No response head within `first_byte_timeout`.
    pub on_timeout: bool,
    /// Retry POST and other non-idempotent methods too.
    pub non_idempotent: bool,
    /// Retries may add at most this fraction of extra requests (per worker, per cluster).
    pub budget: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: defaults::RETRIES as u32,
            on_reset: true,
            on_5xx: false,
            on_timeout: false,
            non_idempotent: false,
            budget: defaults::RETRY_BUDGET,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterLimits {
    /// Open upstream connections to the whole cluster (all workers).
    pub max_connections: Option<u32>,
    /// Open upstream connections to one backend (all workers).
    pub max_connections_per_backend: Option<u32>,
    /// HTTP requests waiting for a connection slot, per worker; beyond it: 503 at once.
    pub max_pending: u32,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_connections: None,
            max_connections_per_backend: None,
            max_pending: defaults::MAX_PENDING as u32,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawOutlier {
    consecutive_failures: Option<u64>,
    base_ejection_time: Option<String>,
    max_ejection_time: Option<String>,
    max_ejected_percent: Option<u64>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

pub(crate) fn outlier(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<OutlierConfig> {
    let o = raw_part::<RawOutlier>(p, v.clone(), errs)?;
    errs.unknown::<RawOutlier>(p, &o.unknown);
    let base = duration_field(
        format!("{p}.base_ejection_time"),
        o.base_ejection_time.as_ref(),
        defaults::OUTLIER_BASE_EJECTION,
        errs,
    );
    let max = duration_field(
        format!("{p}.max_ejection_time"),
        o.max_ejection_time.as_ref(),
        defaults::OUTLIER_MAX_EJECTION,
        errs,
    );
    if max < base {
        errs.add(
            format!("{p}.max_ejection_time"),
            "shorter than base_ejection_time",
        );
    }
    Some(OutlierConfig {
        consecutive: int_field(
            &format!("{p}.consecutive_failures"),
            o.consecutive_failures,
            defaults::OUTLIER_CONSECUTIVE,
            1,
            1000,
            errs,
        ) as u32,
        base_ejection: base,
        max_ejection: max.max(base),
        max_ejected_percent: int_field(
            &format!("{p}.max_ejected_percent"),
            o.max_ejected_percent,
            defaults::OUTLIER_MAX_EJECTED_PERCENT,
            0,
            100,
            errs,
        ) as u32,
    })
}

pub(crate) fn retry(p: &str, c: &RawCluster, errs: &mut Errors) -> RetryPolicy {
    let mut r = RetryPolicy {
        retries: int_field(
            &format!("{p}.retries"),
            c.retries,
            defaults::RETRIES,
            0,
            10,
            errs,
        ) as u32,
        ..RetryPolicy::default()
    };
    if let Some(list) = &c.retry_on {
        r.on_reset = false;
        for (i, what) in list.iter().enumerate() {
            match what.as_str() {
                "reset" => r.on_reset = true,
                "5xx" => r.on_5xx = true,
                "timeout" => r.on_timeout = true,
                other => errs.add(
                    format!("{p}.retry_on[{i}]"),
                    format!("unknown condition {other:?} (expected reset, 5xx or timeout)"),
                ),
            }
        }
    }
    r.non_idempotent = c.retry_non_idempotent.unwrap_or(false);
    r.budget = c.retry_budget.unwrap_or(defaults::RETRY_BUDGET);
    if !(0.0..=1.0).contains(&r.budget) {
        errs.add(
            format!("{p}.retry_budget"),
            "a fraction of the requests in 0.0..=1.0",
        );
        r.budget = defaults::RETRY_BUDGET;
    }
    r
}

pub(crate) fn limits(p: &str, c: &RawCluster, errs: &mut Errors) -> ClusterLimits {
    let opt = |key: &str, v: Option<u64>, errs: &mut Errors| {
        v.map(|n| int_field(&format!("{p}.{key}"), Some(n), 1, 1, 10_000_000, errs) as u32)
    };
    ClusterLimits {
        max_connections: opt("max_connections", c.max_connections, errs),
        max_connections_per_backend: opt(
            "max_connections_per_backend",
            c.max_connections_per_backend,
            errs,
        ),
        max_pending: int_field(
            &format!("{p}.max_pending"),
            c.max_pending,
            defaults::MAX_PENDING,
            0,
            1_000_000,
            errs,
        ) as u32,
    }
}
