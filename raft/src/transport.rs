//! The single seam for node-to-node connections. Plaintext gRPC on a trusted network today;
//! mutual TLS with SPIFFE-ID peer authorization arrives here and nowhere else.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Largest peer message: a snapshot chunk or an AppendEntries of up to 32 batches of 1 MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct Transport {}

impl Transport {
    pub fn plaintext() -> Self {
        Self {}
    }

    /// A lazily connecting channel to a peer's gRPC address (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let ep = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ep.connect_lazy())
    }
}
