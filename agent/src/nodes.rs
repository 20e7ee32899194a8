//! The nodes the agent talks to: any of them, with failover. Every call goes to the node that
//! last answered; on a transport failure or UNAVAILABLE it moves on to the next, so losing
//! the leader or the node the agent is connected to costs one retry, not a failed call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use authsec_tls::{Expect, TlsState, Transport};
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Debug, Clone)]
pub struct Nodes {
    addrs: Arc<Vec<String>>,
    channels: Arc<Vec<Channel>>,
    preferred: Arc<AtomicUsize>,
}

/// Whether another node may succeed where this one failed.
pub fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
    )
}

impl Nodes {
    /// Channels to every node over mutual TLS with the agent's SVID (read from `tls` at each
    /// handshake, so renewal needs no new channel).
    pub fn new(addrs: Vec<String>, tls: Arc<TlsState>) -> anyhow::Result<Self> {
        anyhow::ensure!(!addrs.is_empty(), "no server address configured");
        let t = Transport::mutual_tls(tls);
        let channels = addrs
            .iter()
            .map(|a| t.channel_to(a, Expect::AnyNode))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            addrs: Arc::new(addrs),
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The channel to the node at position `i` (wrapping), and its address.
    pub fn at(&self, i: usize) -> (Channel, &str) {
        let i = i % self.addrs.len();
        (self.channels[i].clone(), &self.addrs[i])
    }

    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// Use node `i` first from now on.
    pub fn prefer(&self, i: usize) {
        self.preferred
            .store(i % self.addrs.len(), Ordering::Relaxed);
    }

    /// Run `f` against the preferred node, then each other node once, until one answers with
    /// anything but a retryable failure.
    pub async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = self.preferred();
        let mut last = None;
        for k in 0..self.addrs.len() {
            let i = (start + k) % self.addrs.len();
            let (ch, addr) = self.at(i);
            let call = tokio::time::timeout(std::time::Duration::from_secs(10), f(ch));
            match call.await {
                Ok(Ok(v)) => {
                    if k > 0 {
                        tracing::info!(node = addr, what, "failed over");
                        self.prefer(i);
                    }
                    return Ok(v);
                }
                Ok(Err(s)) if retryable(&s) => {
                    tracing::debug!(node = addr, what, code = ?s.code(), message = s.message(), "node failed; trying the next");
                    last = Some(s);
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    tracing::debug!(node = addr, what, "node timed out; trying the next");
                    last = Some(Status::deadline_exceeded(format!(
                        "{addr} did not answer {what} in 10 s"
                    )));
                }
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no node reachable")))
    }
}
