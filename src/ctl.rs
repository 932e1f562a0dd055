//! `switchyard ctl`: the admin API from the command line. Readable tables by default, the
//! API's JSON with `--json`.
//!
//! Exit codes: 0 done; 1 the API refused the request (4xx: the error is printed); 64 bad
//! usage or input; 69 the admin API cannot be reached; 70 the server failed (5xx) or answered
//! something that is not the API.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_SERVER: u8 = 70;
const TIMEOUT: Duration = Duration::from_secs(30);
/// An upgrade answers once the new process is ready (`server.upgrade_timeout`, 30 s by default).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);
/// Where systemd's `RuntimeDirectory=switchyard` puts the control socket.
const DEFAULT_RUNTIME_DIR: &str = "/run/switchyard";

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Admin API address [env: SWITCHYARD_ADMIN; default: the config's server.admin, else
    /// 127.0.0.1:8088].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Bearer token for changes [env: SWITCHYARD_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the token from this file [env: SWITCHYARD_TOKEN_FILE; default: the config's
    /// server.admin_token_file].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Take the admin address and token file from this config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only apply the change if the running config is still at this version (else exit 1, 412).
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<u64>,
    /// `upgrade` through this control socket instead of the admin API [env: SWITCHYARD_SOCKET;
    /// used by default when the admin API is off: <server.runtime_dir or $RUNTIME_DIRECTORY or
    /// /run/switchyard>/switchyard.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Show the running configuration (always JSON).
    Config,
    /// List clusters.
    Clusters,
    /// Show, create/replace or delete one cluster.
    Cluster {
        #[command(subcommand)]
        op: ObjectOp,
    },
    /// List a cluster's backends.
    Backends {
        /// The cluster's name.
        cluster: String,
    },
    /// Add, reweight, drain or remove a backend.
    Backend {
        #[command(subcommand)]
        op: BackendOp,
    },
    /// List listeners.
    Listeners,
    /// Show, create/replace or delete one listener.
    Listener {
        #[command(subcommand)]
        op: ObjectOp,
    },
    /// List services (versions and release strategies).
    Services,
    /// Show, create/replace or delete one service.
    Service {
        #[command(subcommand)]
        op: ObjectOp,
    },
    /// Add or remove a version of a service.
    Version {
        #[command(subcommand)]
        op: VersionOp,
    },
    /// Send every request of a service to one version (default: its highest version).
    Promote {
        service: String,
        version: Option<String>,
    },
    /// Take a version out of a service's rotation (default: the one new requests go to).
    Rollback {
        service: String,
        version: Option<String>,
    },
    /// Reload the config file (same as SIGHUP).
    Reload,
    /// The stats object (same as the SIGUSR2 dump).
    Stats,
    /// Prometheus metrics text.
    Metrics,
    /// Liveness: exit 0 when the proxy answers.
    Health,
    /// Show the fault injection state (toxics, HTTP faults, the broker, toxiproxy proxies).
    Faults,
    /// Change fault injection (runtime only: a restart clears every fault).
    Fault {
        #[command(subcommand)]
        op: FaultOp,
    },
    /// The chaos broker: show its weights, or set them (`pDelete=10 pSlow=10 slowMs=2000`).
    Broker {
        /// `KEY=PERCENT` settings (pDuplicate, pDelete, pSalt, pSlow, pNothing, slowMs).
        settings: Vec<String>,
        /// Only this HTTP listener (default: every HTTP listener).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Zero-downtime binary upgrade: start the binary at the path the proxy was started from,
    /// hand it the listening sockets, let the old process drain. Exit 0 once the new process
    /// serves; on failure the old one keeps serving (exit 70 with the reason).
    Upgrade,
}

#[derive(Subcommand, Debug)]
pub enum FaultOp {
    /// Replace the whole fault state from SOURCE (inline JSON, a .json file, or `-`).
    Set { source: String },
    /// Remove every fault (toxiproxy proxies stay).
    Clear,
    /// Add an L4 toxic to a listener (toxiproxy's JSON:
    /// `'{"type":"latency","stream":"downstream","attributes":{"latency":100}}'`).
    Toxic { listener: String, source: String },
    /// Remove a listener's toxic by name.
    Untoxic { listener: String, name: String },
    /// Take a listener down: its port refuses connections.
    Down { listener: String },
    /// Bring a listener back up (on the same port).
    Up { listener: String },
    /// Add an HTTP fault (`'{"type":"abort","status":503,"probability":0.1,"listener":"web"}'`).
    Http { source: String },
    /// Remove an HTTP fault by name.
    Unhttp { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ObjectOp {
    /// Show one object (a table; --json for its JSON).
    Get {
        /// The object's name.
        name: String,
    },
    /// Create or replace an object from SOURCE, then show it.
    Set {
        /// The object's name.
        name: String,
        /// Inline JSON (`'{"backends":["127.0.0.1:9001"]}'`), a .json or .toml file holding
        /// the table, or `-` for JSON on stdin.
        source: String,
    },
    /// Delete an object (a cluster still used by a listener is refused).
    Delete {
        /// The object's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendOp {
    /// Add a backend to a cluster, then list the cluster's backends.
    Add {
        /// The cluster's name.
        cluster: String,
        /// The backend's address, host:port.
        addr: String,
        /// Its weight (1-10000; default 1).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Change a backend's weight, then list the cluster's backends.
    Set {
        /// The cluster's name.
        cluster: String,
        /// The backend's address, as written in the cluster.
        addr: String,
        /// The new weight (1-10000).
        #[arg(long)]
        weight: u32,
    },
    /// Stop sending new connections and requests to the backend (`--undo` puts it back).
    Drain {
        /// The cluster's name.
        cluster: String,
        /// The backend's address, as written in the cluster.
        addr: String,
        /// Undrain: put the backend back in rotation.
        #[arg(long)]
        undo: bool,
    },
    /// Remove a backend from a cluster (its connections finish).
    Delete {
        /// The cluster's name.
        cluster: String,
        /// The backend's address, as written in the cluster.
        addr: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionOp {
    Add {
        service: String,
        version: String,
        cluster: String,
        /// The version cookie's value (default: the version string).
        #[arg(long)]
        id: Option<String>,
    },
    Delete {
        service: String,
        version: String,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

struct Reply {
    status: u16,
    body: Vec<u8>,
}

pub fn run(args: CtlArgs) -> u8 {
    match run_inner(&args) {
        Ok(()) => 0,
        Err(Fail(code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(EXIT_USAGE, msg.into())
}

/// Admin address and token from flags, environment and the config file, in that order.
fn endpoint(args: &CtlArgs) -> Result<(String, Option<String>), Fail> {
    let file_server = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?;
            let t: toml::Table = text
                .parse()
                .map_err(|e| usage(format!("{}: not TOML: {e}", p.display())))?;
            t.get("server").and_then(|s| s.as_table()).cloned()
        }
        None => None,
    };
    let from_file = |k: &str| {
        file_server
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let admin = args
        .admin
        .clone()
        .or_else(|| std::env::var("SWITCHYARD_ADMIN").ok())
        .or_else(|| from_file("admin"))
        .unwrap_or_else(|| crate::config::defaults::ADMIN.to_string());
    let admin = match admin.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => admin.replace("0.0.0.0:", "127.0.0.1:"),
    };
    let token_file = args
        .token_file
        .clone()
        .or_else(|| std::env::var_os("SWITCHYARD_TOKEN_FILE").map(PathBuf::from))
        .or_else(|| from_file("admin_token_file").map(PathBuf::from));
    let token = match (
        &args.token,
        std::env::var("SWITCHYARD_TOKEN").ok(),
        token_file,
    ) {
        (Some(t), _, _) => Some(t.clone()),
        (None, Some(t), _) => Some(t),
        (None, None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| usage(format!("cannot read token file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    Ok((admin, token))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(
    admin: &str,
    token: Option<&str>,
    if_match: Option<u64>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Reply, Fail> {
    request_within(admin, token, if_match, method, path, body, TIMEOUT)
}

fn request_within(
    admin: &str,
    token: Option<&str>,
    if_match: Option<u64>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Reply, Fail> {
    let unreachable =
        |e: std::io::Error| Fail(EXIT_UNAVAILABLE, format!("admin API at {admin}: {e}"));
    let addr = admin
        .to_socket_addrs()
        .map_err(|e| usage(format!("bad admin address {admin:?}: {e}")))?
        .next()
        .ok_or_else(|| usage(format!("admin address {admin:?} resolves to nothing")))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(v) = if_match {
        req.push_str(&format!("If-Match: \"{v}\"\r\n"));
    }
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(unreachable)?;
    let bad = || {
        Fail(
            EXIT_SERVER,
            format!("{admin} did not answer like the admin API"),
        )
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok(Reply {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

/// Reads a `set` SOURCE into JSON.
fn source_json(src: &str) -> Result<Value, Fail> {
    let text = if src.trim_start().starts_with('{') {
        return serde_json::from_str(src).map_err(|e| usage(format!("invalid JSON: {e}")));
    } else if src == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(|e| usage(format!("reading stdin: {e}")))?;
        t
    } else {
        std::fs::read_to_string(src).map_err(|e| usage(format!("cannot read {src}: {e}")))?
    };
    if src.ends_with(".toml") {
        let t: toml::Table = text
            .parse()
            .map_err(|e| usage(format!("{src}: not TOML: {e}")))?;
        serde_json::to_value(t).map_err(|e| usage(format!("{src}: {e}")))
    } else {
        serde_json::from_str(&text).map_err(|e| usage(format!("{src}: invalid JSON: {e}")))
    }
}

/// The control socket `upgrade` goes through: `--socket`, `SWITCHYARD_SOCKET`, or (when the
/// config given with `-c` turns the admin API off) the one in its runtime directory.
fn control_socket(args: &CtlArgs) -> Result<Option<PathBuf>, Fail> {
    if let Some(p) = args
        .socket
        .clone()
        .or_else(|| std::env::var_os("SWITCHYARD_SOCKET").map(PathBuf::from))
    {
        return Ok(Some(p));
    }
    let Some(cfg) = &args.config else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(cfg)
        .map_err(|e| usage(format!("cannot read {}: {e}", cfg.display())))?;
    let t: toml::Table = text
        .parse()
        .map_err(|e| usage(format!("{}: not TOML: {e}", cfg.display())))?;
    let server = t.get("server").and_then(|s| s.as_table());
    let get = |k: &str| server.and_then(|s| s.get(k)).and_then(|v| v.as_str());
    if get("admin") != Some("off") {
        return Ok(None);
    }
    Ok(Some(default_socket(get("runtime_dir"))))
}

fn default_socket(runtime_dir: Option<&str>) -> PathBuf {
    let dir = runtime_dir
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var("RUNTIME_DIRECTORY")
                .ok()
                .and_then(|v| v.split(':').next().map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
    crate::upgrade::socket::path_in(&dir)
}

/// `ctl upgrade` through the control socket.
fn upgrade_via_socket(path: &std::path::Path, json: bool) -> Result<(), Fail> {
    let v = crate::upgrade::socket::call(path, "upgrade", UPGRADE_TIMEOUT).map_err(|e| {
        Fail(
            EXIT_UNAVAILABLE,
            format!("control socket {}: {e}", path.display()),
        )
    })?;
    if let Some(e) = v.get("error") {
        let code = e["code"].as_str().unwrap_or("error");
        let exit = if code == "upgrade_failed" {
            EXIT_SERVER
        } else {
            EXIT_REFUSED
        };
        return Err(Fail(
            exit,
            format!("{code}: {}", e["message"].as_str().unwrap_or("")),
        ));
    }
    print_upgraded(&v, json);
    Ok(())
}

fn print_upgraded(v: &Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("upgraded: process {} -> {}", v["old_pid"], v["pid"]);
    }
}

fn run_inner(args: &CtlArgs) -> Result<(), Fail> {
    if matches!(args.verb, Verb::Upgrade) {
        if let Some(path) = control_socket(args)? {
            return upgrade_via_socket(&path, args.json);
        }
    }
    let (admin, token) = endpoint(args)?;
    let call = |method: &str, path: &str, body: Option<Value>| -> Result<Value, Fail> {
        let r = request(
            &admin,
            token.as_deref(),
            args.if_match,
            method,
            path,
            body.as_ref(),
        )?;
        decode(r)
    };
    let text_get = |path: &str| -> Result<String, Fail> {
        let r = request(&admin, token.as_deref(), None, "GET", path, None)?;
        if r.status != 200 {
            decode(r)?;
            return Err(Fail(EXIT_SERVER, format!("GET {path} failed")));
        }
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    };
    let out = |v: &Value, table: &dyn Fn(&Value) -> String| {
        if args.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", table(v));
        }
    };
    match &args.verb {
        Verb::Config => {
            let v = call("GET", "/v1/config", None)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Verb::Clusters => out(&call("GET", "/v1/clusters", None)?, &clusters_table),
        Verb::Backends { cluster } => {
            let v = call("GET", &format!("/v1/clusters/{}", enc(cluster)), None)?;
            out(&v, &backends_table)
        }
        Verb::Listeners => out(&call("GET", "/v1/listeners", None)?, &listeners_table),
        Verb::Services => out(&call("GET", "/v1/services", None)?, &services_table),
        Verb::Version { op } => {
            let v = match op {
                VersionOp::Add {
                    service,
                    version,
                    cluster,
                    id,
                } => {
                    let mut b = json!({ "version": version, "cluster": cluster });
                    if let Some(id) = id {
                        b["id"] = json!(id);
                    }
                    call(
                        "POST",
                        &format!("/v1/services/{}/versions", enc(service)),
                        Some(b),
                    )?
                }
                VersionOp::Delete { service, version } => call(
                    "DELETE",
                    &format!("/v1/services/{}/versions/{}", enc(service), enc(version)),
                    None,
                )?,
            };
            out(&v, &versions_table);
        }
        Verb::Promote { service, version } | Verb::Rollback { service, version } => {
            let verb = if matches!(args.verb, Verb::Promote { .. }) {
                "promote"
            } else {
                "rollback"
            };
            let body = version.as_ref().map(|v| json!({ "version": v }));
            let v = call(
                "POST",
                &format!("/v1/services/{}/{verb}", enc(service)),
                body,
            )?;
            out(&v, &versions_table);
        }
        Verb::Cluster { op } | Verb::Listener { op } | Verb::Service { op } => {
            let kind = match args.verb {
                Verb::Cluster { .. } => "clusters",
                Verb::Service { .. } => "services",
                _ => "listeners",
            };
            let v = match op {
                ObjectOp::Get { name } => call("GET", &format!("/v1/{kind}/{}", enc(name)), None)?,
                ObjectOp::Set { name, source } => call(
                    "PUT",
                    &format!("/v1/{kind}/{}", enc(name)),
                    Some(source_json(source)?),
                )?,
                ObjectOp::Delete { name } => {
                    call("DELETE", &format!("/v1/{kind}/{}", enc(name)), None)?
                }
            };
            // One object: the same table as the list verb, one row.
            let one = |v: &Value| json!({ kind: [v] });
            match op {
                ObjectOp::Delete { .. } => out(&v, &|v| {
                    table(
                        &["DELETED", "VERSION"],
                        vec![vec![s(&v["deleted"]), s(&v["version"])]],
                    )
                }),
                _ if kind == "clusters" => out(&v, &|v| clusters_table(&one(v))),
                _ => out(&v, &|v| listeners_table(&one(v))),
            }
        }
        Verb::Backend { op } => {
            let (method, cluster, path_addr, body) = match op {
                BackendOp::Add {
                    cluster,
                    addr,
                    weight,
                } => {
                    let mut b = json!({ "addr": addr });
                    if let Some(w) = weight {
                        b["weight"] = json!(w);
                    }
                    ("POST", cluster, None, Some(b))
                }
                BackendOp::Set {
                    cluster,
                    addr,
                    weight,
                } => (
                    "PATCH",
                    cluster,
                    Some(addr),
                    Some(json!({ "weight": weight })),
                ),
                BackendOp::Drain {
                    cluster,
                    addr,
                    undo,
                } => (
                    "PATCH",
                    cluster,
                    Some(addr),
                    Some(json!({ "drain": !undo })),
                ),
                BackendOp::Delete { cluster, addr } => ("DELETE", cluster, Some(addr), None),
            };
            let path = match path_addr {
                None => format!("/v1/clusters/{}/backends", enc(cluster)),
                Some(a) => format!("/v1/clusters/{}/backends/{}", enc(cluster), enc(a)),
            };
            let v = call(method, &path, body)?;
            out(&v, &backends_table);
        }
        Verb::Reload => {
            let v = call("POST", "/v1/reload", None)?;
            out(&v, &|v| format!("reloaded: version {}\n", v["version"]));
        }
        Verb::Stats => {
            let t = text_get("/stats")?;
            match serde_json::from_str::<Value>(&t) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(t)),
                Err(_) => print!("{t}"),
            }
        }
        Verb::Metrics => print!("{}", text_get("/metrics")?),
        Verb::Faults => {
            let v = call("GET", "/v1/faults", None)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Verb::Fault { op } => {
            let v = match op {
                FaultOp::Set { source } => call("PUT", "/v1/faults", Some(source_json(source)?))?,
                FaultOp::Clear => call("DELETE", "/v1/faults", None)?,
                FaultOp::Toxic { listener, source } => call(
                    "POST",
                    &format!("/v1/faults/listeners/{}/toxics", enc(listener)),
                    Some(source_json(source)?),
                )?,
                FaultOp::Untoxic { listener, name } => call(
                    "DELETE",
                    &format!(
                        "/v1/faults/listeners/{}/toxics/{}",
                        enc(listener),
                        enc(name)
                    ),
                    None,
                )?,
                FaultOp::Down { listener } | FaultOp::Up { listener } => call(
                    "PATCH",
                    &format!("/v1/faults/listeners/{}", enc(listener)),
                    Some(serde_json::json!({ "enabled": matches!(op, FaultOp::Up { .. }) })),
                )?,
                FaultOp::Http { source } => {
                    call("POST", "/v1/faults/http", Some(source_json(source)?))?
                }
                FaultOp::Unhttp { name } => {
                    call("DELETE", &format!("/v1/faults/http/{}", enc(name)), None)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Verb::Broker { settings, listener } => {
            let path = match listener {
                Some(l) => format!("/broker?listener={}", enc(l)),
                None => "/broker".to_string(),
            };
            let v = if settings.is_empty() {
                call("GET", &path, None)?
            } else {
                let mut m = serde_json::Map::new();
                for s in settings {
                    let (k, v) = s
                        .split_once('=')
                        .ok_or_else(|| usage(format!("{s:?}: expected KEY=NUMBER")))?;
                    let n: f64 = v
                        .parse()
                        .map_err(|_| usage(format!("{s:?}: {v:?} is not a number")))?;
                    m.insert(k.to_string(), serde_json::json!(n));
                }
                call("PATCH", &path, Some(Value::Object(m)))?
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Verb::Upgrade => {
            let r = request_within(
                &admin,
                token.as_deref(),
                None,
                "POST",
                "/v1/upgrade",
                None,
                UPGRADE_TIMEOUT,
            );
            let r = match r {
                // The admin API is not there: try the control socket where systemd puts it.
                Err(Fail(EXIT_UNAVAILABLE, why)) => {
                    let path = default_socket(None);
                    if !path.exists() {
                        return Err(Fail(EXIT_UNAVAILABLE, why));
                    }
                    return upgrade_via_socket(&path, args.json);
                }
                other => other?,
            };
            print_upgraded(&decode(r)?, args.json);
        }
        Verb::Health => {
            let t = text_get("/health")?;
            if !args.json {
                println!("ok");
            } else {
                print!("{t}");
            }
        }
    }
    Ok(())
}

/// 2xx → the JSON body; API errors → exit 1 (4xx) or 70 (5xx) with the error's message.
fn decode(r: Reply) -> Result<Value, Fail> {
    let v: Value = serde_json::from_slice(&r.body).map_err(|_| {
        Fail(
            EXIT_SERVER,
            format!(
                "status {} with a non-JSON body: {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ),
        )
    })?;
    if (200..300).contains(&r.status) {
        return Ok(v);
    }
    let e = &v["error"];
    let mut msg = format!(
        "{} {}: {}",
        r.status,
        e["code"].as_str().unwrap_or("error"),
        e["message"].as_str().unwrap_or("")
    );
    if let Some(f) = e["field"].as_str() {
        msg.push_str(&format!(" (field: {f})"));
    }
    let code = if r.status >= 500 {
        EXIT_SERVER
    } else {
        EXIT_REFUSED
    };
    Err(Fail(code, msg))
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn clusters_table(v: &Value) -> String {
    let rows = v["clusters"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let n = c["backends"].as_array().map_or(0, Vec::len);
            vec![
                s(&c["name"]),
                c["balance"].as_str().unwrap_or("round_robin").to_string(),
                n.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "BALANCE", "BACKENDS"], rows)
}

fn backends_table(v: &Value) -> String {
    // The cluster's read-only status has the live state (health checks, drain).
    if let Some(list) = v["status"]["backends"].as_array() {
        let rows = list
            .iter()
            .map(|b| {
                let last = &b["last_check"];
                vec![
                    s(&b["addr"]),
                    b["weight"].as_u64().unwrap_or(1).to_string(),
                    s(&b["state"]),
                    if last.is_null() {
                        "-".into()
                    } else {
                        s(&last["detail"])
                    },
                ]
            })
            .collect();
        return table(&["ADDR", "WEIGHT", "STATE", "LAST CHECK"], rows);
    }
    let rows = v["backends"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|b| match b {
            Value::String(a) => vec![a.clone(), "1".into(), "up".into()],
            _ => vec![
                s(&b["addr"]),
                b["weight"].as_u64().unwrap_or(1).to_string(),
                if b["drain"] == Value::Bool(true) {
                    "draining".into()
                } else {
                    "up".into()
                },
            ],
        })
        .collect();
    table(&["ADDR", "WEIGHT", "STATE"], rows)
}

fn services_table(v: &Value) -> String {
    let rows = v["services"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|sv| {
            vec![
                s(&sv["name"]),
                sv["strategy"].as_str().unwrap_or("instant").to_string(),
                s(&sv["status"]["serving"]),
                sv["versions"].as_array().map_or(0, Vec::len).to_string(),
                s(&sv["status"]["rollbacks"]),
            ]
        })
        .collect();
    table(
        &["NAME", "STRATEGY", "SERVING", "VERSIONS", "ROLLBACKS"],
        rows,
    )
}

/// A service's versions with their state (the service's read-only status).
fn versions_table(v: &Value) -> String {
    let rows = v["status"]["versions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|x| {
            vec![
                s(&x["version"]),
                s(&x["id"]),
                s(&x["cluster"]),
                s(&x["state"]),
            ]
        })
        .collect();
    table(&["VERSION", "ID", "CLUSTER", "STATE"], rows)
}

fn listeners_table(v: &Value) -> String {
    let rows = v["listeners"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|l| {
            vec![
                s(&l["name"]),
                s(&l["bind"]),
                l["protocol"].as_str().unwrap_or("tcp").to_string(),
                match l["service"].as_str() {
                    Some(svc) => format!("service:{svc}"),
                    None => s(&l["cluster"]),
                },
                s(&l["status"]["local_addr"]),
            ]
        })
        .collect();
    table(&["NAME", "BIND", "PROTOCOL", "CLUSTER", "LISTENING"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_encoding() {
        let t = clusters_table(&json!({"clusters":[{"name":"app","backends":["a","b"]}]}));
        assert_eq!(t, "NAME  BALANCE      BACKENDS\napp   round_robin  2\n");
        let b = backends_table(
            &json!({"backends":["1.2.3.4:5",{"addr":"x:1","weight":3,"drain":true}]}),
        );
        assert!(b.contains("x:1        3       draining"), "{b}");
        assert_eq!(enc("127.0.0.1:80"), "127.0.0.1%3A80");
    }
}
