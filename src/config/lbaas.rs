//! `[lbaas]`: where the load-balancer-as-a-service API (`crate::lbaas`) puts the instances it
//! creates, and the autoscaling defaults of instances created with `"auto-scaling": true`.

use super::{raw_part, Errors};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr};
    pub const BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    pub const PORT_RANGE: (u16, u16) = (10000, 20000);
}

#[derive(Debug, Clone, PartialEq)]
pub struct LbaasConfig {
    /// The address instances listen on.
    pub bind: IpAddr,
    /// Instances take ports from this inclusive range.
    pub port_range: (u16, u16),
    /// `[lbaas.autoscale]`: the policy of `"auto-scaling": true`, and the base that a policy
    /// object given through the API is laid over. Validated as a partial autoscale table.
    pub autoscale: Option<toml::Table>,
}

impl Default for LbaasConfig {
    fn default() -> Self {
        LbaasConfig {
            bind: defaults::BIND,
            port_range: defaults::PORT_RANGE,
            autoscale: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RawLbaas {
    bind: Option<String>,
    /// `"10000-20000"` or `[10000, 20000]`.
    port_range: Option<toml::Value>,
    autoscale: Option<toml::Value>,
    #[serde(flatten, skip_serializing)]
    unknown: BTreeMap<String, toml::Value>,
}

fn port_range(p: &str, v: &toml::Value, errs: &mut Errors) -> Option<(u16, u16)> {
    let port = |n: i64| u16::try_from(n).ok().filter(|&x| x > 0);
    let pair = match v {
        toml::Value::String(s) => s.split_once('-').and_then(|(a, b)| {
            Some((port(a.trim().parse().ok()?)?, port(b.trim().parse().ok()?)?))
        }),
        toml::Value::Array(a) if a.len() == 2 => {
            match (
                a[0].as_integer().and_then(port),
                a[1].as_integer().and_then(port),
            ) {
                (Some(lo), Some(hi)) => Some((lo, hi)),
                _ => None,
            }
        }
        _ => None,
    };
    match pair {
        Some((lo, hi)) if lo <= hi => Some((lo, hi)),
        Some((lo, hi)) => {
            errs.add(p, format!("{lo} is above {hi}"));
            None
        }
        None => {
            errs.add(
                p,
                "expected \"low-high\" or [low, high] with ports in 1..=65535",
            );
            None
        }
    }
}

pub(crate) fn validate(v: toml::Value, errs: &mut Errors) -> LbaasConfig {
    let mut out = LbaasConfig::default();
    let Some(raw) = raw_part::<RawLbaas>("lbaas", v, errs) else {
        return out;
    };
    errs.unknown::<RawLbaas>("lbaas", &raw.unknown);
    if let Some(b) = &raw.bind {
        match b.trim().parse::<IpAddr>() {
            Ok(ip) => out.bind = ip,
            Err(_) => errs.add(
                "lbaas.bind",
                format!("invalid address {b:?} (expected an IP address, e.g. \"127.0.0.1\")"),
            ),
        }
    }
    if let Some(r) = raw
        .port_range
        .as_ref()
        .and_then(|v| port_range("lbaas.port_range", v, errs))
    {
        out.port_range = r;
    }
    if let Some(a) = raw.autoscale {
        match &a {
            toml::Value::Table(t) => {
                super::autoscale::validate("lbaas.autoscale", &a, true, errs);
                out.autoscale = Some(t.clone());
            }
            _ => errs.add("lbaas.autoscale", "expected a table ([lbaas.autoscale])"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (LbaasConfig, Vec<String>) {
        let v: toml::Value = toml::from_str::<toml::Table>(text).unwrap().into();
        let mut errs = Errors::default();
        let c = validate(v, &mut errs);
        (c, errs.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn defaults_forms_and_errors() {
        let (c, e) = check("");
        assert!(e.is_empty());
        assert_eq!(c, LbaasConfig::default());
        let (c, e) = check("bind = \"0.0.0.0\"\nport_range = \"3000-3009\"");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.port_range, (3000, 3009));
        let (c, _) = check("port_range = [5, 6]");
        assert_eq!(c.port_range, (5, 6));
        let (_, e) = check(
            "bind = \"here\"\nport_range = \"9-1\"\nextra = 1\n[autoscale]\nmetric = \"cpu\"",
        );
        for want in [
            "lbaas.bind",
            "lbaas.port_range",
            "lbaas.extra",
            "lbaas.autoscale.metric",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want} in {e:?}");
        }
        let (_, e) = check("port_range = [0, 70000]");
        assert_eq!(e, ["lbaas.port_range"]);
    }
}
