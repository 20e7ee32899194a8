//! Invariant checkers, one per file. Each takes the whole [`History`] of a run and returns
//! the violations it finds; a run passes only if every checker returns none.

pub mod chain;
pub mod convergence;
pub mod linearizable;
pub mod lost_writes;

use std::collections::{BTreeMap, BTreeSet};

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
