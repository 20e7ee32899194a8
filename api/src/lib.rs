//! authsec's wire contracts: the `authsec.v1` admin API, the node-to-node peer protocol,
//! conversions between wire and domain types, and the one mapping of errors to `tonic::Status`.
#![forbid(unsafe_code)]

#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("authsec.v1");
}

#[allow(missing_debug_implementations, clippy::all)]
pub mod internal {
    pub mod v1 {
        tonic::include_proto!("authsec.internal.v1");
    }
}

/// The SPIFFE Workload API (the standard's proto, no package: `/SpiffeWorkloadAPI/<method>`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));

    /// The metadata key every Workload API request must carry, with the value `true`.
    pub const SECURITY_HEADER: &str = "workload.spiffe.io";
}

pub mod convert;
pub mod error;
pub mod identity;

pub use error::ApiError;
