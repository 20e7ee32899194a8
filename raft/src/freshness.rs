//! The freshness bound (DESIGN.md): how old this node's view of the log is. The leader knows its
//! own figure from openraft's `millis_since_quorum_ack` and stamps it on every AppendEntries,
//! which also carries the leader's commit index. A follower or learner is as fresh as the newest
//! stamp whose commit index it has *applied*: its projections then hold everything the cluster
//! had committed as of `received - stamp`, and its figure is the stamp plus the time since. A
//! node that hears from a leader but still replays a backlog (a restart, a rejoin, a slow disk)
//! is as stale as the backlog, not as fresh as the heartbeat. A node whose figure exceeds
//! `max_staleness` stops issuing credentials, so a deposed leader cut off with a minority, the
//! followers it still reaches, and a node catching up all stop until they are current.
//!
//! Only monotonic clocks are read here; nothing of it enters the replicated state.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::NodeId;

/// gRPC metadata key that carries the leader's quorum-acknowledgement age on AppendEntries.
pub const QUORUM_AGE_HEADER: &str = "authsec-quorum-age-ms";
/// gRPC metadata key that carries the leader's own monotonic clock (ms) when it sent the
/// AppendEntries: not comparable with the receiver's clock, but differences between messages
/// are, so a message that spent longer in flight than the fastest recent one is seen as older
/// by that much.
pub const LEADER_CLOCK_HEADER: &str = "authsec-leader-clock-ms";
/// gRPC metadata key that names the process whose clock [`LEADER_CLOCK_HEADER`] reads: a
/// number drawn when the process started. A leader restarted in place leads again in the
/// same term (openraft restores a node whose persisted vote is a committed vote for itself as
/// leader at once), with a clock that starts over; without this, its followers took the jump
/// for a message held in flight as long as the old process had run, and refused to issue for
/// up to a minute after a rolling restart.
pub const LEADER_INCARNATION_HEADER: &str = "authsec-leader-incarnation";

/// How long samples of the leader's clock against this node's are kept for the fastest
/// delivery (short enough that the two clocks' drift within it is a few milliseconds).
const DELAY_WINDOW: Duration = Duration::from_secs(60);

/// Stamps kept while this node's applied index is behind them (about 12 s of heartbeats at
/// 50 ms); when full the oldest goes, which only makes the node look staler until it catches
/// up.
const PENDING_MAX: usize = 256;

#[derive(Debug)]
pub struct Freshness {
    inner: Mutex<Inner>,
    /// This process's clock origin, for [`Freshness::clock_ms`].
    epoch: Instant,
    /// Names this process's clock (see [`LEADER_INCARNATION_HEADER`]).
    incarnation: u64,
}

impl Default for Freshness {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Self {
            inner: Mutex::default(),
            epoch: Instant::now(),
            // std's `RandomState` is keyed from the operating system's random source once
            // per process: a number no earlier run of this node drew (it only has to differ
            // from theirs; nothing secret rests on it).
            incarnation: std::collections::hash_map::RandomState::new().hash_one(0u8),
        }
    }
}

/// A leader's clock as it stamped an AppendEntries: which process's clock, and its reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderClock {
    /// 0 from a sender that does not name it (an older version).
    pub incarnation: u64,
    pub ms: u64,
}

#[derive(Debug, Default, Clone)]
struct Inner {
    /// As leader: when the metrics were read and the age they reported.
    leader: Option<(Instant, u64)>,
    /// As follower or learner: the newest stamp this node's applied state covers (when it
    /// was received, its age, who sent it).
    covered: Option<(Instant, u64, NodeId)>,
    /// Stamps whose commit index this node has not applied yet: (received, age, leader,
    /// leader's commit index), oldest first.
    pending: VecDeque<(Instant, u64, NodeId, u64)>,
    /// This node's applied index, as last observed.
    applied: u64,
    /// Per leader clock heard lately (the one heard last at the back): recent (received,
    /// receive clock minus the leader's send clock) samples, oldest first; their minimum is
    /// the fastest delivery seen lately from that clock.
    clocks: VecDeque<(ClockKey, VecDeque<(Instant, i128)>)>,
}

/// Whose clock samples are of: (leader, term, the leader's process). A leader that restarts
/// restarts its clock, and may lead again in the same term; a message its old process sent
/// can still arrive after the new one's, and is judged against the old clock's samples.
type ClockKey = (NodeId, u64, u64);

/// Leader clocks whose samples are kept (the current one and the few before it).
const CLOCKS_MAX: usize = 4;

/// Where a node's freshness figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node leads; the age is its own.
    Leader,
    /// The age the leader stamped plus the time since this node heard it.
    Follower { leader: NodeId },
}

impl Freshness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data is plain values: a poisoned lock still holds consistent ones.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From the leader's metrics: `Some(age)` while this node leads, `None` when it does not.
    pub fn observe_leader(&self, millis_since_quorum_ack: Option<u64>) {
        self.lock().leader = millis_since_quorum_ack.map(|ms| (Instant::now(), ms));
    }

    /// The age to stamp on an outgoing AppendEntries (none if this node does not lead).
    pub fn leader_age_ms(&self) -> Option<u64> {
        let g = self.lock();
        g.leader
            .map(|(at, ms)| ms.saturating_add(at.elapsed().as_millis() as u64))
    }

    /// This process's monotonic clock in ms, stamped by a leader on what it sends.
    pub fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// What a leader stamps on an AppendEntries as its clock: this process and its reading.
    pub fn leader_clock(&self) -> LeaderClock {
        LeaderClock {
            incarnation: self.incarnation,
            ms: self.clock_ms(),
        }
    }

    /// An AppendEntries from `leader` was accepted (the sender is the leader this node
    /// recognises), stamped with `age_ms`, carrying the leader's commit index `committed`.
    pub fn heard(&self, leader: NodeId, age_ms: u64, committed: u64) {
        self.heard_at(leader, 0, age_ms, committed, true, None);
    }

    /// As [`Freshness::heard`], with the leader's clock when it sent the message. A message
    /// that was held in flight (a partition that healed, a stalled connection) arrives with
    /// the age it had when it was sent; the time it spent in flight beyond the fastest recent
    /// delivery from the same leader is added to it, so a stale message never makes a node
    /// look fresh.
    ///
    /// `own_term` says whether the commit index the message carries is of an entry of the
    /// sender's own term. Until a new leader commits such an entry (its first, blank one), its
    /// commit index can lag what its predecessor had committed and clients had seen
    /// acknowledged, so its stamps say nothing of this node's view and are not counted: the
    /// first credentials soak caught an issuer replica minting on a view 1.8 s behind an
    /// acknowledged write, fresh by the stamps of a leader elected 1.8 s before.
    pub fn heard_at(
        &self,
        leader: NodeId,
        term: u64,
        age_ms: u64,
        committed: u64,
        own_term: bool,
        sent: Option<LeaderClock>,
    ) {
        let now = Instant::now();
        let received_ms = self.clock_ms();
        let mut g = self.lock();
        let age_ms = match sent {
            Some(LeaderClock {
                incarnation,
                ms: sent,
            }) => {
                let key = (leader, term, incarnation);
                let mut samples = match g.clocks.iter().position(|(k, _)| *k == key) {
                    Some(i) => g.clocks.remove(i).map(|c| c.1).unwrap_or_default(),
                    None => VecDeque::new(),
                };
                while samples
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > DELAY_WINDOW)
                {
                    samples.pop_front();
                }
                let offset = i128::from(received_ms) - i128::from(sent);
                // Keep the window's minima only: a sample above a newer one never is one.
                while samples.back().is_some_and(|(_, o)| *o >= offset) {
                    samples.pop_back();
                }
                samples.push_back((now, offset));
                let fastest = samples.front().map_or(offset, |(_, o)| *o);
                let late = u64::try_from(offset - fastest).unwrap_or(0);
                if g.clocks.len() >= CLOCKS_MAX {
                    g.clocks.pop_front();
                }
                g.clocks.push_back((key, samples));
                age_ms.saturating_add(late)
            }
            None => age_ms,
        };
        if !own_term {
            return;
        }
        if committed <= g.applied {
            g.covered = Some((now, age_ms, leader));
            g.pending.clear();
            return;
        }
        if g.pending.len() >= PENDING_MAX {
            g.pending.pop_front();
        }
        g.pending.push_back((now, age_ms, leader, committed));
    }

    /// This node has applied the log through `index`.
    pub fn applied(&self, index: u64) {
        let mut g = self.lock();
        if index <= g.applied {
            return;
        }
        g.applied = index;
        while g.pending.front().is_some_and(|p| p.3 <= index) {
            if let Some((at, ms, leader, _)) = g.pending.pop_front() {
                g.covered = Some((at, ms, leader));
            }
        }
    }

    /// How stale this node's view is, and whence; `None` if it has never applied what a
    /// leader had committed when it heard from one.
    pub fn age(&self) -> Option<(Duration, Source)> {
        let g = self.lock();
        if let Some((at, ms)) = g.leader {
            return Some((
                Duration::from_millis(ms).saturating_add(at.elapsed()),
                Source::Leader,
            ));
        }
        g.covered.map(|(at, ms, leader)| {
            (
                Duration::from_millis(ms).saturating_add(at.elapsed()),
                Source::Follower { leader },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new leader's stamps count only once its commit index is of its own term.
    #[test]
    fn a_new_leader_counts_once_it_committed_in_its_own_term() {
        let f = Freshness::default();
        f.heard(1, 0, 50);
        f.applied(50);
        assert!(matches!(f.age(), Some((_, Source::Follower { leader: 1 }))));
        // Leader 2, elected in term 8, still carries its predecessor's commit index.
        f.heard_at(2, 8, 0, 50, false, None);
        f.heard_at(2, 8, 0, 50, false, None);
        assert!(
            matches!(f.age(), Some((_, Source::Follower { leader: 1 }))),
            "the old stamp ages on: {:?}",
            f.age()
        );
        // Its blank entry committed: counted once applied.
        f.heard_at(2, 8, 0, 52, true, None);
        assert!(matches!(f.age(), Some((_, Source::Follower { leader: 1 }))));
        f.applied(52);
        assert!(matches!(f.age(), Some((_, Source::Follower { leader: 2 }))));
    }

    #[test]
    fn unknown_until_heard() {
        let f = Freshness::default();
        assert!(f.age().is_none());
        assert!(f.leader_age_ms().is_none());
    }

    #[test]
    fn a_follower_adds_its_own_wait_to_the_stamp() {
        let f = Freshness::default();
        f.heard(3, 1_000, 0);
        let (age, src) = f.age().expect("heard");
        assert_eq!(src, Source::Follower { leader: 3 });
        assert!(age >= Duration::from_millis(1_000));
        assert!(age < Duration::from_millis(60_000));
    }

    #[test]
    fn leading_takes_precedence_and_stepping_down_clears_it() {
        let f = Freshness::default();
        f.heard(3, 5, 0);
        f.observe_leader(Some(40_000));
        let (age, src) = f.age().expect("leads");
        assert_eq!(src, Source::Leader);
        assert!(age >= Duration::from_millis(40_000));
        assert!(f.leader_age_ms().is_some_and(|ms| ms >= 40_000));
        f.observe_leader(None);
        assert_eq!(f.age().map(|a| a.1), Some(Source::Follower { leader: 3 }));
        assert!(f.leader_age_ms().is_none());
    }

    #[test]
    fn a_node_behind_the_leaders_commit_is_as_stale_as_its_backlog() {
        let f = Freshness::default();
        f.applied(10);
        // Heard, but the leader had committed past what this node applied: not fresh yet.
        f.heard(2, 0, 50);
        f.heard(2, 0, 60);
        assert!(
            f.age().is_none(),
            "a heartbeat alone does not make a lagging node fresh"
        );
        // Caught up to the first stamp: fresh as of it, not of the newer one.
        f.applied(55);
        assert_eq!(f.age().map(|a| a.1), Some(Source::Follower { leader: 2 }));
        f.applied(60);
        f.heard(2, 7, 60);
        let (age, _) = f.age().expect("current");
        assert!(age >= Duration::from_millis(7) && age < Duration::from_millis(60_000));
    }

    #[test]
    fn a_message_held_in_flight_is_as_old_as_its_delay() {
        let f = Freshness::default();
        let clock = |ms| Some(LeaderClock { incarnation: 7, ms });
        // Two prompt deliveries from leader 2 in term 5: its clock ran 10 s ahead of ours.
        let now = f.clock_ms() + 10_000;
        f.heard_at(2, 5, 0, 0, true, clock(now));
        f.heard_at(2, 5, 0, 0, true, clock(now));
        let (age, _) = f.age().expect("current");
        assert!(age < Duration::from_millis(1_000), "{age:?}");
        // A heartbeat the leader sent 5 s before it arrived (held by a partition).
        f.heard_at(2, 5, 0, 0, true, clock(now - 5_000));
        let (age, _) = f.age().expect("heard");
        assert!(
            age >= Duration::from_millis(5_000),
            "the delay counts: {age:?}"
        );
        // A new term (another leader, or this one elected again) starts over.
        f.heard_at(2, 6, 0, 0, true, clock(3));
        let (age, _) = f.age().expect("current");
        assert!(age < Duration::from_millis(1_000), "{age:?}");
    }

    /// The second credentials soak after the outbox change: a rolling restart restarted the
    /// leader, which openraft restored as leader in the same term with a clock starting at
    /// zero; every follower read the jump as 24.6 s in flight and refused to issue for 35 s.
    #[test]
    fn a_leader_restarted_in_its_term_is_not_taken_for_a_late_one() {
        let f = Freshness::default();
        // Leader 2 in term 5 had run for 24 s: its clock read 24 s ahead of ours.
        let c0 = f.clock_ms();
        let old = LeaderClock {
            incarnation: 11,
            ms: c0 + 24_000,
        };
        f.heard_at(2, 5, 0, 0, true, Some(old));
        assert!(f.age().is_some_and(|a| a.0 < Duration::from_millis(1_000)));
        // Restarted, it leads on in term 5 with a new process and a clock near zero.
        let new = LeaderClock {
            incarnation: 12,
            ms: 40,
        };
        f.heard_at(2, 5, 0, 0, true, Some(new));
        let (age, src) = f.age().expect("current");
        assert_eq!(src, Source::Follower { leader: 2 });
        assert!(age < Duration::from_millis(1_000), "{age:?}");
        // A message the old process sent 3 s before it arrived (held in flight across the
        // restart) is judged against the old clock's samples: as old as its delay.
        f.heard_at(
            2,
            5,
            0,
            0,
            true,
            Some(LeaderClock {
                ms: old.ms + (f.clock_ms() - c0) - 3_000,
                ..old
            }),
        );
        let (age, _) = f.age().expect("heard");
        assert!(
            age >= Duration::from_millis(3_000),
            "the delay counts: {age:?}"
        );
        // And the new process's next message is as prompt as before.
        f.heard_at(2, 5, 0, 0, true, Some(new));
        assert!(f.age().is_some_and(|a| a.0 < Duration::from_millis(1_000)));
    }

    #[test]
    fn each_process_draws_its_own_incarnation() {
        assert_ne!(
            Freshness::default().leader_clock().incarnation,
            Freshness::default().leader_clock().incarnation
        );
    }
}
