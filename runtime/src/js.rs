//! JS workers: a Workers-style module (`export default { fetch(request, env, ctx) }`)
//! is wrapped in a generated entry that builds `env` (vars as strings, VPC
//! bindings as objects with `.fetch()`) and `ctx` (`waitUntil`,
//! `passThroughOnException`; secrets are added to `env` in each request from
//! its environment, never built in), then turned into a `wasi:http/proxy` component by
//! ComponentizeJS (`runtime/js/build.mjs`, pinned in `runtime/js/package.json`).
//!
//! Building runs the worker's top-level code (Wizer snapshots it), so a build
//! is sandboxed like a request: node runs in its own process group with CPU
//! and memory rlimits, and the whole group is killed when the build outlives
//! its timeout ([`BuildLimits`]).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Name of the generated entry file, written next to the worker's modules.
pub const ENTRY_FILE: &str = "__warren_entry.js";

/// Name of the prelude module ([`PRELUDE`]), written next to the entry.
pub const PRELUDE_FILE: &str = "__warren_prelude.js";

/// The prelude (`runtime/js/prelude.js`): imported by the entry before the
/// worker's modules, it fills the engine's web-platform gaps so that ordinary
/// Workers code gets workerd's answers (`Response.clone()`, `navigator`…).
pub const PRELUDE: &str = include_str!("../js/prelude.js");

/// Why a JS worker could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsBuildError {
    /// The worker's code did not load (syntax error, exception at top level…);
    /// the message names the file and line.
    #[error("{0}")]
    Script(String),
    /// The build tooling is missing or failed (run scripts/setup.sh).
    #[error("JS build tooling failed: {0}")]
    Tooling(String),
    /// The build outlived [`BuildLimits::timeout`] (top-level code that never
    /// finishes) and was killed with its whole process group.
    #[error("timed out after {} s: its top-level code did not finish (a loop at module scope?)", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The build was killed for going over its CPU or memory limit.
    #[error("killed by signal {0} (over the build's CPU or memory limit)")]
    Killed(i32),
}

/// What one build may use. A build is node running ComponentizeJS, which runs
/// Wizer, which runs the worker's top-level code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Wall-clock time until the build's process group is killed (default 60 s).
    pub timeout: Duration,
    /// Data segment (`RLIMIT_DATA`: heap and other private writable memory)
    /// of each build process (default 2 GiB; a normal build peaks under 1 GiB).
    pub memory_bytes: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
        }
    }
}

impl BuildLimits {
    /// CPU seconds of each build process (`RLIMIT_CPU`): twice the timeout,
    /// as a build uses about one core.
    pub fn cpu_secs(&self) -> u64 {
        self.timeout.as_secs().saturating_mul(2).max(1)
    }
}

/// Builds JS workers with the pinned ComponentizeJS.
#[derive(Debug, Clone)]
pub struct JsBuilder {
    /// The `runtime/js` directory (with its `node_modules`).
    pub js_dir: PathBuf,
    /// The `node` executable.
    pub node: PathBuf,
    /// Where built components are kept by the hash of their inputs (modules,
    /// generated entry, pinned tooling); `None` builds every time.
    pub cache_dir: Option<PathBuf>,
    /// What each build may use.
    pub limits: BuildLimits,
    /// A prepared toolchain folder ([`crate::prepared`]) whose splice
    /// entries each build copies into `cache_dir` where it lacks them.
    pub prepared: Option<PathBuf>,
    /// Warm build servers between builds.
    servers: Arc<Mutex<Vec<BuildServer>>>,
}

/// The generated entry: imports the user's module and serves its `fetch`.
/// `vars` are JSON values: a string var is a string in `env`, a JSON var
/// (wrangler's non-string vars) the parsed value.
pub fn entry_source(
    main_module: &str,
    vars: &BTreeMap<String, serde_json::Value>,
    bindings: &[String],
) -> String {
    let main = serde_json::to_string(&format!("./{}", main_module.trim_start_matches("./")))
        .unwrap_or_default();
    // Parsed by JSON.parse, as workerd parses a json binding (a `__proto__`
    // key is then an own property, not the object's prototype).
    let vars = serde_json::to_string(vars).unwrap_or_else(|_| "{}".into());
    let vars = serde_json::to_string(&vars).unwrap_or_else(|_| "\"{}\"".into());
    let bindings_json = serde_json::to_string(bindings).unwrap_or_else(|_| "[]".into());
    format!(
        r#"import {{ unwrap }} from "./{PRELUDE_FILE}";
import worker from {main};
import {{ getEnvironment }} from "wasi:cli/environment@0.2.10";
const VARS = JSON.parse({vars});
const BINDINGS = {bindings_json};
// This request's binding key: only the binding objects below can send it,
// so only they can select a binding (the runtime refuses a bare marker).
let KEY = "";
function binding(name) {{
  return {{
    async fetch(input, init) {{
      const request = new Request(input, init);
      request.headers.set("{marker}", name);
      request.headers.set("{key_header}", KEY);
      if (request.redirect === "manual") request.headers.set("{redirect}", "manual");
      const response = await fetch(request);
      const code = response.headers.get("{error_header}");
      if (code) throw new Error(`ProxyError: ${{code}}`);
      return response;
    }},
  }};
}}
const values = {{ ...VARS }};
// Defined, not assigned: a name like `__proto__` is an own property, never the
// object's prototype.
const define = (name, value) =>
  Object.defineProperty(values, name, {{ value, writable: true, enumerable: true, configurable: true }});
for (const b of BINDINGS) define(b, binding(b));
// Secrets come in each request's environment, never at top level (which the
// build snapshots), so they are never in the component. They are read the
// first time the worker looks for a name `env` does not hold yet (or lists
// its keys): asking for the environment costs about half a hello-world
// request, so a request that reads no secret never pays it. Every request
// runs in a fresh instance, so each reads its own.
let secretsRead = false;
function readSecrets() {{
  if (secretsRead) return;
  const secrets = getEnvironment().filter(([k]) => k.startsWith("{secret_prefix}"));
  secretsRead = true;
  for (const [k, v] of secrets) define(k.slice({secret_len}), v);
}}
// Own keys only decide: a secret may be named like an Object.prototype member.
const missing = (target, key) => !Object.hasOwn(target, key);
const env = new Proxy(values, {{
  get(target, key, receiver) {{
    if (missing(target, key)) readSecrets();
    return Reflect.get(target, key, receiver);
  }},
  has(target, key) {{
    if (missing(target, key)) readSecrets();
    return Reflect.has(target, key);
  }},
  ownKeys(target) {{
    readSecrets();
    return Reflect.ownKeys(target);
  }},
  getOwnPropertyDescriptor(target, key) {{
    if (missing(target, key)) readSecrets();
    return Reflect.getOwnPropertyDescriptor(target, key);
  }},
  // Before the worker defines a name itself (an assignment asks
  // getOwnPropertyDescriptor first): a secret read later must not overwrite it.
  defineProperty(target, key, descriptor) {{
    if (missing(target, key)) readSecrets();
    return Reflect.defineProperty(target, key, descriptor);
  }},
  deleteProperty(target, key) {{
    readSecrets();
    return Reflect.deleteProperty(target, key);
  }},
  // Before freezing or sealing: the secrets are in what gets frozen.
  preventExtensions(target) {{
    readSecrets();
    return Reflect.preventExtensions(target);
  }},
}});
addEventListener("fetch", (event) => {{
  let request = event.request;
{take_key}  const ctx = {{ waitUntil: (p) => event.waitUntil(p), passThroughOnException() {{}} }};
  // The answer goes to the engine as a native object (see the prelude).
  event.respondWith(Promise.resolve().then(() => worker.fetch(request, env, ctx)).then(unwrap));
}});
"#,
        take_key = if bindings.is_empty() {
            // No binding, so no key: the runtime sends none, and the
            // request's headers are never read here (reading them is work
            // the engine does per request).
            String::new()
        } else {
            format!(
                r#"  KEY = request.headers.get("{key_header}") || "";
  if (request.headers.has("{key_header}")) {{
    // The incoming request's headers are immutable: the worker gets a copy
    // without the key (same method, URL and streamed body).
    const headers = new Headers(request.headers);
    headers.delete("{key_header}");
    const init = {{ method: request.method, headers, redirect: request.redirect }};
    if (request.body) {{
      init.body = request.body;
      init.duplex = "half";
    }}
    request = new Request(request.url, init);
  }}
"#,
                key_header = crate::outbound::BINDING_KEY_HEADER,
            )
        },
        marker = crate::outbound::BINDING_HEADER,
        secret_prefix = crate::worker::SECRET_ENV_PREFIX,
        secret_len = crate::worker::SECRET_ENV_PREFIX.len(),
        key_header = crate::outbound::BINDING_KEY_HEADER,
        error_header = crate::outbound::PROXY_ERROR_HEADER,
        redirect = warren_protocol::binding::REDIRECT_HEADER,
    )
}

static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every file under `dir`, as paths relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_name() == "node_modules" || e.file_name() == ".git" {
            continue;
        }
        if e.file_type()?.is_dir() {
            list_files(root, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" || name == ".git" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

impl JsBuilder {
    /// A builder using `js_dir` and `node` from PATH.
    pub fn new(js_dir: PathBuf) -> Self {
        JsBuilder {
            js_dir,
            node: PathBuf::from("node"),
            cache_dir: None,
            limits: BuildLimits::default(),
            prepared: None,
            servers: Arc::default(),
        }
    }

    /// The same builder, taking the spliced engine and the kept build steps
    /// from the prepared toolchain folder `dir` (`warren prepare-js`) where
    /// its cache lacks them, instead of running them at its first build.
    pub fn with_prepared(mut self, dir: PathBuf) -> Self {
        self.prepared = Some(dir);
        self
    }

    /// A hash of the pinned tooling (lockfile, build script, prelude): what
    /// every build's output depends on besides the worker's own files.
    pub fn tooling_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        self.hash_tooling(&mut h);
        hex::encode(h.finalize())
    }

    fn hash_tooling(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        for f in ["package-lock.json", "build.mjs"] {
            let bytes = std::fs::read(self.js_dir.join(f)).unwrap_or_default();
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        h.update((PRELUDE.len() as u64).to_le_bytes());
        h.update(PRELUDE.as_bytes());
    }

    /// The same builder with `limits` on every build.
    pub fn with_limits(mut self, limits: BuildLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same builder, keeping built components in `dir` so an unchanged
    /// worker (same modules, vars and bindings) is not rebuilt.
    pub fn with_cache(mut self, dir: PathBuf) -> Self {
        self.cache_dir = Some(dir);
        self
    }

    /// The cache key of a build: SHA-256 over the pinned tooling (lockfile and
    /// build script), the prelude, the generated entry and every module
    /// (sorted by path).
    fn build_key(&self, source_dir: &Path, entry: &str) -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"warren-js-build-v1\0");
        self.hash_tooling(&mut h);
        h.update((entry.len() as u64).to_le_bytes());
        h.update(entry.as_bytes());
        let mut files = Vec::new();
        list_files(source_dir, source_dir, &mut files)?;
        files.sort();
        for rel in files {
            let bytes = std::fs::read(source_dir.join(&rel))?;
            let name = rel.to_string_lossy();
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Components built (not found in the cache) by builders sharing this
    /// process, for tests and logs.
    pub fn builds() -> u64 {
        BUILDS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds the worker whose modules are in `source_dir` (entry `main_module`)
    /// into component bytes.
    pub fn build(
        &self,
        source_dir: &Path,
        main_module: &str,
        vars: &BTreeMap<String, serde_json::Value>,
        bindings: &[String],
    ) -> Result<Vec<u8>, JsBuildError> {
        let tooling = |e: std::io::Error| JsBuildError::Tooling(e.to_string());
        let entry = entry_source(main_module, vars, bindings);
        let cached = match &self.cache_dir {
            Some(dir) => {
                let key = self.build_key(source_dir, &entry).map_err(tooling)?;
                let path = dir.join(format!("{key}.wasm"));
                if let Ok(bytes) = std::fs::read(&path) {
                    return Ok(bytes);
                }
                Some(path)
            }
            None => None,
        };
        let wasm = self.build_uncached(source_dir, main_module, &entry)?;
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(path) = cached {
            // Best effort: a full disk costs a rebuild next time, not this deploy.
            let stored = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
                    std::fs::write(&tmp, &wasm)?;
                    std::fs::rename(&tmp, &path)
                });
            if let Err(e) = stored {
                tracing::warn!(error = %e, "cannot cache the built JS component");
            }
        }
        Ok(wasm)
    }

    fn build_uncached(
        &self,
        source_dir: &Path,
        main_module: &str,
        entry: &str,
    ) -> Result<Vec<u8>, JsBuildError> {
        let tooling = |e: std::io::Error| JsBuildError::Tooling(e.to_string());
        let work = tempfile::tempdir().map_err(tooling)?;
        let src = work.path().join("src");
        copy_dir(source_dir, &src).map_err(tooling)?;
        if !src.join(main_module).is_file() {
            return Err(JsBuildError::Script(format!(
                "{main_module}: no such module in {}",
                source_dir.display()
            )));
        }
        std::fs::write(src.join(PRELUDE_FILE), PRELUDE).map_err(tooling)?;
        std::fs::write(src.join(ENTRY_FILE), entry).map_err(tooling)?;
        let out = work.path().join("out").join("worker.wasm");
        std::fs::create_dir_all(work.path().join("out")).map_err(tooling)?;
        if let (Some(prepared), Some(cache)) = (&self.prepared, &self.cache_dir) {
            let to = cache.join("splice");
            match crate::prepared::copy_splices(prepared, &self.tooling_key(), &to) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    entries = n,
                    "took the JS engine's build steps from the prepared toolchain"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, folder = %prepared.display(), "cannot take the prepared toolchain's build steps")
                }
            }
        }
        let request = serde_json::json!({
            "entry": src.join(ENTRY_FILE),
            "out": out,
            "splice": self.cache_dir.as_ref().map(|d| d.join("splice")),
        });
        match self.on_server(request)? {
            Ok(()) => std::fs::read(&out).map_err(tooling),
            Err(text) => {
                let script: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
                Err(if script.iter().any(|l| l.contains(".js:")) {
                    JsBuildError::Script(script.join("\n"))
                } else {
                    JsBuildError::Tooling(text)
                })
            }
        }
    }

    /// Runs one build request on a warm server (or a new one), within the
    /// build's limits. `Ok(Err(message))` is a build that failed.
    fn on_server(
        &self,
        mut request: serde_json::Value,
    ) -> Result<Result<(), String>, JsBuildError> {
        static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request["id"] = id.into();
        let line = format!("{request}\n");
        // A server that went idle may exit just as it is handed a request:
        // such a build is sent once more, to a new server.
        for attempt in 0..2 {
            let mut server = match self.idle_server() {
                Some(s) => s,
                None => self.spawn_server()?,
            };
            if server.stdin.write_all(line.as_bytes()).is_err() && attempt == 0 {
                server.kill();
                continue;
            }
            match server.answers.recv_timeout(self.limits.timeout) {
                Ok(answer) => {
                    let answer: BuildAnswer = serde_json::from_str(&answer).map_err(|e| {
                        JsBuildError::Tooling(format!("the build server answered {answer:?}: {e}"))
                    })?;
                    if answer.id != Some(id) {
                        server.kill();
                        return Err(JsBuildError::Tooling(format!(
                            "the build server answered request {:?}, not {id}",
                            answer.id
                        )));
                    }
                    // A server whose build failed is not reused: whatever
                    // the failure left in it goes with it.
                    if answer.ok {
                        self.release(server);
                    } else {
                        server.kill();
                    }
                    return Ok(if answer.ok {
                        Ok(())
                    } else {
                        Err(answer.error.unwrap_or_default())
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // The whole group: node and the Wizer running the
                    // worker's top-level code.
                    server.kill();
                    return Err(JsBuildError::TimedOut(self.limits.timeout));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.kill();
                    if let Some(sig) = status.as_ref().and_then(|s| s.signal()) {
                        return Err(JsBuildError::Killed(sig));
                    }
                    if attempt == 0 && status.is_some_and(|s| s.success()) {
                        continue;
                    }
                    return Err(JsBuildError::Tooling(format!(
                        "the build server exited ({status:?}) without an answer"
                    )));
                }
            }
        }
        Err(JsBuildError::Tooling(
            "no build server could take the build".into(),
        ))
    }

    /// A warm server that is still running and not about to exit for idleness.
    fn idle_server(&self) -> Option<BuildServer> {
        let mut servers = self.servers.lock().ok()?;
        while let Some(mut s) = servers.pop() {
            if s.last_used.elapsed() + Duration::from_secs(5) < SERVER_IDLE
                && matches!(s.child.try_wait(), Ok(None))
            {
                return Some(s);
            }
            s.kill();
        }
        None
    }

    /// Keeps `server` warm, unless it has used half of its CPU allowance
    /// (`RLIMIT_CPU` counts a process's whole life).
    fn release(&self, mut server: BuildServer) {
        let used = cpu_seconds(server.child.id()).unwrap_or(u64::MAX);
        if used.saturating_mul(2) >= self.limits.cpu_secs() {
            server.kill();
            return;
        }
        server.last_used = Instant::now();
        match self.servers.lock() {
            Ok(mut s) => s.push(server),
            Err(_) => {
                server.kill();
            }
        }
    }

    /// Starts `node build.mjs --serve` in a process group of its own under
    /// the build's rlimits, answering on fd 3.
    fn spawn_server(&self) -> Result<BuildServer, JsBuildError> {
        use nix::sys::resource::{Resource, setrlimit};
        let tooling = |e: std::io::Error| JsBuildError::Tooling(e.to_string());
        let (reader, writer) = std::io::pipe().map_err(tooling)?;
        let answer_fd = writer.as_raw_fd();
        let (cpu, memory) = (self.limits.cpu_secs(), self.limits.memory_bytes);
        let mut cmd = Command::new(&self.node);
        cmd.arg(self.js_dir.join("build.mjs"))
            .arg("--serve")
            .arg(SERVER_IDLE.as_millis().to_string())
            .current_dir(&self.js_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: between fork and exec only setrlimit, dup2 and fcntl run,
        // which are async-signal-safe and touch no state of this process.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(5))?;
                setrlimit(Resource::RLIMIT_DATA, memory, memory)?;
                // The answers' pipe becomes fd 3, open across exec.
                if answer_fd == 3 {
                    if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(answer_fd, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            JsBuildError::Tooling(format!("cannot run {}: {e}", self.node.display()))
        })?;
        drop(writer);
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(JsBuildError::Tooling(
                "the build server has no stdin".into(),
            ));
        };
        let (tx, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("js-build-answers".into())
            .spawn(move || {
                for line in std::io::BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(tooling)?;
        Ok(BuildServer {
            child,
            stdin,
            answers,
            last_used: Instant::now(),
        })
    }
}

/// How long a build server waits for its next request before it exits.
const SERVER_IDLE: Duration = Duration::from_secs(120);

/// One answer of a build server.
#[derive(serde::Deserialize)]
struct BuildAnswer {
    id: Option<u64>,
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// A warm `node build.mjs --serve`: ComponentizeJS loaded and its own wasm
/// compiled, so a build skips node's start and that compilation.
struct BuildServer {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    last_used: Instant,
}

impl std::fmt::Debug for BuildServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildServer")
            .field("pid", &self.child.id())
            .finish()
    }
}

impl BuildServer {
    /// Kills the server's whole process group and reaps it.
    fn kill(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        self.child.wait().ok()
    }
}

impl Drop for BuildServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// User plus system CPU seconds `pid` has used so far.
fn cpu_seconds(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)? as u64;
    Some(ticks / hz)
}
