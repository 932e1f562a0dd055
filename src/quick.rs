//! The Foo-compatible quick mode: `switchyard -listen :8002 -forward :8001 [-http ADDR]
//! [-recovery-path P] [-protocol tcp|foo]`, single- or double-dash flags, the original
//! defaults. It builds the same validated `Config` a file would.

use crate::config::{self, Config, ConfigError};
use crate::stats::StatsConfig;

pub const DEFAULT_LISTEN: &str = ":8002";
pub const DEFAULT_FORWARD: &str = ":8001";
pub const DEFAULT_HTTP: &str = "0.0.0.0:8088";
pub const DEFAULT_RECOVERY_PATH: &str = ".data/recovery.json";

/// Long flags written with one dash (`-listen`) become `--listen`, as Go's flag package
/// accepted both. One-letter flags (`-c`) and negative numbers are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let b = a.as_bytes();
            let single_dash_long =
                i > 0 && b.len() > 2 && b[0] == b'-' && b[1] != b'-' && b[1].is_ascii_alphabetic();
            if single_dash_long {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct QuickArgs {
    pub listen: Option<String>,
    pub forward: Option<String>,
    pub http: Option<String>,
    pub recovery_path: Option<String>,
    pub protocol: Option<String>,
}

impl QuickArgs {
    /// Quick mode's stats: the Foo JSON on `/metrics`, the recovery file at `-recovery-path`.
    pub fn stats_config(&self) -> StatsConfig {
        StatsConfig {
            foo_compat: true,
            recovery_path: Some(
                self.recovery_path
                    .as_deref()
                    .unwrap_or(DEFAULT_RECOVERY_PATH)
                    .into(),
            ),
            inherit: false,
        }
    }

    pub fn any(&self) -> bool {
        self.listen.is_some()
            || self.forward.is_some()
            || self.http.is_some()
            || self.recovery_path.is_some()
            || self.protocol.is_some()
    }

    /// The quick-mode config, written as TOML and put through the normal validation so both
    /// paths share every rule and default.
    pub fn to_config(&self) -> Result<Config, Vec<ConfigError>> {
        self.to_doc()
            .and_then(|doc| config::parse_table(doc).map_err(|e| self.flag_errors(e)))
    }

    /// The quick-mode config as a raw document (what the control plane runs and edits). The
    /// stats/health HTTP address (`-http`) is the admin API's; on a non-loopback address it
    /// is read-only, as the original's endpoints were.
    pub fn to_doc(&self) -> Result<toml::Table, Vec<ConfigError>> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let forward = self.forward.as_deref().unwrap_or(DEFAULT_FORWARD);
        let protocol = self.protocol.as_deref().unwrap_or("foo");
        let http = self.http.as_deref().unwrap_or(DEFAULT_HTTP);
        let read_only = match config::parse_bind(http) {
            Ok(a) => !a.ip().is_loopback(),
            Err(e) => {
                return Err(vec![ConfigError {
                    path: "-http".into(),
                    message: e,
                }])
            }
        };
        let esc = |s: &str| toml::Value::String(s.to_string()).to_string();
        let text = format!(
            "[server]\nadmin = {}\nadmin_read_only = {read_only}\n\
             [[listeners]]\nname = \"quick\"\nbind = {}\nprotocol = {}\ncluster = \"forward\"\n\
             [[clusters]]\nname = \"forward\"\nbackends = [{}]\nconnect_attempts = 1\n",
            esc(http),
            esc(listen),
            esc(protocol),
            esc(forward)
        );
        let doc = config::parse_toml(&text)?;
        // Report every bad flag at once, by flag name.
        config::parse_table(doc.clone()).map_err(|e| self.flag_errors(e))?;
        Ok(doc)
    }

    fn flag_errors(&self, errs: Vec<ConfigError>) -> Vec<ConfigError> {
        errs.into_iter()
            .map(|e| ConfigError {
                path: match e.path.as_str() {
                    "listeners[0].bind" => "-listen".into(),
                    "listeners[0].protocol" => "-protocol".into(),
                    "server.admin" => "-http".into(),
                    p if p.starts_with("clusters[0].backends") => "-forward".into(),
                    p => p.to_string(),
                },
                message: e.message,
            })
            .collect()
    }
}

/// `switchyard faas [-port 8080] [-http ADDR] [-socket PATH]`: the FaaS gateway's quick mode.
/// A FaaS listener on all interfaces at `port` (serving the original `GET /stats`) and Docker
/// discovery on `socket` (default: the Engine's). The admin API is off unless `-http` names
/// an address (read-only when it is not loopback, as in the Foo quick mode).
pub fn faas_doc(
    port: u16,
    http: Option<&str>,
    socket: Option<&std::path::Path>,
) -> Result<toml::Table, Vec<ConfigError>> {
    let esc = |s: &str| toml::Value::String(s.to_string()).to_string();
    let (admin, read_only) = match http {
        None => ("off".to_string(), false),
        Some(h) => match config::parse_bind(h) {
            Ok(a) => (h.to_string(), !a.ip().is_loopback()),
            Err(e) => {
                return Err(vec![ConfigError {
                    path: "-http".into(),
                    message: e,
                }])
            }
        },
    };
    let socket = socket.map_or(
        config::discovery::defaults::DOCKER_SOCKET.to_string(),
        |p| p.display().to_string(),
    );
    let text = format!(
        "[server]\nadmin = {}\nadmin_read_only = {read_only}\n\
         [[listeners]]\nname = \"faas\"\nbind = \"0.0.0.0:{port}\"\nprotocol = \"http\"\n\
         faas = true\nfaas_stats = true\n\
         [[discovery]]\ntype = \"docker\"\nsocket = {}\n",
        esc(&admin),
        esc(&socket),
    );
    let doc = config::parse_toml(&text)?;
    config::parse_table(doc.clone()).map_err(|errs| {
        errs.into_iter()
            .map(|e| ConfigError {
                path: match e.path.as_str() {
                    "server.admin" => "-http".into(),
                    "discovery[0].socket" => "-socket".into(),
                    p => p.to_string(),
                },
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_become_double() {
        let v = normalize_args(
            [
                "switchyard",
                "-listen",
                ":1",
                "--forward",
                ":2",
                "-c",
                "f",
                "-5",
            ]
            .map(String::from),
        );
        assert_eq!(
            v,
            [
                "switchyard",
                "--listen",
                ":1",
                "--forward",
                ":2",
                "-c",
                "f",
                "-5"
            ]
        );
    }

    #[test]
    fn defaults_match_the_original() {
        let c = QuickArgs::default().to_config().expect("valid");
        assert_eq!(c.listeners[0].bind, "0.0.0.0:8002".parse().unwrap());
        assert_eq!(
            c.clusters[0].backends[0].addr,
            "127.0.0.1:8001".parse().unwrap()
        );
    }

    #[test]
    fn faas_quick_mode_is_a_faas_listener_with_docker_discovery() {
        let doc = faas_doc(8080, None, None).expect("valid");
        let c = config::parse_table(doc).expect("valid");
        assert_eq!(c.listeners[0].bind, "0.0.0.0:8080".parse().unwrap());
        assert!(c.listeners[0].faas && c.listeners[0].faas_stats);
        assert_eq!(c.server.admin, None);
        assert_eq!(c.discovery[0].provider.kind(), "docker");
        assert!(faas_doc(1, Some("nope"), None).is_err());
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let q = QuickArgs {
            listen: Some("nope".into()),
            forward: Some("also\"bad".into()),
            protocol: Some("udp".into()),
            ..Default::default()
        };
        let paths: Vec<_> = q
            .to_config()
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(paths.contains(&"-listen".to_string()), "{paths:?}");
        assert!(paths.contains(&"-forward".to_string()), "{paths:?}");
        assert!(paths.contains(&"-protocol".to_string()), "{paths:?}");
    }
}
