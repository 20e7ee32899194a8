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

use crate::checkers::{self, History, Violation};
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
    pub faults: Vec<(Duration, String)>,
    pub violations: Vec<Violation>,
    /// Share of one-second windows in which at least one write was acknowledged.
    pub availability: f64,
    /// From each leader kill to the first write acknowledged by another leader.
    pub failovers: Vec<Duration>,
    pub records: usize,
    pub notes: Vec<String>,
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
                    let s = Scenario::ALL[rng.gen_range(0..Scenario::ALL.len())];
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
        summary.faults.push((at, fault.to_string()));
        match inject(&mut cluster, &oracle, &fault, &mut kills, tmpfs_node).await {
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
    summary.attempted = 0;
    if let Some(net) = &cluster.net {
        net.heal();
    }
    let members: Vec<u64> = cluster.members.iter().copied().collect();
    for id in &members {
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
        let mut moved = false;
        for id in &members {
            let now = cluster.status(*id).await?;
            moved |= h.statuses.get(id).map(|s| s.applied_index) != Some(now.applied_index);
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
    summary.violations.extend(checkers::check_all(&h));
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

/// Apply one fault and undo it (the caller heals the network). Returns a note for the report.
async fn inject(
    cluster: &mut Cluster,
    oracle: &Oracle,
    fault: &Fault,
    kills: &mut Vec<(Duration, u64)>,
    tmpfs_node: u64,
) -> anyhow::Result<Option<String>> {
    let net = cluster.net()?.clone();
    match fault {
        Fault::KillLeader { down_ms } => {
            let l = leader(cluster).await?;
            kills.push((oracle.now(), l));
            cluster.kill9(l)?;
            hold(*down_ms).await;
            cluster.spawn(l)?;
            Ok(Some(format!("killed leader {l}")))
        }
        Fault::PauseLeader { ms } => {
            let l = leader(cluster).await?;
            cluster.pause(l)?;
            hold(*ms).await;
            cluster.resume(l)?;
            Ok(Some(format!("paused leader {l}")))
        }
        Fault::IsolateLeader { ms } => {
            let l = leader(cluster).await?;
            let others: Vec<u64> = all_ids(cluster).into_iter().filter(|x| *x != l).collect();
            net.partition(&[l], &others);
            hold(*ms).await;
            Ok(Some(format!("isolated leader {l}")))
        }
        Fault::PartitionMinority { pick, ms } => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            let mut r = StdRng::seed_from_u64(*pick);
            let minor = minority(&members, &mut r);
            let rest: Vec<u64> = all_ids(cluster)
                .into_iter()
                .filter(|x| !minor.contains(x))
                .collect();
            net.partition(&minor, &rest);
            hold(*ms).await;
            Ok(Some(format!("partitioned {minor:?} from {rest:?}")))
        }
        Fault::OneWayFromLeader { pick, ms } => {
            let l = leader(cluster).await?;
            let f = followers(cluster, l);
            let target = f[(*pick % f.len() as u64) as usize];
            net.one_way(&[l], &[target]);
            hold(*ms).await;
            Ok(Some(format!("leader {l} -/-> {target}")))
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
                let rest: Vec<u64> = all_ids(cluster)
                    .into_iter()
                    .filter(|x| !minor.contains(x))
                    .collect();
                net.partition(&minor, &rest);
                hold(*period_ms).await;
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
            net.all(
                &all_ids(cluster),
                crate::proxy::LinkFault {
                    drop_per_mille: *per_mille,
                    ..Default::default()
                },
            );
            hold(*ms).await;
            Ok(None)
        }
        Fault::RollingRestart => {
            let members: Vec<u64> = cluster.members.iter().copied().collect();
            for id in &members {
                let st = cluster.stop(*id)?;
                anyhow::ensure!(st.success(), "node {id} exited with {st} on SIGTERM");
                cluster.spawn(*id)?;
                wait_up(cluster, *id).await?;
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
            change_membership(cluster, None, Some(target)).await?;
            cluster.members.remove(&target);
            cluster.kill9(target)?;
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
                .find(|id| !cluster.members.contains(id))
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
