//! The DNS provider: a name's A and AAAA records (on the configured port), or its SRV records
//! (each with its own target and port), re-resolved when the answer's TTL runs out, the TTL
//! clamped to `[min_ttl, max_ttl]`.
//!
//! A minimal stub resolver: one query per record type, over UDP to one server (the
//! configured `server`, else the first `nameserver` of /etc/resolv.conf), again over TCP when
//! the answer is truncated. The wire format is `hickory-proto`'s; the transport is a few
//! blocking socket calls, which is all a discovery thread needs (a full resolver would bring
//! an async runtime for nothing). The name is queried as given, fully qualified (no search
//! domains, no /etc/hosts).
//!
//! A and AAAA are asked separately; one of them failing is ignored when the other gave
//! addresses. No such name (NXDOMAIN) or no records of the type is an answer: the cluster has no
//! backends until the name has addresses again (retried after the negative-caching TTL,
//! clamped). A timeout or a server failure (SERVFAIL, REFUSED, …) is a failed look: the last
//! good set stays.

use super::{Endpoint, Fetched, Service, Source};
use crate::config::discovery::{DnsConfig, DnsRecord};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// SRV targets resolved per look, at most (each may cost two queries).
const MAX_SRV_TARGETS: usize = 64;

pub struct DnsSource {
    cfg: DnsConfig,
    next_id: u16,
}

/// One answer: its records, and the TTL to use when it has none of the asked type.
struct Answer {
    answers: Vec<Record>,
    additionals: Vec<Record>,
    negative_ttl: Option<u32>,
}

impl DnsSource {
    pub fn new(cfg: DnsConfig) -> DnsSource {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos())
            ^ std::process::id();
        DnsSource {
            cfg,
            next_id: seed as u16,
        }
    }

    fn query(
        &mut self,
        server: SocketAddr,
        name: &str,
        rtype: RecordType,
    ) -> Result<Answer, String> {
        let qname = Name::from_str(&format!("{}.", name.trim_end_matches('.')))
            .map_err(|e| format!("invalid name {name:?}: {e}"))?;
        // An id that moves by a large odd step: distinct for 65,536 queries.
        self.next_id = self.next_id.wrapping_add(40_503);
        let id = self.next_id;
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(qname.clone(), rtype));
        let wire = m
            .to_vec()
            .map_err(|e| format!("cannot encode a query: {e}"))?;
        let what = format!("{rtype} {name} @{server}");
        let mut resp = udp_exchange(server, &wire, id, self.cfg.timeout)
            .map_err(|e| format!("{what}: {e}"))?;
        if resp.truncated() {
            resp = tcp_exchange(server, &wire, id, self.cfg.timeout)
                .map_err(|e| format!("{what} (TCP): {e}"))?;
        }
        if resp.queries().first().map(|q| q.name()) != Some(&qname) {
            return Err(format!("{what}: the answer is for another question"));
        }
        match resp.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => return Err(format!("{what}: server answered {code}")),
        }
        let negative_ttl = resp.name_servers().iter().find_map(|r| match r.data() {
            Some(RData::SOA(soa)) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        });
        Ok(Answer {
            answers: resp.answers().to_vec(),
            additionals: resp.additionals().to_vec(),
            negative_ttl,
        })
    }

    /// A and AAAA records of `name`, with the lowest TTL seen (None: no records).
    fn addresses(
        &mut self,
        server: SocketAddr,
        name: &str,
        ttl: &mut Option<u32>,
    ) -> Result<Vec<IpAddr>, String> {
        let mut out = Vec::new();
        let mut failed = None;
        for rtype in [RecordType::A, RecordType::AAAA] {
            let a = match self.query(server, name, rtype) {
                Ok(a) => a,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            let mut any = false;
            for r in &a.answers {
                let ip = match r.data() {
                    Some(RData::A(a)) if rtype == RecordType::A => IpAddr::V4(a.0),
                    Some(RData::AAAA(a)) if rtype == RecordType::AAAA => IpAddr::V6(a.0),
                    _ => continue,
                };
                any = true;
                lower(ttl, r.ttl());
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            if !any {
                if let Some(n) = a.negative_ttl {
                    lower(ttl, n);
                }
            }
        }
        // One type failing (some servers refuse AAAA for names they only know by A) is
        // fine when the other gave addresses; otherwise the look failed.
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

fn lower(ttl: &mut Option<u32>, v: u32) {
    *ttl = Some(ttl.map_or(v, |t| t.min(v)));
}

impl Source for DnsSource {
    fn interval(&self) -> Duration {
        self.cfg.min_ttl
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.cfg.host,
            match self.cfg.record {
                DnsRecord::Addr => "A/AAAA",
                DnsRecord::Srv => "SRV",
            }
        )
    }

    fn fetch(&mut self) -> Result<Fetched, String> {
        let server = match self.cfg.server {
            Some(s) => s,
            None => resolv_conf_server().ok_or(
                "no DNS server: set server, or a nameserver in /etc/resolv.conf".to_string(),
            )?,
        };
        let mut ttl: Option<u32> = None;
        let host = self.cfg.host.clone();
        let mut backends = Vec::new();
        match self.cfg.record {
            DnsRecord::Addr => {
                for ip in self.addresses(server, &host, &mut ttl)? {
                    backends.push(Endpoint {
                        addr: SocketAddr::new(ip, self.cfg.port.unwrap_or(0)),
                        weight: 1,
                        source: format!("{} record", if ip.is_ipv4() { "A" } else { "AAAA" }),
                    });
                }
            }
            DnsRecord::Srv => {
                let a = self.query(server, &host, RecordType::SRV)?;
                let srvs: Vec<(u32, &hickory_proto::rr::rdata::SRV)> = a
                    .answers
                    .iter()
                    .filter_map(|r| match r.data() {
                        Some(RData::SRV(s)) => Some((r.ttl(), s)),
                        _ => None,
                    })
                    .collect();
                if srvs.is_empty() {
                    if let Some(n) = a.negative_ttl {
                        lower(&mut ttl, n);
                    }
                }
                // RFC 2782: the lowest priority is used while it has targets.
                let best = srvs.iter().map(|(_, s)| s.priority()).min();
                let chosen: Vec<(u32, String, u16, u16)> = srvs
                    .iter()
                    .filter(|(_, s)| Some(s.priority()) == best && s.port() != 0)
                    .take(MAX_SRV_TARGETS)
                    .map(|(t, s)| (*t, s.target().to_ascii(), s.port(), s.weight()))
                    .collect();
                for (t, target, port, weight) in chosen {
                    lower(&mut ttl, t);
                    // Addresses the server sent along, else ask.
                    let mut ips: Vec<IpAddr> = a
                        .additionals
                        .iter()
                        .filter(|r| r.name().to_ascii().eq_ignore_ascii_case(&target))
                        .filter_map(|r| {
                            let ip = match r.data() {
                                Some(RData::A(x)) => IpAddr::V4(x.0),
                                Some(RData::AAAA(x)) => IpAddr::V6(x.0),
                                _ => return None,
                            };
                            lower(&mut ttl, r.ttl());
                            Some(ip)
                        })
                        .collect();
                    if ips.is_empty() {
                        ips = self.addresses(server, &target, &mut ttl)?;
                    }
                    for ip in ips {
                        backends.push(Endpoint {
                            addr: SocketAddr::new(ip, port),
                            weight: u32::from(weight).clamp(1, 10_000),
                            source: format!("SRV {}", target.trim_end_matches('.')),
                        });
                    }
                }
            }
        }
        let ttl = Duration::from_secs(u64::from(ttl.unwrap_or(0)));
        Ok(Fetched {
            services: vec![Service {
                name: self.cfg.cluster.clone(),
                backends,
                extra: None,
            }],
            skipped: Vec::new(),
            next: Some(ttl.clamp(self.cfg.min_ttl, self.cfg.max_ttl)),
            strict: false,
        })
    }
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
fn resolv_conf_server() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == "nameserver")
            .then(|| it.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

fn parse_reply(buf: &[u8], id: u16) -> Option<Message> {
    let m = Message::from_vec(buf).ok()?;
    (m.id() == id && m.message_type() == MessageType::Response).then_some(m)
}

fn udp_exchange(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Message, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.send(wire).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    // Datagrams that are not the answer (stale, spoofed) are skipped until the deadline.
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(m) = parse_reply(&buf[..n], id) {
                    return Ok(m);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("no answer within {timeout:?}"))
}

fn tcp_exchange(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Message, String> {
    let mut s = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let len = u16::try_from(wire.len()).map_err(|_| "query too long".to_string())?;
    let mut out = Vec::with_capacity(wire.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(wire);
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    parse_reply(&buf, id).ok_or_else(|| "the answer does not match the query".into())
}
