//! authsec's Raft wiring: the openraft configuration, the gRPC peer transport (client side in
//! [`network`], server side in [`service`]) and the messages nodes exchange.
//!
//! Architecture invariant: all node-to-node traffic goes through [`transport::Transport`], the
//! single seam where mutual TLS is configured.
#![forbid(unsafe_code)]

pub mod config;
pub mod freshness;
pub mod messages;
pub mod network;
pub mod service;

pub use authsec_storage::{NodeId, TypeConfig};
pub use authsec_tls::{tls, transport, Transport};
pub use config::{raft_config, RaftTuning};
pub use freshness::Freshness;
pub use messages::{ForwardError, ForwardRequest, ForwardResponse};
pub use network::{PeerClient, PeerNetwork};
pub use service::{LeaderHandler, PeerServer};

pub type Raft = openraft::Raft<TypeConfig>;
