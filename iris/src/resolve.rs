//! Name resolution through the tunnel: A and AAAA questions asked inside the
//! private network, answers turned into addresses or a `dns_error`.
//!
//! The TTL-bounded cache of the VPC router sits on top of this (it needs the
//! [`Resolution::ttl`] this returns).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use warren_protocol::{ErrorCode, ProxyError};

use crate::tunnels::Tunnels;

/// Addresses a name resolved to, and how long the answer may be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// IPv4 addresses first, then IPv6.
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL among the answers that held addresses (an empty answer for the
    /// other family does not shorten it).
    pub ttl: Duration,
}

fn dns_error(detail: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::DnsError, detail)
}

/// Builds a recursive query for `name`/`rtype` as raw bytes.
pub fn build_query(name: &Name, rtype: RecordType, id: u16) -> Result<Vec<u8>, ProxyError> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), rtype));
    msg.to_vec()
        .map_err(|e| dns_error(format!("could not encode query: {e}")))
}

/// What one answer said.
enum Answer {
    Addrs(Vec<IpAddr>, u32),
    /// NXDOMAIN: the name does not exist (with the SOA rule's negative TTL).
    NoSuchName(u32),
}

fn parse_answer(raw: &[u8], id: u16, host: &str) -> Result<Answer, ProxyError> {
    let msg =
        Message::from_vec(raw).map_err(|e| dns_error(format!("malformed DNS answer: {e}")))?;
    if msg.id() != id || msg.message_type() != MessageType::Response {
        return Err(dns_error("DNS answer does not match the query"));
    }
    let soa_ttl = msg
        .name_servers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(soa.minimum().min(r.ttl())),
            _ => None,
        })
        .unwrap_or(0);
    match msg.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::NoSuchName(soa_ttl)),
        other => return Err(dns_error(format!("resolver answered {other} for {host}"))),
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in msg.answers() {
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push(ip);
        ttl = ttl.min(r.ttl());
    }
    if addrs.is_empty() {
        ttl = soa_ttl;
    }
    Ok(Answer::Addrs(addrs, ttl))
}

/// A name that did not resolve, and whether the failure may be remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The error callers see (`dns_error`, or the tunnel's own code).
    pub error: ProxyError,
    /// For an authoritative "no such name / no address" answer, how long it may be
    /// cached (RFC 2308: the SOA's minimum, capped by the SOA record's TTL; zero
    /// without an SOA). `None` for failures worth retrying at once.
    pub negative_ttl: Option<Duration>,
}

/// Resolves `host` inside the tunnel's network, asking `resolver` (or the
/// connector's default). An IP literal is returned as it is.
pub async fn resolve(
    tunnels: &Tunnels,
    tunnel_id: &str,
    resolver: Option<SocketAddr>,
    host: &str,
) -> Result<Resolution, ProxyError> {
    lookup(tunnels, tunnel_id, resolver, host)
        .await
        .map_err(|u| u.error)
}

/// Like [`resolve`], keeping what a cache needs to know about a failure.
pub async fn lookup(
    tunnels: &Tunnels,
    tunnel_id: &str,
    resolver: Option<SocketAddr>,
    host: &str,
) -> Result<Resolution, Unresolved> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(Resolution {
            addrs: vec![ip],
            ttl: Duration::MAX,
        });
    }
    let transient = |error| Unresolved {
        error,
        negative_ttl: None,
    };
    let mut name = Name::from_ascii(host)
        .map_err(|e| dns_error(format!("invalid hostname {host:?}: {e}")))
        .map_err(transient)?;
    name.set_fqdn(true);
    let (id_a, id_aaaa) = (rand::random::<u16>(), rand::random::<u16>());
    let q_a = build_query(&name, RecordType::A, id_a).map_err(transient)?;
    let q_aaaa = build_query(&name, RecordType::AAAA, id_aaaa).map_err(transient)?;
    let (a, aaaa) = tokio::join!(
        tunnels.dns_query(tunnel_id, resolver, q_a),
        tunnels.dns_query(tunnel_id, resolver, q_aaaa)
    );
    let a = a.and_then(|raw| parse_answer(&raw, id_a, host));
    let aaaa = aaaa.and_then(|raw| parse_answer(&raw, id_aaaa, host));
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    let mut negative_ttl = Some(u32::MAX);
    let mut first_err = None;
    for answer in [a, aaaa] {
        match answer {
            Ok(Answer::Addrs(found, t)) => {
                if found.is_empty() {
                    negative_ttl = negative_ttl.map(|n| n.min(t));
                } else {
                    ttl = ttl.min(t);
                }
                addrs.extend(found);
            }
            Ok(Answer::NoSuchName(t)) => {
                negative_ttl = negative_ttl.map(|n| n.min(t));
                first_err.get_or_insert(dns_error(format!("NXDOMAIN: {host} does not exist")));
            }
            Err(e) => {
                negative_ttl = None;
                first_err.get_or_insert(e);
            }
        }
    }
    if addrs.is_empty() {
        return Err(Unresolved {
            error: first_err
                .unwrap_or_else(|| dns_error(format!("{host} has no A or AAAA records"))),
            negative_ttl: negative_ttl.map(|n| Duration::from_secs(u64::from(n))),
        });
    }
    Ok(Resolution {
        addrs,
        ttl: Duration::from_secs(u64::from(ttl)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SOA};

    fn response(id: u16, code: ResponseCode) -> Message {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_response_code(code);
        m
    }

    #[test]
    fn addresses_and_the_smallest_ttl_are_taken() {
        let mut m = response(7, ResponseCode::NoError);
        let name = Name::from_ascii("db.internal.").expect("name");
        m.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(10, 0, 0, 1)),
        ));
        m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(10, 0, 0, 2))));
        let raw = m.to_vec().expect("encode");
        match parse_answer(&raw, 7, "db.internal") {
            Ok(Answer::Addrs(addrs, ttl)) => {
                assert_eq!(addrs.len(), 2);
                assert_eq!(ttl, 60);
            }
            _ => panic!("expected addresses"),
        }
    }

    #[test]
    fn nodata_carries_the_soa_minimum_and_nxdomain_is_recognised() {
        let mut m = response(9, ResponseCode::NoError);
        let zone = Name::from_ascii("internal.").expect("name");
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, 45);
        m.add_name_server(Record::from_rdata(zone, 120, RData::SOA(soa)));
        let raw = m.to_vec().expect("encode");
        assert!(
            matches!(parse_answer(&raw, 9, "x.internal"), Ok(Answer::Addrs(a, 45)) if a.is_empty())
        );
        let mut nx = response(4, ResponseCode::NXDomain);
        nx.add_name_servers(m.name_servers().to_vec());
        let raw = nx.to_vec().expect("encode");
        assert!(matches!(
            parse_answer(&raw, 4, "x.internal"),
            Ok(Answer::NoSuchName(45))
        ));
    }

    #[test]
    fn a_mismatched_id_or_servfail_is_a_dns_error() {
        let raw = response(1, ResponseCode::NoError).to_vec().expect("encode");
        assert_eq!(
            parse_answer(&raw, 2, "h").err().map(|e| e.code),
            Some(ErrorCode::DnsError)
        );
        let raw = response(3, ResponseCode::ServFail)
            .to_vec()
            .expect("encode");
        assert_eq!(
            parse_answer(&raw, 3, "h").err().map(|e| e.code),
            Some(ErrorCode::DnsError)
        );
    }
}
