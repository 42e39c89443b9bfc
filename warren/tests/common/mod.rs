//! Shared by warren's end-to-end tests: the binaries, child processes that die
//! with the test, the CLI run against a profile, and GETs through the runtime.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output};

use serde_json::Value;
use warren_testkit::origin;

/// The `warren` binary under test.
pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The `warren-connector` binary next to `warren` (built here if the run has not).
pub fn connector_bin() -> String {
    let p = Path::new(WARREN).with_file_name("warren-connector");
    if !p.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "warren-connector"])
            .status()
            .expect("cargo build");
        assert!(st.success(), "building warren-connector failed");
    }
    p.to_string_lossy().into_owned()
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP port free at the time of asking.
pub fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `warren ARGS` with the client profile `profile`.
pub fn warren(profile: &Path, args: &[&str]) -> Output {
    Command::new(WARREN)
        .args(args)
        .env("WARREN_PROFILE", profile)
        .env_remove("WARREN_API")
        .env_remove("WARREN_API_TOKEN")
        .env_remove("WARREN_ACCOUNT_ID")
        .output()
        .expect("warren runs")
}

/// Runs `warren ARGS` (which must succeed) and parses its JSON output.
pub fn ok_json(profile: &Path, args: &[&str]) -> Value {
    let out = warren(profile, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// GET through the runtime with the worker's Host; (status, body).
pub async fn get(runtime: SocketAddr, host: &str, path: &str) -> (u16, bytes::Bytes) {
    let tcp = tokio::net::TcpStream::connect(runtime)
        .await
        .expect("runtime");
    let (status, body) = origin::get(tcp, host, path).await.expect("request");
    (status.as_u16(), body)
}
