//! The connector's local policy (`--allow`): which destinations the edge may reach.
//! Checked before anything the edge asks — data streams and the resolvers its DNS
//! questions go to; absent rules mean "allow all". An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is the IPv4 address it carries, for rules and for dialling.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Ports a rule covers (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address range (a bare IP is a /32 or /128).
    Net(IpNet),
    /// A host name, resolved by the connector host when a stream is checked.
    Host(String),
}

/// One `--allow` rule: `CIDR[:port[-port]]`, `[v6-CIDR]:port`, or `hostname[:port[-port]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Destination addresses.
    pub target: Target,
    /// Destination ports; `None` means every port.
    pub ports: Option<PortRange>,
}

/// Why an `--allow` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --allow {value:?}: {reason}")]
pub struct RuleError {
    value: String,
    reason: &'static str,
}

fn parse_ports(s: &str) -> Result<PortRange, &'static str> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let start: u16 = a.parse().map_err(|_| "port is not a number 1-65535")?;
    let end: u16 = b.parse().map_err(|_| "port is not a number 1-65535")?;
    if start == 0 || end < start {
        return Err("port range must be 1-65535 and ascending");
    }
    Ok(PortRange { start, end })
}

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into the IPv4
/// address it reaches.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with its address made canonical ([`canonical_ip`]).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

fn parse_net(s: &str) -> Option<IpNet> {
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
    // A rule inside ::ffff:0:0/96 names IPv4 addresses: keep it as IPv4, as
    // destinations are.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok();
    }
    Some(net)
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for AllowRule {
    type Err = RuleError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason| RuleError {
            value: value.to_owned(),
            reason,
        };
        // [v6 or v6/len]:ports
        if let Some(rest) = value.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
            let net = parse_net(inner).ok_or_else(|| err("not an IP address or CIDR"))?;
            let ports = match after.strip_prefix(':') {
                Some(p) => Some(parse_ports(p).map_err(err)?),
                None if after.is_empty() => None,
                None => return Err(err("expected ':port' after ']'")),
            };
            return Ok(AllowRule {
                target: Target::Net(net),
                ports,
            });
        }
        // A bare IPv6 address or CIDR (more than one ':') has no port part.
        if value.matches(':').count() > 1 {
            let net = parse_net(value)
                .ok_or_else(|| err("not an IPv6 address or CIDR (use [addr]:port for ports)"))?;
            return Ok(AllowRule {
                target: Target::Net(net),
                ports: None,
            });
        }
        let (host, ports) = match value.split_once(':') {
            Some((h, p)) => (h, Some(parse_ports(p).map_err(err)?)),
            None => (value, None),
        };
        let target = match parse_net(host) {
            Some(net) => Target::Net(net),
            None if host.contains('/') => return Err(err("not a valid CIDR")),
            None if valid_hostname(host) => Target::Host(host.to_ascii_lowercase()),
            None => return Err(err("not an IP, CIDR or host name")),
        };
        Ok(AllowRule { target, ports })
    }
}

/// The set of `--allow` rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<AllowRule>,
}

impl Policy {
    /// A policy from rules; no rules allows everything.
    pub fn new(rules: Vec<AllowRule>) -> Self {
        Policy { rules }
    }

    /// Whether there are rules (else everything is allowed).
    pub fn restricts(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether `dest` may be dialled. An IPv4-mapped IPv6 address is checked as
    /// its IPv4 address. Host-name rules are resolved by the connector host at
    /// check time (so they follow DNS changes).
    pub async fn allows(&self, dest: SocketAddr) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let dest = canonical(dest);
        for rule in &self.rules {
            if let Some(p) = rule.ports
                && (dest.port() < p.start || dest.port() > p.end)
            {
                continue;
            }
            let hit = match &rule.target {
                Target::Net(net) => net.contains(&dest.ip()),
                Target::Host(h) => match tokio::net::lookup_host((h.as_str(), 0)).await {
                    Ok(addrs) => addrs
                        .map(|a| canonical_ip(a.ip()))
                        .any(|ip| ip == dest.ip()),
                    Err(_) => false,
                },
            };
            if hit {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().expect("valid rule")
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(rule("10.0.0.0/8").ports, None);
        assert_eq!(
            rule("127.0.0.1:8080").ports,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        assert_eq!(
            rule("10.1.0.0/16:8000-9000").ports,
            Some(PortRange {
                start: 8000,
                end: 9000
            })
        );
        assert_eq!(
            rule("[fd00::/8]:443").target,
            Target::Net("fd00::/8".parse().expect("net"))
        );
        assert_eq!(
            rule("fd00::1").target,
            Target::Net("fd00::1/128".parse().expect("net"))
        );
        assert_eq!(
            rule("DB.internal:5432").target,
            Target::Host("db.internal".into())
        );
        for bad in [
            "10.0.0.0/33",
            "127.0.0.1:0",
            "127.0.0.1:9-8",
            "host:abc",
            "[::1",
            "bad host",
            "",
        ] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad} should be refused");
        }
    }

    #[tokio::test]
    async fn checks_address_and_port() {
        let p = Policy::new(vec![
            rule("127.0.0.1:8080"),
            rule("10.0.0.0/8:80-81"),
            rule("localhost:9000"),
        ]);
        assert!(p.allows("127.0.0.1:8080".parse().expect("addr")).await);
        assert!(!p.allows("127.0.0.1:8081".parse().expect("addr")).await);
        assert!(p.allows("10.9.9.9:81".parse().expect("addr")).await);
        assert!(!p.allows("10.9.9.9:82".parse().expect("addr")).await);
        assert!(!p.allows("192.168.1.1:80".parse().expect("addr")).await);
        assert!(p.allows("127.0.0.1:9000".parse().expect("addr")).await);
        assert!(
            Policy::default()
                .allows("1.2.3.4:1".parse().expect("addr"))
                .await
        );
    }

    #[tokio::test]
    async fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let p = Policy::new(vec![rule("10.0.0.0/8"), rule("[::/0]")]);
        assert!(
            !p.allows("[::ffff:127.0.0.1]:80".parse().expect("addr"))
                .await
        );
        assert!(
            p.allows("[::ffff:10.1.2.3]:80".parse().expect("addr"))
                .await
        );
        assert!(p.allows("[fd00::1]:80".parse().expect("addr")).await);
        // A rule written as a mapped address is an IPv4 rule.
        assert_eq!(
            rule("[::ffff:10.0.0.0/104]:53").target,
            Target::Net("10.0.0.0/8".parse().expect("net"))
        );
        let mapped = Policy::new(vec![rule("::ffff:127.0.0.1")]);
        assert!(mapped.allows("127.0.0.1:1".parse().expect("addr")).await);
    }
}
