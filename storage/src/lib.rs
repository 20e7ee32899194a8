//! authsec's storage: one RocksDB per node holding the Raft log, the state machine (projections
//! and the event archive) and node-local data, plus file-backed snapshots.
//!
//! Architecture invariant: events, projection changes, the archive head and the applied index
//! are written in one RocksDB write batch, so projections never disagree with the applied index.
//! Architecture invariant: a log append is synced before openraft is told it is flushed.
//! Architecture invariant: installing a snapshot never touches the node-local column families.
#![forbid(unsafe_code)]

pub mod cf;
pub mod db;
pub mod error;
pub mod log_store;
pub mod outbox;
pub mod reader;
pub mod restore;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use db::{open, Store};
pub use error::StoreError;
pub use log_store::LogStore;
pub use reader::{Reader, StatusView};
pub use state_machine::{StateMachine, StateView};
pub use types::{NodeId, TypeConfig};
