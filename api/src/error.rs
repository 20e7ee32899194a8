//! The one place errors become gRPC statuses: a clear code and a reason a person can act on,
//! never internals.

use authsec_domain::{FieldError, Rejection};
use tonic::{Code, Status};

/// Metadata key carrying the leader's id when a node cannot serve a write itself.
pub const LEADER_ID_HEADER: &str = "x-authsec-leader-id";
/// Metadata key carrying the leader's address.
pub const LEADER_ADDR_HEADER: &str = "x-authsec-leader-addr";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("{0} not found")]
    NotFound(String),
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        leader: Option<(u64, String)>,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// Details are logged where the error is handled; the caller gets only this text.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::Rejected(r) => {
                let code = match r {
                    Rejection::ClientAlreadyExists { .. } => Code::AlreadyExists,
                    Rejection::ClientNotFound { .. } | Rejection::NodeNotFound { .. } => {
                        Code::NotFound
                    }
                    Rejection::RevisionMismatch { .. } | Rejection::StaleRevision { .. } => {
                        Code::FailedPrecondition
                    }
                    Rejection::NotFound { .. } => Code::NotFound,
                    Rejection::AlreadyExists { .. } => Code::AlreadyExists,
                    Rejection::Denied(
                        authsec_domain::permissions::Denial::AdminScope { .. }
                        | authsec_domain::permissions::Denial::WildcardScope { .. },
                    ) => Code::InvalidArgument,
                    Rejection::RoleInUse { .. }
                    | Rejection::TrustDomainNotConfigured
                    | Rejection::Denied(_) => Code::FailedPrecondition,
                    Rejection::AgentBanned { .. } => Code::PermissionDenied,
                    Rejection::TrustDomainAlreadyConfigured { .. }
                    | Rejection::RootAlreadyInstalled { .. } => Code::FailedPrecondition,
                    Rejection::JoinTokenInvalid | Rejection::JoinTokenExpired { .. } => {
                        Code::Unauthenticated
                    }
                    Rejection::NodeRevoked { .. } => Code::PermissionDenied,
                    Rejection::DefaultScopeNotAllowed { .. } | Rejection::InvalidField { .. } => {
                        Code::InvalidArgument
                    }
                    Rejection::LimitReached { .. } => Code::ResourceExhausted,
                };
                Status::new(code, msg)
            }
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::Unavailable { leader, .. } => {
                let mut s = Status::unavailable(msg);
                if let Some((id, addr)) = leader {
                    if let Ok(v) = id.to_string().parse() {
                        s.metadata_mut().insert(LEADER_ID_HEADER, v);
                    }
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                    }
                }
                s
            }
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}
