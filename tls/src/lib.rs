//! Mutual TLS between authsec components, apart from Raft and storage so that every component
//! (node, CLI, the test harness, and later the agent and SDK) shares one verifier without
//! reaching RocksDB.
#![forbid(unsafe_code)]

pub mod tls;
pub mod transport;

pub use tls::*;
pub use transport::{tls_channel, Transport, TransportError, PEER_MESSAGE_BYTES_MAX};
