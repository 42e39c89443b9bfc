//! The VPC router's DNS cache against a real dnsmasq inside the tunnel's
//! network: hits do not query again, TTLs expire, NXDOMAIN is remembered, and
//! concurrent lookups of one name share one query.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use warren_iris::dns_cache::{DnsCache, DnsCacheConfig};
use warren_protocol::ErrorCode;
use warren_testkit::dnsmasq::Dnsmasq;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// A world with a connector whose resolver is a dnsmasq answering with `ttl`.
async fn world_with_dns(ttl: u32, records: &[(&str, IpAddr)]) -> (World, Dnsmasq, Connector) {
    let w = World::new().await;
    let dns = Dnsmasq::start_with_ttl(&w.ns, ip("127.0.0.53"), records, ttl).expect("dnsmasq");
    let c = w.connector(&[
        "--ha-connections".into(),
        "1".into(),
        "--dns-resolver".into(),
        dns.addr().to_string(),
    ]);
    w.wait_registered(1).await;
    (w, dns, c)
}

fn cache(w: &World, min_ttl: Duration) -> DnsCache {
    DnsCache::new(
        w.edge.tunnels.clone(),
        DnsCacheConfig {
            min_ttl,
            ..DnsCacheConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_is_not_queried_again_until_its_ttl_ends() {
    let (w, dns, _c) = world_with_dns(1, &[("db.internal", ip("127.0.0.9"))]).await;
    let cache = cache(&w, Duration::ZERO);
    for _ in 0..3 {
        let addrs = cache.resolve(&w.tunnel_id, None, "db.internal").await;
        assert_eq!(addrs, Ok(vec![ip("127.0.0.9")]));
    }
    // One lookup = one A and one AAAA question.
    assert_eq!(dns.logged_queries("db.internal", 2).await, 2);
    assert_eq!(cache.lookups(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let addrs = cache.resolve(&w.tunnel_id, None, "DB.internal.").await;
    assert_eq!(addrs, Ok(vec![ip("127.0.0.9")]));
    assert_eq!(
        dns.logged_queries("db.internal", 4).await,
        4,
        "asked again after the TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_a_dns_error_and_is_cached() {
    let (w, dns, _c) = world_with_dns(30, &[]).await;
    let cache = cache(&w, Duration::from_secs(5));
    for _ in 0..3 {
        let r = cache.resolve(&w.tunnel_id, None, "missing.internal").await;
        assert_eq!(r.map_err(|e| e.code), Err(ErrorCode::DnsError));
    }
    assert_eq!(dns.logged_queries("missing.internal", 2).await, 2);
    assert_eq!(cache.lookups(), 1);
    // A failure of the tunnel itself is not remembered: the next call tries again.
    for expected_lookups in [2, 3] {
        let r = cache
            .resolve("no-such-tunnel", None, "missing.internal")
            .await;
        assert_eq!(
            r.map_err(|e| e.code),
            Err(ErrorCode::DestinationUnavailable)
        );
        assert_eq!(cache.lookups(), expected_lookups);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_name_share_one_query() {
    let (w, dns, _c) = world_with_dns(30, &[("api.internal", ip("127.0.0.7"))]).await;
    let cache = Arc::new(cache(&w, Duration::from_secs(5)));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, tunnel) = (cache.clone(), w.tunnel_id.clone());
        tasks.push(tokio::spawn(async move {
            cache.resolve(&tunnel, None, "api.internal").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), Ok(vec![ip("127.0.0.7")]));
    }
    assert_eq!(cache.lookups(), 1);
    assert_eq!(dns.logged_queries("api.internal", 2).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_only_aaaa_resolves_and_invalidation_forgets() {
    let (w, dns, _c) = world_with_dns(30, &[("v6.internal", ip("fd00::5"))]).await;
    let cache = cache(&w, Duration::from_secs(5));
    let r = cache.resolve(&w.tunnel_id, None, "v6.internal").await;
    assert_eq!(r, Ok(vec![ip("fd00::5")]));
    cache.invalidate_host("v6.internal");
    let r = cache.resolve(&w.tunnel_id, None, "v6.internal").await;
    assert_eq!(r, Ok(vec![ip("fd00::5")]));
    assert_eq!(
        dns.logged_queries("v6.internal", 4).await,
        4,
        "asked again after invalidation"
    );
}
