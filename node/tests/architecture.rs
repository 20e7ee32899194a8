//! The crate graph is the architecture: these rules from DESIGN.md are checked against
//! `cargo metadata`, so a new edge cannot slip in unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

struct Graph {
    /// package id -> name
    names: BTreeMap<String, String>,
    /// package id -> ids of its normal (non-dev, non-build) dependencies
    deps: BTreeMap<String, Vec<String>>,
    workspace: Vec<String>,
}

fn graph() -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The directory at run time: test binaries are shared across clones through one target
    // directory, so a compile-time path may name a clone that is gone.
    let root = manifest_dir().join("../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let names = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or_default().to_owned(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut deps = BTreeMap::new();
    for node in v["resolve"]["nodes"].as_array().expect("resolve") {
        let id = node["id"].as_str().unwrap_or_default().to_owned();
        let normal = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap_or_default().to_owned())
            .collect();
        deps.insert(id, normal);
    }
    let workspace = v["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().unwrap_or_default().to_owned())
        .collect();
    Graph {
        names,
        deps,
        workspace,
    }
}

impl Graph {
    fn id(&self, name: &str) -> String {
        self.workspace
            .iter()
            .find(|id| self.names[*id] == name)
            .unwrap_or_else(|| panic!("workspace has no crate {name}"))
            .clone()
    }

    /// Names of every crate `name` reaches through normal dependencies.
    fn reaches(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![self.id(name)];
        while let Some(id) = stack.pop() {
            for d in self.deps.get(&id).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen.iter().map(|id| self.names[id].clone()).collect()
    }

    fn direct_ours(&self, name: &str) -> BTreeSet<String> {
        self.deps[&self.id(name)]
            .iter()
            .filter(|d| self.workspace.contains(d))
            .map(|d| self.names[d].clone())
            .collect()
    }
}

#[test]
fn domain_is_pure() {
    let g = graph();
    let reach = g.reaches("authsec-domain");
    for banned in [
        "tokio",
        "mio",
        "socket2",
        "rocksdb",
        "librocksdb-sys",
        "tonic",
        "prost",
        "openraft",
        "rand",
        "getrandom",
        "hyper",
        "futures",
    ] {
        assert!(
            !reach.contains(banned),
            "authsec-domain must not reach {banned} (no IO, no async, no randomness)"
        );
    }
    assert!(
        g.direct_ours("authsec-domain").is_empty(),
        "authsec-domain depends on nothing of ours"
    );
}

#[test]
fn only_storage_raft_and_node_reach_rocksdb() {
    let g = graph();
    for name in g.workspace.iter().map(|id| g.names[id].clone()) {
        let allowed = matches!(
            name.as_str(),
            "authsec-storage" | "authsec-raft" | "authsec-node"
        );
        let reaches = g.reaches(&name).contains("librocksdb-sys");
        assert!(allowed || !reaches, "{name} must not reach RocksDB");
    }
}

#[test]
fn tls_stays_apart_from_raft_and_storage() {
    let g = graph();
    let reach = g.reaches("authsec-tls");
    for banned in [
        "openraft",
        "librocksdb-sys",
        "authsec-storage",
        "authsec-raft",
    ] {
        assert!(
            !reach.contains(banned),
            "authsec-tls must not reach {banned}: the agent and SDK use it too"
        );
    }
}

#[test]
fn wire_types_stay_apart_from_the_server() {
    let g = graph();
    let reach = g.reaches("authsec-api");
    for banned in ["openraft", "librocksdb-sys", "authsec-storage"] {
        assert!(
            !reach.contains(banned),
            "authsec-api must not reach {banned}"
        );
    }
}

#[test]
fn edges_between_our_crates_follow_the_design() {
    let g = graph();
    let allowed: BTreeMap<&str, &[&str]> = [
        ("authsec-domain", &[][..]),
        ("authsec-api", &["authsec-domain"][..]),
        ("authsec-storage", &["authsec-domain"][..]),
        ("authsec-tls", &["authsec-domain"][..]),
        (
            "authsec-raft",
            &[
                "authsec-domain",
                "authsec-storage",
                "authsec-api",
                "authsec-tls",
            ][..],
        ),
        (
            "authsec-node",
            &[
                "authsec-domain",
                "authsec-storage",
                "authsec-api",
                "authsec-raft",
                "authsec-tls",
            ][..],
        ),
        (
            "authsec-agent",
            &["authsec-api", "authsec-domain", "authsec-tls"][..],
        ),
        (
            "authsec-sdk",
            &["authsec-api", "authsec-domain", "authsec-tls"][..],
        ),
        (
            "authsec-chaos-tests",
            &[
                "authsec-api",
                "authsec-domain",
                "authsec-tls",
                "authsec-sdk",
            ][..],
        ),
        ("authsec-examples", &["authsec-sdk", "authsec-tls"][..]),
        // Tests only: client libraries authsec did not write, against the binaries.
        (
            "authsec-interop-tests",
            &["authsec-api", "authsec-chaos-tests"][..],
        ),
    ]
    .into_iter()
    .collect();
    for id in &g.workspace {
        let name = g.names[id].as_str();
        let ok = allowed.get(name).unwrap_or_else(|| {
            panic!("crate {name} is not in the design's table; add it here and to ARCHITECTURE.md")
        });
        for dep in g.direct_ours(name) {
            assert!(
                ok.contains(&dep.as_str()),
                "{name} -> {dep} is not an edge the design allows"
            );
        }
    }
}

fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        std::path::PathBuf::from,
    )
}
