//! Answers the edge's DNS questions inside the private network: the resolver the
//! query names, else `--dns-resolver`, else the host's own resolution
//! (`/etc/hosts`, then the name servers of `/etc/resolv.conf`).
//!
//! Only one A or AAAA question of class IN is forwarded; anything else gets a
//! REFUSED answer from the connector itself. Under an `--allow` policy, a resolver
//! the edge names must be a `--dns-resolver` or an address the policy allows, on
//! port 53; else the answer is `destination_forbidden` and nothing is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;
use warren_protocol::ErrorCode;

use crate::policy::{Policy, canonical};

/// TTL given to answers synthesised from `/etc/hosts`.
const HOSTS_TTL: u32 = 60;

/// Where the connector sends DNS questions.
#[derive(Debug, Clone)]
pub struct DnsForwarder {
    resolvers: Vec<SocketAddr>,
    hosts_file: PathBuf,
    resolv_conf: PathBuf,
    timeout: Duration,
    policy: Policy,
}

impl DnsForwarder {
    /// Forwards to `resolvers` (in order) or, when empty, the host's own resolution.
    pub fn new(resolvers: Vec<SocketAddr>) -> Self {
        DnsForwarder {
            resolvers,
            hosts_file: "/etc/hosts".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            timeout: Duration::from_secs(2),
            policy: Policy::default(),
        }
    }

    /// Limits the resolvers the edge may name to `policy` (see the module docs).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Answers one raw query; `resolver` is the one the edge asked for, if any.
    /// A question other than one A/AAAA is answered REFUSED here; a resolver
    /// outside the policy is `destination_forbidden`; an unreadable query is a
    /// `dns_error`. None of them leaves the connector.
    pub async fn answer(
        &self,
        resolver: Option<SocketAddr>,
        query: &[u8],
    ) -> Result<Vec<u8>, ErrorCode> {
        let Ok(msg) = Message::from_vec(query) else {
            debug!("dns query refused: not a readable DNS message");
            return Err(ErrorCode::DnsError);
        };
        if let Some(refused) = refuse_unless_address_question(&msg) {
            return refused;
        }
        if let Some(r) = resolver {
            let r = canonical(r);
            if !self.resolver_allowed(r).await {
                debug!(resolver = %r, "dns query refused: the resolver is neither a --dns-resolver nor allowed by --allow on port 53");
                return Err(ErrorCode::DestinationForbidden);
            }
            return forward(r, query, self.timeout).await;
        }
        let servers = if self.resolvers.is_empty() {
            if let Some(answer) = self.answer_from_hosts_file(&msg).await {
                return Ok(answer);
            }
            self.system_servers().await
        } else {
            self.resolvers.clone()
        };
        let mut last = ErrorCode::DnsError;
        for s in servers {
            match forward(s, query, self.timeout).await {
                Ok(a) => return Ok(a),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Whether the edge may have a question sent to `resolver` (canonical).
    async fn resolver_allowed(&self, resolver: SocketAddr) -> bool {
        !self.policy.restricts()
            || self.resolvers.iter().any(|c| canonical(*c) == resolver)
            || (resolver.port() == 53 && self.policy.allows(resolver).await)
    }

    async fn system_servers(&self) -> Vec<SocketAddr> {
        let Ok(text) = tokio::fs::read(&self.resolv_conf).await else {
            return Vec::new();
        };
        match resolv_conf::Config::parse(&text) {
            Ok(conf) => conf
                .nameservers
                .iter()
                .map(|ns| SocketAddr::new(IpAddr::from(ns.clone()), 53))
                .collect(),
            Err(e) => {
                debug!(error = %e, "unreadable resolv.conf");
                Vec::new()
            }
        }
    }

    /// An answer built from `/etc/hosts` for an A/AAAA question it covers.
    async fn answer_from_hosts_file(&self, q: &Message) -> Option<Vec<u8>> {
        let question = q.queries().first()?.clone();
        let rtype = question.query_type();
        if rtype != RecordType::A && rtype != RecordType::AAAA {
            return None;
        }
        let text = tokio::fs::read_to_string(&self.hosts_file).await.ok()?;
        let wanted = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ips = hosts_lookup(&text, &wanted);
        if ips.is_empty() {
            return None;
        }
        let mut answer = response_to(q, ResponseCode::NoError);
        answer
            .set_recursion_available(true)
            .set_authoritative(true)
            .add_query(question.clone());
        for ip in ips {
            let rdata = match (ip, rtype) {
                (IpAddr::V4(a), RecordType::A) => RData::A(A(a)),
                (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(a)),
                _ => continue,
            };
            answer.add_answer(Record::from_rdata(
                question.name().clone(),
                HOSTS_TTL,
                rdata,
            ));
        }
        answer.to_vec().ok()
    }
}

/// The connector's own answer to `q` (same id, opcode and recursion flag),
/// with `code` and no records yet.
fn response_to(q: &Message, code: ResponseCode) -> Message {
    let mut answer = Message::new();
    answer
        .set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_response_code(code);
    answer
}

/// `None` for a standard query with exactly one A or AAAA question of class IN
/// (what the edge asks); else the answer to give instead: REFUSED, echoing the
/// id and question.
fn refuse_unless_address_question(q: &Message) -> Option<Result<Vec<u8>, ErrorCode>> {
    let fine = q.message_type() == MessageType::Query
        && q.op_code() == OpCode::Query
        && q.queries().len() == 1
        && q.queries().iter().all(|question| {
            matches!(question.query_type(), RecordType::A | RecordType::AAAA)
                && question.query_class() == DNSClass::IN
        });
    if fine {
        return None;
    }
    debug!(
        questions = ?q.queries().iter().map(|x| x.query_type()).collect::<Vec<_>>(),
        "dns query refused: only one A or AAAA question is forwarded"
    );
    let mut answer = response_to(q, ResponseCode::Refused);
    answer.add_queries(q.queries().to_vec());
    Some(answer.to_vec().map_err(|_| ErrorCode::DnsError))
}

/// Addresses `/etc/hosts` text gives `name` (lowercase, no trailing dot).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|h| h.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Sends `query` to `server` over UDP, retrying over TCP when the answer is truncated.
pub async fn forward(
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ErrorCode> {
    let udp = tokio::time::timeout(timeout, forward_udp(server, query)).await;
    let answer = match udp {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            debug!(%server, error = %e, "dns over udp failed");
            return Err(ErrorCode::DnsError);
        }
        Err(_) => {
            debug!(%server, "dns over udp timed out");
            return Err(ErrorCode::DnsError);
        }
    };
    let truncated = Message::from_vec(&answer)
        .map(|m| m.truncated())
        .unwrap_or(false);
    if !truncated {
        return Ok(answer);
    }
    match tokio::time::timeout(timeout, forward_tcp(server, query)).await {
        Ok(Ok(a)) => Ok(a),
        _ => {
            debug!(%server, "dns over tcp failed after a truncated udp answer");
            Err(ErrorCode::DnsError)
        }
    }
}

async fn forward_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore stray datagrams whose id is not ours.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(types: &[RecordType]) -> Message {
        let mut m = Message::new();
        m.set_id(42).set_message_type(MessageType::Query);
        for t in types {
            m.add_query(hickory_proto::op::Query::query(
                hickory_proto::rr::Name::from_ascii("db.internal.").expect("name"),
                *t,
            ));
        }
        m
    }

    #[test]
    fn only_one_address_question_passes() {
        assert!(refuse_unless_address_question(&query(&[RecordType::A])).is_none());
        assert!(refuse_unless_address_question(&query(&[RecordType::AAAA])).is_none());
        for types in [
            &[RecordType::TXT][..],
            &[RecordType::ANY],
            &[RecordType::PTR],
            &[],
            &[RecordType::A, RecordType::AAAA],
        ] {
            let answer = refuse_unless_address_question(&query(types))
                .expect("refused")
                .expect("encodes");
            let m = Message::from_vec(&answer).expect("a DNS message");
            assert_eq!(m.id(), 42);
            assert_eq!(m.message_type(), MessageType::Response);
            assert_eq!(m.response_code(), ResponseCode::Refused, "{types:?}");
        }
    }

    #[test]
    fn hosts_lookup_reads_aliases_and_skips_comments() {
        let text = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# 10.0.0.1 hidden\n10.0.0.5 db db.lan # comment\nbad line\n";
        assert_eq!(hosts_lookup(text, "localhost").len(), 2);
        assert_eq!(
            hosts_lookup(text, "db.lan"),
            vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]
        );
        assert!(hosts_lookup(text, "hidden").is_empty());
    }
}
