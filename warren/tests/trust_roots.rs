//! The node's trust roots — the edge CA, the internal secret, the sealing key —
//! are created on the first start of the real `warren serve` and kept; when one
//! is lost or damaged later, the node refuses to start with an error naming the
//! file instead of silently making a new CA (cutting off every connector) or
//! running with an empty secret (internal authentication off).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Kill, WARREN, free_tcp, wait_for_profile};

const CA_CERT: &str = "edge-ca.crt";
const CA_KEY: &str = "edge-ca.key";
const SECRET: &str = "internal-secret";
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

#[test]
fn first_start_creates_the_trust_roots_and_a_restart_keeps_them() {
    let node = Node::new();
    let first = node.start();
    wait_for_profile(&node.dir.path().join("profile.json"));
    drop(first);
    let files = [CA_CERT, CA_KEY, SECRET, SEALING];
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(&node.data(f))).collect();
    for (f, bytes) in files.iter().zip(&before) {
        assert!(!bytes.is_empty(), "{f} is empty after the first start");
    }
    drop(node.start());
    let after: Vec<Vec<u8>> = files.iter().map(|f| read(&node.data(f))).collect();
    assert_eq!(before, after, "a restart changed a trust root");
}

#[test]
fn a_lost_or_empty_trust_root_stops_the_node_naming_the_file() {
    let node = Node::new();
    drop(node.start());
    let cert = read(&node.data(CA_CERT));

    // Half of the CA: no new CA is made, the remaining half is untouched.
    for (missing, kept) in [(CA_KEY, CA_CERT), (CA_CERT, CA_KEY)] {
        let saved = read(&node.data(missing));
        let kept_bytes = read(&node.data(kept));
        std::fs::remove_file(node.data(missing)).expect("remove");
        node.refuses("edge.toml", &node.data(missing).display().to_string());
        assert!(!node.data(missing).exists(), "{missing} was recreated");
        assert_eq!(read(&node.data(kept)), kept_bytes);
        std::fs::write(node.data(missing), saved).expect("restore");
    }

    // The whole CA, or the sealing key, gone on a node that has started
    // before: nothing is made afresh.
    let key = read(&node.data(CA_KEY));
    std::fs::remove_file(node.data(CA_KEY)).expect("remove");
    std::fs::remove_file(node.data(CA_CERT)).expect("remove");
    node.refuses("edge.toml", &node.data(CA_CERT).display().to_string());
    assert!(!node.data(CA_CERT).exists() && !node.data(CA_KEY).exists());
    std::fs::write(node.data(CA_CERT), &cert).expect("restore");
    std::fs::write(node.data(CA_KEY), &key).expect("restore");
    let sealing = read(&node.data(SEALING));
    std::fs::remove_file(node.data(SEALING)).expect("remove");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    assert!(
        !node.data(SEALING).exists(),
        "the sealing key was recreated"
    );
    std::fs::write(node.data(SEALING), &sealing).expect("restore");

    // The internal secret, emptied or removed, is not replaced.
    let secret = read(&node.data(SECRET));
    std::fs::write(node.data(SECRET), "").expect("truncate");
    node.refuses("edge.toml", &node.data(SECRET).display().to_string());
    assert!(read(&node.data(SECRET)).is_empty());
    std::fs::remove_file(node.data(SECRET)).expect("remove");
    node.refuses("edge.toml", &node.data(SECRET).display().to_string());
    assert!(
        !node.data(SECRET).exists(),
        "the internal secret was recreated"
    );
    std::fs::write(node.data(SECRET), &secret).expect("restore");

    // An empty secret in the config is refused too.
    node.write_config("empty-secret.toml", "internal_secret = \" \"\n");
    node.refuses(
        "empty-secret.toml",
        "internal_secret in the config is empty",
    );

    // The sealing key, emptied or unreadable.
    let sealing = read(&node.data(SEALING));
    std::fs::write(node.data(SEALING), "").expect("truncate");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    std::fs::remove_file(node.data(SEALING)).expect("remove");
    std::fs::create_dir(node.data(SEALING)).expect("a directory in its place");
    node.refuses("edge.toml", &node.data(SEALING).display().to_string());
    std::fs::remove_dir(node.data(SEALING)).expect("rmdir");
    std::fs::write(node.data(SEALING), &sealing).expect("restore");

    // Restored, the node starts with the CA it had.
    drop(node.start());
    assert_eq!(read(&node.data(CA_CERT)), cert);
}
