//! The server side of the peer transport.

use std::sync::Arc;

use authsec_api::internal::v1::peer_service_server::{PeerService, PeerServiceServer};
use authsec_api::internal::v1::Payload;
use tonic::{Request, Response, Status};

use crate::messages::{self, *};
use crate::Raft;
use authsec_tls::PEER_MESSAGE_BYTES_MAX;

/// What the leader does for its followers: take forwarded writes and serve read indexes.
#[tonic::async_trait]
pub trait LeaderHandler: Send + Sync + 'static {
    /// Propose a batch of forwarded writes; one answer per write, in order.
    async fn forward(
        &self,
        reqs: Vec<ForwardRequest>,
    ) -> Vec<Result<ForwardResponse, ForwardError>>;
    async fn read_index(&self) -> Result<u64, ForwardError>;
}

pub struct PeerServer {
    raft: Raft,
    leader: Arc<dyn LeaderHandler>,
    freshness: Arc<crate::Freshness>,
}

impl std::fmt::Debug for PeerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerServer").finish_non_exhaustive()
    }
}

impl PeerServer {
    pub fn new(
        raft: Raft,
        leader: Arc<dyn LeaderHandler>,
        freshness: Arc<crate::Freshness>,
    ) -> Self {
        Self {
            raft,
            leader,
            freshness,
        }
    }

    pub fn into_service(self) -> PeerServiceServer<Self> {
        PeerServiceServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

#[tonic::async_trait]
impl PeerService for PeerServer {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let header = |name: &str| -> Option<u64> {
            req.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let stamped = header(crate::freshness::QUORUM_AGE_HEADER);
        let sent_at =
            header(crate::freshness::LEADER_CLOCK_HEADER).map(|ms| crate::freshness::LeaderClock {
                incarnation: header(crate::freshness::LEADER_INCARNATION_HEADER).unwrap_or(0),
                ms,
            });
        let rpc: openraft::raft::AppendEntriesRequest<crate::TypeConfig> =
            messages::decode(TAG_APPEND_REQ, &req.into_inner().data).map_err(bad)?;
        let from = rpc.vote.leader_id().voted_for();
        let term = rpc.vote.leader_id().get_term();
        let committed = rpc.leader_commit.map_or(0, |l| l.index);
        // Whether that commit index is of an entry of the sender's own term (see
        // `Freshness::heard_at`).
        let own_term = rpc
            .leader_commit
            .is_some_and(|l| l.leader_id == *rpc.vote.leader_id());
        let res = self.raft.append_entries(rpc).await;
        // Accepted from the leader this node recognises (not refused for a higher vote): its
        // stamp counts once this node has applied what that leader had committed.
        if let (Some(age), Some(leader), Ok(r)) = (stamped, from, &res) {
            if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                self.freshness
                    .heard_at(leader, term, age, committed, own_term, sent_at);
            }
        }
        Ok(Response::new(Payload {
            data: messages::encode(TAG_APPEND_RES, &res),
        }))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc = messages::decode(TAG_VOTE_REQ, &req.into_inner().data).map_err(bad)?;
        let res = self.raft.vote(rpc).await;
        Ok(Response::new(Payload {
            data: messages::encode(TAG_VOTE_RES, &res),
        }))
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let rpc = messages::decode(TAG_SNAPSHOT_REQ, &req.into_inner().data).map_err(bad)?;
        let res = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(Payload {
            data: messages::encode(TAG_SNAPSHOT_RES, &res),
        }))
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let fwd: Vec<ForwardRequest> =
            messages::decode(TAG_FORWARD_REQ, &req.into_inner().data).map_err(bad)?;
        if fwd.len() > authsec_domain::limits::PROPOSALS_PER_BATCH_MAX {
            return Err(Status::invalid_argument(
                "too many forwarded writes in one batch",
            ));
        }
        let res = self.leader.forward(fwd).await;
        Ok(Response::new(Payload {
            data: messages::encode(TAG_FORWARD_RES, &res),
        }))
    }

    async fn read_index(&self, _req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let res = self.leader.read_index().await;
        Ok(Response::new(Payload {
            data: messages::encode(TAG_READ_INDEX_RES, &res),
        }))
    }
}
