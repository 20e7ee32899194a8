//! Abuse limits of the token endpoint: a replay cache of client-assertion `jti`s, and a cap on
//! failed client authentications per client id and per source address. Both are bounded in
//! memory and per node (so a replay is refused on the node that saw the first use; RFC 7523
//! asks no more, and assertions live minutes).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Entries each structure keeps at most; beyond it the oldest go (replay: the soonest to
/// expire, which a short `exp - iat` bound keeps short-lived anyway).
pub const ENTRIES_MAX: usize = 200_000;

/// Seen assertion ids until they expire.
#[derive(Debug, Default)]
pub struct ReplayCache {
    by_id: HashMap<String, u64>,
    by_exp: BTreeMap<(u64, String), ()>,
}

impl ReplayCache {
    /// Remember `(issuer, jti)` until `exp_s`; `false` if it was already seen and unexpired.
    pub fn first_use(&mut self, issuer: &str, jti: &str, exp_s: u64, now_s: u64) -> bool {
        while let Some(((exp, _), ())) = self.by_exp.first_key_value() {
            if *exp > now_s && self.by_id.len() < ENTRIES_MAX {
                break;
            }
            let Some(((_, id), ())) = self.by_exp.pop_first() else {
                break;
            };
            self.by_id.remove(&id);
        }
        let id = format!("{issuer}\u{0}{jti}");
        if self.by_id.contains_key(&id) {
            return false;
        }
        self.by_id.insert(id.clone(), exp_s);
        self.by_exp.insert((exp_s, id), ());
        true
    }
}

/// Failed authentications per key in the current minute.
#[derive(Debug)]
pub struct FailureLimiter {
    per_minute: u32,
    windows: HashMap<String, (Instant, u32)>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: HashMap::new(),
        }
    }

    /// Seconds to wait before `key` may try again, if it is over its limit.
    pub fn blocked(&self, key: &str, now: Instant) -> Option<u64> {
        let (start, n) = self.windows.get(key)?;
        let left = WINDOW
            .checked_sub(now.duration_since(*start))
            .filter(|l| !l.is_zero())?;
        (*n >= self.per_minute).then(|| left.as_secs().max(1))
    }

    pub fn failed(&mut self, key: &str, now: Instant) {
        if self.windows.len() >= ENTRIES_MAX {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.windows.len() >= ENTRIES_MAX {
                // Still full: every key is being hammered; forget the lot rather than grow.
                self.windows.clear();
            }
        }
        let w = self.windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(w.0) >= WINDOW {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_refused_until_the_assertion_expires() {
        let mut c = ReplayCache::default();
        assert!(c.first_use("c1", "j1", 100, 10));
        assert!(!c.first_use("c1", "j1", 100, 50), "replayed");
        assert!(c.first_use("c2", "j1", 100, 50), "another issuer's id");
        assert!(c.first_use("c1", "j1", 200, 150), "expired, forgotten");
    }

    #[test]
    fn failures_block_for_the_rest_of_the_minute() {
        let mut l = FailureLimiter::new(3);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.blocked("client:a", t), None);
            l.failed("client:a", t);
        }
        assert!(l.blocked("client:a", t + Duration::from_secs(10)).is_some());
        assert_eq!(l.blocked("client:b", t), None);
        assert_eq!(l.blocked("client:a", t + WINDOW), None);
    }
}
