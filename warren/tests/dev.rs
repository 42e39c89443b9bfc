//! `warren dev` as a developer runs it: a wrangler.toml project whose config
//! binds a service by its real id (given in services.json), `--env` with its
//! `.dev.vars.<env>` secrets, `--var`, the dev profile
//! the other commands use, and edit-save-reload — the first request after a
//! save is answered by the new code, an unchanged save redeploys nothing, and
//! a save that does not build keeps the previous version serving.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{Kill, WARREN, free_tcp, get};

/// The real id the project's config names.
const SERVICE_ID: &str = "0b7e8f6a-2c1d-4e5f-9a8b-7c6d5e4f3a21";

fn write_project(dir: &Path, origin_port: u16, version: &str) {
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    // Bindings are not inherited by an environment (wrangler's rule).
    let config = format!(
        r#"name = "devloop"
main = "src/index.js"

[vars]
GREETING = "from config"
STAGE = "production"

[[vpc_services]]
binding = "API"
service_id = "{SERVICE_ID}"

[env.staging.vars]
GREETING = "from staging"
STAGE = "staging"

[[env.staging.vpc_services]]
binding = "API"
service_id = "{SERVICE_ID}"
"#
    );
    std::fs::write(dir.join("wrangler.toml"), config).expect("config");
    // As under `wrangler dev`, .dev.vars.<env> wins over .dev.vars.
    std::fs::write(dir.join(".dev.vars"), "TOKEN=from .dev.vars\n").expect(".dev.vars");
    std::fs::write(
        dir.join(".dev.vars.staging"),
        "# local secrets\nTOKEN=\"s3cret staging\"\n",
    )
    .expect(".dev.vars.staging");
    let services = serde_json::json!([{
        "service_id": SERVICE_ID,
        "name": "origin",
        "type": "http",
        "http_port": origin_port,
        "host": { "ipv4": "127.0.0.1", "network": {} },
    }]);
    std::fs::write(dir.join("services.json"), services.to_string()).expect("services");
    write_code(dir, version);
}

fn write_code(dir: &Path, version: &str) {
    let code = format!(
        "export default {{\n  async fetch(request, env) {{\n    \
         const r = await env.API.fetch(\"http://origin.internal/hello\");\n    \
         return new Response(`{version} ${{env.GREETING}} (${{env.STAGE}}, ${{env.TOKEN}}): ${{await r.text()}}`);\n  }},\n}};\n"
    );
    std::fs::write(dir.join("src/index.js"), code).expect("code");
}

/// What the worker answers: its version, the flag's var over the
/// environment's, the environment's var and the .dev.vars.staging secret.
fn answer(version: &str) -> String {
    format!("{version} from the flag (staging, s3cret staging): hello from origin")
}

/// `warren dev`'s stdout, line by line.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn until(&self, what: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no line with {what:?} within {within:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    /// The lines up to and with the first that contains `what`.
    fn through(&self, what: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(line) => {
                    let last = line.contains(what);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {what:?} within {within:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    fn drain(&self) -> Vec<String> {
        self.0.try_iter().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_a_project_and_reloads_it_on_save() {
    let origin = warren_testkit::origin::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    )
    .expect("origin");
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    write_project(&project, origin.port(), "v1");
    let port = free_tcp();
    let mut child = Command::new(WARREN)
        .args(["dev", project.to_str().expect("path")])
        .args([
            "--port",
            &port.to_string(),
            "--var",
            "GREETING:from the flag",
            "--env",
            "staging",
        ])
        .env("RUST_LOG", "warn")
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("warren dev");
    let stdout = child.stdout.take().expect("stdout");
    let _dev = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("dev| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines = Lines(rx);
    let profile_line = lines.until("export WARREN_PROFILE=", Duration::from_secs(60));
    let profile = profile_line
        .trim()
        .trim_start_matches("export WARREN_PROFILE=")
        .to_owned();
    // The dev edge's state is kept outside the project (a checkout could
    // plant compiled code or symlinks there).
    let state = std::fs::canonicalize(dir.path().join("state/warren/dev")).expect("state folder");
    assert!(Path::new(&profile).starts_with(&state), "{profile}");
    assert!(!project.join(".warren").exists());
    lines.until(
        &format!("VPC service origin → {SERVICE_ID}"),
        Duration::from_secs(30),
    );
    lines.until("devloop-staging is live", Duration::from_secs(240));

    // "live" is printed only once the worker answers: at once, with the
    // service named by its real id and the flag's var over the config's.
    let runtime: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = get(runtime, "localhost", "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, answer("v1").as_str())
    );

    // The dev profile points the other commands at this edge.
    let out = Command::new(WARREN)
        .args(["vpc", "service", "list"])
        .env("WARREN_PROFILE", &profile)
        .output()
        .expect("warren vpc service list");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains(SERVICE_ID) && listed.contains("origin"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A save: the next request waits for the rebuild and gets the new code.
    write_code(&project, "v2");
    let saved = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get(runtime, "localhost", "/").await;
    let took = saved.elapsed();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, answer("v2").as_str()),
        "the first request after a save"
    );
    eprintln!("edit -> first response with the new code: {took:?}");
    lines.until("redeployed in", Duration::from_secs(5));
    lines.until("devloop-staging is live", Duration::from_secs(5));

    // Saving the same bytes again deploys nothing.
    write_code(&project, "v2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(runtime, "localhost", "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, answer("v2").as_str())
    );
    let after = lines.drain();
    assert!(
        !after.iter().any(|l| l.contains("redeployed")),
        "an unchanged save redeployed: {after:?}"
    );

    // A save that does not build: the previous version keeps serving.
    std::fs::write(
        project.join("src/index.js"),
        "export default {\n  fetch( {\n};\n",
    )
    .expect("broken code");
    let failed = lines
        .through("fix and save again", Duration::from_secs(240))
        .join("\n");
    // The message names the file, line and column of the error in the source.
    assert!(failed.contains("did not build"), "{failed}");
    assert!(
        failed.contains("src/index.js:3:2: Expected \")\" but found \";\""),
        "{failed}"
    );
    let (status, body) = get(runtime, "localhost", "/").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, answer("v2").as_str()),
        "after a broken save"
    );
}
