//! The single seam for node-to-node connections: mutual TLS with SPIFFE-ID peer authorization
//! ([`crate::tls`]), or plaintext gRPC where an operator explicitly asked for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{Expect, TlsState};

/// Largest peer message: a snapshot chunk or an AppendEntries of up to 32 batches of 1 MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Peer address -> the address to dial instead (a proxy, a NAT, a test's fault injector).
    routes: Arc<BTreeMap<String, String>>,
    /// `None`: plaintext.
    tls: Option<Arc<TlsState>>,
}

impl Transport {
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Mutual TLS: this node's certificate and the trust bundle come from `state` at every
    /// handshake, so rotation needs no new transport.
    pub fn mutual_tls(state: Arc<TlsState>) -> Self {
        Self {
            tls: Some(state),
            ..Self::default()
        }
    }

    pub fn tls(&self) -> Option<&Arc<TlsState>> {
        self.tls.as_ref()
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

    /// A lazily connecting channel to any node at `addr` (`host:port`).
    pub fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        self.channel_to(addr, Expect::AnyNode)
    }

    /// A lazily connecting channel to `addr` that accepts only the server `expect` names.
    pub fn channel_to(&self, addr: &str, expect: Expect) -> Result<Channel, TransportError> {
        let dial = self.route(addr).to_owned();
        match &self.tls {
            None => Ok(endpoint(&dial)?.connect_lazy()),
            Some(state) => tls_channel(dial, state.client_config(expect)?),
        }
    }
}

impl Transport {
    /// A channel to any node at `addr`, connected now (TCP and the TLS handshake), so a node
    /// that is down or refuses us shows at once; the channel reconnects lazily afterwards.
    pub async fn connect(&self, addr: &str) -> Result<Channel, TransportError> {
        let dial = self.route(addr).to_owned();
        let connected = match &self.tls {
            None => endpoint(&dial)?.connect().await,
            Some(state) => {
                let (ep, config) = (endpoint(&dial)?, state.client_config(Expect::AnyNode)?);
                let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
                    let (dial, config) = (dial.clone(), config.clone());
                    async move { crate::tls::connect(&dial, config).await }
                });
                ep.connect_with_connector(connector).await
            }
        };
        connected.map_err(|e| {
            // tonic's own message is "transport error"; the cause is in its sources.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            TransportError::Connect(why)
        })
    }
}

fn endpoint(dial: &str) -> Result<Endpoint, TransportError> {
    // The scheme stays http: TLS is ours, under the connector, not tonic's.
    Ok(Endpoint::from_shared(format!("http://{dial}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// A lazily connecting channel to `dial` (`host:port`) over TLS with `config`.
pub fn tls_channel(
    dial: String,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, TransportError> {
    let ep = endpoint(&dial)?;
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let (dial, config) = (dial.clone(), config.clone());
        async move { crate::tls::connect(&dial, config).await }
    });
    Ok(ep.connect_with_connector_lazy(connector))
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("bad peer address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Connect(String),
}
