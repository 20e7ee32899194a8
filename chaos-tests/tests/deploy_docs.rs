//! docs/deploy.md, run: the example configs of `docs/deploy/` (addresses and paths moved to
//! loopback and a temporary folder) go through the documented commands, by the CLI, as
//! separate processes: `node init` on host 1, `cluster join-token create`, `node join` on
//! hosts 2 and 3, `cluster status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use authsec_chaos_tests::{authsec_bin, free_port};

/// Every process started here dies with the test.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Host {
    config: PathBuf,
    addr: String,
}

/// Load `docs/deploy/node<id>.toml` and move it onto loopback under `root`.
fn host(root: &Path, id: u64, first_addr: &str, addr: &str) -> anyhow::Result<Host> {
    // At run time: test binaries are shared across clones through one target directory.
    let src = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("../docs/deploy")
        .join(format!("node{id}.toml"));
    let text = std::fs::read_to_string(&src).with_context(|| src.display().to_string())?;
    let mut v: toml::Table = toml::from_str(&text)?;
    let dir = root.join(format!("host{id}"));
    std::fs::create_dir_all(&dir)?;
    v.insert("grpc_addr".into(), addr.into());
    v.insert("advertise_addr".into(), addr.into());
    v.insert(
        "http_addr".into(),
        format!("127.0.0.1:{}", free_port()?).into(),
    );
    v.insert(
        "data_dir".into(),
        dir.join("data").display().to_string().into(),
    );
    v.insert(
        "kek_file".into(),
        dir.join("kek").display().to_string().into(),
    );
    if let Some(toml::Value::Table(t)) = v.get_mut("tls") {
        t.insert("ip_addrs".into(), vec!["127.0.0.1".to_owned()].into());
    }
    if let Some(toml::Value::Table(b)) = v.get_mut("bootstrap") {
        let mut m = toml::Table::new();
        m.insert("id".into(), 1.into());
        m.insert("addr".into(), first_addr.into());
        b.insert("members".into(), toml::Value::Array(vec![m.into()]));
    }
    let config = dir.join("node.toml");
    std::fs::write(&config, toml::to_string(&v)?)?;
    Ok(Host {
        config,
        addr: addr.to_owned(),
    })
}

fn run(args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<Output> {
    let mut c = Command::new(authsec_bin()?);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output()?;
    anyhow::ensure!(
        out.status.success(),
        "authsec {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::File::create(log)?;
    Ok(Command::new(authsec_bin()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?)
}

#[test]
fn the_deploy_guide_forms_a_three_node_cluster() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let addrs: Vec<String> = (0..3)
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let hosts: Vec<Host> = (1..=3u64)
        .map(|id| host(root.path(), id, &addrs[0], &addrs[id as usize - 1]))
        .collect::<anyhow::Result<_>>()?;
    let admin = root.path().join("admin");
    let mut procs = Procs(Vec::new());

    // 2. Create the trust domain on host 1, start it.
    let cfg1 = hosts[0].config.display().to_string();
    let out = run(
        &[
            "node",
            "init",
            "--config",
            &cfg1,
            "--admin-dir",
            &admin.display().to_string(),
        ],
        &[],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let fingerprint = text
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .context("init prints the root's fingerprint")?
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit())
        .to_owned();
    procs.0.push(spawn(
        &["node", "run", "--config", &cfg1],
        &root.path().join("host1.log"),
    )?);
    let env = [
        ("AUTHSEC_ADMIN_DIR", admin.as_path()),
        ("AUTHSEC_ENDPOINT", Path::new(&hosts[0].addr)),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(authsec_bin()?)
            .args(["cluster", "status"])
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()?;
        if ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("leader") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "host 1 did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. Join hosts 2 and 3, one token each.
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let out = run(&["cluster", "join-token", "create", "--ttl", "30m"], &env)?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let cfg = h.config.display().to_string();
        procs.0.push(spawn(
            &[
                "node",
                "join",
                "--config",
                &cfg,
                "--token",
                &token,
                "--ca-fingerprint",
                &fingerprint,
                "--peer",
                &hosts[0].addr,
            ],
            &root.path().join(format!("host{}.log", i + 1)),
        )?);
    }

    // 4. Three voters, one digest.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = Command::new(authsec_bin()?)
            .args(["cluster", "status", "--json"])
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()?;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let nodes = v.as_array().cloned().unwrap_or_default();
            let digests: std::collections::BTreeSet<String> = nodes
                .iter()
                .filter_map(|n| n["projection_digest"].as_str().map(str::to_owned))
                .collect();
            let voters = nodes
                .first()
                .and_then(|n| n["members"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|m| m["role"] == "voter")
                .count();
            if nodes.len() == 3 && voters == 3 && digests.len() == 1 {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the guide's cluster did not form: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
