//! authsec-agent: one per host. It attests to the cluster with a single-use join token, then
//! serves the SPIFFE Workload API on a unix socket to the workloads of its host, attested by
//! what the kernel says about them, with SVIDs it keeps fresh. It links no RocksDB and no Raft.
#![forbid(unsafe_code)]

pub mod agent;
pub mod attestor;
pub mod client;
pub mod config;
pub mod jwt;
pub mod keys;
pub mod nodes;
pub mod serve;
pub mod state;
pub mod workload;
