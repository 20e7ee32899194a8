//! The freshness bound (DESIGN.md): how long ago a quorum last acknowledged the leader this
//! node follows. The leader knows its own figure from openraft's `millis_since_quorum_ack` and
//! stamps it on every AppendEntries; a follower or learner adds the time since it last heard
//! from that leader. A node whose figure exceeds `max_staleness` stops issuing credentials, so a
//! deposed leader cut off with a minority, and the followers it still reaches, stop together.
//!
//! Only monotonic clocks are read here; nothing of it enters the replicated state.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::NodeId;

/// gRPC metadata key that carries the leader's quorum-acknowledgement age on AppendEntries.
pub const QUORUM_AGE_HEADER: &str = "authsec-quorum-age-ms";

#[derive(Debug, Default)]
pub struct Freshness {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Inner {
    /// As leader: when the metrics were read and the age they reported.
    leader: Option<(Instant, u64)>,
    /// As follower or learner: when the leader was last heard, what it stamped, and who it is.
    heard: Option<(Instant, u64, NodeId)>,
}

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
        // The data is two plain values: a poisoned lock still holds consistent ones.
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

    /// An AppendEntries from `leader` was accepted (the sender is the leader this node
    /// recognises), stamped with `age_ms`.
    pub fn heard(&self, leader: NodeId, age_ms: u64) {
        self.lock().heard = Some((Instant::now(), age_ms, leader));
    }

    /// How stale this node's view is, and whence; `None` if it has never heard from a leader.
    pub fn age(&self) -> Option<(Duration, Source)> {
        let g = *self.lock();
        if let Some((at, ms)) = g.leader {
            return Some((
                Duration::from_millis(ms).saturating_add(at.elapsed()),
                Source::Leader,
            ));
        }
        g.heard.map(|(at, ms, leader)| {
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

    #[test]
    fn unknown_until_heard() {
        let f = Freshness::default();
        assert!(f.age().is_none());
        assert!(f.leader_age_ms().is_none());
    }

    #[test]
    fn a_follower_adds_its_own_wait_to_the_stamp() {
        let f = Freshness::default();
        f.heard(3, 1_000);
        let (age, src) = f.age().expect("heard");
        assert_eq!(src, Source::Follower { leader: 3 });
        assert!(age >= Duration::from_millis(1_000));
        assert!(age < Duration::from_millis(60_000));
    }

    #[test]
    fn leading_takes_precedence_and_stepping_down_clears_it() {
        let f = Freshness::default();
        f.heard(3, 5);
        f.observe_leader(Some(40_000));
        let (age, src) = f.age().expect("leads");
        assert_eq!(src, Source::Leader);
        assert!(age >= Duration::from_millis(40_000));
        assert!(f.leader_age_ms().is_some_and(|ms| ms >= 40_000));
        f.observe_leader(None);
        assert_eq!(f.age().map(|a| a.1), Some(Source::Follower { leader: 3 }));
        assert!(f.leader_age_ms().is_none());
    }
}
