//! The node's trust roots — the cluster CA (in the store) and the sealing key
//! (in the data directory) — are created on the first start of the real
//! `warren serve` and kept. A CA kept in the data directory by older versions
//! is adopted by a store without one; one that differs from the store's, or a
//! lost or damaged root, stops the node with an error naming the files instead
//! of silently making a new CA (cutting off every connector) or a new key.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Kill, WARREN, free_tcp, wait_for_profile};
use warren_iris::EdgeCa;
use warren_store::{SqliteStore, Store};

const CA_CERT: &str = "edge-ca.crt";
const CA_KEY: &str = "edge-ca.key";
const SEALING: &str = "sealing.key";

/// A node's files: its config, profile and data directory.
struct Node {
    dir: tempfile::TempDir,
    api: SocketAddr,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = ([127, 0, 0, 1], free_tcp()).into();
        let node = Node { dir, api };
        node.write_config("edge.toml", "");
        node
    }

    /// Writes a config (API and tunnel edge only) with `extra` top-level keys.
    fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "data_dir = \"data\"\n{extra}[parts]\napi = true\ntunnel = true\nconnect = false\n\
             runtime = false\nbinding = false\n[api]\nlisten = \"{}\"\n[tunnel]\n\
             listen = \"127.0.0.1:0\"\n",
            self.api
        );
        std::fs::write(&path, text).expect("config");
        path
    }

    fn data(&self, file: &str) -> PathBuf {
        self.dir.path().join("data").join(file)
    }

    fn spawn(&self, config: &str) -> Child {
        Command::new(WARREN)
            .args(["serve", "--config"])
            .arg(self.dir.path().join(config))
            .env("WARREN_PROFILE", self.dir.path().join("profile.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warren serve")
    }

    /// Starts the node and waits until its API accepts connections.
    fn start(&self) -> Kill {
        let mut child = self.spawn("edge.toml");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(self.api).is_err() {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("warren serve exited ({status}): {}", stderr_of(&mut child));
            }
            assert!(Instant::now() < deadline, "the node's API did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Kill(child)
    }

    /// Starts the node with `config` and expects it to exit non-zero at once,
    /// saying `words`.
    fn refuses(&self, config: &str, words: &str) {
        let mut child = self.spawn(config);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "warren serve kept running instead of refusing ({words}): {}",
                    stderr_of(&mut child)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = stderr_of(&mut child);
        assert!(!status.success(), "{status}: {stderr}");
        assert!(stderr.contains(words), "expected {words:?} in: {stderr}");
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Node {
    /// The data directory of a node of an older version: its CA and sealing
    /// key, no store yet; the CA.
    fn older_version(&self) -> EdgeCa {
        let data = self.dir.path().join("data");
        warren_iris::sealing::Sealer::load_or_create(&data).expect("sealing key");
        EdgeCa::load_or_create(&data).expect("old CA")
    }

    /// The fingerprint of the cluster CA the node's store holds, if any.
    async fn stored_ca(&self) -> Option<String> {
        let store = SqliteStore::open(&self.data("warren.db")).expect("store");
        let record = store.cluster_ca().await.expect("read")?;
        Some(EdgeCa::from_record(&record).expect("usable").fingerprint())
    }
}

#[tokio::test]
async fn first_start_creates_the_trust_roots_and_a_restart_keeps_them() {
    let node = Node::new();
    let first = node.start();
    wait_for_profile(&node.dir.path().join("profile.json"));
    drop(first);
    let ca = node
        .stored_ca()
        .await
        .expect("the store holds the cluster CA");
    // The CA's key is in the store only.
    for f in [CA_CERT, CA_KEY] {
        assert!(!node.data(f).exists(), "{f} was written");
    }
    let sealing = read(&node.data(SEALING));
    assert!(!sealing.is_empty(), "the sealing key is empty");
    drop(node.start());
    assert_eq!(node.stored_ca().await, Some(ca), "a restart changed the CA");
    assert_eq!(
        read(&node.data(SEALING)),
        sealing,
        "a restart changed the key"
    );
}

#[tokio::test]
async fn a_data_directory_ca_is_adopted_and_one_that_differs_from_the_store_is_refused() {
    // A node of an older version: its CA in the data directory, a store
    // without one. The store adopts it, so tokens already issued stay valid.
    let node = Node::new();
    let old = node.older_version();
    drop(node.start());
    assert_eq!(node.stored_ca().await, Some(old.fingerprint()));
    drop(node.start());

    // The files, gone afterwards, are not needed: the store has the CA.
    let (cert, key) = (read(&node.data(CA_CERT)), read(&node.data(CA_KEY)));
    std::fs::remove_file(node.data(CA_CERT)).expect("remove");
    std::fs::remove_file(node.data(CA_KEY)).expect("remove");
    drop(node.start());
    assert_eq!(node.stored_ca().await, Some(old.fingerprint()));

    // Another CA in the data directory than the store's: refused, naming
    // both files and both fingerprints; nothing changes.
    let other = EdgeCa::load_or_create(&node.dir.path().join("data")).expect("other CA");
    let words = format!(
        "the edge CA in {} and {} (sha256 {}) is not the cluster CA in the store (sha256 {})",
        node.data(CA_CERT).display(),
        node.data(CA_KEY).display(),
        other.fingerprint(),
        old.fingerprint()
    );
    node.refuses("edge.toml", &words);
    assert_eq!(node.stored_ca().await, Some(old.fingerprint()));
    std::fs::write(node.data(CA_CERT), cert).expect("restore");
    std::fs::write(node.data(CA_KEY), key).expect("restore");
    drop(node.start());
}

#[tokio::test]
async fn a_lost_or_damaged_trust_root_stops_the_node_naming_the_file() {
    let node = Node::new();
    node.older_version();
    drop(node.start());

    // Half of a data-directory CA: refused, the remaining half untouched.
    for (missing, kept) in [(CA_KEY, CA_CERT), (CA_CERT, CA_KEY)] {
        let saved = read(&node.data(missing));
        let kept_bytes = read(&node.data(kept));
        std::fs::remove_file(node.data(missing)).expect("remove");
        node.refuses("edge.toml", &node.data(missing).display().to_string());
        assert!(!node.data(missing).exists(), "{missing} was recreated");
        assert_eq!(read(&node.data(kept)), kept_bytes);
        std::fs::write(node.data(missing), saved).expect("restore");
    }

    // The sealing key gone, emptied or unreadable on a node that has
    // started before: nothing is made afresh.
    let sealing = read(&node.data(SEALING));
    std::fs::remove_file(node.data(SEALING)).expect("remove");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    assert!(
        !node.data(SEALING).exists(),
        "the sealing key was recreated"
    );
    std::fs::write(node.data(SEALING), "").expect("truncate");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    std::fs::remove_file(node.data(SEALING)).expect("remove");
    std::fs::create_dir(node.data(SEALING)).expect("a directory in its place");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    std::fs::remove_dir(node.data(SEALING)).expect("rmdir");
    std::fs::write(node.data(SEALING), &sealing).expect("restore");

    // The internal secret is gone: a config that still sets it is refused.
    node.write_config("secret.toml", "internal_secret = \"s3cret\"\n");
    node.refuses(
        "secret.toml",
        "internal_secret: no longer used — node certificates from the cluster CA replaced the \
         internal secret",
    );

    // Restored, the node starts with the CA it had.
    let ca = node.stored_ca().await;
    drop(node.start());
    assert_eq!(node.stored_ca().await, ca);
}

#[tokio::test]
async fn a_store_with_tunnels_but_no_ca_anywhere_is_refused() {
    // Tunnels whose tokens pin a CA that is nowhere to be found (an older
    // node whose CA files were lost): a new CA would cut their connectors off.
    let node = Node::new();
    std::fs::create_dir_all(node.dir.path().join("data")).expect("data dir");
    {
        let store = SqliteStore::open(&node.data("warren.db")).expect("store");
        let account = store.create_account("old").await.expect("account");
        store
            .create_tunnel(&account.id, "lab", [7; 32], None)
            .await
            .expect("tunnel");
    }
    node.refuses(
        "edge.toml",
        &format!(
            "the store holds tunnels but no cluster CA, and the edge CA ({}, {}) is missing",
            node.data(CA_CERT).display(),
            node.data(CA_KEY).display()
        ),
    );
    assert_eq!(node.stored_ca().await, None, "no CA was made");
}
