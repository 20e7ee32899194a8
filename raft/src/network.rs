//! The client side of the peer transport: openraft's `RaftNetwork` over tonic.

use std::time::Duration;

use authsec_api::internal::v1::peer_service_client::PeerServiceClient;
use authsec_api::internal::v1::Payload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use tonic::transport::Channel;

use crate::messages::{self, *};
use crate::{NodeId, TypeConfig};
use authsec_tls::{Transport, PEER_MESSAGE_BYTES_MAX};

/// Builds one [`PeerClient`] per target node.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    pub node_id: NodeId,
    pub transport: Transport,
    /// This node's freshness, stamped on every AppendEntries it sends as leader.
    pub freshness: std::sync::Arc<crate::Freshness>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let mut c = PeerClient::new(self.node_id, target, &node.addr, &self.transport);
        c.freshness = Some(self.freshness.clone());
        c
    }
}

/// A connection to one peer.
#[derive(Debug, Clone)]
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    addr: String,
    client: Option<PeerServiceClient<Channel>>,
    freshness: Option<std::sync::Arc<crate::Freshness>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    pub fn new(from: NodeId, target: NodeId, addr: &str, transport: &Transport) -> Self {
        let client = transport
            .channel_to(addr, authsec_tls::Expect::Node(target))
            .ok()
            .map(|ch| {
                PeerServiceClient::new(ch)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
            });
        Self {
            from,
            target,
            addr: addr.to_owned(),
            client,
            freshness: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn client(&self) -> Result<PeerServiceClient<Channel>, Unreachable> {
        self.client
            .clone()
            .ok_or_else(|| Unreachable::new(&Msg(format!("bad peer address {:?}", self.addr))))
    }

    /// Send one payload and return the answer's bytes; transport failures are `Unreachable`
    /// (openraft backs off) and a missed deadline is `Timeout`.
    async fn call<E: std::error::Error>(
        &self,
        kind: RPCTypes,
        ttl: Duration,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, E>> {
        let mut c = self.client()?;
        let mut req = tonic::Request::new(Payload { data });
        if kind == RPCTypes::AppendEntries {
            if let Some(f) = self.freshness.as_ref() {
                if let Some(ms) = f.leader_age_ms() {
                    if let Ok(v) = ms.to_string().parse() {
                        req.metadata_mut()
                            .insert(crate::freshness::QUORUM_AGE_HEADER, v);
                    }
                    let clock = f.leader_clock();
                    if let Ok(v) = clock.ms.to_string().parse() {
                        req.metadata_mut()
                            .insert(crate::freshness::LEADER_CLOCK_HEADER, v);
                    }
                    if let Ok(v) = clock.incarnation.to_string().parse() {
                        req.metadata_mut()
                            .insert(crate::freshness::LEADER_INCARNATION_HEADER, v);
                    }
                }
            }
        }
        let fut = async {
            match kind {
                RPCTypes::AppendEntries => c.append_entries(req).await,
                RPCTypes::Vote => c.vote(req).await,
                RPCTypes::InstallSnapshot => c.install_snapshot(req).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action: kind,
                id: self.from,
                target: self.target,
                timeout: ttl,
            })),
            Ok(Err(status)) => match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    Err(RPCError::Unreachable(Unreachable::new(&Msg(status
                        .message()
                        .to_owned()))))
                }
                _ => Err(RPCError::Network(NetworkError::new(&Msg(format!(
                    "{}: {}",
                    status.code(),
                    status.message()
                ))))),
            },
            Ok(Ok(resp)) => Ok(resp.into_inner().data),
        }
    }

    /// Forward a batch of writes to this peer, which should be the leader: one gRPC call for
    /// many writes. The answer holds one result per write, in order.
    pub async fn forward(
        &self,
        reqs: &[ForwardRequest],
        ttl: Duration,
    ) -> Result<Vec<Result<ForwardResponse, ForwardError>>, ForwardError> {
        let mut c = self
            .client()
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let call = c.forward(Payload {
            data: messages::encode(TAG_FORWARD_REQ, &reqs),
        });
        let resp = tokio::time::timeout(ttl, call)
            .await
            .map_err(|_| {
                ForwardError::Unavailable(format!(
                    "leader {} did not answer within {ttl:?}",
                    self.target
                ))
            })?
            .map_err(|s| {
                ForwardError::Unavailable(format!("leader {}: {}", self.target, s.message()))
            })?;
        let out: Vec<Result<ForwardResponse, ForwardError>> =
            messages::decode(TAG_FORWARD_RES, &resp.into_inner().data).map_err(|e| {
                ForwardError::Unavailable(format!("bad answer from leader {}: {e}", self.target))
            })?;
        if out.len() != reqs.len() {
            return Err(ForwardError::Unavailable(format!(
                "leader {} answered {} of {} forwarded writes",
                self.target,
                out.len(),
                reqs.len()
            )));
        }
        Ok(out)
    }

    /// Ask this peer (the leader) for a linearizable read index.
    pub async fn read_index(&self, ttl: Duration) -> Result<u64, ForwardError> {
        let mut c = self
            .client()
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let resp = tokio::time::timeout(ttl, c.read_index(Payload { data: Vec::new() }))
            .await
            .map_err(|_| {
                ForwardError::Unavailable(format!(
                    "leader {} did not answer within {ttl:?}",
                    self.target
                ))
            })?
            .map_err(|s| {
                ForwardError::Unavailable(format!("leader {}: {}", self.target, s.message()))
            })?;
        messages::decode::<Result<u64, ForwardError>>(TAG_READ_INDEX_RES, &resp.into_inner().data)
            .map_err(|e| {
            ForwardError::Unavailable(format!("bad answer from leader {}: {e}", self.target))
        })?
    }
}

fn decode_remote<T, E>(
    target: NodeId,
    tag: authsec_domain::codec::Tag,
    bytes: &[u8],
) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
where
    T: serde::de::DeserializeOwned,
    E: std::error::Error + serde::de::DeserializeOwned,
{
    let res: Result<T, RaftError<NodeId, E>> =
        messages::decode(tag, bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    res.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let bytes = self
            .call(
                RPCTypes::AppendEntries,
                option.hard_ttl(),
                messages::encode(TAG_APPEND_REQ, &rpc),
            )
            .await?;
        decode_remote(self.target, TAG_APPEND_RES, &bytes)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let bytes = self
            .call(
                RPCTypes::InstallSnapshot,
                option.hard_ttl(),
                messages::encode(TAG_SNAPSHOT_REQ, &rpc),
            )
            .await?;
        decode_remote(self.target, TAG_SNAPSHOT_RES, &bytes)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let bytes = self
            .call(
                RPCTypes::Vote,
                option.hard_ttl(),
                messages::encode(TAG_VOTE_REQ, &rpc),
            )
            .await?;
        decode_remote(self.target, TAG_VOTE_RES, &bytes)
    }
}
