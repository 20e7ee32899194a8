//! A fault-injecting TCP proxy on every directed node-to-node link.
//!
//! Node `i` dials node `j` through the listener of link `(i, j)` (the node's `peer_routes`
//! point there). Each proxied connection has two pumps: bytes from `i` to `j` obey the fault
//! of the direction `(i, j)`, the answers coming back obey `(j, i)`. So a one-way partition
//! `i -> j` silences everything `i` says to `j`, on connections either side opened.
//!
//! Faults, per direction:
//! - **blackhole**: bytes stop moving and wait, as TCP retransmits would, until the link
//!   heals (or a keepalive gives up on the connection);
//! - **drop**: each chunk cuts its connection with a probability (loss that resets TCP),
//!   and new connections are refused with the same probability;
//! - **delay** and **jitter**: each chunk is delivered late, in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The fault on one direction of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFault {
    pub blackhole: bool,
    /// Chance per chunk (and per new connection) that the connection is cut, in 1/1000.
    pub drop_per_mille: u32,
    pub delay_ms: u64,
    pub jitter_ms: u64,
}

impl LinkFault {
    pub const BLACKHOLE: Self = Self {
        blackhole: true,
        drop_per_mille: 0,
        delay_ms: 0,
        jitter_ms: 0,
    };

    pub fn is_clear(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    faults: Mutex<BTreeMap<(u64, u64), LinkFault>>,
    conns: Mutex<BTreeMap<(u64, u64), Vec<AbortHandle>>>,
}

impl Inner {
    fn fault(&self, dir: (u64, u64)) -> LinkFault {
        self.faults
            .lock()
            .map(|f| f.get(&dir).copied().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// The proxies of one cluster and the faults they inject.
#[derive(Debug, Clone, Default)]
pub struct Net {
    inner: Arc<Inner>,
    listeners: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Net {
    /// Start the proxy for link `from -> to`, forwarding to `upstream`; returns the address
    /// `from` must dial. Needs a Tokio runtime.
    pub fn link(&self, from: u64, to: u64, upstream: SocketAddr) -> anyhow::Result<SocketAddr> {
        let std = std::net::TcpListener::bind("127.0.0.1:0")?;
        std.set_nonblocking(true)?;
        let addr = std.local_addr()?;
        let listener = TcpListener::from_std(std)?;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                let f = inner.fault((from, to));
                if f.drop_per_mille > 0 && rand::thread_rng().gen_range(0..1000) < f.drop_per_mille
                {
                    drop(down);
                    continue;
                }
                let inner2 = inner.clone();
                let conn = tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    // Either direction ending ends the connection (HTTP/2 never half-closes).
                    tokio::select! {
                        _ = pump(dr, uw, (from, to), inner2.clone()) => {}
                        _ = pump(ur, dw, (to, from), inner2.clone()) => {}
                    }
                });
                if let Ok(mut c) = inner.conns.lock() {
                    let v = c.entry((from, to)).or_default();
                    v.retain(|h| !h.is_finished());
                    v.push(conn.abort_handle());
                }
            }
        });
        if let Ok(mut l) = self.listeners.lock() {
            l.push(task.abort_handle());
        }
        Ok(addr)
    }

    /// Set the fault on the direction `from -> to`.
    pub fn set(&self, from: u64, to: u64, fault: LinkFault) {
        if let Ok(mut f) = self.inner.faults.lock() {
            if fault.is_clear() {
                f.remove(&(from, to));
            } else {
                f.insert((from, to), fault);
            }
        }
    }

    /// Silence both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        for x in a {
            for y in b {
                self.set(*x, *y, LinkFault::BLACKHOLE);
                self.set(*y, *x, LinkFault::BLACKHOLE);
            }
        }
    }

    /// Silence only what `from` nodes say to `to` nodes.
    pub fn one_way(&self, from: &[u64], to: &[u64]) {
        for x in from {
            for y in to {
                self.set(*x, *y, LinkFault::BLACKHOLE);
            }
        }
    }

    /// Apply `fault` to every direction among `ids`.
    pub fn all(&self, ids: &[u64], fault: LinkFault) {
        for x in ids {
            for y in ids {
                if x != y {
                    self.set(*x, *y, fault);
                }
            }
        }
    }

    /// Clear every fault.
    pub fn heal(&self) {
        if let Ok(mut f) = self.inner.faults.lock() {
            f.clear();
        }
    }

    /// Faults in force, for the record.
    pub fn faults(&self) -> Vec<((u64, u64), LinkFault)> {
        self.inner
            .faults
            .lock()
            .map(|f| f.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Cut every open connection of the links touching `id` (as a restart of its peer's
    /// network stack would).
    pub fn reset(&self, id: u64) {
        if let Ok(mut c) = self.inner.conns.lock() {
            for ((a, b), v) in c.iter_mut() {
                if *a == id || *b == id {
                    for h in v.drain(..) {
                        h.abort();
                    }
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(c) = self.conns.get_mut() {
            for v in c.values() {
                for h in v {
                    h.abort();
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The last handle stops the listeners; connections stop with `Inner`.
        if Arc::strong_count(&self.listeners) == 1 {
            if let Ok(l) = self.listeners.lock() {
                for h in l.iter() {
                    h.abort();
                }
            }
        }
    }
}

/// Move bytes one way under the direction's fault. Returns when either side closes or the
/// fault cuts the connection.
async fn pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    dir: (u64, u64),
    net: Arc<Inner>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let net_w = net.clone();
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // A blackhole that began after the chunk was read still holds it.
            while net_w.fault(dir).blackhole {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut last = Instant::now();
        loop {
            while net.fault(dir).blackhole {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let f = net.fault(dir);
            let (cut, jitter) = {
                let mut rng = rand::thread_rng();
                (
                    f.drop_per_mille > 0 && rng.gen_range(0..1000) < f.drop_per_mille,
                    if f.jitter_ms > 0 {
                        rng.gen_range(0..=f.jitter_ms)
                    } else {
                        0
                    },
                )
            };
            if cut {
                return;
            }
            let at = (Instant::now() + Duration::from_millis(f.delay_ms + jitter)).max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}
