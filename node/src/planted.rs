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
    /// This node issues credentials whatever its freshness bound says: a node cut off from
    /// the majority keeps minting on a view that may be arbitrarily stale.
    IgnoreFreshness,
    /// This node's state machine archives revocations but never applies them to its
    /// projections: its introspection and its revocation stream keep honouring revoked
    /// tokens.
    SkipRevocations,
    /// Token exchange grants whatever scope the agent asks for under a live delegation,
    /// instead of the delegation cut to the roles as the log stands.
    WidenDelegation,
}

static ACTIVE: std::sync::OnceLock<PlantedBug> = std::sync::OnceLock::new();

/// The defect this process runs with (set once at start-up; `None` in release builds).
pub fn active() -> PlantedBug {
    ACTIVE.get().copied().unwrap_or_default()
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
            None if v == "ignore-freshness" => Self::IgnoreFreshness,
            None if v == "skip-revocations" => Self::SkipRevocations,
            None if v == "widen-delegation" => Self::WidenDelegation,
            Some(("drop-record", n)) => Self::DropRecord(
                n.parse()
                    .map_err(|_| anyhow::anyhow!("{ENV}: drop-record=N needs a sequence"))?,
            ),
            _ => anyhow::bail!(
                "{ENV}={v:?}: expected ack-before-sync, reorder-writes, drop-record=N, ignore-freshness, skip-revocations or widen-delegation"
            ),
        };
        tracing::error!(bug = ?bug, "PLANTED BUG ACTIVE: this node is deliberately broken for a checker test");
        let _ = ACTIVE.set(bug);
        Ok(bug)
    }
}
