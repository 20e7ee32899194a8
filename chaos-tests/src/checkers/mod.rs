//! Invariant checkers, one per file. Each takes the whole [`History`] of a run and returns
//! the violations it finds; a run passes only if every checker returns none.

pub mod audit_complete;
pub mod availability;
pub mod chain;
pub mod convergence;
pub mod delegation;
pub mod freshness;
pub mod linearizable;
pub mod lost_writes;
pub mod revocation;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use authsec_api::v1;

use crate::oracle::Op;

/// One archived record as a node served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub sequence: u64,
    pub hash: String,
    pub kind: String,
    pub subject: String,
    pub bytes: Vec<u8>,
}

/// What a run observed: the client history and, per node, what the node holds at the end.
#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub archives: BTreeMap<u64, Vec<Rec>>,
    /// Client ids in each node's projection.
    pub projections: BTreeMap<u64, BTreeSet<String>>,
    pub statuses: BTreeMap<u64, v1::StatusResponse>,
    /// The credential workload's part, when the run had one.
    pub creds: Option<CredHistory>,
}

/// A node in a fault state over `[from, to)`, on the run's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub node: u64,
    pub from: Duration,
    pub to: Duration,
}

impl Span {
    pub fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.from <= to && self.to >= from
    }
}

/// What the nemesis did to each node, as the checkers need it.
#[derive(Debug, Clone, Default)]
pub struct FaultLog {
    /// Cut off from the majority side of the network (partitions, isolation).
    pub cuts: Vec<Span>,
    /// Not serving normally: killed, paused, restarted, wiped, full disk, its links dropping
    /// data or its leader's messages not reaching it.
    pub downs: Vec<Span>,
    /// Running with its wall clock skewed by this many milliseconds.
    pub skews: Vec<(Span, i64)>,
    /// Data directory wiped, at.
    pub wipes: Vec<(u64, Duration)>,
}

impl FaultLog {
    /// Spans in which `node` was cut off or down.
    pub fn excused(&self, node: u64) -> impl Iterator<Item = &Span> {
        self.cuts
            .iter()
            .chain(self.downs.iter())
            .filter(move |s| s.node == node)
    }
}

/// The credential side of a run.
#[derive(Debug, Clone, Default)]
pub struct CredHistory {
    pub log: crate::creds::CredLog,
    pub faults: FaultLog,
    /// The nodes' freshness bound.
    pub max_staleness: Duration,
    /// The wall clock (ms since the epoch) when the run's clock read zero.
    pub t0_wall_ms: u64,
    /// The audit export of one node after the run, decoded.
    pub export: Vec<authsec_domain::AuditRecord>,
    pub export_node: u64,
}

/// A broken invariant, named by its checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.checker, self.detail)
    }
}

/// Run every checker.
pub fn check_all(h: &History) -> Vec<Violation> {
    let mut v = lost_writes::check(h);
    v.extend(convergence::check(h));
    v.extend(linearizable::check(h));
    v.extend(chain::check(h));
    v.extend(freshness::check(h));
    v.extend(revocation::check(h));
    v.extend(delegation::check(h));
    v.extend(audit_complete::check(h));
    v
}

/// The subject under which a registration of `key` is archived.
pub fn subject_of(key: &str) -> String {
    format!("client:{key}")
}

/// The kind of the record a registration produces.
pub const REGISTERED: &str = "client.registered";

/// Keep reports readable: at most this many violations per checker and node.
pub const REPORT_MAX: usize = 20;
