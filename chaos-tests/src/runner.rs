//! One chaos run: start a proxied cluster, write through every node, inject a seeded
//! schedule of faults, heal, and check every invariant over the whole history.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use authsec_api::v1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checkers::{self, CredHistory, FaultLog, History, Span, Violation};
use crate::creds::{CredOptions, CredWorkload};
use crate::nemesis::{Fault, Scenario};
use crate::oracle::{OpResult, Oracle, Workload, WorkloadOptions};
use crate::{Cluster, Options};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub nodes: u64,
    pub seed: u64,
    /// Run these scenarios once each, in order...
    pub scenarios: Vec<Scenario>,
    /// ...or, with a duration, draw scenarios at random until it is spent.
    pub duration: Option<Duration>,
    pub workload: WorkloadOptions,
    /// Extra environment per node (planted bugs).
    pub env: BTreeMap<u64, Vec<(String, String)>>,
    pub snapshot_logs_since_last: u64,
    /// Size of the tmpfs the last node's data lives on, for the disk-full fault (root only).
    pub tmpfs_mib: u64,
    /// Label for ids and the report.
    pub tag: String,
    /// How long the healed cluster may take to converge before the checkers judge it as is.
    pub converge_timeout: Duration,
    /// Run the credential workload (part two) besides the registrations, with its checkers
    /// and scenarios.
    pub credentials: bool,
    /// Add an issuer replica (a learner that issues) to the credential workload's targets.
    pub replica: bool,
    /// The nodes' freshness bound in credential runs (short, so faults outlast it).
    pub max_staleness_ms: u64,
    pub cred: CredOptions,
}

impl RunConfig {
    pub fn new(nodes: u64, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            scenarios: Scenario::ALL.to_vec(),
            duration: None,
            workload: WorkloadOptions::default(),
            env: BTreeMap::new(),
            snapshot_logs_since_last: 300,
            tmpfs_mib: 512,
            tag: "chaos".into(),
            converge_timeout: Duration::from_secs(120),
            credentials: false,
            replica: false,
            max_staleness_ms: 1500,
            cred: CredOptions::default(),
        }
    }
}

/// A seed from the environment (`AUTHSEC_CHAOS_SEED`) or the clock.
pub fn seed_from_env() -> u64 {
    std::env::var("AUTHSEC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub nodes: u64,
    pub elapsed: Duration,
    pub attempted: u64,
    pub acked: usize,
    pub unknown: usize,
    pub rejected: usize,
    /// Each fault as it began: time since the start, and what.
    pub faults: Vec<(Duration, Fault)>,
    pub violations: Vec<Violation>,
    /// Share of one-second windows in which at least one write was acknowledged.
    pub availability: f64,
    /// From each leader kill to the first write acknowledged by another leader.
    pub failovers: Vec<Duration>,
    pub records: usize,
    pub notes: Vec<String>,
    /// Credential runs: requests, credentials received, acknowledged revocations.
    pub cred_requests: usize,
    pub cred_issued: usize,
    pub cred_revocations: usize,
    pub issuance: Option<checkers::availability::Figure>,
    pub probes: Option<checkers::revocation::Tally>,
    pub lost_with_wipes: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl Summary {
    pub fn failover_p(&self, p: f64) -> Option<Duration> {
        let mut v = self.failovers.clone();
        v.sort();
        percentile(&v, p)
    }

    /// The summary table every run ends with.
    pub fn table(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
        let mut s = String::new();
        let _ = writeln!(s, "| metric | value |");
        let _ = writeln!(s, "|---|---|");
        let _ = writeln!(s, "| seed | {} |", self.seed);
        let _ = writeln!(s, "| nodes | {} |", self.nodes);
        let _ = writeln!(s, "| duration | {:.0} s |", self.elapsed.as_secs_f64());
        let _ = writeln!(s, "| operations attempted | {} |", self.attempted);
        let _ = writeln!(s, "| operations acknowledged | {} |", self.acked);
        let _ = writeln!(s, "| outcome unknown (error/timeout) | {} |", self.unknown);
        let _ = writeln!(s, "| refused | {} |", self.rejected);
        let _ = writeln!(s, "| archive records at the end | {} |", self.records);
        let _ = writeln!(s, "| faults injected | {} |", self.faults.len());
        let _ = writeln!(s, "| violations | {} |", self.violations.len());
        let _ = writeln!(
            s,
            "| write availability (1 s windows with an ack) | {:.1} % |",
            self.availability * 100.0
        );
        let _ = writeln!(
            s,
            "| failover, leader kill to first write on new leader (n={}) | p50 {} / p99 {} |",
            self.failovers.len(),
            ms(self.failover_p(0.5)),
            ms(self.failover_p(0.99))
        );
        if let Some(f) = &self.issuance {
            let _ = writeln!(
                s,
                "| credential requests / credentials issued | {} / {} |",
                self.cred_requests, self.cred_issued
            );
            let _ = writeln!(
                s,
                "| token revocations acknowledged | {} |",
                self.cred_revocations
            );
            if let Some(p) = &self.probes {
                let _ = writeln!(
                    s,
                    "| revocation probes judged / excused (node cut or down) / unanswered | {} / {} / {} |",
                    p.judged, p.excused, p.unanswered
                );
            }
            let _ = writeln!(
                s,
                "| issuance availability, majority side: requests issued | {:.1} % ({} of {}; {} unavailable, {} no answer; {} refused by policy, not counted) |",
                f.request_share() * 100.0,
                f.issued,
                f.requests,
                f.refused,
                f.failed,
                f.denied
            );
            let _ = writeln!(
                s,
                "| issuance availability, majority side: 1 s windows with a credential | {:.1} % |",
                f.window_share() * 100.0
            );
            let _ = writeln!(
                s,
                "| credentials lost with a wiped disk (not audited) | {} |",
                self.lost_with_wipes
            );
            s += &f.by_fault_table();
        }
        s
    }
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Run a whole chaos session.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let root = is_root();
    let tmpfs_node = cfg.nodes;
    let mut opts = Options {
        snapshot_logs_since_last: cfg.snapshot_logs_since_last,
        max_in_snapshot_log_to_keep: 10,
        // The node's defaults: failover is measured with what users run.
        timeouts_ms: None,
        proxied: true,
        spare: 1,
        env: cfg.env.clone(),
        ..Options::default()
    };
    if root {
        opts.tmpfs_mib.insert(tmpfs_node, cfg.tmpfs_mib);
    }
    if cfg.credentials {
        opts.extra_toml += &format!("[issuer]\nmax_staleness_ms = {}\n", cfg.max_staleness_ms);
        if cfg.replica {
            opts.spare = 2;
        }
    }
    let mut summary = Summary {
        seed: cfg.seed,
        nodes: cfg.nodes,
        ..Summary::default()
    };
    if !root {
        summary
            .notes
            .push("not root: no tmpfs, so the disk-full fault is skipped".into());
    }
    say(&format!(
        "chaos run: seed {} nodes {} {}; replay with AUTHSEC_CHAOS_SEED={} (tests) or --seed {} (authsec-chaos)",
        cfg.seed,
        cfg.nodes,
        match cfg.duration {
            Some(d) => format!("soak for {:?}", d),
            None => format!(
                "scenarios [{}]",
                cfg.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
        },
        cfg.seed,
        cfg.seed
    ));

    let mut cluster = Cluster::start(cfg.nodes, opts)?;
    let ids: Vec<u64> = (1..=cfg.nodes).collect();
    if let Err(e) = cluster.wait_leader(&ids, Duration::from_secs(60)).await {
        let kept = cluster.keep_logs()?;
        let mut tails = String::new();
        for id in &ids {
            tails += &format!("--- node {id}\n{}\n", cluster.log_tail(*id, 15));
        }
        bail!(
            "the cluster elected no leader: {e:#}; logs kept in {}\n{tails}",
            kept.display()
        );
    }
    let oracle = Oracle::new();
    let addrs: BTreeMap<u64, String> = ids
        .iter()
        .map(|id| Ok((*id, cluster.addr(*id)?)))
        .collect::<anyhow::Result<_>>()?;
    let workload = Workload::start(
        &addrs,
        &cluster.client_transport()?,
        oracle.clone(),
        &cfg.tag,
        cfg.workload.clone(),
    )?;
    wait_acks(&oracle, Duration::ZERO, 20, Duration::from_secs(60)).await?;
    let t0_wall_ms = wall_ms().saturating_sub(oracle.now().as_millis() as u64);
    let mut flog = FaultLog::default();
    let creds = if cfg.credentials {
        let mut targets = ids.clone();
        if cfg.replica {
            let rid = cfg.nodes + 2;
            add_replica(&mut cluster, rid).await?;
            targets.push(rid);
        }
        cluster
            .wait_issuing(&targets, Duration::from_secs(60))
            .await?;
        let w = CredWorkload::start(
            &cluster,
            &targets,
            oracle.clone(),
            &cfg.tag,
            cfg.cred.clone(),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.issued_since(Duration::ZERO) < 20 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the credential workload got fewer than 20 credentials within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(w)
    } else {
        None
    };
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .chain(
            Scenario::CREDENTIAL
                .into_iter()
                .filter(|s| cfg.credentials && (cfg.replica || *s != Scenario::ReplicaPartitioned)),
        )
        .collect();

    let mut kills: Vec<(Duration, u64)> = Vec::new();
    let run_scenario = |s: Scenario, rng: &mut StdRng| s.faults(rng);
    let mut queue: Vec<Fault> = Vec::new();
    if cfg.duration.is_none() {
        for s in &cfg.scenarios {
            queue.extend(run_scenario(*s, &mut rng));
        }
        say(&format!(
            "schedule: {}",
            queue
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut qi = 0;
    loop {
        let fault = match cfg.duration {
            Some(d) => {
                if started.elapsed() >= d {
                    break;
                }
                if qi >= queue.len() {
                    let s = scenarios[rng.gen_range(0..scenarios.len())];
                    queue.extend(run_scenario(s, &mut rng));
                }
                queue[qi].clone()
            }
            None => match queue.get(qi) {
                Some(f) => f.clone(),
                None => break,
            },
        };
        qi += 1;
        if fault == Fault::DiskFull && !root {
            continue;
        }
        let at = oracle.now();
        say(&format!("[{:>7.1}s] fault: {fault}", at.as_secs_f64()));
        summary.faults.push((at, fault.clone()));
        let cuts_before = flog.cuts.len();
        let mut fx = Fx {
            oracle: &oracle,
            flog: &mut flog,
            creds: creds.as_ref(),
        };
        match inject(&mut cluster, &mut fx, &fault, &mut kills, tmpfs_node).await {
            Ok(note) => {
                if let Some(n) = note {
                    say(&format!("           {n}"));
                    summary.notes.push(n);
                }
            }
            Err(e) => summary.violations.push(Violation {
                checker: "fault-handled",
                detail: format!("{fault}: {e:#}"),
            }),
        }
        if let Some(net) = &cluster.net {
            net.heal();
        }
        // A node cut off is back once it issues again: heard from a leader and applied what
        // that leader had committed. Until then it is catching up, not connected.
        if creds.is_some() {
            let healed = oracle.now();
            let cut: BTreeSet<u64> = flog.cuts[cuts_before..].iter().map(|s| s.node).collect();
            for id in cut {
                back(&cluster, id).await;
                flog.downs.push(Span {
                    node: id,
                    from: healed,
                    to: oracle.now(),
                });
            }
        }
        // Recovered: every member answers, they agree on a leader, and writes flow again.
        let healed = oracle.now();
        if let Err(e) = recover(&mut cluster, &oracle, healed).await {
            summary.violations.push(Violation {
                checker: "recovers-after-heal",
                detail: format!("after {fault}: {e:#}"),
            });
            say(&format!("           did not recover: {e:#}"));
        }
    }

    let end_of_load = oracle.now();
    workload.stop().await;
    let cred_log = match creds {
        Some(w) => Some(w.stop().await),
        None => None,
    };
    summary.attempted = 0;
    if let Some(net) = &cluster.net {
        net.heal();
    }
    let members: Vec<u64> = cluster.members.iter().copied().collect();
    let replicas: Vec<u64> = cluster.replicas.iter().copied().collect();
    for id in members.iter().chain(&replicas) {
        if !cluster.node_mut(*id).is_some_and(|n| n.is_running()) {
            cluster.spawn(*id)?;
        }
    }
    let statuses = match cluster
        .wait_converged(&members, 0, cfg.converge_timeout)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // Judge what the nodes hold now: the convergence checker names the difference.
            say(&format!("not converged: {e:#}"));
            let mut all = Vec::new();
            for id in &members {
                all.push(
                    cluster
                        .status(*id)
                        .await
                        .with_context(|| format!("status of node {id}"))?,
                );
            }
            all
        }
    };

    let mut h = History {
        ops: oracle.ops(),
        ..History::default()
    };
    let mut statuses = statuses;
    // A write whose client gave up may still commit while the nodes are read: read again
    // until no node moved during the reading. Bounded in time, not in attempts: a burst of
    // late commits (a planted delay) can outlast several quick rereads.
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        h.statuses.clear();
        h.archives.clear();
        h.projections.clear();
        for s in &statuses {
            h.statuses.insert(s.node_id, s.clone());
        }
        for id in &members {
            h.archives.insert(*id, cluster.records(*id).await?);
            h.projections.insert(*id, cluster.client_ids(*id).await?);
        }
        // Moved: a node's applied index changed, or its archive ends past the head its
        // status gave (an entry applied between the two reads: the archive is written before
        // openraft reports the entry applied, so the applied index can lag that read).
        let mut moved = false;
        for id in &members {
            let now = cluster.status(*id).await?;
            let before = h.statuses.get(id);
            moved |= before.map(|s| s.applied_index) != Some(now.applied_index);
            let head = before
                .and_then(|s| s.archive_head.as_ref())
                .map_or(0, |a| a.sequence);
            let end = h
                .archives
                .get(id)
                .and_then(|a| a.last())
                .map_or(0, |r| r.sequence);
            moved |= end > head;
        }
        if !moved || Instant::now() > settle_deadline {
            break;
        }
        statuses = match cluster
            .wait_converged(&members, 0, Duration::from_secs(30))
            .await
        {
            Ok(s) => s,
            Err(_) => {
                let mut all = Vec::new();
                for id in &members {
                    all.push(cluster.status(*id).await?);
                }
                all
            }
        };
    }
    if let Some(log) = cred_log {
        // Every credential request, for reading a run by hand.
        if let Some(path) = std::env::var_os("AUTHSEC_CHAOS_CRED_DUMP") {
            let mut text = String::new();
            for r in &log.requests {
                let _ = writeln!(
                    text,
                    "{:>8.3} {:>8.3} node {} {:<16} {:?}",
                    r.start.as_secs_f64(),
                    r.end.as_secs_f64(),
                    r.node,
                    r.kind.name(),
                    r.outcome
                );
            }
            for r in &log.revocations {
                let _ = writeln!(text, "revocation {r:?}");
            }
            for (i, w) in log.writes.iter().enumerate() {
                let _ = writeln!(text, "write {i} {w:?}");
            }
            let _ = std::fs::write(&path, text);
        }
        let export_node = members[0];
        let export = settled_export(&cluster, export_node, &log).await?;
        h.creds = Some(CredHistory {
            log,
            faults: flog,
            max_staleness: Duration::from_millis(cfg.max_staleness_ms),
            t0_wall_ms,
            export,
            export_node,
        });
    }
    summary.violations.extend(checkers::check_all(&h));
    for (node, panic) in cluster.panics() {
        summary.violations.push(Violation {
            checker: "no-panic",
            detail: format!("node {node}: {panic}"),
        });
    }
    if let Some(c) = &h.creds {
        summary.cred_requests = c.log.requests.len();
        summary.cred_issued = c
            .log
            .requests
            .iter()
            .filter(|r| r.issued().is_some())
            .count();
        summary.cred_revocations = c.log.revocations.len();
        summary.issuance = checkers::availability::figure(&h, &summary.faults);
        summary.probes = Some(checkers::revocation::tally(&h));
        summary.lost_with_wipes = checkers::audit_complete::lost_with_wipes(&h);
        if summary.lost_with_wipes > 0 {
            summary.notes.push(format!(
                "{} credential(s) issued by a node shortly before the nemesis wiped its disk are not in the audit export: their issuance records went with the disk",
                summary.lost_with_wipes
            ));
        }
    }
    summary.records = h.archives.values().next().map_or(0, Vec::len);
    summary.acked = h.ops.iter().filter(|o| o.acked()).count();
    summary.unknown = h
        .ops
        .iter()
        .filter(|o| matches!(o.result, OpResult::Unknown(_)))
        .count();
    summary.rejected = h
        .ops
        .iter()
        .filter(|o| matches!(o.result, OpResult::Rejected(_)))
        .count();
    summary.attempted = h.ops.len() as u64;
    summary.availability = availability(&h, end_of_load);
    for (t, old) in kills {
        let first = h
            .ops
            .iter()
            .filter_map(|o| match o.result {
                OpResult::Ok { leader_id, .. } if leader_id != old && o.end > t => Some(o.end),
                _ => None,
            })
            .min();
        if let Some(end) = first {
            summary.failovers.push(end - t);
        }
    }
    summary.elapsed = started.elapsed();
    for v in &summary.violations {
        say(&format!("VIOLATION {v}"));
    }
    if !summary.violations.is_empty() {
        let kept = cluster.keep_logs()?;
        say(&format!("node logs and configs kept in {}", kept.display()));
    }
    say(&summary.table());
    Ok(summary)
}

fn availability(h: &History, end: Duration) -> f64 {
    let secs = end.as_secs().max(1);
    let mut hit = BTreeSet::new();
    for o in h.ops.iter().filter(|o| o.acked()) {
        hit.insert(o.end.as_secs());
    }
    hit.iter().filter(|s| **s < secs).count() as f64 / secs as f64
}

/// Wait until at least `n` writes acknowledged after `since`.
async fn wait_acks(
    oracle: &Oracle,
    since: Duration,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while oracle.acked_since(since) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "fewer than {n} writes acknowledged within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn recover(cluster: &mut Cluster, oracle: &Oracle, since: Duration) -> anyhow::Result<()> {
    let members: Vec<u64> = cluster.members.iter().copied().collect();
    cluster
        .wait_leader(&members, Duration::from_secs(60))
        .await?;
    wait_acks(oracle, since, 20, Duration::from_secs(60)).await
}

/// The current leader among the members, or an error.
/// The current leader, as the members report it.
pub async fn leader(cluster: &Cluster) -> anyhow::Result<u64> {
    let members: Vec<u64> = cluster.members.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for id in &members {
            if let Ok(s) = cluster.status(*id).await {
                if s.leader_id != 0 && s.leader_id == s.node_id {
                    return Ok(s.leader_id);
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader among {members:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn followers(cluster: &Cluster, leader: u64) -> Vec<u64> {
    cluster
        .members
        .iter()
        .copied()
        .filter(|id| *id != leader)
        .collect()
}

/// All ids the proxies know, spares included.
fn all_ids(cluster: &Cluster) -> Vec<u64> {
    cluster.reserved_ids()
}

fn minority(members: &[u64], rng: &mut StdRng) -> Vec<u64> {
    let size = (members.len() - 1) / 2;
    let mut m = members.to_vec();
    for i in (1..m.len()).rev() {
        m.swap(i, rng.gen_range(0..=i));
    }
    m.truncate(size.max(1));
    m
}

async fn hold(ms: u64) {
    // Holding a fault for its scheduled time is the schedule itself, not synchronisation.
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// A membership change through whichever member leads, retried while leadership moves.
/// Add or remove a member through the leader, retried until a deadline.
pub async fn change_membership(
    cluster: &Cluster,
    add: Option<(u64, String)>,
    remove: Option<u64>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = leader(cluster).await?;
        let mut c =
            v1::cluster_service_client::ClusterServiceClient::new(cluster.channel(l).await?);
        // Each attempt is bounded: a change waiting on a node that never catches up must not
        // hang the run; it is retried until the deadline, then fails with the reason.
        let attempt = async {
            match (&add, remove) {
                (Some((id, addr)), _) => c
                    .add_node(v1::AddNodeRequest {
                        node_id: *id,
                        addr: addr.clone(),
                        learner_only: false,
                    })
                    .await
                    .map(|_| ()),
                (None, Some(id)) => c
                    .remove_node(v1::RemoveNodeRequest {
                        node_id: id,
                        revoke_keys: false,
                    })
                    .await
                    .map(|_| ()),
                (None, None) => Ok(()),
            }
        };
        let res = match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "no answer to the membership change within 20 s",
            )),
        };
        match res {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "membership change retried");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("membership change failed: {e}")),
        }
    }
}

/// Wait until a (re)started node answers status.
/// Wait until node `id` answers status.
pub async fn wait_up(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.status(id).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {id} did not come up: {}",
            cluster.log_tail(id, 10)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// What a fault injection reads and records besides the cluster.
struct Fx<'a> {
    oracle: &'a Oracle,
    flog: &'a mut FaultLog,
    creds: Option<&'a CredWorkload>,
}

impl Fx<'_> {
    fn now(&self) -> Duration {
        self.oracle.now()
    }

    fn cut(&mut self, nodes: &[u64], from: Duration) {
        let to = self.now();
        for n in nodes {
            self.flog.cuts.push(Span { node: *n, from, to });
        }
    }

    fn down(&mut self, nodes: &[u64], from: Duration) {
        let to = self.now();
        for n in nodes {
            self.flog.downs.push(Span { node: *n, from, to });
        }
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Add node `id` as an issuer replica: a learner that issues credentials and never votes.
async fn add_replica(cluster: &mut Cluster, id: u64) -> anyhow::Result<()> {
    cluster.prepare(id, None)?;
    cluster.spawn(id)?;
    wait_up(cluster, id).await?;
    let addr = cluster.addr(id)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = leader(cluster).await?;
        let mut c =
            v1::cluster_service_client::ClusterServiceClient::new(cluster.channel(l).await?);
        match c
            .add_node(v1::AddNodeRequest {
                node_id: id,
                addr: addr.clone(),
                learner_only: true,
            })
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "adding the issuer replica retried");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("adding issuer replica {id}: {e}"),
        }
    }
    cluster.replicas.insert(id);
    say(&format!("node {id} joined as an issuer replica (learner)"));
    Ok(())
}

/// The audit export of node `id`, once it holds the issuance record of every credential the
/// workload received (the issuing nodes hand them to the log asynchronously), or as it
/// stands after 30 s: the audit checker names what is missing then.
async fn settled_export(
    cluster: &Cluster,
    id: u64,
    log: &crate::creds::CredLog,
) -> anyhow::Result<Vec<authsec_domain::AuditRecord>> {
    let want: BTreeSet<&str> = log
        .requests
        .iter()
        .filter_map(|r| r.issued().map(|i| i.id.as_str()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = v1::audit_service_client::AuditServiceClient::new(cluster.channel(id).await?)
            .max_decoding_message_size(16 << 20);
        let mut s = c
            .export(v1::ExportRequest::default())
            .await
            .context("audit export")?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await? {
            if let Some(rec) = r.record {
                out.push(
                    authsec_domain::AuditRecord::from_bytes(&rec.record_bytes)
                        .with_context(|| format!("audit record {}", rec.sequence))?,
                );
            }
        }
        let mut have = BTreeSet::new();
        for rec in &out {
            if let authsec_domain::Event::IssuanceBatchRecorded { batch, .. } = &rec.event {
                have.extend(batch.items.iter().map(|i| i.id.clone()));
            }
        }
        let missing = want.iter().filter(|w| !have.contains(**w)).count();
        if missing == 0 || Instant::now() > deadline {
            say(&format!(
                "audit export of node {id}: {} records, {} of {} received credentials recorded",
                out.len(),
                want.len() - missing,
                want.len()
            ));
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait (at most 30 s) until node `id` issues again: it runs, hears from a leader and has
/// applied what that leader had committed. Until then it is not back for the checkers.
async fn back(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cluster.status(id).await.is_ok_and(|s| s.issuing) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Partition `minor` from every other node; returns the other side.
fn cut_off(cluster: &Cluster, net: &crate::proxy::Net, minor: &[u64]) -> Vec<u64> {
    let rest: Vec<u64> = all_ids(cluster)
        .into_iter()
        .filter(|x| !minor.contains(x))
        .collect();
    net.partition(minor, &rest);
    rest
}

/// Hold a partition for `ms`, asking the credential workload for `urgent` work at its start
/// and halfway.
async fn hold_with(fx: &Fx<'_>, ms: u64, urgent: impl Fn(&CredWorkload)) {
    if let Some(w) = fx.creds {
        urgent(w);
    }
    hold(ms / 2).await;
    if let Some(w) = fx.creds {
        urgent(w);
    }
    hold(ms - ms / 2).await;
}

/// Apply one fault and undo it (the caller heals the network). Returns a note for the report.
async fn inject(
    cluster: &mut Cluster,
    fx: &mut Fx<'_>,
    fault: &Fault,
    kills: &mut Vec<(Duration, u64)>,
    tmpfs_node: u64,
) -> anyhow::Result<Option<String>> {
    let net = cluster.net()?.clone();
    let oracle = fx.oracle;
    let t = fx.now();
    match fault {
        Fault::KillLeader { down_ms } => {
            let l = leader(cluster).await?;
            let t = fx.now();
            kills.push((t, l));
            cluster.kill9(l)?;
            hold(*down_ms).await;
            cluster.spawn(l)?;
            back(cluster, l).await;
            fx.down(&[l], t);
            Ok(Some(format!("killed leader {l}")))
        }
        Fault::PauseLeader { ms } => {
            let l = leader(cluster).await?;
            let t = fx.now();
            cluster.pause(l)?;
            hold(*ms).await;
            cluster.resume(l)?;
            back(cluster, l).await;
            fx.down(&[l], t);
            Ok(Some(format!("paused leader {l}")))
        }
        Fault::IsolateLeader { ms } => {
            let l = leader(cluster).await?;
            let t = fx.now();
            cut_off(cluster, &net, &[l]);
            hold(*ms).await;
            fx.cut(&[l], t);
            Ok(Some(format!("isolated leader {l}")))
        }
        Fault::PartitionMinority { pick, ms } => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            let mut r = StdRng::seed_from_u64(*pick);
            let minor = minority(&members, &mut r);
            let rest = cut_off(cluster, &net, &minor);
            hold(*ms).await;
            fx.cut(&minor, t);
            Ok(Some(format!("partitioned {minor:?} from {rest:?}")))
        }
        Fault::OneWayFromLeader { pick, ms } => {
            let l = leader(cluster).await?;
            let f = followers(cluster, l);
            let target = f[(*pick % f.len() as u64) as usize];
            let t = fx.now();
            net.one_way(&[l], &[target]);
            hold(*ms).await;
            net.heal();
            back(cluster, target).await;
            fx.down(&[target], t);
            Ok(Some(format!("leader {l} -/-> {target}")))
        }
        Fault::IsolateLeaderWith { pick, ms } => {
            let l = leader(cluster).await?;
            let f = followers(cluster, l);
            let mut side = vec![l];
            if cluster.members.len() >= 5 {
                side.push(f[(*pick % f.len() as u64) as usize]);
            }
            let t = fx.now();
            let rest = cut_off(cluster, &net, &side);
            hold(*ms).await;
            fx.cut(&side, t);
            Ok(Some(format!(
                "deposed leader {l} cut off with {side:?} from {rest:?}"
            )))
        }
        Fault::PartitionRevoking { pick, ms } => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            let mut r = StdRng::seed_from_u64(*pick);
            let minor = minority(&members, &mut r);
            let rest = cut_off(cluster, &net, &minor);
            hold_with(fx, *ms, |w| w.revoke_now(8)).await;
            fx.cut(&minor, t);
            Ok(Some(format!(
                "partitioned {minor:?} from {rest:?} while revoking tokens through every node"
            )))
        }
        Fault::PartitionChangingRoles { ms } => {
            let l = leader(cluster).await?;
            let f = followers(cluster, l);
            let mut side = vec![l];
            side.extend(f.iter().take((cluster.members.len() - 1) / 2 - 1));
            let t = fx.now();
            let rest = cut_off(cluster, &net, &side);
            hold_with(fx, *ms, |w| w.change_roles_now(4)).await;
            fx.cut(&side, t);
            Ok(Some(format!(
                "leader {l} cut off with {side:?} from {rest:?} while the role changes"
            )))
        }
        Fault::IsolateReplica { ms } => {
            let Some(rid) = cluster.replicas.iter().next().copied() else {
                return Ok(Some("no issuer replica in this run".into()));
            };
            let rest = cut_off(cluster, &net, &[rid]);
            hold_with(fx, *ms, |w| w.revoke_now(4)).await;
            fx.cut(&[rid], t);
            Ok(Some(format!("issuer replica {rid} cut off from {rest:?}")))
        }
        Fault::ClockSkew {
            pick,
            offset_ms,
            ms,
        } => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            let id = members[(*pick % members.len() as u64) as usize];
            let key = "AUTHSEC_TEST_CLOCK_OFFSET_MS";
            let t = fx.now();
            let st = cluster.stop(id)?;
            anyhow::ensure!(st.success(), "node {id} exited with {st} on SIGTERM");
            cluster.set_env(id, key, Some(offset_ms.to_string()));
            cluster.spawn(id)?;
            wait_up(cluster, id).await?;
            back(cluster, id).await;
            fx.down(&[id], t);
            let skewed = fx.now();
            hold_with(fx, *ms, |w| {
                w.revoke_now(6);
                w.change_roles_now(2);
            })
            .await;
            let t = fx.now();
            fx.flog.skews.push((
                Span {
                    node: id,
                    from: skewed,
                    to: t,
                },
                *offset_ms,
            ));
            let st = cluster.stop(id)?;
            cluster.set_env(id, key, None);
            anyhow::ensure!(st.success(), "node {id} exited with {st} on SIGTERM");
            cluster.spawn(id)?;
            wait_up(cluster, id).await?;
            back(cluster, id).await;
            fx.down(&[id], t);
            Ok(Some(format!(
                "node {id} ran with its clock {offset_ms} ms off, then without"
            )))
        }
        Fault::Flapping {
            pick,
            ms,
            period_ms,
        } => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            let mut r = StdRng::seed_from_u64(*pick);
            let end = Instant::now() + Duration::from_millis(*ms);
            let mut flaps = 0;
            while Instant::now() < end {
                let minor = minority(&members, &mut r);
                let t = fx.now();
                cut_off(cluster, &net, &minor);
                hold(*period_ms).await;
                fx.cut(&minor, t);
                net.heal();
                hold(*period_ms / 2).await;
                flaps += 1;
            }
            Ok(Some(format!("{flaps} flaps")))
        }
        Fault::SlowLinks {
            ms,
            delay_ms,
            jitter_ms,
        } => {
            net.all(
                &all_ids(cluster),
                crate::proxy::LinkFault {
                    delay_ms: *delay_ms,
                    jitter_ms: *jitter_ms,
                    ..Default::default()
                },
            );
            hold(*ms).await;
            Ok(None)
        }
        Fault::LossyLinks { ms, per_mille } => {
            let ids = all_ids(cluster);
            net.all(
                &ids,
                crate::proxy::LinkFault {
                    drop_per_mille: *per_mille,
                    ..Default::default()
                },
            );
            hold(*ms).await;
            // Links that drop data mid-stream break connections: no node counts as
            // reliably connected meanwhile, nor until it issues again.
            net.heal();
            for id in &ids {
                if cluster.members.contains(id) || cluster.replicas.contains(id) {
                    back(cluster, *id).await;
                }
            }
            fx.down(&ids, t);
            Ok(None)
        }
        Fault::RollingRestart => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            for id in &members {
                let t = fx.now();
                let st = cluster.stop(*id)?;
                anyhow::ensure!(st.success(), "node {id} exited with {st} on SIGTERM");
                cluster.spawn(*id)?;
                wait_up(cluster, *id).await?;
                back(cluster, *id).await;
                fx.down(&[*id], t);
                cluster
                    .wait_leader(&members, Duration::from_secs(60))
                    .await?;
                wait_acks(oracle, oracle.now(), 3, Duration::from_secs(60)).await?;
            }
            Ok(Some(format!("restarted {members:?} in turn")))
        }
        Fault::WipeRejoin { pick } => {
            let l = leader(cluster).await?;
            // Only a leader that compacted its log must send a snapshot.
            let compacted = cluster.status(l).await?.purged_index > 0;
            let f = followers(cluster, l);
            let target = f[(*pick % f.len() as u64) as usize];
            let t = fx.now();
            change_membership(cluster, None, Some(target)).await?;
            cluster.members.remove(&target);
            cluster.kill9(target)?;
            fx.flog.wipes.push((target, fx.now()));
            cluster.wipe(target)?;
            cluster.unbootstrap(target);
            cluster.prepare(target, None)?;
            cluster.spawn(target)?;
            wait_up(cluster, target).await?;
            let addr = cluster.addr(target)?;
            change_membership(cluster, Some((target, addr)), None).await?;
            cluster.members.insert(target);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let s = cluster.status(target).await?;
                if s.applied_index > 0 && (s.snapshot_index > 0 || !compacted) {
                    back(cluster, target).await;
                    fx.down(&[target], t);
                    return Ok(Some(format!(
                        "node {target} wiped and rejoined; snapshot at index {}",
                        s.snapshot_index
                    )));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {target} holds no snapshot after rejoining: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Fault::DiskFull => {
            let id = tmpfs_node;
            anyhow::ensure!(cluster.members.contains(&id), "node {id} is not a member");
            let dir = cluster.data_dir(id)?.to_path_buf();
            let filler = dir.join("filler");
            let t = fx.now();
            let filled = fill(&filler)?;
            let exit = cluster.wait_exit(id, Duration::from_secs(120));
            let log = cluster.log_tail(id, 30);
            let _ = std::fs::remove_file(&filler);
            let st = exit.with_context(|| format!("node {id} kept running on a full disk"))?;
            anyhow::ensure!(
                !st.success(),
                "node {id} exited with success on a full disk"
            );
            let clear = log
                .lines()
                .rev()
                .find(|l| l.contains("No space left on device") || l.contains("ENOSPC"))
                .ok_or_else(|| {
                    anyhow!("node {id} exited ({st}) without naming the full disk: {log}")
                })?
                .trim()
                .to_owned();
            cluster.spawn(id)?;
            wait_up(cluster, id).await?;
            back(cluster, id).await;
            fx.down(&[id], t);
            Ok(Some(format!(
                "node {id}: disk filled ({} MiB), exited with {st}: {}",
                filled >> 20,
                &clear[..clear.len().min(220)]
            )))
        }
        Fault::Quiet { ms } => {
            hold(*ms).await;
            Ok(None)
        }
        Fault::AddRemoveMember => {
            let spare = cluster
                .reserved_ids()
                .into_iter()
                .find(|id| !cluster.members.contains(id) && !cluster.replicas.contains(id))
                .ok_or_else(|| anyhow!("no spare node id"))?;
            if cluster.nodes.contains_key(&spare) {
                let _ = cluster.kill9(spare);
                cluster.wipe(spare)?;
            }
            cluster.prepare(spare, None)?;
            cluster.spawn(spare)?;
            wait_up(cluster, spare).await?;
            let addr = cluster.addr(spare)?;
            change_membership(cluster, Some((spare, addr)), None).await?;
            cluster.members.insert(spare);
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            cluster
                .wait_leader(&members, Duration::from_secs(60))
                .await?;
            wait_acks(oracle, oracle.now(), 20, Duration::from_secs(60)).await?;
            change_membership(cluster, None, Some(spare)).await?;
            cluster.members.remove(&spare);
            let _ = cluster.stop(spare);
            Ok(Some(format!("node {spare} added as a voter, then removed")))
        }
    }
}

/// Write zeros until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Fill the last partial block too.
    loop {
        match f.write(&chunk[..4096]) {
            Ok(k) if k > 0 => n += k as u64,
            _ => break,
        }
    }
    let _ = f.sync_all();
    Ok(n)
}
