//! Credential figure (not an invariant): issuance availability on the majority side. Of the
//! credential requests sent to nodes that were neither cut off from the majority nor down
//! while the request ran, the share that returned a credential; and the share of one-second
//! windows in which at least one such request did. A refusal by policy (a scope the roles no
//! longer grant, say) is an answer, not an outage: such requests are counted apart.

use std::collections::BTreeSet;

use super::History;

#[derive(Debug, Default, Clone, Copy)]
pub struct Figure {
    pub requests: usize,
    pub issued: usize,
    pub refused: usize,
    pub failed: usize,
    /// Refused by policy (4xx, permission): not counted in `requests`.
    pub denied: usize,
    pub windows: usize,
    pub windows_with_issue: usize,
}

impl Figure {
    pub fn request_share(&self) -> f64 {
        self.issued as f64 / self.requests.max(1) as f64
    }
    pub fn window_share(&self) -> f64 {
        self.windows_with_issue as f64 / self.windows.max(1) as f64
    }
}

pub fn figure(h: &History) -> Option<Figure> {
    let c = h.creds.as_ref()?;
    let mut f = Figure::default();
    let mut asked = BTreeSet::new();
    let mut hit = BTreeSet::new();
    for r in &c.log.requests {
        if c.faults.excused(r.node).any(|s| s.overlaps(r.start, r.end)) {
            continue;
        }
        if let crate::creds::Outcome::Refused(why) = &r.outcome {
            if !unavailable(why) {
                f.denied += 1;
                continue;
            }
        }
        f.requests += 1;
        asked.insert(r.start.as_secs());
        match &r.outcome {
            crate::creds::Outcome::Issued(_) => {
                f.issued += 1;
                hit.insert(r.end.as_secs());
            }
            crate::creds::Outcome::Refused(_) => f.refused += 1,
            crate::creds::Outcome::Failed(_) => f.failed += 1,
        }
    }
    f.windows = asked.len();
    f.windows_with_issue = asked.intersection(&hit).count();
    Some(f)
}

/// Whether a refusal says "not now" (the node cannot issue) rather than "not allowed".
pub fn unavailable(why: &str) -> bool {
    why.starts_with("503")
        || why.starts_with("429")
        || why.contains("Unavailable")
        || why.contains("freshness")
        || why.contains("temporarily_unavailable")
}
