//! The single seam for node-to-node connections. Plaintext gRPC on a trusted network today;
//! mutual TLS with SPIFFE-ID peer authorization arrives here and nowhere else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Largest peer message: a snapshot chunk or an AppendEntries of up to 32 batches of 1 MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Peer address -> the address to dial instead (a proxy, a NAT, a test's fault injector).
    routes: Arc<BTreeMap<String, String>>,
}

impl Transport {
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Dial `via` whenever a peer's advertised address is `addr`. Membership keeps the
    /// advertised address; only this node's dialing changes.
    pub fn with_routes(mut self, routes: BTreeMap<String, String>) -> Self {
        self.routes = Arc::new(routes);
        self
    }

    /// The address actually dialed for a peer's advertised address.
    pub fn route<'a>(&'a self, addr: &'a str) -> &'a str {
        self.routes.get(addr).map_or(addr, String::as_str)
    }

    /// A lazily connecting channel to a peer's gRPC address (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let addr = self.route(addr);
        let ep = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ep.connect_lazy())
    }
}
