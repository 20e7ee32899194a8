//! Deliberate defects, planted to prove that the chaos checkers catch what they claim to.
//!
//! A checker that cannot fail is not a checker: each chaos checker has a test that runs the
//! cluster with one of these switched on and expects a violation. They exist only in debug
//! builds (`cfg(debug_assertions)`); a release binary has no way to turn them on.

/// The environment variable that plants a defect in a debug build.
pub const ENV: &str = "AUTHSEC_PLANTED_BUG";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlantedBug {
    #[default]
    None,
    /// The leader answers a write as soon as it is queued, before its entry is synced on a
    /// majority (and holds the proposal back a little, as a lagging disk would).
    AckBeforeSync,
    /// Every tenth entry is answered at once and proposed 300 ms later, after writes that
    /// started once it was answered: acknowledged writes land out of real-time order.
    ReorderWrites,
    /// This node applies the first client registration whose archive sequence is at least
    /// this one to nothing: no projection, no archive row, while its head moves on as if it
    /// had. (A registration rather than any record: the nodes' own key events interleave
    /// with the workload's writes at times no test controls.)
    DropRecord(u64),
}

impl PlantedBug {
    /// Read [`ENV`] in a debug build; a release build always answers `None`.
    pub fn from_env() -> anyhow::Result<Self> {
        if !cfg!(debug_assertions) {
            return Ok(Self::None);
        }
        let Some(v) = std::env::var_os(ENV) else {
            return Ok(Self::None);
        };
        let v = v.to_string_lossy();
        let bug = match v.split_once('=') {
            None if v == "ack-before-sync" => Self::AckBeforeSync,
            None if v == "reorder-writes" => Self::ReorderWrites,
            Some(("drop-record", n)) => Self::DropRecord(
                n.parse()
                    .map_err(|_| anyhow::anyhow!("{ENV}: drop-record=N needs a sequence"))?,
            ),
            _ => anyhow::bail!(
                "{ENV}={v:?}: expected ack-before-sync, reorder-writes or drop-record=N"
            ),
        };
        tracing::error!(bug = ?bug, "PLANTED BUG ACTIVE: this node is deliberately broken for a checker test");
        Ok(bug)
    }
}
