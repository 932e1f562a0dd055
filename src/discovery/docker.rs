//! The Docker Engine provider: containers and swarm services labelled `faas.name` and
//! `faas.port` become backends of the cluster `faas.name` — every replica one backend.
//!
//! Talks to the Engine API (v1.24 paths) over its unix socket with a small blocking client:
//! one `HTTP/1.0` request per connection, so the answer is the bytes up to EOF and never
//! chunked (the Engine is a Go server: it chunks HTTP/1.1 answers of unknown length).
//!
//! Per look: `GET /containers/json` (running containers), then `GET /services` and
//! `GET /tasks` when the engine is a swarm manager (a node outside a swarm answers 503, which
//! means "no services", not an error).
//!
//! Labels: `faas.name` (the cluster), `faas.port` (the backend port; for a swarm service,
//! `"BASE+slot"` gives task slot *n* the port BASE + *n*, for host-network replicas that
//! share one node), `faas.host` (the backend address instead of the one below) and
//! `faas.weight` (1–10000). A service's labels are its own plus its container labels.
//! Address: `faas.host`, else 127.0.0.1 for host-network containers, else the address on
//! the container's first network (for a task not on this node: its first network
//! attachment).

use super::{Endpoint, Fetched, Service, Source};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Connect, write and read timeout of one API call.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer accepted (a huge engine listing is an error, not a truncation).
const MAX_ANSWER: u64 = 64 << 20;

pub const LABEL_NAME: &str = "faas.name";
pub const LABEL_PORT: &str = "faas.port";
pub const LABEL_HOST: &str = "faas.host";
pub const LABEL_WEIGHT: &str = "faas.weight";
/// Containers that swarm runs for a task carry this; they are found through `/tasks`.
const LABEL_SWARM_TASK: &str = "com.docker.swarm.task.id";

pub struct DockerSource {
    socket: PathBuf,
    interval: Duration,
}

impl DockerSource {
    pub fn new(socket: PathBuf, interval: Duration) -> DockerSource {
        DockerSource { socket, interval }
    }

    /// One `GET`; returns the status and the body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let shown = self.socket.display();
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let req = format!("GET {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: switchyard\r\n\r\n");
        s.write_all(req.as_bytes())
            .map_err(|e| format!("{shown}: {e}"))?;
        let mut buf = Vec::with_capacity(16 * 1024);
        s.take(MAX_ANSWER + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{shown}: reading GET {path}: {e}"))?;
        if buf.len() as u64 > MAX_ANSWER {
            return Err(format!("GET {path}: answer larger than {MAX_ANSWER} bytes"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(format!("GET {path}: the engine closed mid-answer"))
            }
            Err(e) => return Err(format!("GET {path}: malformed answer: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut body = buf.split_off(head_len);
        if let Some(n) = len {
            if body.len() < n {
                return Err(format!(
                    "GET {path}: answer shorter than its Content-Length"
                ));
            }
            body.truncate(n);
        }
        Ok((status, body))
    }

    fn get_json(&self, path: &str) -> Result<(u16, Json), String> {
        let (status, body) = self.get(path)?;
        let v = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "GET {path}: status {status}, body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        Ok((status, v))
    }
}

impl Source for DockerSource {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn describe(&self) -> String {
        self.socket.display().to_string()
    }

    fn fetch(&mut self) -> Result<Fetched, String> {
        let (status, containers) = self.get_json("/v1.24/containers/json")?;
        if status != 200 {
            return Err(format!(
                "GET /v1.24/containers/json: {}",
                api_error(status, &containers)
            ));
        }
        let containers = containers.as_array().cloned().unwrap_or_default();
        let (status, services) = self.get_json("/v1.24/services")?;
        let (services, tasks) = match status {
            200 => {
                let filter = "%7B%22desired-state%22%3A%5B%22running%22%5D%7D";
                let (ts, tasks) = self.get_json(&format!("/v1.24/tasks?filters={filter}"))?;
                if ts != 200 {
                    return Err(format!("GET /v1.24/tasks: {}", api_error(ts, &tasks)));
                }
                (
                    services.as_array().cloned().unwrap_or_default(),
                    tasks.as_array().cloned().unwrap_or_default(),
                )
            }
            // Not a swarm manager (no swarm, or a worker node): containers only.
            503 | 406 => (Vec::new(), Vec::new()),
            _ => {
                return Err(format!(
                    "GET /v1.24/services: {}",
                    api_error(status, &services)
                ))
            }
        };
        Ok(read_engine(&containers, &services, &tasks))
    }
}

fn api_error(status: u16, body: &Json) -> String {
    match body.get("message").and_then(Json::as_str) {
        Some(m) => format!("status {status}: {m}"),
        None => format!("status {status}"),
    }
}

fn labels(v: Option<&Json>) -> BTreeMap<String, String> {
    v.and_then(Json::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What the labels ask for.
struct Wanted {
    name: String,
    port: PortSpec,
    host: Option<IpAddr>,
    weight: u32,
}

#[derive(Clone, Copy)]
enum PortSpec {
    Fixed(u16),
    /// `BASE+slot`: swarm task slot *n* listens on BASE + *n*.
    PlusSlot(u16),
}

/// `None`: not a FaaS service (no `faas.name`). `Err`: labelled, but the labels are bad.
fn wanted(l: &BTreeMap<String, String>) -> Option<Result<Wanted, String>> {
    let name = l.get(LABEL_NAME)?;
    Some((|| {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(format!("{LABEL_NAME}={name:?} is not a valid cluster name"));
        }
        let port = l
            .get(LABEL_PORT)
            .ok_or_else(|| format!("{LABEL_PORT} is missing"))?;
        let spec = match port.trim().strip_suffix("+slot") {
            Some(base) => PortSpec::PlusSlot(
                base.trim()
                    .parse()
                    .map_err(|_| format!("{LABEL_PORT}={port:?} is not BASE+slot"))?,
            ),
            None => match port.trim().parse::<u16>() {
                Ok(p) if p > 0 => PortSpec::Fixed(p),
                _ => return Err(format!("{LABEL_PORT}={port:?} is not a port (1-65535)")),
            },
        };
        let host = match l.get(LABEL_HOST) {
            None => None,
            Some(h) => Some(
                h.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{LABEL_HOST}={h:?} is not an IP address"))?,
            ),
        };
        let weight = match l.get(LABEL_WEIGHT) {
            None => 1,
            Some(w) => match w.trim().parse::<u32>() {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => return Err(format!("{LABEL_WEIGHT}={w:?} is not in 1..=10000")),
            },
        };
        Ok(Wanted {
            name: name.clone(),
            port: spec,
            host,
            weight,
        })
    })())
}

/// A container's address: 127.0.0.1 on the host network, else its first network's.
fn container_ip(c: &Json) -> Option<IpAddr> {
    if c.pointer("/HostConfig/NetworkMode").and_then(Json::as_str) == Some("host") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let nets = c.pointer("/NetworkSettings/Networks")?.as_object()?;
    nets.values()
        .filter_map(|n| n.get("IPAddress")?.as_str()?.parse().ok())
        .next()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The engine's listings → services. Pure, for tests.
pub fn read_engine(containers: &[Json], services: &[Json], tasks: &[Json]) -> Fetched {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut by_id: HashMap<&str, &Json> = HashMap::new();
    for c in containers {
        let id = c.get("Id").and_then(Json::as_str).unwrap_or("");
        by_id.insert(id, c);
        let l = labels(c.get("Labels"));
        if l.contains_key(LABEL_SWARM_TASK) {
            continue; // a swarm task: seen through /tasks
        }
        if c.get("State")
            .and_then(Json::as_str)
            .is_some_and(|s| s != "running")
        {
            continue;
        }
        let cname = c.pointer("/Names/0").and_then(Json::as_str).map_or_else(
            || short(id).to_string(),
            |n| n.trim_start_matches('/').to_string(),
        );
        let w = match wanted(&l) {
            None => continue,
            Some(Err(e)) => {
                skipped.push(format!("container {cname}: {e}"));
                continue;
            }
            Some(Ok(w)) => w,
        };
        let port = match w.port {
            PortSpec::Fixed(p) => p,
            PortSpec::PlusSlot(_) => {
                skipped.push(format!(
                    "container {cname}: {LABEL_PORT}=BASE+slot is for swarm services"
                ));
                continue;
            }
        };
        let Some(ip) = w.host.or_else(|| container_ip(c)) else {
            skipped.push(format!("container {cname}: no address (no network)"));
            continue;
        };
        out.entry(w.name).or_default().push(Endpoint {
            addr: SocketAddr::new(ip, port),
            weight: w.weight,
            source: format!("container {cname}"),
        });
    }

    let mut wanted_services: HashMap<&str, (String, Wanted)> = HashMap::new();
    for s in services {
        let id = s.get("ID").and_then(Json::as_str).unwrap_or("");
        let sname = s
            .pointer("/Spec/Name")
            .and_then(Json::as_str)
            .unwrap_or(id)
            .to_string();
        let mut l = labels(s.pointer("/Spec/TaskTemplate/ContainerSpec/Labels"));
        l.extend(labels(s.pointer("/Spec/Labels")));
        match wanted(&l) {
            None => {}
            Some(Err(e)) => skipped.push(format!("service {sname}: {e}")),
            Some(Ok(w)) => {
                wanted_services.insert(id, (sname, w));
            }
        }
    }
    for t in tasks {
        let Some((sname, w)) = t
            .get("ServiceID")
            .and_then(Json::as_str)
            .and_then(|id| wanted_services.get(id))
        else {
            continue;
        };
        let running = t.pointer("/Status/State").and_then(Json::as_str) == Some("running")
            && t.get("DesiredState").and_then(Json::as_str) == Some("running");
        if !running {
            continue;
        }
        let slot = t.get("Slot").and_then(Json::as_u64);
        let what = match slot {
            Some(n) => format!("task {n} of service {sname}"),
            None => format!(
                "task {} of service {sname}",
                short(t.get("ID").and_then(Json::as_str).unwrap_or("?"))
            ),
        };
        let port = match (w.port, slot) {
            (PortSpec::Fixed(p), _) => p,
            (PortSpec::PlusSlot(base), Some(n)) => match u16::try_from(u64::from(base) + n) {
                Ok(p) => p,
                Err(_) => {
                    skipped.push(format!("{what}: {base}+{n} is not a port"));
                    continue;
                }
            },
            (PortSpec::PlusSlot(_), None) => {
                skipped.push(format!("{what}: BASE+slot needs a replicated service"));
                continue;
            }
        };
        let local = t
            .pointer("/Status/ContainerStatus/ContainerID")
            .and_then(Json::as_str)
            .and_then(|id| by_id.get(id));
        let ip = w
            .host
            .or_else(|| local.and_then(|c| container_ip(c)))
            .or_else(|| task_ip(t));
        let Some(ip) = ip else {
            skipped.push(format!("{what}: no address yet"));
            continue;
        };
        out.entry(w.name.clone()).or_default().push(Endpoint {
            addr: SocketAddr::new(ip, port),
            weight: w.weight,
            source: what,
        });
    }
    Fetched {
        services: out
            .into_iter()
            .map(|(name, backends)| Service {
                name,
                backends,
                extra: None,
            })
            .collect(),
        skipped,
        next: None,
        strict: false,
    }
}

/// A task's address from its network attachments: the host network means 127.0.0.1, else
/// the first attachment's first address (`10.0.1.5/24`).
fn task_ip(t: &Json) -> Option<IpAddr> {
    let atts = t.get("NetworksAttachments")?.as_array()?;
    for a in atts {
        if a.pointer("/Network/Spec/Name").and_then(Json::as_str) == Some("host") {
            return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if let Some(ip) = a
            .pointer("/Addresses/0")
            .and_then(Json::as_str)
            .and_then(|s| s.split('/').next()?.parse().ok())
        {
            return Some(ip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_services_and_tasks() {
        let containers = vec![
            json!({"Id":"aaaaaaaaaaaaaaaa","Names":["/web-1"],"State":"running",
                   "Labels":{"faas.name":"web","faas.port":"9001"},
                   "HostConfig":{"NetworkMode":"host"},"NetworkSettings":{"Networks":{"host":{"IPAddress":""}}}}),
            json!({"Id":"bbbbbbbbbbbbbbbb","Names":["/web-2"],"State":"running",
                   "Labels":{"faas.name":"web","faas.port":"80","faas.weight":"3"},
                   "HostConfig":{"NetworkMode":"default"},"NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.5"}}}}),
            json!({"Id":"cccccccccccccccc","Names":["/bad"],"State":"running",
                   "Labels":{"faas.name":"bad","faas.port":"http"}}),
            json!({"Id":"dddddddddddddddd","Names":["/plain"],"State":"running","Labels":{}}),
            json!({"Id":"eeeeeeeeeeeeeeee","Names":["/svc.1.x"],"State":"running",
                   "Labels":{"faas.name":"svc","faas.port":"7000+slot","com.docker.swarm.task.id":"t1"},
                   "HostConfig":{"NetworkMode":"host"}}),
        ];
        let services = vec![
            json!({"ID":"s1","Spec":{"Name":"svc","Labels":{"faas.port":"7000+slot"},
            "TaskTemplate":{"ContainerSpec":{"Labels":{"faas.name":"svc"}}}}}),
        ];
        let tasks = vec![
            json!({"ID":"t1","ServiceID":"s1","Slot":1,"DesiredState":"running",
                   "Status":{"State":"running","ContainerStatus":{"ContainerID":"eeeeeeeeeeeeeeee"}}}),
            json!({"ID":"t2","ServiceID":"s1","Slot":2,"DesiredState":"running",
                   "Status":{"State":"running"},
                   "NetworksAttachments":[{"Network":{"Spec":{"Name":"overlay1"}},"Addresses":["10.0.1.7/24"]}]}),
            json!({"ID":"t3","ServiceID":"s1","Slot":3,"DesiredState":"shutdown","Status":{"State":"running"}}),
        ];
        let f = read_engine(&containers, &services, &tasks);
        let by: BTreeMap<_, _> = f.services.iter().map(|s| (s.name.as_str(), s)).collect();
        let web: Vec<String> = by["web"]
            .backends
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(web, ["127.0.0.1:9001", "172.17.0.5:80"]);
        assert_eq!(by["web"].backends[1].weight, 3);
        let svc: Vec<String> = by["svc"]
            .backends
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(svc, ["127.0.0.1:7001", "10.0.1.7:7002"]);
        assert!(!by.contains_key("bad"));
        assert_eq!(f.skipped.len(), 1, "{:?}", f.skipped);
        assert!(f.skipped[0].contains("container bad"));
    }
}
