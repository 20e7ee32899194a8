//! docs/guide, run: every `sh` block of the five parts, in order, in one bash session against a
//! real three-node cluster, with the real binaries (`authsec`, `authsec-agent`, the examples)
//! and the real Python libraries (py-spiffe, Authlib). A command that fails fails the test, so
//! the guide cannot rot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use authsec_chaos_tests::{authsec_bin, Cluster, Options, OAUTH_ISSUER, TRUST_DOMAIN};

const PARTS: &[&str] = &[
    "1-concepts.md",
    "2-agent-and-sdk.md",
    "3-delegation.md",
    "4-faq.md",
    "5-audit.md",
];

fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// The `sh` blocks of a Markdown file, with the line each starts at.
fn blocks(path: &Path) -> anyhow::Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut cur {
            None if line.trim_start() == "```sh" => cur = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim_start() == "```" => out.extend(cur.take()),
            Some((_, b)) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    anyhow::ensure!(
        cur.is_none(),
        "{}: an sh block is not closed",
        path.display()
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_guide_runs() -> anyhow::Result<()> {
    let c = Cluster::start(
        3,
        Options {
            extra_toml: "[agents]\nheartbeat_s = 1\n[audit]\nfailure_interval_s = 1\ncheckpoint_interval_s = 2\n".into(),
            ..Options::default()
        },
    )?;
    c.wait_issuing(&[1, 2, 3], Duration::from_secs(30)).await?;
    let work = tempfile::tempdir()?;
    // The processes the guide starts in the background (the agent, the tools) are the
    // script's jobs: it kills them when it ends, however it ends.
    let mut script = String::from(
        "set -euo pipefail\ntrap 'kill -KILL $(jobs -p) 2>/dev/null || true' EXIT\ntrap 'exit 143' TERM INT\n",
    );
    let mut count = 0;
    for part in PARTS {
        let path = repo().join("docs/guide").join(part);
        for (line, b) in blocks(&path)? {
            script += &format!("echo '### docs/guide/{part}:{line}' >&2\n{b}");
            count += 1;
        }
    }
    assert!(count >= 20, "only {count} runnable blocks found");
    let bin_dir = authsec_bin()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let py = std::env::var_os("AUTHSEC_PY").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/authsec-py"),
        PathBuf::from,
    );
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        py.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let endpoints: Vec<String> = [1, 2, 3]
        .iter()
        .map(|id| c.addr(*id))
        .collect::<Result<_, _>>()?;
    // Output to files, not pipes: the background processes the guide starts (the agent, the
    // tool) inherit them and would hold a pipe open past the script's end.
    let out_file = work.path().join("guide.out");
    let err_file = work.path().join("guide.err");
    let mut child = {
        Command::new("timeout")
            .args(["300", "bash", "-c", &script])
            .current_dir(repo())
            .env("PATH", path)
            .env("AUTHSEC_ADMIN_DIR", c.admin_dir())
            .env("AUTHSEC_ENDPOINT", endpoints.join(","))
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("NODE", c.addr(1)?)
            .env("OAUTH", format!("https://{}", c.oauth_addr(1)?))
            .env("ISSUER", OAUTH_ISSUER)
            .env("WORK", work.path())
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file)?)
            .stderr(std::fs::File::create(&err_file)?)
            .spawn()?
    };
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let stdout = std::fs::read_to_string(&out_file)?;
    let stderr = std::fs::read_to_string(&err_file)?;
    let last = stderr
        .lines()
        .rfind(|l| l.starts_with("### "))
        .unwrap_or("(none)")
        .to_owned();
    if !status.success() {
        // Every log the guide's commands wrote, to say why.
        let mut logs = String::new();
        for e in std::fs::read_dir(work.path())?.flatten() {
            let p = e.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("err" | "log")) {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                logs += &format!("--- {}\n", p.display());
                for l in tail.into_iter().rev() {
                    logs += l;
                    logs.push('\n');
                }
            }
        }
        panic!("the guide failed at the block {last} ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}\n{logs}");
    }
    eprintln!("{count} blocks of docs/guide ran; the last: {last}");
    Ok(())
}
