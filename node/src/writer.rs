//! The write path. Any node takes a write: the leader's [`Proposer`] stamps commands with the
//! time and a random seed and packs many into one log entry (group commit); a follower forwards
//! the write to the leader over the peer transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authsec_api::ApiError;
use authsec_domain::command::Command;
use authsec_domain::{Actor, Batch, Outcome, Proposal, Stamp};
use authsec_raft::{
    ForwardError, ForwardRequest, ForwardResponse, LeaderHandler, PeerClient, Raft, Transport,
};
use openraft::error::{ClientWriteError, RaftError};
use rand::RngCore;

use crate::planted::PlantedBug;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Proposals the leader keeps queued before callers wait.
const QUEUE_DEPTH: usize = 8192;
/// Log entries in flight at once from this leader (and forward batches per leader from a
/// follower). openraft 0.9 syncs appends one at a time, so more in flight only makes entries
/// smaller: while one commits, the next fills up.
const BATCHES_IN_FLIGHT: usize = 1;
/// How long a write may take end to end before the caller is told it is unavailable.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct WriteMetrics {
    pub batches: AtomicU64,
    pub proposals: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub forwarded: AtomicU64,
}

type Reply = oneshot::Sender<Result<(u64, Outcome), ForwardError>>;

struct Pending {
    actor: Actor,
    command: Command,
    reply: Reply,
}

/// The leader side: batches and proposes.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("command", &self.command.name())
            .finish_non_exhaustive()
    }
}

/// A cheap upper estimate of a command's encoded size, to keep entries under the batch bound.
fn approx_bytes(c: &Command) -> usize {
    64 + match c {
        Command::RegisterClient(r) => {
            r.display_name.len()
                + r.description.len()
                + r.owner.len()
                + r.default_audience.len()
                + r.allowed_scopes
                    .iter()
                    .chain(&r.default_scopes)
                    .map(|s| s.as_str().len() + 2)
                    .sum::<usize>()
                + 140
        }
        Command::UpdateClient { patch, .. } => {
            [
                &patch.display_name,
                &patch.description,
                &patch.owner,
                &patch.default_audience,
            ]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>()
                + patch
                    .allowed_scopes
                    .iter()
                    .chain(&patch.default_scopes)
                    .flatten()
                    .map(|s| s.as_str().len() + 2)
                    .sum::<usize>()
                + 140
        }
        Command::RecordNodeMember { addr, .. } => addr.len(),
        _ => 160,
    }
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// The leader this node knows of, with its address. Borrows the metrics; no copy on the hot path.
pub(crate) fn leader_hint(raft: &Raft) -> Option<(u64, String)> {
    let rx = raft.metrics();
    let m = rx.borrow();
    let id = m.current_leader?;
    // A node that just joined can hear from the leader before it has applied the membership
    // that names the leader's address: no address, no hint (the caller waits for one).
    let addr = m
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())?;
    Some((id, addr))
}

impl Proposer {
    pub fn start(raft: Raft, metrics: Arc<WriteMetrics>, bug: PlantedBug) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, rx, metrics, bug));
        Self { tx }
    }

    /// Queue a command and wait for its committed outcome, at most `ttl`. A leader cut off from
    /// its quorum never commits, so the wait is bounded: past it the outcome is unknown.
    pub async fn propose(
        &self,
        actor: Actor,
        command: Command,
        ttl: Duration,
    ) -> Result<(u64, Outcome), ForwardError> {
        tokio::time::timeout(ttl, self.propose_unbounded(actor, command))
            .await
            .unwrap_or_else(|_| {
                Err(ForwardError::Unavailable(format!(
                    "not committed within {ttl:?}; the write's outcome is unknown"
                )))
            })
    }

    async fn propose_unbounded(
        &self,
        actor: Actor,
        command: Command,
    ) -> Result<(u64, Outcome), ForwardError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                actor,
                command,
                reply,
            })
            .await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    metrics: Arc<WriteMetrics>,
    bug: PlantedBug,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut batch_no = 0u64;
    while let Some(first) = rx.recv().await {
        batch_no += 1;
        // Wait for a slot first: while we wait, more writes queue up and share the next entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = approx_bytes(&first.command);
        let mut pending = vec![first];
        while pending.len() < authsec_domain::limits::PROPOSALS_PER_BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += approx_bytes(&p.command);
                    pending.push(p);
                    if bytes >= authsec_domain::limits::BATCH_BYTES_MAX / 2 {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let time_ms = now_ms();
        let mut replies = Vec::with_capacity(pending.len());
        let mut proposals = Vec::with_capacity(pending.len());
        let mut rng = rand::thread_rng();
        for p in pending {
            let mut seed = [0u8; 16];
            rng.fill_bytes(&mut seed);
            proposals.push(Proposal {
                stamp: Stamp { time_ms, seed },
                actor: p.actor,
                command: p.command,
            });
            replies.push(p.reply);
        }
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        metrics
            .proposals
            .fetch_add(proposals.len() as u64, Ordering::Relaxed);
        let raft = raft.clone();
        let metrics = metrics.clone();
        // Planted defects (debug builds only): answer before the entry is committed.
        let hold = match bug {
            PlantedBug::AckBeforeSync => Some(Duration::from_millis(200)),
            PlantedBug::ReorderWrites if batch_no.is_multiple_of(10) => {
                Some(Duration::from_millis(300))
            }
            _ => None,
        };
        let mut permit = Some(permit);
        if hold.is_some() {
            permit = None;
            for reply in replies.drain(..) {
                let _ = reply.send(Ok((
                    0,
                    Ok(authsec_domain::Applied {
                        sequences: None,
                        generated_client_id: None,
                    }),
                )));
            }
        }
        tokio::spawn(async move {
            if let Some(hold) = hold {
                tokio::time::sleep(hold).await;
            }
            let res = write_bounded(&raft, Batch { proposals }, &mut permit).await;
            drop(permit);
            let res = match res {
                Some(r) => r,
                None => {
                    metrics
                        .failed
                        .fetch_add(replies.len() as u64, Ordering::Relaxed);
                    let err = ForwardError::Unavailable(format!(
                        "not committed within {WRITE_TIMEOUT:?}; the write's outcome is unknown"
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                    return;
                }
            };
            match res {
                Ok(resp) => {
                    let log_index = resp.data.log_index;
                    let outcomes = resp.data.outcomes;
                    debug_assert!(replies.is_empty() || outcomes.len() == replies.len());
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        if outcome.is_ok() {
                            metrics.accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = reply.send(Ok((log_index, outcome)));
                    }
                }
                Err(e) => {
                    let err = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            ForwardError::NotLeader {
                                leader: f.leader_id.map(|id| {
                                    (id, f.leader_node.map(|n| n.addr).unwrap_or_default())
                                }),
                            }
                        }
                        other => {
                            metrics
                                .failed
                                .fetch_add(replies.len() as u64, Ordering::Relaxed);
                            ForwardError::Unavailable(format!(
                                "the write's outcome is unknown: {other}"
                            ))
                        }
                    };
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// `client_write`, bounded. openraft 0.9 can leave a write unanswered forever: an entry a
/// node appended in a leadership it lost at once, then covered by a snapshot from the new
/// leader, keeps its responder but is never applied here. So the in-flight slot is released
/// as soon as this node's leadership (its term) ends, and the caller is answered "unknown"
/// after [`WRITE_TIMEOUT`]. Found by the chaos suite (a leader kill loop).
async fn write_bounded(
    raft: &Raft,
    batch: Batch,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Option<
    Result<
        openraft::raft::ClientWriteResponse<authsec_raft::TypeConfig>,
        RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>,
    >,
> {
    let (me, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.id, m.current_term)
    };
    let mut metrics = raft.metrics();
    let lost = metrics.wait_for(move |m| m.current_leader != Some(me) || m.current_term != term);
    tokio::pin!(lost);
    let write = raft.client_write(batch);
    tokio::pin!(write);
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut write => return Some(r),
            _ = &mut lost, if permit.is_some() => {
                // The next leadership here must not wait on this entry.
                *permit = None;
            }
            _ = &mut deadline => return None,
        }
    }
}

type ForwardReply = oneshot::Sender<Result<ForwardResponse, ForwardError>>;

/// The follower side of forwarding: writes bound for one leader queue here and travel in
/// batches, one gRPC call for many writes, a few calls in flight.
#[derive(Debug, Clone)]
struct Forwarder {
    tx: mpsc::Sender<(ForwardRequest, ForwardReply)>,
}

impl Forwarder {
    fn start(peer: PeerClient) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ForwardRequest, ForwardReply)>(QUEUE_DEPTH);
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = rx.recv().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < authsec_domain::limits::PROPOSALS_PER_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let peer = peer.clone();
                tokio::spawn(async move {
                    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let res = peer.forward(&reqs, WRITE_TIMEOUT).await;
                    drop(permit);
                    match res {
                        Ok(results) => {
                            for (reply, r) in replies.into_iter().zip(results) {
                                let _ = reply.send(r);
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { tx }
    }

    async fn forward(
        &self,
        req: ForwardRequest,
        ttl: Duration,
    ) -> Result<ForwardResponse, ForwardError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((req, reply))
            .await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?;
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ForwardError::Unavailable(
                "the node is shutting down".into(),
            )),
            Err(_) => Err(ForwardError::Unavailable(format!(
                "the leader did not answer within {ttl:?}"
            ))),
        }
    }
}

/// A committed write as the caller sees it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub log_index: u64,
    pub leader_id: u64,
    pub outcome: Outcome,
}

/// Routes a write to the leader, wherever it is, and waits for its committed outcome.
#[derive(Clone)]
pub struct Writer {
    node_id: u64,
    raft: Raft,
    proposer: Proposer,
    transport: Transport,
    peers: Arc<Mutex<HashMap<(u64, String), PeerClient>>>,
    forwarders: Arc<Mutex<HashMap<(u64, String), Forwarder>>>,
    metrics: Arc<WriteMetrics>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Writer {
    pub fn new(
        node_id: u64,
        raft: Raft,
        proposer: Proposer,
        transport: Transport,
        metrics: Arc<WriteMetrics>,
    ) -> Self {
        Self {
            node_id,
            raft,
            proposer,
            transport,
            peers: Arc::default(),
            forwarders: Arc::default(),
            metrics,
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// How this node dials its peers.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn peer(&self, id: u64, addr: &str) -> PeerClient {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry((id, addr.to_owned()))
            .or_insert_with(|| PeerClient::new(self.node_id, id, addr, &self.transport))
            .clone()
    }

    fn forwarder(&self, id: u64, addr: &str) -> Forwarder {
        let mut f = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        f.entry((id, addr.to_owned()))
            .or_insert_with(|| Forwarder::start(self.peer(id, addr)))
            .clone()
    }

    /// Wait (bounded) until some leader is known; return it.
    async fn known_leader(&self, deadline: Instant, not: Option<u64>) -> Option<(u64, String)> {
        if let Some(hint) = leader_hint(&self.raft).filter(|(id, _)| Some(*id) != not) {
            return Some(hint);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait = self
            .raft
            .wait(Some(remaining.min(Duration::from_millis(3000))));
        let _ = wait
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|l| {
                        Some(l) != not && m.membership_config.membership().get_node(&l).is_some()
                    })
                },
                "a leader with a known address",
            )
            .await;
        leader_hint(&self.raft)
    }

    /// Submit a command from `actor` and wait until it is committed and applied.
    pub async fn submit(&self, actor: Actor, command: Command) -> Result<Committed, ApiError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut not_leader: Option<u64> = None;
        loop {
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable {
                    reason: "no leader accepted the write in time; it was not proposed".into(),
                    leader: leader_hint(&self.raft),
                });
            }
            let Some((leader, addr)) = self.known_leader(deadline, not_leader).await else {
                continue;
            };
            let res = if leader == self.node_id {
                let remaining = deadline.saturating_duration_since(Instant::now());
                self.proposer
                    .propose(actor.clone(), command.clone(), remaining)
                    .await
                    .map(|(log_index, outcome)| ForwardResponse {
                        log_index,
                        leader_id: leader,
                        outcome,
                    })
            } else {
                self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                let remaining = deadline.saturating_duration_since(Instant::now());
                let forwarder = self.forwarder(leader, &addr);
                let forwarded = forwarder.forward(
                    ForwardRequest {
                        actor: actor.clone(),
                        command: command.clone(),
                    },
                    remaining,
                );
                // A leader that this node sees replaced (cut off, say) may never answer: tell
                // the caller as soon as another leader is known rather than at the deadline.
                // The write's outcome is unknown either way (the old leader may have
                // replicated it), so it is not retried here.
                let wait = self.raft.wait(Some(remaining));
                let replaced = wait.metrics(
                    move |m| m.current_leader.is_some_and(|l| l != leader),
                    "another leader",
                );
                tokio::select! {
                    r = forwarded => r,
                    Ok(m) = replaced => Err(ForwardError::Unavailable(format!(
                        "node {leader} stopped leading (node {} leads now) while the write was in flight to it; its outcome is unknown: read before retrying",
                        m.current_leader.unwrap_or_default()
                    ))),
                }
            };
            match res {
                Ok(r) => {
                    return Ok(Committed {
                        log_index: r.log_index,
                        leader_id: r.leader_id,
                        outcome: r.outcome,
                    })
                }
                // Nothing was proposed: safe to try the new leader.
                Err(ForwardError::NotLeader { .. }) => not_leader = Some(leader),
                Err(ForwardError::Invalid(reason)) => return Err(ApiError::Internal(reason)),
                Err(ForwardError::Unavailable(reason)) => {
                    return Err(ApiError::Unavailable {
                        reason,
                        leader: Some((leader, addr)),
                    })
                }
            }
        }
    }

    /// Wait until this node has applied everything the leader had committed when asked:
    /// a linearizable read point.
    pub async fn linearize(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let (leader, addr) =
            self.known_leader(deadline, None)
                .await
                .ok_or_else(|| ApiError::Unavailable {
                    reason: "no leader is known, so a linearizable read cannot be served".into(),
                    leader: None,
                })?;
        let index = if leader == self.node_id {
            self.read_index_local()
                .await
                .map_err(|e| ApiError::Unavailable {
                    reason: e.to_string(),
                    leader: None,
                })?
        } else {
            self.peer(leader, &addr)
                .read_index(WRITE_TIMEOUT)
                .await
                .map_err(|e| ApiError::Unavailable {
                    reason: e.to_string(),
                    leader: Some((leader, addr.clone())),
                })?
        };
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| ApiError::Unavailable {
                reason: format!("could not catch up to the read index: {e}"),
                leader: None,
            })?;
        Ok(())
    }

    async fn read_index_local(&self) -> Result<u64, ForwardError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(_)) => Err(ForwardError::NotLeader {
                leader: leader_hint(&self.raft),
            }),
            Err(e) => Err(ForwardError::Unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl LeaderHandler for Writer {
    async fn forward(
        &self,
        reqs: Vec<ForwardRequest>,
    ) -> Vec<Result<ForwardResponse, ForwardError>> {
        if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
            let err = ForwardError::NotLeader {
                leader: leader_hint(&self.raft),
            };
            return reqs.iter().map(|_| Err(err.clone())).collect();
        }
        // Queue them all at once so they share log entries with each other and local writes.
        let node_id = self.node_id;
        futures::future::join_all(reqs.into_iter().map(|r| {
            let proposer = self.proposer.clone();
            async move {
                let (log_index, outcome) =
                    proposer.propose(r.actor, r.command, WRITE_TIMEOUT).await?;
                Ok(ForwardResponse {
                    log_index,
                    leader_id: node_id,
                    outcome,
                })
            }
        }))
        .await
    }

    async fn read_index(&self) -> Result<u64, ForwardError> {
        self.read_index_local().await
    }
}
