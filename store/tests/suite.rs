//! One behaviour suite for every [`Store`] backend. Each test is written once
//! (a function of a [`Fixture`]) and runs against SQLite (a file in a temp
//! directory) and etcd (a real member shared by the process; each test works
//! under a key prefix of its own). The etcd-only tests at the end cover what
//! only a networked backend has: prefixes, outages, malformed data.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;
use warren_store::{
    CaRecord, CertVerificationMode, Change, ConnectionRecord, EtcdConfig, EtcdStore, EtcdTls,
    NodeRecord, ScriptRecord, ServiceHost, ServiceType, SqliteStore, Store, StoreError, VpcService,
    hash_secret, rfc3339,
};
use warren_testkit::etcd::Etcd;

/// Where a test's store lives, so a second instance can open the same data.
enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Etcd {
        endpoint: String,
        prefix: String,
    },
}

/// A store for one test, and how to open another instance on the same data.
struct Fixture {
    store: Arc<dyn Store>,
    backend: Backend,
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.db");
        let store = Arc::new(SqliteStore::open(&path).expect("open sqlite"));
        Fixture {
            store,
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    async fn etcd() -> Fixture {
        let etcd = Etcd::shared().expect("etcd (package etcd-server; run scripts/setup.sh)");
        let prefix = format!("/warren-test-{}/", uuid::Uuid::new_v4().simple());
        let endpoint = etcd.endpoint();
        let store = Arc::new(connect_etcd(&endpoint, &prefix).await);
        Fixture {
            store,
            backend: Backend::Etcd { endpoint, prefix },
        }
    }

    /// A second, independent instance on the same data (another process or node).
    async fn another(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).expect("reopen")),
            Backend::Etcd { endpoint, prefix } => Arc::new(connect_etcd(endpoint, prefix).await),
        }
    }
}

async fn connect_etcd(endpoint: &str, prefix: &str) -> EtcdStore {
    let mut config = EtcdConfig::new(vec![endpoint.to_owned()]);
    config.prefix = prefix.to_owned();
    EtcdStore::connect(config).await.expect("connect to etcd")
}

/// Writes one test function per backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = super::Fixture::sqlite().await;
                    super::$name(&f).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = super::Fixture::etcd().await;
                    super::$name(&f).await;
                }
            )*
        }
    };
}

suite!(
    worker_secrets_are_stored_sealed_and_never_in_plain,
    accounts_are_stored_and_listed_oldest_first,
    api_tokens_resolve_to_their_account,
    tunnels_need_an_account_and_stay_in_it,
    services_live_in_their_account_and_count_against_their_tunnel,
    scripts_are_written_by_compare_and_swap_on_the_record,
    scripts_binding_follows_rebinding_and_deletion,
    connections_expire_with_their_lease_unless_refreshed,
    nodes_are_listed_by_name_until_their_lease_lapses,
    writes_are_heard_in_this_process_before_they_return,
    a_second_instance_hears_writes_within_two_seconds,
    the_first_cluster_ca_stored_wins_a_race,
);

fn service(id: &str, account: &str, tunnel: &str) -> VpcService {
    VpcService {
        id: id.into(),
        account_id: account.into(),
        name: format!("svc {id}"),
        service_type: ServiceType::Http,
        http_port: Some(80),
        https_port: None,
        tcp_port: None,
        host: ServiceHost::Hostname {
            hostname: "inventory.internal".into(),
            tunnel_id: tunnel.into(),
            resolver_ips: vec!["10.0.0.2".parse().expect("ip")],
        },
        cert_verification_mode: CertVerificationMode::VerifyFull,
        created_at: rfc3339(SystemTime::now()),
        updated_at: rfc3339(SystemTime::now()),
    }
}

fn script(name: &str, account: &str, tag: &str, services: &[&str]) -> ScriptRecord {
    ScriptRecord {
        name: name.into(),
        account_id: account.into(),
        tag: tag.into(),
        metadata: r#"{"main_module":"index.js"}"#.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        routes: vec![format!("{name}.example.com/*")],
        bundle: "ab".repeat(32),
        secrets: [("TOKEN".to_string(), vec![1, 2, 3])].into_iter().collect(),
        created_on: rfc3339(SystemTime::now()),
        modified_on: rfc3339(SystemTime::now()),
    }
}

fn record(id: &str, tunnel: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: id.into(),
        tunnel_id: tunnel.into(),
        connector_id: "connector-1".into(),
        client_version: "0.1.0".into(),
        edge_name: "edge-a".into(),
        origin_ip: "127.0.0.1".into(),
        opened_at: rfc3339(SystemTime::now()),
        conn_index: 0,
        ha_connections: 4,
    }
}

/// Receives until `want` arrives (other changes are skipped), or panics
/// after `limit`; returns how long it took.
async fn expect_change(
    rx: &mut broadcast::Receiver<Change>,
    want: &Change,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(c)) if &c == want => return start.elapsed(),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("watch closed waiting for {want:?}: {e}"),
            Err(_) => panic!("no {want:?} within {limit:?}"),
        }
    }
}

async fn accounts_are_stored_and_listed_oldest_first(f: &Fixture) {
    let s = &f.store;
    let mut made = Vec::new();
    for name in ["one", "two", "three"] {
        made.push(s.create_account(name).await.expect("create account"));
    }
    assert_eq!(made[1].name, "two");
    assert_eq!(made[0].id.len(), 32);
    assert_eq!(
        s.get_account(&made[1].id).await.expect("get"),
        Some(made[1].clone())
    );
    assert_eq!(s.get_account("nope").await.expect("get"), None);
    made.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    assert_eq!(s.list_accounts().await.expect("list"), made);
}

async fn api_tokens_resolve_to_their_account(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let b = s.create_account("b").await.expect("account");
    let (ha, hb) = (hash_secret(b"token-a"), hash_secret(b"token-b"));
    let id = s.create_api_token(&a.id, "admin", ha).await.expect("token");
    assert!(!id.is_empty());
    s.create_api_token(&b.id, "admin", hb).await.expect("token");
    assert_eq!(s.account_for_token(ha).await.expect("lookup"), Some(a.id));
    assert_eq!(s.account_for_token(hb).await.expect("lookup"), Some(b.id));
    assert_eq!(
        s.account_for_token(hash_secret(b"unknown"))
            .await
            .expect("lookup"),
        None
    );
    assert!(
        s.create_api_token("no-such-account", "x", hash_secret(b"orphan"))
            .await
            .is_err(),
        "a token needs an existing account"
    );
    assert_eq!(
        s.account_for_token(hash_secret(b"orphan"))
            .await
            .expect("lookup"),
        None
    );
}

async fn tunnels_need_an_account_and_stay_in_it(f: &Fixture) {
    let s = &f.store;
    assert!(matches!(
        s.create_tunnel("nope", "x", [0; 32], None).await,
        Err(StoreError::NotFound("account"))
    ));
    let a = s.create_account("a").await.expect("account");
    let b = s.create_account("b").await.expect("account");
    let hash = hash_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret");
    let t1 = s
        .create_tunnel(&a.id, "home", hash, Some(vec![9, 8, 7]))
        .await
        .expect("tunnel");
    let t2 = s
        .create_tunnel(&a.id, "office", [2; 32], None)
        .await
        .expect("tunnel");
    assert_eq!(t1.secret_hash, hash);
    assert_eq!(t1.first_connected_at, None);
    assert_eq!(s.get_tunnel(&t1.id).await.expect("get"), Some(t1.clone()));
    assert_eq!(s.get_tunnel("nope").await.expect("get"), None);
    let mut want = vec![t1.clone(), t2.clone()];
    want.sort_by(|x, y| (&x.created_at, &x.id).cmp(&(&y.created_at, &y.id)));
    assert_eq!(s.list_tunnels(&a.id).await.expect("list"), want);
    assert!(s.list_tunnels(&b.id).await.expect("list").is_empty());

    assert!(!s.delete_tunnel(&b.id, &t1.id).await.expect("delete"));
    assert_eq!(s.get_tunnel(&t1.id).await.expect("get"), Some(t1.clone()));
    assert!(s.delete_tunnel(&a.id, &t1.id).await.expect("delete"));
    assert_eq!(s.get_tunnel(&t1.id).await.expect("get"), None);
    assert!(!s.delete_tunnel(&a.id, &t1.id).await.expect("delete"));
    assert_eq!(s.list_tunnels(&a.id).await.expect("list"), vec![t2]);
}

async fn services_live_in_their_account_and_count_against_their_tunnel(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let b = s.create_account("b").await.expect("account");
    assert!(
        s.create_service(&service("svc-x", "no-such-account", "tun-1"))
            .await
            .is_err(),
        "a service needs an existing account"
    );
    let mut s1 = service("svc-1", &a.id, "tun-1");
    let s2 = service("svc-2", &a.id, "tun-1");
    let s3 = service("svc-3", &b.id, "tun-2");
    for v in [&s1, &s2, &s3] {
        s.create_service(v).await.expect("create");
    }
    assert!(
        s.create_service(&s1).await.is_err(),
        "a service id is created once"
    );
    assert_eq!(s.get_service("svc-1").await.expect("get"), Some(s1.clone()));
    assert_eq!(s.get_service("nope").await.expect("get"), None);
    let mut want = vec![s1.clone(), s2.clone()];
    want.sort_by(|x, y| (&x.created_at, &x.id).cmp(&(&y.created_at, &y.id)));
    assert_eq!(s.list_services(&a.id).await.expect("list"), want);
    assert_eq!(
        s.list_services(&b.id).await.expect("list"),
        vec![s3.clone()]
    );
    assert_eq!(s.services_using_tunnel("tun-1").await.expect("count"), 2);
    assert_eq!(s.services_using_tunnel("tun-2").await.expect("count"), 1);
    assert_eq!(s.services_using_tunnel("tun-9").await.expect("count"), 0);

    // Moving a service to another tunnel moves its count.
    s1.host = ServiceHost::Addresses {
        ipv4: Some("10.0.0.9".parse().expect("ip")),
        ipv6: None,
        tunnel_id: "tun-2".into(),
    };
    s1.name = "renamed".into();
    assert!(s.replace_service(&s1).await.expect("replace"));
    assert_eq!(s.get_service("svc-1").await.expect("get"), Some(s1.clone()));
    assert_eq!(s.services_using_tunnel("tun-1").await.expect("count"), 1);
    assert_eq!(s.services_using_tunnel("tun-2").await.expect("count"), 2);

    // Another account can neither replace nor delete it.
    let foreign = VpcService {
        account_id: b.id.clone(),
        ..s1.clone()
    };
    assert!(!s.replace_service(&foreign).await.expect("replace"));
    assert!(
        !s.replace_service(&service("nope", &a.id, "tun-1"))
            .await
            .expect("replace")
    );
    assert!(!s.delete_service(&b.id, "svc-1").await.expect("delete"));
    assert_eq!(s.get_service("svc-1").await.expect("get"), Some(s1.clone()));

    assert!(s.delete_service(&a.id, "svc-1").await.expect("delete"));
    assert!(!s.delete_service(&a.id, "svc-1").await.expect("delete"));
    assert_eq!(s.get_service("svc-1").await.expect("get"), None);
    assert_eq!(s.services_using_tunnel("tun-2").await.expect("count"), 1);
    assert_eq!(s.list_services(&a.id).await.expect("list"), vec![s2]);
}

async fn scripts_are_written_by_compare_and_swap_on_the_record(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let b = s.create_account("b").await.expect("account");
    let v1 = script("shop", &a.id, "tag-1", &[]);
    assert!(s.put_script(&v1, None).await.expect("create"));
    assert!(
        !s.put_script(&script("shop", &b.id, "tag-x", &[]), None)
            .await
            .expect("second create"),
        "a second create of the same name loses"
    );
    assert_eq!(s.get_script("shop").await.expect("get"), Some(v1.clone()));

    // A redeploy that read the stored record wins and may keep its tag; one
    // that read a record no longer stored loses.
    let mut v2 = v1.clone();
    v2.metadata = r#"{"main_module":"v2.js"}"#.into();
    let stale = script("shop", &a.id, "stale", &[]);
    assert!(!s.put_script(&v2, Some(&stale)).await.expect("stale"));
    assert!(s.put_script(&v2, Some(&v1)).await.expect("redeploy"));

    // The lost update across nodes: two writers read v2; one stores a new
    // version with the same tag (a secret deleted), the other, still holding
    // v2, loses instead of bringing the secret back.
    let mut with_secret = v2.clone();
    with_secret.secrets.insert("API_KEY".into(), vec![4, 5, 6]);
    assert!(
        s.put_script(&with_secret, Some(&v2))
            .await
            .expect("secret put")
    );
    let read = with_secret.clone();
    let mut deleted = read.clone();
    deleted.secrets.clear();
    deleted.modified_on = "2026-01-02T00:00:00Z".into();
    let mut redeployed = read.clone();
    redeployed.metadata = r#"{"main_module":"v3.js"}"#.into();
    assert!(s.put_script(&deleted, Some(&read)).await.expect("delete"));
    assert!(
        !s.put_script(&redeployed, Some(&read))
            .await
            .expect("redeploy"),
        "a write from a record read before the delete loses, though the tag is the same"
    );
    assert_eq!(
        s.get_script("shop").await.expect("get"),
        Some(deleted.clone())
    );

    let v3 = script("shop", &a.id, "tag-2", &[]);
    assert!(s.put_script(&v3, Some(&deleted)).await.expect("retag"));
    assert!(!s.put_script(&v2, Some(&deleted)).await.expect("old record"));
    assert_eq!(s.get_script("shop").await.expect("get"), Some(v3.clone()));
    assert!(
        !s.put_script(&script("ghost", &a.id, "t", &[]), Some(&v1))
            .await
            .expect("expecting a record of nothing"),
    );
    assert_eq!(s.get_script("ghost").await.expect("get"), None);

    let apple = script("apple", &b.id, "t", &[]);
    assert!(s.put_script(&apple, None).await.expect("create"));
    assert_eq!(s.list_scripts().await.expect("list"), vec![apple, v3]);
}

/// Every byte the backend holds for this test: the SQLite database and its
/// WAL and shared-memory files, or every etcd key and value under the prefix.
async fn raw_bytes(f: &Fixture) -> Vec<u8> {
    match &f.backend {
        Backend::Sqlite { path, .. } => {
            let dir = path.parent().expect("the database's directory");
            let mut all = Vec::new();
            for e in std::fs::read_dir(dir).expect("read the data dir") {
                all.extend(std::fs::read(e.expect("entry").path()).expect("read a file"));
            }
            all
        }
        Backend::Etcd { endpoint, prefix } => {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .expect("etcd client");
            let got = c
                .get(
                    prefix.as_str(),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .expect("get the prefix");
            let mut all = Vec::new();
            for kv in got.kvs() {
                all.extend(kv.key());
                all.extend(kv.value());
            }
            all
        }
    }
}

async fn worker_secrets_are_stored_sealed_and_never_in_plain(f: &Fixture) {
    use warren_store::sealing::{Sealer, worker_secret_context};
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let keys = tempfile::tempdir().expect("tempdir");
    let sealer = Sealer::load_or_create(keys.path()).expect("sealing key");
    let plain = b"plain-secret-value-7f3a9c";
    let context = worker_secret_context(&a.id, "tag-1", "TOKEN");
    let sealed = sealer.seal(&context, plain).expect("seal");
    let mut v1 = script("shop", &a.id, "tag-1", &[]);
    v1.secrets = [("TOKEN".to_string(), sealed.clone())]
        .into_iter()
        .collect();
    assert!(s.put_script(&v1, None).await.expect("create"));

    // Another instance reads the sealed bytes back as they were written,
    // and only this worker's context opens them.
    let read = f
        .another()
        .await
        .get_script("shop")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(read.secrets.get("TOKEN"), Some(&sealed));
    assert_eq!(sealer.open(&context, &sealed).as_deref(), Some(&plain[..]));
    assert_eq!(
        sealer.open(&worker_secret_context(&a.id, "tag-1", "OTHER"), &sealed),
        None
    );
    assert_eq!(
        sealer.open(&worker_secret_context(&a.id, "tag-2", "TOKEN"), &sealed),
        None
    );

    // The value is in no byte the backend holds.
    let raw = raw_bytes(f).await;
    let stored = hex::encode(&sealed);
    assert!(
        raw.windows(stored.len()).any(|w| w == stored.as_bytes()),
        "the backend holds the sealed value (as hex)"
    );
    assert!(
        !raw.windows(plain.len()).any(|w| w == plain),
        "the plaintext secret is in the store's bytes"
    );

    // A record without secrets reads back with none (and one with none
    // written by an older version reads the same).
    let mut v2 = v1.clone();
    v2.secrets.clear();
    assert!(s.put_script(&v2, Some(&v1)).await.expect("redeploy"));
    assert!(
        s.get_script("shop")
            .await
            .expect("get")
            .expect("stored")
            .secrets
            .is_empty()
    );
}

async fn scripts_binding_follows_rebinding_and_deletion(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let b = s.create_account("b").await.expect("account");
    let alpha = script("alpha", &a.id, "t", &["s1", "s2"]);
    let beta = script("beta", &a.id, "t", &["s1"]);
    assert!(s.put_script(&beta, None).await.expect("put"));
    assert!(s.put_script(&alpha, None).await.expect("put"));
    assert_eq!(
        s.scripts_binding("s1").await.expect("binding"),
        ["alpha", "beta"]
    );
    assert_eq!(s.scripts_binding("s2").await.expect("binding"), ["alpha"]);
    assert!(s.scripts_binding("s3").await.expect("binding").is_empty());

    // Rebinding alpha from s1, s2 to s3 (and s3 named twice).
    let rebound = script("alpha", &a.id, "t", &["s3", "s3"]);
    assert!(s.put_script(&rebound, Some(&alpha)).await.expect("rebind"));
    assert_eq!(s.scripts_binding("s1").await.expect("binding"), ["beta"]);
    assert!(s.scripts_binding("s2").await.expect("binding").is_empty());
    assert_eq!(s.scripts_binding("s3").await.expect("binding"), ["alpha"]);

    // Another account cannot delete it; its owner can.
    assert!(!s.delete_script(&b.id, "alpha").await.expect("delete"));
    assert_eq!(s.scripts_binding("s3").await.expect("binding"), ["alpha"]);
    assert!(s.get_script("alpha").await.expect("get").is_some());
    assert!(s.delete_script(&a.id, "alpha").await.expect("delete"));
    assert!(!s.delete_script(&a.id, "alpha").await.expect("delete again"));
    assert_eq!(s.get_script("alpha").await.expect("get"), None);
    assert!(s.scripts_binding("s3").await.expect("binding").is_empty());
    assert_eq!(s.scripts_binding("s1").await.expect("binding"), ["beta"]);
    assert_eq!(s.list_scripts().await.expect("list"), vec![beta]);
}

async fn connections_expire_with_their_lease_unless_refreshed(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let t = s
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    let mut watch = s.watch();
    // The kept one is refreshed every 300 ms on a 2 s lease (slack for a
    // loaded machine); the lapsed one has 1 s and is never refreshed.
    let (long, short) = (Duration::from_secs(2), Duration::from_secs(1));
    let kept = record("conn-kept", &t.id);
    let lapsed = record("conn-lapsed", &t.id);
    s.put_connection(&kept, long).await.expect("put");
    expect_change(
        &mut watch,
        &Change::Connections(t.id.clone()),
        Duration::from_millis(100),
    )
    .await;
    s.put_connection(&lapsed, short).await.expect("put");
    let mut live = s.list_connections(&t.id).await.expect("list");
    live.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(live, vec![kept.clone(), lapsed.clone()]);
    let tunnel = s.get_tunnel(&t.id).await.expect("get").expect("exists");
    assert_eq!(tunnel.first_connected_at, Some(kept.opened_at.clone()));

    // The lapsed one must be gone within 5 s; the kept one stays, also
    // after more than two of its lease lengths.
    let start = Instant::now();
    let mut expired_after = None;
    while start.elapsed() < Duration::from_millis(4500) || expired_after.is_none() {
        s.put_connection(&kept, long).await.expect("refresh");
        let ids: Vec<String> = s
            .list_connections(&t.id)
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert!(ids.contains(&kept.id), "a refreshed connection expired");
        if expired_after.is_none() && ids == [kept.id.clone()] {
            expired_after = Some(start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(5) || expired_after.is_some(),
            "an unrefreshed 1 s lease still listed after 5 s: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let expired_after = expired_after.unwrap_or_default();
    assert!(
        expired_after >= Duration::from_millis(500),
        "{expired_after:?}"
    );
    assert_eq!(
        s.list_connections(&t.id).await.expect("list"),
        vec![kept.clone()]
    );
    // The first connection time stays the first.
    let tunnel = s.get_tunnel(&t.id).await.expect("get").expect("exists");
    assert_eq!(tunnel.first_connected_at, Some(kept.opened_at.clone()));

    s.remove_connection(&kept.id).await.expect("remove");
    assert!(s.list_connections(&t.id).await.expect("list").is_empty());
    s.remove_connection("never-there")
        .await
        .expect("remove unknown");
}

async fn nodes_are_listed_by_name_until_their_lease_lapses(f: &Fixture) {
    let s = &f.store;
    let node = |name: &str, port: u16| NodeRecord {
        name: name.to_owned(),
        peer_addr: format!("127.0.0.1:{port}"),
        started_at: rfc3339(SystemTime::now()),
    };
    let (b, a) = (node("node-b", 7001), node("node-a", 7002));
    s.put_node(&b, Duration::from_secs(30))
        .await
        .expect("put b");
    s.put_node(&a, Duration::from_secs(1)).await.expect("put a");
    let other = f.another().await;
    assert_eq!(
        other.list_nodes().await.expect("list"),
        vec![a.clone(), b.clone()],
        "another instance sees both nodes, by name"
    );
    // A refresh may move the node (a restart on another port).
    let moved = node("node-b", 7003);
    s.put_node(&moved, Duration::from_secs(30))
        .await
        .expect("refresh");
    // node-a is never refreshed: gone within 5 s of its 1 s lease.
    let start = Instant::now();
    loop {
        let names: Vec<String> = s
            .list_nodes()
            .await
            .expect("list")
            .into_iter()
            .map(|n| n.name)
            .collect();
        if names == ["node-b"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "an unrefreshed 1 s node lease still listed after 5 s: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.list_nodes().await.expect("list"), vec![moved]);
    s.remove_node("node-b").await.expect("remove");
    assert!(other.list_nodes().await.expect("list").is_empty());
    s.remove_node("never-there").await.expect("remove unknown");
}

/// Whether `want` is among the changes already queued (without waiting):
/// a backend may also deliver its own echo of a write later.
fn queued(rx: &mut broadcast::Receiver<Change>, want: &Change) -> bool {
    let mut found = false;
    while let Ok(c) = rx.try_recv() {
        found |= &c == want;
    }
    found
}

async fn writes_are_heard_in_this_process_before_they_return(f: &Fixture) {
    let s = &f.store;
    let a = s.create_account("a").await.expect("account");
    let mut watch = s.watch();
    let t = s
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    let tunnel = Change::Tunnel(t.id.clone());
    assert!(queued(&mut watch, &tunnel));
    s.create_service(&service("svc-1", &a.id, &t.id))
        .await
        .expect("service");
    let svc = Change::Service("svc-1".into());
    assert!(queued(&mut watch, &svc));
    s.put_script(&script("w", &a.id, "t", &["svc-1"]), None)
        .await
        .expect("script");
    let w = Change::Script("w".into());
    assert!(queued(&mut watch, &w));
    assert!(s.delete_script(&a.id, "w").await.expect("delete"));
    assert!(queued(&mut watch, &w));
    assert!(s.delete_service(&a.id, "svc-1").await.expect("delete"));
    assert!(queued(&mut watch, &svc));
    assert!(s.delete_tunnel(&a.id, &t.id).await.expect("delete"));
    assert!(queued(&mut watch, &tunnel));
}

async fn a_second_instance_hears_writes_within_two_seconds(f: &Fixture) {
    let other = f.another().await;
    let mut watch = f.store.watch();
    let limit = Duration::from_secs(2);
    let a = other.create_account("a").await.expect("account");
    let t = other
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    let took = expect_change(&mut watch, &Change::Tunnel(t.id.clone()), limit).await;
    other
        .create_service(&service("svc-1", &a.id, &t.id))
        .await
        .expect("service");
    expect_change(&mut watch, &Change::Service("svc-1".into()), limit).await;
    other
        .put_script(&script("w", &a.id, "t", &["svc-1"]), None)
        .await
        .expect("script");
    expect_change(&mut watch, &Change::Script("w".into()), limit).await;
    assert!(other.delete_service(&a.id, "svc-1").await.expect("delete"));
    expect_change(&mut watch, &Change::Service("svc-1".into()), limit).await;
    // What the other instance wrote is read here too.
    assert_eq!(
        f.store.get_script("w").await.expect("get").map(|s| s.tag),
        Some("t".into())
    );
    eprintln!("a second instance's tunnel was heard after {took:?}");
}

fn ca(n: u8) -> CaRecord {
    CaRecord {
        cert_pem: format!("-----BEGIN CERTIFICATE-----\nca {n}\n-----END CERTIFICATE-----\n"),
        key_pem: format!("-----BEGIN PRIVATE KEY-----\nkey {n}\n-----END PRIVATE KEY-----\n"),
    }
}

async fn the_first_cluster_ca_stored_wins_a_race(f: &Fixture) {
    assert_eq!(f.store.cluster_ca().await.expect("read"), None);
    // Two instances (two nodes starting at once) each offer their own CA.
    let other = f.another().await;
    let (a, b) = (ca(1), ca(2));
    let (got_a, got_b) = tokio::join!(f.store.init_cluster_ca(&a), other.init_cluster_ca(&b));
    let (got_a, got_b) = (got_a.expect("init here"), got_b.expect("init there"));
    assert_eq!(got_a, got_b, "both nodes must end up with one CA");
    assert!(got_a == a || got_a == b, "the winner is one of the offers");
    for s in [&f.store, &other] {
        assert_eq!(s.cluster_ca().await.expect("read"), Some(got_a.clone()));
    }
    // Later offers change nothing.
    assert_eq!(f.store.init_cluster_ca(&ca(3)).await.expect("again"), got_a);
    assert_eq!(
        f.another().await.cluster_ca().await.expect("reopened"),
        Some(got_a)
    );
}

// ---- etcd only ----

#[tokio::test]
async fn etcd_prefixes_keep_clusters_apart() {
    let etcd = Etcd::shared().expect("etcd");
    let base = format!("/warren-iso-{}", uuid::Uuid::new_v4().simple());
    // One prefix is the other's string prefix: "/x" must not see "/x2".
    let one = connect_etcd(&etcd.endpoint(), &base).await;
    let one_again = connect_etcd(&etcd.endpoint(), &base).await;
    let two = connect_etcd(&etcd.endpoint(), &format!("{base}2")).await;
    assert_eq!(one.prefix(), format!("{base}/"));
    let mut heard_one = one_again.watch();
    let mut heard_two = two.watch();

    let a = one.create_account("a").await.expect("account");
    one.create_api_token(&a.id, "admin", hash_secret(b"tok"))
        .await
        .expect("token");
    let t = one
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    one.create_service(&service("svc-1", &a.id, &t.id))
        .await
        .expect("service");
    one.put_script(&script("w", &a.id, "t", &["svc-1"]), None)
        .await
        .expect("script");
    expect_change(
        &mut heard_one,
        &Change::Script("w".into()),
        Duration::from_secs(2),
    )
    .await;

    assert!(two.list_accounts().await.expect("list").is_empty());
    assert_eq!(two.get_account(&a.id).await.expect("get"), None);
    assert_eq!(
        two.account_for_token(hash_secret(b"tok"))
            .await
            .expect("token"),
        None
    );
    assert_eq!(two.get_tunnel(&t.id).await.expect("get"), None);
    assert!(two.list_tunnels(&a.id).await.expect("list").is_empty());
    assert_eq!(two.get_service("svc-1").await.expect("get"), None);
    assert_eq!(two.services_using_tunnel(&t.id).await.expect("count"), 0);
    assert!(two.list_scripts().await.expect("list").is_empty());
    assert!(
        two.scripts_binding("svc-1")
            .await
            .expect("binding")
            .is_empty()
    );
    // The same names in the second prefix are free.
    let b = two.create_account("b").await.expect("account");
    assert!(
        two.put_script(&script("w", &b.id, "other", &[]), None)
            .await
            .expect("same name, other cluster")
    );
    assert_eq!(
        one.get_script("w").await.expect("get").map(|s| s.tag),
        Some("t".into())
    );
    assert_eq!(one.list_accounts().await.expect("list"), vec![a]);
    // The second prefix heard only its own write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut heard = Vec::new();
    while let Ok(c) = heard_two.try_recv() {
        heard.push(c);
    }
    // (Once from the write itself, maybe again from the watch.)
    assert!(!heard.is_empty());
    assert!(
        heard.iter().all(|c| c == &Change::Script("w".into())),
        "{heard:?}"
    );
}

#[tokio::test]
async fn etcd_outage_fails_fast_and_the_watch_resumes_with_change_all() {
    let mut etcd = Etcd::start().expect("etcd");
    let prefix = "/warren/";
    let a = connect_etcd(&etcd.endpoint(), prefix).await;
    let b = connect_etcd(&etcd.endpoint(), prefix).await;
    let account = b.create_account("a").await.expect("account");
    let mut watch = a.watch();

    etcd.stop();
    let start = Instant::now();
    let err = a
        .create_account("during the outage")
        .await
        .expect_err("etcd is down");
    let took = start.elapsed();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains(&etcd.endpoint())),
        "{err:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a write took {took:?} to fail"
    );
    eprintln!("a write failed after {took:?} with etcd down: {err}");
    let start = Instant::now();
    let err = a.get_account(&account.id).await.expect_err("etcd is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));

    etcd.start_again().expect("restart etcd");
    let back = Instant::now();
    let t = loop {
        match b.create_tunnel(&account.id, "after", [1; 32], None).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(15),
                    "writes still fail 15 s after etcd came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eprintln!(
        "writes succeeded again {:?} after the restart",
        back.elapsed()
    );
    let took = expect_change(&mut watch, &Change::All, Duration::from_secs(10)).await;
    eprintln!("the watcher heard Change::All {took:?} later");
    // The resumed watch replays what happened since, and hears what follows.
    expect_change(
        &mut watch,
        &Change::Tunnel(t.id.clone()),
        Duration::from_secs(2),
    )
    .await;
    b.create_service(&service("svc-after", &account.id, &t.id))
        .await
        .expect("service");
    expect_change(
        &mut watch,
        &Change::Service("svc-after".into()),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        a.get_service("svc-after")
            .await
            .expect("read again")
            .is_some()
    );
}

#[tokio::test]
async fn etcd_unreachable_at_connect_is_unavailable_naming_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let err = EtcdStore::connect(EtcdConfig::new(vec![endpoint.clone()]))
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains(&endpoint)),
        "{err:?}"
    );
}

#[tokio::test]
async fn etcd_connections_of_a_gone_node_expire_and_watchers_hear_it() {
    let f = Fixture::etcd().await;
    let node = f.another().await;
    let a = f.store.create_account("a").await.expect("account");
    let t = f
        .store
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    node.put_connection(&record("c1", &t.id), Duration::from_secs(1))
        .await
        .expect("put");
    assert_eq!(
        f.store.list_connections(&t.id).await.expect("list").len(),
        1
    );
    let mut watch = f.store.watch();
    drop(node);
    // The lease runs out in etcd: the connection is deleted, and watchers are told.
    let took = expect_change(
        &mut watch,
        &Change::Connections(t.id.clone()),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        f.store
            .list_connections(&t.id)
            .await
            .expect("list")
            .is_empty()
    );
    eprintln!("a dropped node's connection expired after {took:?}");
}

#[tokio::test]
async fn etcd_malformed_values_are_backend_errors_naming_the_key() {
    let etcd = Etcd::shared().expect("etcd");
    let prefix = format!("/warren-bad-{}/", uuid::Uuid::new_v4().simple());
    let store = connect_etcd(&etcd.endpoint(), &prefix).await;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client");
    raw.put(format!("{prefix}accounts/broken"), "{not json", None)
        .await
        .expect("put");
    raw.put(
        format!("{prefix}tunnels/t1"),
        r#"{"id":"t1","account_id":"a","name":"n","secret_hash":"zz","created_at":"x","first_connected_at":null,"sealed_secret":null}"#,
        None,
    )
    .await
    .expect("put");
    for (err, key) in [
        (
            store.get_account("broken").await.expect_err("malformed"),
            "accounts/broken",
        ),
        (
            store.list_accounts().await.expect_err("malformed"),
            "accounts/broken",
        ),
        (
            store.get_tunnel("t1").await.expect_err("malformed hash"),
            "tunnels/t1",
        ),
    ] {
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains(&format!("{prefix}{key}"))),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    let etcd = Etcd::start_tls().expect("etcd with TLS");
    let files = etcd.tls_files().expect("TLS files").clone();
    assert!(etcd.endpoint().starts_with("https://"));
    let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
    config.tls = Some(EtcdTls {
        ca_file: files.ca.clone(),
        cert_file: Some(files.client_cert.clone()),
        key_file: Some(files.client_key.clone()),
    });
    let one = EtcdStore::connect(config.clone())
        .await
        .expect("connect over TLS");
    let two = EtcdStore::connect(config.clone())
        .await
        .expect("connect over TLS");
    let mut heard = one.watch();
    let a = two.create_account("a").await.expect("account");
    let t = two
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    expect_change(&mut heard, &Change::Tunnel(t.id), Duration::from_secs(2)).await;
    assert_eq!(one.list_accounts().await.expect("list"), vec![a]);

    // The member asks for a client certificate: none, no store. (With TLS
    // 1.3 the refusal may come after the handshake, as a closed connection,
    // so which error it is depends on timing.)
    config.tls = Some(EtcdTls {
        ca_file: files.ca.clone(),
        cert_file: None,
        key_file: None,
    });
    assert!(EtcdStore::connect(config.clone()).await.is_err());
    // A CA that did not sign the member's certificate: refused here, a
    // configuration error.
    config.tls = Some(EtcdTls {
        ca_file: files.client_cert.clone(),
        cert_file: Some(files.client_cert.clone()),
        key_file: Some(files.client_key.clone()),
    });
    let err = EtcdStore::connect(config).await.err().expect("wrong CA");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    // A missing file is named.
    let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
    config.tls = Some(EtcdTls {
        ca_file: "/nonexistent/ca.pem".into(),
        cert_file: None,
        key_file: None,
    });
    let err = EtcdStore::connect(config).await.err().expect("no CA file");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}

#[tokio::test]
async fn etcd_with_authentication_needs_the_right_password() {
    let etcd = Etcd::start().expect("etcd");
    let mut root = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client");
    root.user_add("root", "root-password", None)
        .await
        .expect("add root");
    root.user_grant_role("root", "root").await.expect("grant");
    root.auth_enable().await.expect("enable auth");

    let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
    config.user = Some("root".into());
    config.password = Some("root-password".into());
    let one = EtcdStore::connect(config.clone()).await.expect("connect");
    let two = EtcdStore::connect(config.clone()).await.expect("connect");
    let mut heard = one.watch();
    let a = two.create_account("a").await.expect("account");
    let t = two
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    expect_change(&mut heard, &Change::Tunnel(t.id), Duration::from_secs(2)).await;
    assert_eq!(one.get_account(&a.id).await.expect("get"), Some(a));

    config.password = Some("wrong".into());
    let err = EtcdStore::connect(config.clone())
        .await
        .err()
        .expect("wrong password");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    config.user = None;
    config.password = None;
    let err = EtcdStore::connect(config).await.err().expect("no user");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

#[tokio::test]
async fn etcd_an_idle_watch_stays_open() {
    // Longer than the request timeout (2 s): the watch is not a request that
    // times out, and it is not cut and resumed (which would say Change::All).
    let f = Fixture::etcd().await;
    let other = f.another().await;
    let mut watch = f.store.watch();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = other.create_account("a").await.expect("account");
    let t = other
        .create_tunnel(&a.id, "home", [1; 32], None)
        .await
        .expect("tunnel");
    // The first thing heard is the tunnel: not a Change::All of a resumed watch.
    let heard = tokio::time::timeout(Duration::from_secs(2), watch.recv()).await;
    assert!(
        matches!(&heard, Ok(Ok(c)) if *c == Change::Tunnel(t.id.clone())),
        "{heard:?}"
    );
}

#[tokio::test]
async fn etcd_long_listings_are_read_in_pages() {
    // More accounts than one page (1000) and more tunnels than one batch of
    // gets (100), written straight into etcd in the stored shape.
    let etcd = Etcd::shared().expect("etcd");
    let prefix = format!("/warren-pages-{}/", uuid::Uuid::new_v4().simple());
    let store = connect_etcd(&etcd.endpoint(), &prefix).await;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client");
    let account = store.create_account("owner").await.expect("account");
    let mut puts = Vec::new();
    for i in 0..1050 {
        let id = format!("acct{i:05}");
        let doc = serde_json::json!({"id": id, "name": "n", "created_at": "2026-01-01T00:00:00Z"});
        puts.push(etcd_client::TxnOp::put(
            format!("{prefix}accounts/{id}"),
            doc.to_string(),
            None,
        ));
    }
    for i in 0..250 {
        let id = format!("tun{i:05}");
        let doc = serde_json::json!({
            "id": id, "account_id": account.id, "name": "t", "secret_hash": "00".repeat(32),
            "created_at": "2026-01-01T00:00:00Z", "first_connected_at": null, "sealed_secret": null,
        });
        puts.push(etcd_client::TxnOp::put(
            format!("{prefix}tunnels/{id}"),
            doc.to_string(),
            None,
        ));
        puts.push(etcd_client::TxnOp::put(
            format!("{prefix}account-tunnels/{}/{id}", account.id),
            "",
            None,
        ));
    }
    while !puts.is_empty() {
        let batch: Vec<_> = puts.drain(..puts.len().min(100)).collect();
        raw.txn(etcd_client::Txn::new().and_then(batch))
            .await
            .expect("txn");
    }
    let accounts = store.list_accounts().await.expect("list");
    assert_eq!(accounts.len(), 1051);
    assert_eq!(accounts[0].id, "acct00000");
    assert_eq!(accounts[1049].id, "acct01049");
    assert_eq!(accounts[1050], account, "the newest is last");
    let tunnels = store.list_tunnels(&account.id).await.expect("list");
    assert_eq!(tunnels.len(), 250);
    let ids: Vec<&str> = tunnels.iter().map(|t| t.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[tokio::test]
async fn etcd_a_watch_resuming_past_a_compaction_starts_over_and_keeps_following() {
    let mut etcd = Etcd::start().expect("etcd");
    let a = connect_etcd(&etcd.endpoint(), "/warren/").await;
    let b = connect_etcd(&etcd.endpoint(), "/warren/").await;
    let account = b.create_account("a").await.expect("account");
    let mut watch = a.watch();
    // Down for 5 s: the watch's reconnect backoff (0.1 s doubling) has its
    // next try about 6.3 s after the cut, well after the restart below.
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.start_again().expect("restart");
    // Before the watch is back: a change, another write, and a compaction
    // of everything before that write.
    let back = Instant::now();
    let lost = loop {
        match b.create_tunnel(&account.id, "lost", [1; 32], None).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(back.elapsed() < Duration::from_secs(15), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    b.create_account("bump").await.expect("account");
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client");
    let rev = raw
        .get(
            "/warren/",
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await
        .expect("revision")
        .header()
        .map(|h| h.revision())
        .expect("header");
    raw.compact(rev, None).await.expect("compact");
    let compacted = back.elapsed();
    // The watch is told the change is gone (Change::All), then follows on
    // from the compacted revision.
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !heard.contains(&Change::All) {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Ok(Ok(c)) => heard.push(c),
            other => panic!("no Change::All: {other:?} after {heard:?}"),
        }
    }
    eprintln!(
        "compacted {compacted:?} after the restart; Change::All {:?} after the restart",
        back.elapsed()
    );
    let after = b
        .create_tunnel(&account.id, "after", [1; 32], None)
        .await
        .expect("tunnel");
    let want = Change::Tunnel(after.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while heard.last() != Some(&want) {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Ok(Ok(c)) => heard.push(c),
            other => panic!("no {want:?}: {other:?} after {heard:?}"),
        }
    }
    assert!(
        !heard.contains(&Change::Tunnel(lost.id)),
        "the compacted change was replayed: the watch came back before the compaction {heard:?}"
    );
}
