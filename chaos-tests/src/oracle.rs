//! The client side of a chaos run: concurrent writers through every node, and an oracle that
//! records every operation with its start and end times (one monotonic clock, this process).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authsec_api::v1::client_service_client::ClientServiceClient;
use tonic::transport::Channel;

/// What the client learned of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Acknowledged: the receipt's log index, first archive sequence and committing leader.
    Ok {
        log_index: u64,
        sequence: u64,
        leader_id: u64,
    },
    /// Refused by a decision the cluster made (it changed nothing).
    Rejected(String),
    /// An error or a timeout: it may or may not have been committed.
    Unknown(String),
}

/// One operation: the registration of a unique client id through `node`.
#[derive(Debug, Clone)]
pub struct Op {
    pub key: String,
    pub node: u64,
    /// Since the oracle's start.
    pub start: Duration,
    pub end: Duration,
    pub result: OpResult,
}

impl Op {
    pub fn acked(&self) -> bool {
        matches!(self.result, OpResult::Ok { .. })
    }
}

/// Every operation of a run.
#[derive(Debug)]
pub struct Oracle {
    t0: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Oracle {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            ops: Mutex::new(Vec::new()),
        })
    }

    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn at(&self, i: Instant) -> Duration {
        i.saturating_duration_since(self.t0)
    }

    fn record(&self, op: Op) {
        if let Ok(mut o) = self.ops.lock() {
            o.push(op);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }

    pub fn acked(&self) -> usize {
        self.ops
            .lock()
            .map(|o| o.iter().filter(|op| op.acked()).count())
            .unwrap_or(0)
    }

    /// Acknowledged operations that ended after `since`.
    pub fn acked_since(&self, since: Duration) -> usize {
        self.ops
            .lock()
            .map(|o| o.iter().filter(|op| op.acked() && op.end > since).count())
            .unwrap_or(0)
    }
}

/// Writers registering unique clients through every node until stopped.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub attempted: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub writers: usize,
    /// Pause between a writer's operations, so the nodes keep CPU on two cores.
    pub think: Duration,
    /// A client-side deadline, above the node's own 10 s write deadline.
    pub timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            writers: 8,
            think: Duration::from_millis(20),
            timeout: Duration::from_secs(12),
        }
    }
}

impl Workload {
    /// Start writers over `nodes` (id, gRPC address); writer `w` begins at node `w % n` and
    /// moves to the next node after every operation.
    pub fn start(
        nodes: &BTreeMap<u64, String>,
        transport: &authsec_tls::Transport,
        oracle: Arc<Oracle>,
        run_tag: &str,
        opts: WorkloadOptions,
    ) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for (id, addr) in nodes {
            channels.push((*id, transport.channel(addr)?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let attempted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..opts.writers {
            let channels: Vec<(u64, Channel)> = channels.clone();
            let (stop, oracle, attempted, opts) = (
                stop.clone(),
                oracle.clone(),
                attempted.clone(),
                opts.clone(),
            );
            let tag = run_tag.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (node, ch) = &channels[(w + n as usize) % channels.len()];
                    let key = format!("{tag}-w{w}-{n:07}");
                    let mut c = ClientServiceClient::new(ch.clone());
                    let mut req = tonic::Request::new(crate::register_req(&key));
                    req.set_timeout(opts.timeout);
                    attempted.fetch_add(1, Ordering::Relaxed);
                    let start = oracle.now();
                    let res = c.register_client(req).await;
                    let end = oracle.now();
                    let result = match res {
                        Ok(r) => {
                            let r = r.into_inner().receipt.unwrap_or_default();
                            OpResult::Ok {
                                log_index: r.log_index,
                                sequence: r.sequence_first,
                                leader_id: r.leader_id,
                            }
                        }
                        Err(s)
                            if matches!(
                                s.code(),
                                tonic::Code::InvalidArgument
                                    | tonic::Code::AlreadyExists
                                    | tonic::Code::FailedPrecondition
                            ) =>
                        {
                            OpResult::Rejected(format!("{:?}: {}", s.code(), s.message()))
                        }
                        Err(s) => OpResult::Unknown(format!("{:?}: {}", s.code(), s.message())),
                    };
                    let failed = !matches!(result, OpResult::Ok { .. });
                    oracle.record(Op {
                        key,
                        node: *node,
                        start,
                        end,
                        result,
                    });
                    // After a failure, back off a little more: the node may be down.
                    let pause = if failed {
                        opts.think.max(Duration::from_millis(50))
                    } else {
                        opts.think
                    };
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Ok(Self {
            stop,
            tasks,
            attempted,
        })
    }

    /// Stop the writers and wait for their last operations to end.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
