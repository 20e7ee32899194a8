//! A harness that runs real `authsec` node processes on loopback, for the multi-process,
//! durability and chaos tests. Every process a cluster starts is killed when it drops.
#![forbid(unsafe_code)]

pub mod checkers;
pub mod creds;
pub mod nemesis;
pub mod oauth;
pub mod oracle;
pub mod proxy;
pub mod runner;
pub mod webdriver;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use authsec_api::v1::event_service_client::EventServiceClient;
use authsec_api::v1::{
    self, client_service_client::ClientServiceClient, cluster_service_client::ClusterServiceClient,
};
use tonic::transport::Channel;

/// The `authsec` binary: `AUTHSEC_BIN`, else beside the test executable's `deps` folder.
pub fn authsec_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("AUTHSEC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("test executable has no folder"))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("authsec");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build -p authsec-node` or set AUTHSEC_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Run the admin CLI (`authsec ARGS --endpoint ADDR --admin-dir ADMIN`).
pub fn run_cli(addr: &str, admin: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(authsec_bin()?)
        .args(args)
        .args(["--endpoint", addr])
        .arg("--admin-dir")
        .arg(admin)
        .env_remove("AUTHSEC_OUTPUT")
        .output()?)
}

/// A CLI run's stdout, or an error with its exit code and stderr.
pub fn cli_ok(out: &std::process::Output) -> anyhow::Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout.clone())?)
}

/// The `authsec-agent` binary: `AUTHSEC_AGENT_BIN`, else beside `authsec`.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("AUTHSEC_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = authsec_bin()?.with_file_name("authsec-agent");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build -p authsec-agent` or set AUTHSEC_AGENT_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// This process's real user id (from /proc: no libc call), for `unix:uid` selectors.
pub fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// An example binary (`ai-agent`, `tool-service`), beside `authsec`.
pub fn example_bin(name: &str) -> anyhow::Result<PathBuf> {
    let bin = authsec_bin()?.with_file_name(name);
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build -p authsec-examples`",
            bin.display()
        );
    }
    Ok(bin)
}

/// An `authsec-agent run` process; killed when dropped.
#[derive(Debug)]
pub struct AgentProc {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub child: Option<std::process::Child>,
}

impl AgentProc {
    /// Start an agent for `cluster`'s nodes `servers` in `dir`, attesting with `token` (if it
    /// holds no SVID yet).
    pub fn spawn(
        cluster: &Cluster,
        dir: &Path,
        servers: &[u64],
        token: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let token_file = dir.join("join-token");
        std::fs::write(&token_file, token)?;
        let mut cmd = Command::new(agent_bin()?);
        cmd.arg("run")
            .arg("--trust-domain")
            .arg(TRUST_DOMAIN)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .arg("--ca-pin")
            .arg(cluster.ca_fingerprint()?)
            .arg("--join-token-file")
            .arg(&token_file);
        for id in servers {
            cmd.arg("--server").arg(cluster.addr(*id)?);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("AUTHSEC_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn authsec-agent")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            socket,
            log,
            child: Some(child),
        })
    }

    /// Wait until the Workload API socket exists (the agent attested and serves).
    pub fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.socket.exists() {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("the agent exited ({st}): {}", self.log_tail(20));
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the agent did not serve within {timeout:?}: {}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Wait for the agent to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let c = self.child.as_mut().ok_or_else(|| anyhow!("not running"))?;
        loop {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the agent did not exit within {timeout:?}: {}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Run `authsec-agent api <args>` against this agent's socket (a separate workload
    /// process); its exit status and stdout.
    pub fn api(&self, args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
        let out = Command::new(agent_bin()?)
            .arg("api")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gRPC channel over the unix socket at `path` (the Workload API).
pub async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    Ok(tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?)
}

/// A port nobody listens on right now.
///
/// Picked below the kernel's ephemeral range and never twice in this process: a port taken
/// from the ephemeral range and released could be handed to the next `bind(0)` (a proxy, a
/// client socket) before the node that was meant to get it starts, and that node would then
/// fail to bind.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    static PICKED: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|x| x.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(12_000));
    let mut picked = PICKED.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let p = rand::thread_rng().gen_range(from..to);
        if picked.contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            picked.insert(p);
            return Ok(p);
        }
    }
    bail!("no free port between {from} and {to}")
}

#[derive(Debug, Clone)]
pub struct Options {
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    /// Raft timeouts (heartbeat, election min, election max) in ms; `None` keeps the node's
    /// defaults.
    pub timeouts_ms: Option<(u64, u64, u64)>,
    /// Route every node-to-node link through a fault-injecting proxy ([`proxy::Net`]).
    pub proxied: bool,
    /// Ids beyond the first `n` that get addresses and proxies up front, to join later.
    pub spare: u64,
    /// Nodes whose data directory is a tmpfs of this many MiB (needs root).
    pub tmpfs_mib: BTreeMap<u64, u64>,
    /// Extra environment per node (planted bugs).
    pub env: BTreeMap<u64, Vec<(String, String)>>,
    /// Plaintext and unauthenticated (`insecure = true`). The default is what production
    /// runs: mutual TLS, with one trust domain made by `authsec node init`.
    pub insecure: bool,
    /// Offline-root mode: the root stays in the harness' folder (`authsec ca init`), every
    /// node gets an intermediate signed from its CSR, and no node holds a KEK.
    pub offline_root: bool,
    /// TOML appended to every node's `[oauth]` table (trusted issuers, limits).
    pub oauth_extra: String,
    /// TOML appended to every node's config, after every table (`[agents]`, ...);
    /// `{data_dir}` and `{node_id}` are replaced by the node's.
    pub extra_toml: String,
    /// TOML appended to one node's config, after `extra_toml`.
    pub node_toml: BTreeMap<u64, String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            timeouts_ms: Some((100, 600, 1200)),
            proxied: false,
            spare: 0,
            tmpfs_mib: BTreeMap::new(),
            env: BTreeMap::new(),
            insecure: false,
            offline_root: false,
            oauth_extra: String::new(),
            extra_toml: String::new(),
            node_toml: BTreeMap::new(),
        }
    }
}

/// The trust domain of every test cluster.
pub const TRUST_DOMAIN: &str = "test.authsec";
/// The OAuth issuer every node of a test cluster answers as.
pub const OAUTH_ISSUER: &str = "https://authsec.test";

#[derive(Debug)]
pub struct NodeProc {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// A cluster of node processes under one temporary folder.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    bin: PathBuf,
    opts: Options,
    bootstrap: Vec<(u64, String)>,
    /// The gRPC address reserved for every id, spares included.
    reserved: BTreeMap<u64, String>,
    /// Each node's OAuth 2.0 address (HTTPS), kept across restarts.
    oauth: BTreeMap<u64, String>,
    /// The proxies, when the cluster is proxied.
    pub net: Option<proxy::Net>,
    /// For each node: peer address -> the proxy it dials.
    routes: BTreeMap<u64, BTreeMap<String, String>>,
    /// The voters and learners, as this harness last changed them.
    pub members: BTreeSet<u64>,
    /// Issuer replicas: learners that issue credentials and never vote.
    pub replicas: BTreeSet<u64>,
    mounts: Vec<PathBuf>,
    /// How the harness dials nodes: as the bootstrap admin over mutual TLS (once the first
    /// node is initialized), or plaintext.
    transport: Option<authsec_tls::Transport>,
}

impl Cluster {
    /// Start `n` voters that bootstrap together; returns once the processes are spawned.
    pub fn start(n: u64, opts: Options) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("authsec-cluster-")
            .tempdir()?;
        let mut c = Cluster {
            dir,
            nodes: BTreeMap::new(),
            bin: authsec_bin()?,
            opts,
            bootstrap: Vec::new(),
            reserved: BTreeMap::new(),
            oauth: BTreeMap::new(),
            net: None,
            routes: BTreeMap::new(),
            members: (1..=n).collect(),
            replicas: BTreeSet::new(),
            mounts: Vec::new(),
            transport: None,
        };
        let all = n + c.opts.spare;
        for id in 1..=all {
            c.reserved.insert(id, format!("127.0.0.1:{}", free_port()?));
        }
        if c.opts.proxied {
            let net = proxy::Net::default();
            for from in 1..=all {
                for to in 1..=all {
                    if from == to {
                        continue;
                    }
                    let upstream = c.reserved[&to].parse()?;
                    let via = net.link(from, to, upstream)?;
                    c.routes
                        .entry(from)
                        .or_default()
                        .insert(c.reserved[&to].clone(), via.to_string());
                }
            }
            c.net = Some(net);
        }
        c.bootstrap = (1..=n).map(|id| (id, c.reserved[&id].clone())).collect();
        // The first member initializes the cluster: start it last, once its peers listen.
        for id in (1..=n).rev() {
            c.prepare(id, None)?;
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// The proxies; fails on a cluster started without them.
    pub fn net(&self) -> anyhow::Result<&proxy::Net> {
        self.net
            .as_ref()
            .ok_or_else(|| anyhow!("the cluster was started without proxies"))
    }

    /// Ids of the nodes whose process runs now.
    pub fn running(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter_map(|(id, n)| n.is_running().then_some(*id))
            .collect()
    }

    /// The gRPC address reserved for `id` (spares included).
    pub fn reserved_addr(&self, id: u64) -> anyhow::Result<String> {
        self.reserved
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("no address reserved for node {id}"))
    }

    /// Copy every node's log and config out of the temporary folder (which is removed when
    /// the cluster drops) into a kept one; returns it.
    pub fn keep_logs(&self) -> anyhow::Result<PathBuf> {
        let kept = tempfile::Builder::new()
            .prefix("authsec-chaos-logs-")
            .tempdir()?
            .keep();
        for n in self.nodes.values() {
            for f in [&n.log, &n.config] {
                if let Some(name) = f.file_name() {
                    let _ = std::fs::copy(f, kept.join(name));
                }
            }
        }
        Ok(kept)
    }

    /// Every panic in the nodes' logs, as (node, the panic and its message). A thread that
    /// panics can leave its process running without the work it did (the first credentials
    /// soak after the outbox moved to its own files ran with every voter's outbox writer dead
    /// and only the refusals to show for it), so a run with any panic fails.
    pub fn panics(&self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let Ok(bytes) = std::fs::read(&n.log) else {
                continue;
            };
            for p in panics_in(&String::from_utf8_lossy(&bytes)) {
                out.push((n.id, p));
            }
        }
        out
    }

    /// Every id with a reserved address, spares included.
    pub fn reserved_ids(&self) -> Vec<u64> {
        self.reserved.keys().copied().collect()
    }

    /// Forget that `id` bootstraps the cluster: a node rebuilt from nothing must join.
    pub fn unbootstrap(&mut self, id: u64) {
        self.bootstrap.retain(|(m, _)| *m != id);
        // Other nodes' configs are written once; only a rewritten config changes.
    }

    /// `kill -STOP`: the process freezes, its sockets stay open.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-STOP")
    }

    /// `kill -CONT`.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-CONT")
    }

    fn signal(&mut self, id: u64, sig: &str) -> anyhow::Result<()> {
        let pid = self
            .nodes
            .get(&id)
            .and_then(NodeProc::pid)
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let st = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(st.success(), "kill {sig} {pid} failed");
        Ok(())
    }

    /// Delete a stopped node's data directory content (the mount, if any, stays).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        anyhow::ensure!(
            !n.is_running(),
            "node {id} still runs; stop it before wiping"
        );
        if n.data_dir.exists() {
            for e in std::fs::read_dir(&n.data_dir)? {
                let p = e?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    /// Write a node's config; `bootstrap` nodes list the initial members.
    pub fn prepare(&mut self, id: u64, addr: Option<String>) -> anyhow::Result<()> {
        let grpc = match addr.or_else(|| self.reserved.get(&id).cloned()) {
            Some(a) => a,
            None => format!("127.0.0.1:{}", free_port()?),
        };
        let http = format!("127.0.0.1:{}", free_port()?);
        let data_dir = self.dir.path().join(format!("node{id}"));
        let config = self.dir.path().join(format!("node{id}.toml"));
        let log = self.dir.path().join(format!("node{id}.log"));
        let mut text = format!(
            "node_id = {id}\ndata_dir = {:?}\ngrpc_addr = {grpc:?}\nhttp_addr = {http:?}\ntrust_domain = {TRUST_DOMAIN:?}\ninsecure = {}\nkek_file = {:?}\n",
            data_dir.display().to_string(),
            self.opts.insecure,
            self.kek_file().display().to_string(),
        );
        text += &format!(
            "[raft]\nsnapshot_logs_since_last = {}\nmax_in_snapshot_log_to_keep = {}\n",
            self.opts.snapshot_logs_since_last, self.opts.max_in_snapshot_log_to_keep
        );
        if let Some((hb, min, max)) = self.opts.timeouts_ms {
            text += &format!(
                "heartbeat_ms = {hb}\nelection_timeout_min_ms = {min}\nelection_timeout_max_ms = {max}\n"
            );
        }
        if !self.opts.insecure {
            let oauth = match self.oauth.get(&id) {
                Some(a) => a.clone(),
                None => {
                    let a = format!("127.0.0.1:{}", free_port()?);
                    self.oauth.insert(id, a.clone());
                    a
                }
            };
            // One issuer name for the cluster, as behind a load balancer.
            text += &format!(
                "[tls]\nip_addrs = [\"127.0.0.1\"]\n[oauth]\naddr = {oauth:?}\nissuer = {OAUTH_ISSUER:?}\n{}\n",
                self.opts.oauth_extra
            );
        }
        if let Some(routes) = self.routes.get(&id) {
            text += "[peer_routes]\n";
            for (peer, via) in routes {
                text += &format!("{peer:?} = {via:?}\n");
            }
        }
        if let Some(mib) = self.opts.tmpfs_mib.get(&id) {
            if !self.mounts.contains(&data_dir) {
                std::fs::create_dir_all(&data_dir)?;
                let st = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                    .arg(&data_dir)
                    .status()
                    .context("mount a tmpfs (needs root)")?;
                anyhow::ensure!(
                    st.success(),
                    "mounting a tmpfs on {} failed",
                    data_dir.display()
                );
                self.mounts.push(data_dir.clone());
            }
        }
        if self.bootstrap.iter().any(|(m, _)| *m == id) {
            text += "[bootstrap]\nmembers = [";
            text += &self
                .bootstrap
                .iter()
                .map(|(m, a)| format!("{{ id = {m}, addr = {a:?} }}"))
                .collect::<Vec<_>>()
                .join(", ");
            text += "]\n";
        }
        text += &self
            .opts
            .extra_toml
            .replace("{data_dir}", &data_dir.display().to_string())
            .replace("{node_id}", &id.to_string());
        if let Some(t) = self.opts.node_toml.get(&id) {
            text += t;
        }
        std::fs::write(&config, text)?;
        self.nodes.insert(
            id,
            NodeProc {
                id,
                grpc,
                http,
                data_dir,
                config,
                log,
                child: None,
            },
        );
        Ok(())
    }

    /// One KEK file for the whole test cluster (one host).
    pub fn kek_file(&self) -> PathBuf {
        self.dir.path().join("kek")
    }

    /// Where the bootstrap admin credential is.
    pub fn admin_dir(&self) -> PathBuf {
        self.dir.path().join("admin")
    }

    /// Where the root certificate and sealed root key are kept for later `init --pki-from`.
    fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Give node `id` its certificate if it has none (first start, or after a wipe): the
    /// first node ever creates the trust domain with `authsec node init`; the others sign
    /// theirs from it with `init --pki-from`, as a statically bootstrapped deployment does.
    pub fn ensure_pki(&mut self, id: u64) -> anyhow::Result<()> {
        if self.opts.insecure {
            return Ok(());
        }
        if self.opts.offline_root {
            return self.ensure_offline_pki(id);
        }
        let n = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if n.data_dir.join("tls").join("node.crt").exists() {
            return Ok(());
        }
        let pki = self.pki_dir();
        let mut cmd = Command::new(&self.bin);
        for (k, v) in self.opts.env.get(&id).into_iter().flatten() {
            cmd.env(k, v);
        }
        cmd.args(["node", "init", "--config"]).arg(&n.config);
        let first = !pki.join("root.sealed").exists();
        if first {
            cmd.arg("--admin-dir").arg(self.admin_dir());
        } else {
            cmd.arg("--pki-from").arg(&pki);
        }
        let out = cmd.output().context("run authsec node init")?;
        anyhow::ensure!(
            out.status.success(),
            "authsec node init for node {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if first {
            std::fs::create_dir_all(&pki)?;
            for f in ["ca.crt", "root.sealed", "bootstrap-admin.crt"] {
                std::fs::copy(n.data_dir.join("tls").join(f), pki.join(f))?;
            }
        }
        Ok(())
    }

    /// `sha256:<hex>` of the trust domain's root, what `authsec node join` pins.
    pub fn ca_fingerprint(&self) -> anyhow::Result<String> {
        use rustls::pki_types::pem::PemObject;
        use sha2::Digest;
        let ca = rustls::pki_types::CertificateDer::from_pem_file(self.pki_dir().join("ca.crt"))
            .context("read the root certificate")?;
        Ok(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&ca))))
    }

    /// Run `authsec node join` for a prepared node: it gets its certificate with `token`
    /// through `peers`, starts, and asks to be admitted. It holds no KEK (its config names
    /// none), so it renews its certificate through the members that do.
    pub fn spawn_join(&mut self, id: u64, token: &str, peers: &[String]) -> anyhow::Result<()> {
        self.spawn_join_as(id, token, peers, false)
    }

    /// [`Cluster::spawn_join`], as a learner (an issuer replica that does not vote) if
    /// `learner`.
    pub fn spawn_join_as(
        &mut self,
        id: u64,
        token: &str,
        peers: &[String],
        learner: bool,
    ) -> anyhow::Result<()> {
        let fingerprint = self.ca_fingerprint()?;
        self.spawn_join_pinned(id, token, peers, learner, &fingerprint)
    }

    /// [`Cluster::spawn_join_as`], pinning the root `fingerprint` (`sha256:<hex>`).
    pub fn spawn_join_pinned(
        &mut self,
        id: u64,
        token: &str,
        peers: &[String],
        learner: bool,
        fingerprint: &str,
    ) -> anyhow::Result<()> {
        let kek_line = format!("kek_file = {:?}\n", self.kek_file().display().to_string());
        let path = self
            .nodes
            .get(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .config
            .clone();
        let text = std::fs::read_to_string(&path)?.replace(&kek_line, "");
        std::fs::write(&path, text)?;
        let args = ["node", "join", "--config"]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain([path.into_os_string()])
            .chain(
                [
                    "--token",
                    token,
                    "--ca-fingerprint",
                    fingerprint,
                    "--peer",
                    &peers.join(","),
                ]
                .into_iter()
                .map(std::ffi::OsString::from),
            )
            .chain(learner.then(|| std::ffi::OsString::from("--learner")))
            .collect();
        self.start_process(id, args)?;
        self.members.insert(id);
        Ok(())
    }

    /// Offline-root mode, as an operator runs it: `ca init` and `ca issue-admin` once, then per
    /// node `node csr`, `ca sign-intermediate`, `node init --intermediate --ca`.
    fn ensure_offline_pki(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let tls = n.data_dir.join("tls");
        if tls.join("node.crt").exists() {
            return Ok(());
        }
        let (config, ca) = (n.config.clone(), self.dir.path().join("offline-ca"));
        let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
            let mut cmd = Command::new(&self.bin);
            for (k, v) in self.opts.env.get(&id).into_iter().flatten() {
                cmd.env(k, v);
            }
            let out = cmd.args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "authsec {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        if !ca.join("root.key").exists() {
            run(&[
                &os("ca"),
                &os("init"),
                &os("--trust-domain"),
                &os(TRUST_DOMAIN),
                &os("--out"),
                ca.as_os_str(),
            ])?;
            run(&[
                &os("ca"),
                &os("issue-admin"),
                &os("--ca-dir"),
                ca.as_os_str(),
                &os("--name"),
                &os("root"),
                &os("--out"),
                self.admin_dir().as_os_str(),
            ])?;
            std::fs::create_dir_all(self.pki_dir())?;
            std::fs::copy(ca.join("ca.crt"), self.pki_dir().join("ca.crt"))?;
        }
        run(&[&os("node"), &os("csr"), &os("--config"), config.as_os_str()])?;
        let inter = tls.join("intermediate.crt");
        run(&[
            &os("ca"),
            &os("sign-intermediate"),
            &os("--ca-dir"),
            ca.as_os_str(),
            &os("--csr"),
            tls.join("node-ca.csr").as_os_str(),
            &os("--node-id"),
            &os(&id.to_string()),
            &os("--out"),
            inter.as_os_str(),
        ])?;
        run(&[
            &os("node"),
            &os("init"),
            &os("--config"),
            config.as_os_str(),
            &os("--intermediate"),
            inter.as_os_str(),
            &os("--ca"),
            ca.join("ca.crt").as_os_str(),
        ])?;
        Ok(())
    }

    /// How the harness dials nodes (the bootstrap admin's mutual TLS, or plaintext).
    pub fn transport(&mut self) -> anyhow::Result<authsec_tls::Transport> {
        if let Some(t) = &self.transport {
            return Ok(t.clone());
        }
        let t = if self.opts.insecure {
            authsec_tls::Transport::plaintext()
        } else {
            admin_transport(&self.admin_dir())?
        };
        self.transport = Some(t.clone());
        Ok(t)
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        self.ensure_pki(id)?;
        self.transport()?;
        let config = self.config_of(id)?;
        self.start_process(
            id,
            vec!["node".into(), "run".into(), "--config".into(), config],
        )
    }

    /// What stopped node `id`'s issuance outbox holds (`authsec node outbox`): each record
    /// with whether the log already has it.
    pub fn outbox(&self, id: u64) -> anyhow::Result<Vec<(bool, serde_json::Value)>> {
        let out = Command::new(&self.bin)
            .args([
                "node".into(),
                "outbox".into(),
                "--config".into(),
                self.config_of(id)?,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "authsec node outbox: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                let in_log = v["in_log"].as_bool().context("in_log")?;
                Ok((in_log, v["record"].clone()))
            })
            .collect()
    }

    fn config_of(&self, id: u64) -> anyhow::Result<std::ffi::OsString> {
        Ok(self
            .nodes
            .get(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .config
            .clone()
            .into_os_string())
    }

    /// Start `authsec <args>` as node `id`'s process, logging to its log file.
    fn start_process(&mut self, id: u64, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
        let bin = self.bin.clone();
        let mut cmd = Command::new(&bin);
        for (k, v) in self.opts.env.get(&id).into_iter().flatten() {
            cmd.env(k, v);
        }
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("AUTHSEC_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        n.child = Some(child);
        Ok(())
    }

    /// `kill -9`.
    pub fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if let Some(mut c) = n.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (bounded).
    pub fn stop(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let mut c = n
            .child
            .take()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let pid = c.id() as i32;
        // SAFETY-free: libc::kill is a plain syscall wrapper; forbid(unsafe_code) keeps us on
        // the `kill` command instead.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                c.kill()?;
                bail!("node {id} did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for a node process to exit by itself; returns its status.
    pub fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        let c = n
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("node {id} is not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                n.child = None;
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("node {id} still runs after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Some(n) = self.nodes.get(&id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Node `id`'s OAuth 2.0 address (HTTPS).
    pub fn oauth_addr(&self, id: u64) -> anyhow::Result<String> {
        self.oauth
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("node {id} serves no OAuth endpoint"))
    }

    /// An HTTPS client that trusts the cluster's root.
    pub fn https(&self) -> anyhow::Result<oauth::Https> {
        oauth::Https::new(&self.pki_dir().join("ca.crt"))
    }

    pub fn addr(&self, id: u64) -> anyhow::Result<String> {
        Ok(self
            .nodes
            .get(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .grpc
            .clone())
    }

    pub async fn channel(&self, id: u64) -> anyhow::Result<Channel> {
        channel(&self.client_transport()?, &self.addr(id)?).await
    }

    /// The harness' transport, once a node has been spawned.
    pub fn client_transport(&self) -> anyhow::Result<authsec_tls::Transport> {
        self.transport
            .clone()
            .ok_or_else(|| anyhow!("no node was spawned yet"))
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<v1::StatusResponse> {
        let mut c = ClusterServiceClient::new(self.channel(id).await?);
        let mut req = tonic::Request::new(v1::StatusRequest {});
        req.set_timeout(Duration::from_secs(3));
        Ok(c.status(req).await?.into_inner())
    }

    /// Node `id`'s audit chain head and last checkpoint.
    pub async fn audit_head(&self, id: u64) -> anyhow::Result<v1::AuditHeadResponse> {
        Ok(
            v1::audit_service_client::AuditServiceClient::new(self.channel(id).await?)
                .head(v1::AuditHeadRequest {})
                .await?
                .into_inner(),
        )
    }

    pub async fn clients(&self, id: u64) -> anyhow::Result<ClientServiceClient<Channel>> {
        Ok(ClientServiceClient::new(self.channel(id).await?))
    }

    /// A single-use join token from node `via`, checked to name this cluster's root.
    pub async fn create_join_token(&self, via: u64, ttl_seconds: u64) -> anyhow::Result<String> {
        let (token, pin) = self.create_pinned_join_token(via, ttl_seconds).await?;
        anyhow::ensure!(
            pin == self.ca_fingerprint()?,
            "the token names root {pin}, not this cluster's"
        );
        Ok(token)
    }

    /// A join token and the root it tells the joiner to pin (the signing root, which after a
    /// root rotation is not the bootstrap root).
    pub async fn create_pinned_join_token(
        &self,
        via: u64,
        ttl_seconds: u64,
    ) -> anyhow::Result<(String, String)> {
        let mut cl = ClusterServiceClient::new(self.channel(via).await?);
        let r = cl
            .create_join_token(v1::CreateJoinTokenRequest { ttl_seconds })
            .await?
            .into_inner();
        Ok((r.token, r.ca_fingerprint))
    }

    /// Issue another admin credential to `out` with the real CLI (`authsec admin issue`
    /// against node `via`, as the harness' admin). It holds no permission until bound a role.
    pub fn issue_admin(&self, via: u64, name: &str, out: &Path) -> anyhow::Result<()> {
        let out = out
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", out.display()))?;
        cli_ok(&run_cli(
            &self.addr(via)?,
            &self.admin_dir(),
            &["admin", "issue", "--name", name, "--out", out],
        )?)?;
        Ok(())
    }

    /// Rotate the harness' admin credential in place with the real CLI (`authsec admin
    /// rotate` against node `via`): a new key and a certificate under the cluster's signing
    /// root, the old certificate refused from that commit on. Later calls use the new one.
    pub fn rotate_admin(&mut self, via: u64) -> anyhow::Result<()> {
        cli_ok(&run_cli(
            &self.addr(via)?,
            &self.admin_dir(),
            &["admin", "rotate"],
        )?)?;
        self.transport = None;
        self.transport()?;
        Ok(())
    }

    /// The certificate chain node `id` serves (leaf first), as a handshake shows it to the
    /// harness' admin.
    pub async fn served_chain(
        &self,
        id: u64,
    ) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let t = self.client_transport()?;
        let state = t.tls().ok_or_else(|| anyhow!("an --insecure cluster"))?;
        Ok(authsec_tls::tls::served_chain(
            state,
            &self.addr(id)?,
            authsec_tls::tls::Expect::Node(id),
            Duration::from_secs(3),
        )
        .await?)
    }

    /// Wait until `id` is a voter in `via`'s view.
    pub async fn wait_voter(&self, via: u64, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(via).await {
                if s.members
                    .iter()
                    .any(|m| m.node_id == id && m.role == "voter")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not become a voter: {}",
                    self.log_tail(id, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Prepare node `id` and join it through `via` with a fresh token; returns once it votes.
    pub async fn join(&mut self, via: u64, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let token = self.create_join_token(via, 300).await?;
        self.prepare(id, None)?;
        self.spawn_join(id, &token, &[self.addr(via)?])?;
        self.wait_voter(via, id, timeout).await
    }

    /// Wait until every node in `ids` issues credentials: its signing keys are published and
    /// active, and it is within its freshness bound. Key publication writes to the log, so
    /// tests that count records wait for this first.
    pub async fn wait_issuing(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for id in ids {
            loop {
                let last = match self.status(*id).await {
                    Ok(s) if s.issuing => break,
                    Ok(s) => s.issuing_reason,
                    Err(e) => e.to_string(),
                };
                if Instant::now() > deadline {
                    bail!("node {id} does not issue within {timeout:?}: {last}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// TLS roots for HTTPS to the nodes' OAuth endpoints: the cluster CA the admin holds.
    pub fn https_roots(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        let ca = self.admin_dir().join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca)
            .with_context(|| format!("read {}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        Ok(std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(authsec_tls::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }

    /// Set (or with `None`, remove) one environment variable of node `id`'s next spawn.
    pub fn set_env(&mut self, id: u64, key: &str, value: Option<String>) {
        let env = self.opts.env.entry(id).or_default();
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_owned(), v));
        }
    }

    /// Wait until the given nodes agree on a leader; returns it.
    pub async fn wait_leader(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in ids {
                if let Ok(s) = self.status(*id).await {
                    leaders.push(s.leader_id);
                }
            }
            if leaders.len() == ids.len()
                && ids.contains(&leaders[0])
                && leaders.iter().all(|l| *l == leaders[0])
            {
                return Ok(leaders[0]);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader among {ids:?} within {timeout:?} (saw {leaders:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the given nodes have applied the same index with the same projection digest
    /// and archive head, and the head is at least `min_sequence`.
    pub async fn wait_converged(
        &self,
        ids: &[u64],
        min_sequence: u64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<v1::StatusResponse>> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            let mut all = Vec::new();
            for id in ids {
                match self.status(*id).await {
                    Ok(s) => all.push(s),
                    Err(_) => break,
                }
            }
            if all.len() == ids.len() {
                let key = |s: &v1::StatusResponse| {
                    (
                        s.applied_index,
                        s.projection_digest.clone(),
                        s.archive_head.clone().unwrap_or_default(),
                    )
                };
                let k0 = key(&all[0]);
                if k0.2.sequence >= min_sequence && all.iter().all(|s| key(s) == k0) {
                    return Ok(all);
                }
            }
            if Instant::now() > deadline {
                let seen: Vec<_> = last
                    .iter()
                    .map(|s: &v1::StatusResponse| {
                        format!(
                            "node {}: applied {} digest {} head {:?}",
                            s.node_id,
                            s.applied_index,
                            &s.projection_digest[..12.min(s.projection_digest.len())],
                            s.archive_head.as_ref().map(|h| h.sequence)
                        )
                    })
                    .collect();
                bail!("nodes {ids:?} did not converge within {timeout:?}: {seen:?}");
            }
            last = all;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every archived record of a node: (sequence, hash) in order.
    pub async fn archive(&self, id: u64) -> anyhow::Result<Vec<(u64, String, Vec<u8>)>> {
        Ok(self
            .records(id)
            .await?
            .into_iter()
            .map(|r| (r.sequence, r.hash, r.bytes))
            .collect())
    }

    /// Every archived record of a node, as it serves them.
    pub async fn records(&self, id: u64) -> anyhow::Result<Vec<checkers::Rec>> {
        let mut c =
            EventServiceClient::new(self.channel(id).await?).max_decoding_message_size(16 << 20);
        let mut s = c
            .feed(v1::FeedRequest {
                from_sequence: 1,
                follow: false,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await? {
            out.push(checkers::Rec {
                sequence: r.sequence,
                hash: r.hash,
                kind: r.kind,
                subject: r.subject,
                bytes: r.record_bytes,
            });
        }
        Ok(out)
    }

    /// Every credential id (`jti`, or an X.509-SVID's serial in hex) that node `id`'s log
    /// records as issued.
    pub async fn recorded_issuances(&self, id: u64) -> anyhow::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for r in self.records(id).await? {
            if r.kind != "credential.issued" {
                continue;
            }
            let rec = authsec_domain::AuditRecord::from_bytes(&r.bytes)?;
            match rec.event {
                authsec_domain::Event::IssuancesRecorded { issuances, .. } => {
                    out.extend(issuances.into_iter().map(|i| i.id))
                }
                authsec_domain::Event::IssuanceBatchRecorded { batch, .. } => {
                    out.extend(batch.items.into_iter().map(|i| i.id))
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Wait until node `id`'s log records every credential in `ids` as issued. Issuance
    /// records reach the log after the credential is answered (the outbox), so a test that
    /// reads the log's head must wait for them first. Answers how long it took.
    pub async fn wait_recorded(
        &self,
        id: u64,
        ids: &BTreeSet<String>,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            // A node that is starting refuses connections for a moment.
            let have = match self.recorded_issuances(id).await {
                Ok(h) => h,
                Err(e) if start.elapsed() < within => {
                    tracing::debug!(error = %e, "reading the log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let missing: Vec<&String> = ids.iter().filter(|j| !have.contains(*j)).collect();
            if missing.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "{} of {} issued credentials are not in node {id}'s log after {within:?}: {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every client id in a node's projection, read page by page from that node.
    pub async fn client_ids(&self, id: u64) -> anyhow::Result<BTreeSet<String>> {
        let mut c = self.clients(id).await?;
        let mut token = String::new();
        let mut all = BTreeSet::new();
        loop {
            let r = c
                .list_clients(v1::ListClientsRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(r.clients.into_iter().map(|c| c.client_id));
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        Ok(all)
    }

    pub fn data_dir(&self, id: u64) -> anyhow::Result<&Path> {
        Ok(&self
            .nodes
            .get(&id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .data_dir)
    }

    pub fn node_mut(&mut self, id: u64) -> Option<&mut NodeProc> {
        self.nodes.get_mut(&id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                // A paused process dies of SIGKILL too.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// A channel to `addr` that is connected (or failed to) within 2 s.
pub async fn channel(transport: &authsec_tls::Transport, addr: &str) -> anyhow::Result<Channel> {
    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("{addr}: connect timed out"))??;
    Ok(transport.channel(addr)?)
}

/// Mutual TLS as the admin whose credential `authsec node init` wrote to `dir`.
pub fn admin_transport(dir: &Path) -> anyhow::Result<authsec_tls::Transport> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |f: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        Ok(CertificateDer::pem_file_iter(dir.join(f))
            .with_context(|| format!("read {}", dir.join(f).display()))?
            .collect::<Result<_, _>>()?)
    };
    let key = PrivateKeyDer::from_pem_file(dir.join("admin.key"))
        .with_context(|| format!("read {}", dir.join("admin.key").display()))?;
    let td = authsec_domain::TrustDomain::parse(TRUST_DOMAIN)?;
    let state = authsec_tls::tls::TlsState::new(td, certs("ca.crt")?, certs("admin.crt")?, key)?;
    Ok(authsec_tls::Transport::mutual_tls(state))
}

/// `Options::env` that gives each of `ids` a freshness bound of `ms` for issuing.
pub fn staleness_env(ids: &[u64], ms: u64) -> BTreeMap<u64, Vec<(String, String)>> {
    ids.iter()
        .map(|id| {
            (
                *id,
                vec![("AUTHSEC_MAX_STALENESS_MS".to_owned(), ms.to_string())],
            )
        })
        .collect()
}

/// A minimal client registration request.
pub fn register_req(id: &str) -> v1::RegisterClientRequest {
    v1::RegisterClientRequest {
        client_id: id.to_owned(),
        kind: v1::ClientKind::Service as i32,
        display_name: format!("client {id}"),
        allowed_scopes: vec!["orders:read".into(), "orders:write".into()],
        default_scopes: vec!["orders:read".into()],
        default_audience: "https://orders.example".into(),
        ..Default::default()
    }
}

/// A plain HTTP/1.0 GET on loopback; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn init_test_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The panics in a log: each `panicked at` line with the message line after it.
pub fn panics_in(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(l) = lines.next() {
        if l.contains(" panicked at ") {
            out.push(format!(
                "{} {}",
                l.trim(),
                lines.next().unwrap_or("").trim()
            ));
        }
    }
    out
}

#[cfg(test)]
mod panic_tests {
    #[test]
    fn a_panic_is_found_with_its_message() {
        let log = "2026-11-30T18:22:49Z  WARN openraft: timeout\n\nthread 'outbox-writer' (2701) panicked at node/src/outbox.rs:193:13:\nattempt to subtract with overflow\nstack backtrace:\n";
        assert_eq!(
            super::panics_in(log),
            ["thread 'outbox-writer' (2701) panicked at node/src/outbox.rs:193:13: attempt to subtract with overflow"]
        );
        assert!(super::panics_in("INFO a client id named panicked-at-dawn\n").is_empty());
    }
}
