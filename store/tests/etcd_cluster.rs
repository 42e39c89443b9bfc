//! The etcd store on a real three-member cluster: while the member the
//! stores talk to, which is also the leader, is killed with SIGKILL and
//! later restarted, a loop of writes, reads and listings goes on through the
//! other members without one failed or wrong answer and without an operation
//! taking 2 s, a change made after the kill reaches another store's
//! watcher, and a store can start while the first member it is given is
//! down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use warren_store::{Change, EtcdConfig, EtcdStore, ScriptRecord, Store, rfc3339};
use warren_testkit::etcd::EtcdCluster;

fn script(name: &str, account: &str, tag: &str, version: u32) -> ScriptRecord {
    ScriptRecord {
        name: name.into(),
        account_id: account.into(),
        tag: tag.into(),
        metadata: format!(r#"{{"main_module":"index.js","version":{version}}}"#),
        services: vec![format!("svc-{name}")],
        routes: vec![],
        bundle: "ab".repeat(32),
        secrets: Default::default(),
        created_on: rfc3339(SystemTime::now()),
        modified_on: rfc3339(SystemTime::now()),
    }
}

/// One operation's name, how long it took, and what went wrong if anything.
type Outcome = (&'static str, Duration, Option<String>);

/// Runs `op`, timing it; `check` says what was wrong with its answer.
async fn timed<T>(
    out: &mut Vec<Outcome>,
    name: &'static str,
    op: impl Future<Output = Result<T, warren_store::StoreError>>,
    check: impl FnOnce(&T) -> Option<String>,
) {
    let start = Instant::now();
    let result = op.await;
    let elapsed = start.elapsed();
    let problem = match &result {
        Ok(v) => check(v),
        Err(e) => Some(e.to_string()),
    };
    out.push((name, elapsed, problem));
}

/// Creates, redeploys, reads, lists and deletes scripts of its own until
/// `stop`, checking every answer.
async fn load(store: Arc<EtcdStore>, worker: usize, stop: Arc<AtomicBool>) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let name = format!("w{worker}-{}", round % 5);
        let account = {
            let start = Instant::now();
            match store.create_account(&name).await {
                Ok(a) => {
                    out.push(("create_account", start.elapsed(), None));
                    a.id
                }
                Err(e) => {
                    out.push(("create_account", start.elapsed(), Some(e.to_string())));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        };
        let v1 = script(&name, &account, &format!("tag-{round}"), 1);
        timed(
            &mut out,
            "put_script (create)",
            store.put_script(&v1, None),
            |ok| (!ok).then(|| "create lost".to_owned()),
        )
        .await;
        let v2 = script(&name, &account, &v1.tag, 2);
        timed(
            &mut out,
            "put_script (redeploy)",
            store.put_script(&v2, Some(&v1)),
            |ok| (!ok).then(|| "redeploy lost".to_owned()),
        )
        .await;
        timed(&mut out, "get_script", store.get_script(&name), |got| {
            (got.as_ref() != Some(&v2)).then(|| format!("read {got:?}"))
        })
        .await;
        timed(
            &mut out,
            "get_account",
            store.get_account(&account),
            |got| got.is_none().then(|| "account missing".to_owned()),
        )
        .await;
        timed(&mut out, "list_scripts", store.list_scripts(), |all| {
            (!all.iter().any(|s| s == &v2)).then(|| "listing misses the script".to_owned())
        })
        .await;
        timed(
            &mut out,
            "scripts_binding",
            store.scripts_binding(&format!("svc-{name}")),
            |names| (names != &vec![name.clone()]).then(|| format!("index says {names:?}")),
        )
        .await;
        timed(
            &mut out,
            "delete_script",
            store.delete_script(&account, &name),
            |ok| (!ok).then(|| "delete found nothing".to_owned()),
        )
        .await;
        timed(
            &mut out,
            "get_script (deleted)",
            store.get_script(&name),
            |got| got.is_some().then(|| "still there".to_owned()),
        )
        .await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_and_restarted_costs_no_operation() {
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .expect("join")
        .expect("a three-member etcd cluster (package etcd-server; run scripts/setup.sh)");
    let victim = cluster.leader().expect("a leader");
    // The leader's endpoint first: the member the stores use and the leader
    // go down together.
    let mut endpoints = vec![cluster.endpoint(victim)];
    endpoints.extend(
        (0..cluster.len())
            .filter(|&i| i != victim)
            .map(|i| cluster.endpoint(i)),
    );
    let mut config = EtcdConfig::new(endpoints);
    config.prefix = "/warren-cluster-test/".into();
    let store = Arc::new(EtcdStore::connect(config.clone()).await.expect("connect"));
    let watcher = EtcdStore::connect(config.clone()).await.expect("connect");
    let mut changes = watcher.watch();

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|w| tokio::spawn(load(store.clone(), w, stop.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(victim);
        cluster
    })
    .await
    .expect("join");

    // A change made through one store after the kill reaches the other's
    // watcher, whose watch ran on the killed member.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let account = store
        .create_account("after")
        .await
        .expect("account after the kill");
    let after = script("after-kill", &account.id, "t", 1);
    assert!(
        store
            .put_script(&after, None)
            .await
            .expect("write after the kill")
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match changes.recv().await {
                Ok(Change::Script(name)) if name == "after-kill" => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("watch closed: {e}"),
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the watcher did not hear of a change made after the kill"
    );

    // A store started now, with the dead member first, connects through the
    // others.
    let late = EtcdStore::connect(config.clone())
        .await
        .expect("connect with the first member dead");
    assert_eq!(
        late.get_script("after-kill").await.expect("read"),
        Some(after.clone())
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = tokio::task::spawn_blocking(move || cluster.restart(victim).map(|()| cluster))
        .await
        .expect("join")
        .expect("the killed member restarts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for l in loads {
        outcomes.extend(l.await.expect("load task"));
    }

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.2.is_some()).collect();
    let slowest = outcomes.iter().max_by_key(|o| o.1).expect("operations ran");
    eprintln!(
        "{} operations, {} failed, slowest {} in {:?}",
        outcomes.len(),
        failed.len(),
        slowest.0,
        slowest.1
    );
    assert!(
        outcomes.len() > 100,
        "the loop ran: {} operations",
        outcomes.len()
    );
    assert!(failed.is_empty(), "failed operations: {failed:?}");
    assert!(
        slowest.1 < Duration::from_secs(2),
        "{} took {:?}",
        slowest.0,
        slowest.1
    );

    // The restarted member rejoined and caught up: read through it alone.
    let mut alone = config.clone();
    alone.endpoints = vec![cluster.endpoint(victim)];
    let rejoined = EtcdStore::connect(alone)
        .await
        .expect("connect to the restarted member");
    assert_eq!(
        rejoined.get_script("after-kill").await.expect("read"),
        Some(after)
    );
}
