//! A network namespace with a veth link to the host: the test's own private
//! network. The host side is `10.213.N.1`, the namespace side `10.213.N.2`;
//! the namespace's loopback is private to it, so anything listening there is
//! reachable only from inside (through the connector).

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// A namespace that is deleted (with its veth pair) on drop.
pub struct NetNs {
    name: String,
    index: u8,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// Creates a fresh namespace. The index is claimed atomically by `ip netns add`,
    /// so parallel test processes never share one. Needs root.
    pub fn create() -> anyhow::Result<NetNs> {
        for index in 1..=250u8 {
            let name = format!("wrn-t{index}");
            if ip(&["netns", "add", &name]).is_err() {
                continue;
            }
            let ns = NetNs { name, index };
            ns.setup()
                .with_context(|| format!("setting up namespace {}", ns.name))?;
            return Ok(ns);
        }
        bail!(
            "could not create a network namespace (need root and iproute2; stale wrn-t* namespaces? `ip netns list`)"
        )
    }

    fn setup(&self) -> anyhow::Result<()> {
        let (host, peer) = (self.host_if(), self.peer_if());
        let _ = ip(&["link", "del", &host]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &self.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip()),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        let n = &self.name;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", self.inner_ip()),
            "dev",
            &peer,
        ])?;
        ip(&["-n", n, "link", "set", &peer, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn host_if(&self) -> String {
        format!("wrnh{}", self.index)
    }

    /// The link's end inside the namespace.
    fn peer_if(&self) -> String {
        format!("wrnp{}", self.index)
    }

    /// Sets the MTU of both ends of the namespace's link (veth pairs start at 1500).
    pub fn set_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        let mtu = mtu.to_string();
        ip(&["link", "set", &self.host_if(), "mtu", &mtu])?;
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            &self.peer_if(),
            "mtu",
            &mtu,
        ])?;
        Ok(())
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host side of the link: where the edge listens so the namespace can dial it.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }

    /// The namespace side of the link.
    pub fn inner_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 2)
    }

    /// An address on the link nobody answers for (connects to it time out).
    pub fn silent_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 99)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates
    /// live in the namespace for their whole life, whoever uses them later.
    pub fn run_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || -> anyhow::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns into the test namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// Writes the namespace's own `resolv.conf`, which `ip netns exec` (so
    /// [`NetNs::command`]) mounts over `/etc/resolv.conf` for what it runs.
    pub fn set_resolv_conf(&self, text: &str) -> anyhow::Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        std::fs::write(format!("{dir}/resolv.conf"), text)
            .with_context(|| format!("writing {dir}/resolv.conf"))
    }

    /// Binds a TCP listener inside the namespace.
    pub fn bind_tcp(&self, addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
        let addr = addr.to_owned();
        let std = self.run_inside(move || std::net::TcpListener::bind(addr))??;
        std.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(std)?)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if()]);
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
