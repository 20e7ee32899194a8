//! authsec's pure core.
//!
//! Everything the replicated state machine decides lives here: validated identifiers, the
//! commands a leader proposes, the events they produce, the projections (`State`) every node
//! derives, and the audit-record format with its hash chain.
//!
//! Architecture invariant: this crate does no IO, never reads the clock or a random source, and
//! has no async code. Time and generated ids arrive inside a [`Stamp`] chosen by the leader, so
//! every node that applies the same log reaches the same state, byte for byte.
#![forbid(unsafe_code)]

pub mod admins;
pub mod audit;
pub mod codec;
pub mod command;
pub mod decide;
pub mod event;
pub mod evolve;
pub mod federation;
pub mod identity;
pub mod ids;
pub mod issuance;
pub mod keys;
pub mod limits;
pub mod permissions;
pub mod persist;
pub mod record;
pub mod roots;
mod rules;
pub mod state;

pub use command::{Actor, Batch, Command, Principal, Proposal, Sealed, Stamp, SEALED_ROOT_KEY};
pub use decide::{apply_proposal, decide, fingerprint, Applied, BatchOutcome, Outcome, Rejection};
pub use event::Event;
pub use evolve::evolve;
pub use identity::{Agent, ClientAuth, Delegation, Delegator, Entry, EntryStatus, Role, Subject};
pub use ids::{
    ClientId, DelegationId, EntryId, FieldError, RoleName, Scope, Selector, SpiffeId, TrustDomain,
};
pub use record::{chain_next, ArchiveHead, AuditRecord, Hash32, GENESIS_HASH};
pub use state::{
    Client, ClientKind, JoinToken, NodeRecord, ProjectionKey, SecurityState, State, StateMeta,
};

/// Helpers the rule modules' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::{
        apply_proposal, Actor, Command, Event, Principal, Proposal, Rejection, Stamp, State,
    };

    /// Apply `command` as proposal `index`, stamped `1000 + index` ms by the system actor.
    pub fn propose(s: &mut State, index: u64, command: Command) -> Result<Vec<Event>, Rejection> {
        let p = Proposal {
            stamp: Stamp {
                time_ms: 1_000 + index,
                seed: [0; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command,
        };
        apply_proposal(s, &p, index).map(|(e, _)| e)
    }

    /// A cluster of trust domain `example.org` whose bootstrap root is `root` (index 1, 2).
    pub fn cluster_with_root(root: &[u8]) -> State {
        let mut s = State::default();
        propose(
            &mut s,
            1,
            Command::ConfigureTrustDomain {
                trust_domain: crate::TrustDomain::parse("example.org").expect("td"),
            },
        )
        .expect("td");
        propose(
            &mut s,
            2,
            Command::InstallRoot {
                cert_der: root.to_vec(),
                sealed_key: None,
            },
        )
        .expect("root");
        s
    }
}
