//! A real single-member etcd (Debian's `etcd-server`, `/usr/bin/etcd`) on
//! loopback ports of its own, with its own data directory, killed on drop;
//! plain HTTP, or TLS with client certificates ([`Etcd::start_tls`]).
//! [`Etcd::stop`] and [`Etcd::start_again`] make outages for tests;
//! [`Etcd::shared`] is one instance for a whole test process (tests keep
//! apart by key prefix). [`EtcdCluster`] is a cluster of several members,
//! each of which can be killed and restarted. etcd dies with the test process
//! even when it is killed: it is started with a parent-death signal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a start may take before it is reported as failed.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running (or stopped) etcd member.
pub struct Etcd {
    child: Option<Child>,
    /// The running member's process id (for the exit hook of [`Etcd::shared`]).
    pid: Option<u32>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health`, whatever the client URL's scheme.
    metrics_port: u16,
    tls: Option<EtcdTlsFiles>,
    log: Arc<Mutex<Vec<String>>>,
}

/// PEM files of a TLS member: the CA that signed its certificate, and a
/// client certificate it accepts.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// A client certificate signed by the CA (client-auth usage).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate into `dir`.
fn write_tls_files(dir: &Path) -> anyhow::Result<EtcdTlsFiles> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<_> {
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_pem, client_key_pem) =
        leaf(vec!["warren".into()], ExtendedKeyUsagePurpose::ClientAuth)?;
    let files = EtcdTlsFiles {
        ca: dir.join("ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
    };
    for (path, pem) in [
        (&files.ca, ca_cert.pem()),
        (&files.client_cert, client_pem),
        (&files.client_key, client_key_pem),
        (&files.server_cert, server_pem),
        (&files.server_key, server_key_pem),
    ] {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process, so the
/// parent-death signal (sent when the spawning *thread* ends) fires only when
/// the test process ends, not when the test that started etcd returns.
fn spawn_for_process(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    // SAFETY: the hook only makes one system call (prctl) in the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let _ = std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("etcd spawner lock poisoned"))?
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("etcd spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("etcd spawner thread is gone"))?
}

static SHARED: OnceLock<Result<Etcd, String>> = OnceLock::new();

/// Kills the shared member and removes its data when the process exits.
extern "C" fn remove_shared() {
    if let Some(Ok(etcd)) = SHARED.get() {
        if let Some(pid) = etcd.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(etcd.dir.path());
    }
}

/// The etcd binary: `$WARREN_ETCD`, else `/usr/bin/etcd`, else `etcd` on the `PATH`.
fn etcd_binary() -> String {
    std::env::var("WARREN_ETCD").ok().unwrap_or_else(|| {
        if Path::new("/usr/bin/etcd").exists() {
            "/usr/bin/etcd".into()
        } else {
            "etcd".into()
        }
    })
}

/// A fresh data directory, in `/dev/shm` when there is one (fsyncs cost nothing).
fn data_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("warren-etcd")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("warren-etcd").tempdir()
    }
    .context("etcd data directory")
}

/// Copies the lines of `child`'s stderr into `sink` from a thread.
fn capture_log(child: &mut Child, sink: &Arc<Mutex<Vec<String>>>) {
    if let Some(stderr) = child.stderr.take() {
        let sink = sink.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
    }
}

/// `GET path` on the plain-HTTP metrics port; the whole answer, or `None`.
fn metrics_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    Some(body)
}

/// Whether `GET /health` on the metrics port answers `"health":"true"` (the
/// member has a leader).
fn healthy_on(metrics_port: u16) -> bool {
    metrics_get(metrics_port, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
}

/// The last `n` lines of a log, newest first.
fn tail(log: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    log.lock()
        .map(|l| l.iter().rev().take(n).cloned().collect())
        .unwrap_or_default()
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd (`$WARREN_ETCD`, else `/usr/bin/etcd`, else `etcd` on the
    /// `PATH`) with a fresh data directory (in `/dev/shm` when there is one,
    /// so fsyncs cost nothing) and waits until it reports healthy.
    pub fn start() -> anyhow::Result<Etcd> {
        Self::start_with(false)
    }

    /// Like [`Etcd::start`], serving clients over TLS only (`https://`) and
    /// requiring a client certificate signed by its CA ([`Etcd::tls_files`]).
    pub fn start_tls() -> anyhow::Result<Etcd> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<Etcd> {
        let dir = data_dir()?;
        let tls = if tls {
            Some(write_tls_files(dir.path())?)
        } else {
            None
        };
        let mut etcd = Etcd {
            child: None,
            pid: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            metrics_port: free_port()?,
            tls,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        // A port found free can be taken by another test before etcd binds
        // it: then etcd exits with "address already in use", and new ports
        // are tried (a few times).
        let mut attempts = 0;
        loop {
            match etcd.start_again() {
                Ok(()) => return Ok(etcd),
                Err(e) if attempts < 4 && e.to_string().contains("address already in use") => {
                    attempts += 1;
                    if let Ok(mut log) = etcd.log.lock() {
                        log.clear();
                    }
                    let data = etcd.dir.path().join("data");
                    let _ = std::fs::remove_dir_all(&data);
                    etcd.client_port = free_port()?;
                    etcd.peer_port = free_port()?;
                    etcd.metrics_port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One member shared by every test of this process, started on first use
    /// and removed (process and data) when the process exits. Never stop it:
    /// tests that make outages start their own.
    pub fn shared() -> anyhow::Result<&'static Etcd> {
        let shared = SHARED.get_or_init(|| {
            let etcd = Etcd::start().map_err(|e| format!("{e:#}"))?;
            // SAFETY: registers a plain function with no captured state.
            unsafe {
                nix::libc::atexit(remove_shared);
            }
            Ok(etcd)
        });
        shared.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The client URL (`http://127.0.0.1:<port>`, `https://…` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The certificates of a member started with [`Etcd::start_tls`].
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// Every line etcd has logged so far (for failure messages).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Kills etcd (SIGKILL: an outage, not a clean shutdown); its data stays.
    pub fn stop(&mut self) {
        self.pid = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports (a no-op while
    /// it runs) and waits until it reports healthy.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let binary = etcd_binary();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&binary);
        cmd.arg("--name=warren-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=warren-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            // A lone member elects itself at once, and short ticks let
            // leases as short as 1 s be granted as asked.
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let mut child = spawn_for_process(cmd).with_context(|| {
            format!("starting {binary} (Debian package etcd-server; run scripts/setup.sh)")
        })?;
        capture_log(&mut child, &self.log);
        self.pid = Some(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                self.pid = None;
                bail!("etcd exited with {status}: {:?}", tail(&self.log, 20));
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "etcd did not become healthy within {START_LIMIT:?}: {:?}",
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `GET /health` on the metrics port answers `"health":"true"`
    /// (it has a leader).
    fn healthy(&self) -> bool {
        healthy_on(self.metrics_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    child: Option<Child>,
    data: PathBuf,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster of real etcd members on loopback (plain HTTP), each with its own
/// data directory and client, peer and metrics ports; every member is killed
/// and the data removed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `name=peer URL,…` of every member.
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members as one new cluster (`--initial-cluster` naming all,
    /// `--initial-cluster-state new`) and waits until every one reports a
    /// leader.
    pub fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        if n == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let dir = data_dir()?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("warren-{i}"),
                child: None,
                data: dir.path().join(format!("member-{i}")),
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                log: Arc::new(Mutex::new(Vec::new())),
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            _dir: dir,
        };
        // All at once: none has a leader until a quorum is up.
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL (`http://127.0.0.1:<port>`), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].endpoint()
    }

    /// Kills member `i` with SIGKILL (a crash, not a shutdown); its data stays.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data directory and ports (a no-op while
    /// it runs); it rejoins the cluster. Waits until it reports a leader.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Whether member `i` runs and reports a leader.
    pub fn healthy(&self, i: usize) -> bool {
        self.members[i].child.is_some() && healthy_on(self.members[i].metrics_port)
    }

    /// The member that is the leader now, by its metrics
    /// (`etcd_server_is_leader 1`), if a running member says so.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && metrics_get(m.metrics_port, "/metrics")
                    .is_some_and(|b| b.lines().any(|l| l.trim_end() == "etcd_server_is_leader 1"))
        })
    }

    /// Member `i`'s log so far (for failure messages).
    pub fn log_lines(&self, i: usize) -> Vec<String> {
        self.members[i]
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let binary = etcd_binary();
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        let client = m.endpoint();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            // Ignored once the data directory holds the member's log, so a
            // restarted member rejoins as itself.
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=warren-test")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                m.metrics_port
            ))
            // A dead leader is missed within 250–500 ms and replaced; pre-vote
            // keeps a restarted member from unseating a healthy leader.
            .arg("--heartbeat-interval=25")
            .arg("--election-timeout=250")
            .arg("--pre-vote=true")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_for_process(cmd).with_context(|| {
            format!("starting {binary} (Debian package etcd-server; run scripts/setup.sh)")
        })?;
        capture_log(&mut child, &m.log);
        m.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let m = &mut self.members[i];
            if healthy_on(m.metrics_port) {
                return Ok(());
            }
            if let Some(child) = &mut m.child
                && let Ok(Some(status)) = child.try_wait()
            {
                m.child = None;
                bail!(
                    "etcd member {i} exited with {status}: {:?}",
                    tail(&m.log, 20)
                );
            }
            if Instant::now() > deadline {
                m.kill();
                bail!(
                    "etcd member {i} did not report a leader within {START_LIMIT:?}: {:?}",
                    tail(&m.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
