//! Who may call what, by SPIFFE ID, decided per request before any handler runs.
//!
//! - Raft traffic and forwarding (`authsec.internal.v1.PeerService`) and node renewal and
//!   admission (`authsec.v1.NodeService`): nodes of the trust domain, `.../authsec/node/<id>`.
//! - `NodeService/Join`: anyone; the join token authenticates it.
//! - Everything else (the admin API): admins, `.../authsec/admin/<name>`, holding the admin
//!   permission the call needs (`authsec.admin:clients.write`, ...) through the roles bound to
//!   their SPIFFE ID. The bootstrap admin, `.../authsec/admin/root`, holds every admin
//!   permission: it is the break-glass credential `node init` hands the operator.
//!
//! A revoked node is refused here too, so revocation applies at once to requests on
//! connections opened before it. With `--insecure` there is no identity and no check.

use std::sync::Arc;
use std::task::{Context, Poll};

use authsec_domain::codec::{self, Tag};
use authsec_domain::permissions::PermissionSet;
use authsec_domain::{Role, RoleName, Scope, SpiffeId, Subject};
use authsec_raft::tls::{node_id_of, PeerInfo, TlsState};
use authsec_storage::{cf, Reader};

/// The admin permission (after `authsec.admin:`) a call of the admin API needs.
pub fn admin_permission(path: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let area = match service.trim_start_matches("authsec.v1.") {
        "ClientService" => "clients",
        "EntryService" => "entries",
        "RoleService" if matches!(method, "Bind" | "Unbind") => "bindings",
        "RoleService" => "roles",
        "DelegationService" => "delegations",
        "RevocationService" => "revocations",
        "AgentService" => "agents",
        "EventService" | "AuditService" => "audit",
        "SvidService" => "svids",
        "FederationService" => "federation",
        "ConsoleService" => "console",
        "RootService" => "ca",
        "ClusterService" if matches!(method, "IssueAdmin" | "ListAdmins") => "admins",
        "ClusterService" if method == "SaveSnapshot" => "backup",
        "ClusterService" => "cluster",
        _ => "other",
    };
    let read = [
        "Get",
        "List",
        "Describe",
        "Status",
        "Check",
        "Feed",
        "Export",
        "Head",
        "SaveSnapshot",
    ]
    .iter()
    .any(|p| method.starts_with(p));
    format!("{area}.{}", if read { "read" } else { "write" })
}

/// Who holds which admin permissions: the roles bound to an admin's SPIFFE ID, read from this
/// node's projections per request (two point reads and a short prefix scan).
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    pub reader: Reader,
}

impl AdminPolicy {
    /// The admin permissions `id` holds through its roles.
    pub fn permissions(&self, id: &SpiffeId) -> Result<PermissionSet, authsec_storage::StoreError> {
        let prefix = authsec_domain::persist::binding_prefix(&Subject::Spiffe(id.clone()));
        let (roles, _) = self.reader.scan(
            cf::PROJ_BINDINGS,
            &prefix,
            None,
            authsec_domain::limits::ROLES_PER_SUBJECT_MAX,
            authsec_domain::limits::ROLES_PER_SUBJECT_MAX,
            |k, v| {
                codec::decode::<(Subject, RoleName)>(Tag::BINDING, v)
                    .map(|(_, r)| Some(r))
                    .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_BINDINGS, k, e))
            },
        )?;
        let mut set = PermissionSet::default();
        for r in roles {
            let key = r.as_str().as_bytes();
            if let Some(v) = self.reader.row(cf::PROJ_ROLES, key)? {
                let role: Role = codec::decode(Tag::ROLE, &v)
                    .map_err(|e| authsec_storage::StoreError::damaged(cf::PROJ_ROLES, key, e))?;
                for p in &role.permissions {
                    set.insert(p);
                }
            }
        }
        Ok(set)
    }

    /// `Ok(())` when `id` may make a call that needs `authsec.admin:<perm>`.
    pub fn check(
        &self,
        td: &authsec_domain::TrustDomain,
        id: &SpiffeId,
        perm: &str,
    ) -> Result<(), tonic::Status> {
        if crate::pki::admin_name_of(td, id) == Some(crate::init::BOOTSTRAP_ADMIN) {
            return Ok(());
        }
        let want = format!("{}:{perm}", authsec_domain::permissions::ADMIN_RESOURCE);
        let held = self.permissions(id).map_err(|e| {
            tracing::error!(error = %e, "reading admin bindings failed");
            tonic::Status::internal("reading the caller's roles failed; see the node's log")
        })?;
        let ok = Scope::parse(&want)
            .map(|s| held.covers(&s))
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "{id} lacks the admin permission {want}; bind it a role that grants it (authsec bind <role> {id})"
            )))
        }
    }
}

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Anyone,
    Node,
    Admin,
    /// Any identity of the trust domain (an agent, a workload, a node, an admin); the service
    /// decides what it may do.
    Identity,
    /// Any admin identity, whatever its roles: the call acts on the caller's own credential
    /// only (rotating it).
    AnyAdmin,
}

pub fn need(path: &str) -> Need {
    // Joining and agent attestation are authenticated by their tokens; the trust bundle is
    // public.
    if path == "/authsec.v1.NodeService/Join"
        || path == "/authsec.v1.AgentApiService/Attest"
        || path.starts_with("/authsec.v1.BundleService/")
    {
        Need::Anyone
    } else if path.starts_with("/authsec.v1.SvidService/")
        || path.starts_with("/authsec.v1.AgentApiService/")
    {
        Need::Identity
    } else if path == "/authsec.v1.ClusterService/RotateAdmin" {
        Need::AnyAdmin
    } else if path.starts_with("/authsec.internal.v1.PeerService/")
        || path.starts_with("/authsec.v1.NodeService/")
    {
        Need::Node
    } else {
        Need::Admin
    }
}

/// The authenticated caller of a request, if any.
pub fn caller<B>(req: &tonic::Request<B>) -> Option<SpiffeId> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.spiffe_id.clone())
}

/// Check one request; `Err` is the status to answer.
pub fn check(
    tls: &TlsState,
    policy: &AdminPolicy,
    path: &str,
    peer: Option<&PeerInfo>,
) -> Result<(), tonic::Status> {
    let need = need(path);
    if need == Need::Anyone {
        return Ok(());
    }
    let td = tls.trust_domain();
    let Some(id) = peer.and_then(|p| p.spiffe_id.as_ref()) else {
        return Err(tonic::Status::unauthenticated(format!(
            "{path} needs a client certificate from trust domain {td}"
        )));
    };
    if tls.is_revoked(id) {
        return Err(tonic::Status::permission_denied(format!("{id} is revoked")));
    }
    let ok = match need {
        Need::Node => node_id_of(td, id).is_some(),
        Need::Admin | Need::AnyAdmin => crate::pki::admin_name_of(td, id).is_some(),
        Need::Anyone | Need::Identity => true,
    };
    if ok && need == Need::Admin {
        policy.check(td, id, &admin_permission(path))
    } else if ok {
        Ok(())
    } else {
        let want = match need {
            Need::Node => format!("a node identity (spiffe://{td}/authsec/node/<id>)"),
            _ => format!("an admin identity (spiffe://{td}/authsec/admin/<name>)"),
        };
        Err(tonic::Status::permission_denied(format!(
            "{path} needs {want}; {id} is not one"
        )))
    }
}

#[derive(Debug, Clone)]
pub struct AuthzLayer(pub Option<(Arc<TlsState>, AdminPolicy)>);

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            tls: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    tls: Option<(Arc<TlsState>, AdminPolicy)>,
}

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some((tls, policy)) = &self.tls {
            let peer = req.extensions().get::<PeerInfo>();
            if let Err(status) = check(tls, policy, req.uri().path(), peer) {
                tracing::info!(
                    path = req.uri().path(),
                    caller = ?peer.and_then(|p| p.spiffe_id.as_ref()).map(|i| i.as_str()),
                    remote = ?peer.and_then(|p| p.remote),
                    code = ?status.code(),
                    "request refused"
                );
                return futures::future::Either::Right(futures::future::ready(Ok(
                    status.into_http()
                )));
            }
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::{admin_permission, need, Need};

    #[test]
    fn every_admin_call_maps_to_one_permission() {
        for (path, want) in [
            ("/authsec.v1.ClientService/CreateClient", "clients.write"),
            ("/authsec.v1.ClientService/ListClients", "clients.read"),
            ("/authsec.v1.ClientService/DescribeClient", "clients.read"),
            ("/authsec.v1.ClientService/RotateSecret", "clients.write"),
            ("/authsec.v1.EntryService/GetEntry", "entries.read"),
            ("/authsec.v1.EntryService/UpdateEntry", "entries.write"),
            ("/authsec.v1.RoleService/Bind", "bindings.write"),
            ("/authsec.v1.RoleService/ListBindings", "roles.read"),
            ("/authsec.v1.RoleService/CreateRole", "roles.write"),
            ("/authsec.v1.DelegationService/Check", "delegations.read"),
            (
                "/authsec.v1.DelegationService/CreateDelegation",
                "delegations.write",
            ),
            ("/authsec.v1.RevocationService/Revoke", "revocations.write"),
            ("/authsec.v1.AgentService/CreateJoinToken", "agents.write"),
            ("/authsec.v1.EventService/Feed", "audit.read"),
            ("/authsec.v1.AuditService/Export", "audit.read"),
            ("/authsec.v1.AuditService/Head", "audit.read"),
            ("/authsec.v1.ClusterService/Status", "cluster.read"),
            ("/authsec.v1.ClusterService/RemoveNode", "cluster.write"),
            ("/authsec.v1.ClusterService/IssueAdmin", "admins.write"),
            ("/authsec.v1.ClusterService/ListAdmins", "admins.read"),
            ("/authsec.v1.ClusterService/SaveSnapshot", "backup.read"),
            ("/authsec.v1.ConsoleService/CreateLogin", "console.write"),
            ("/authsec.v1.Unknown/Thing", "other.write"),
        ] {
            assert_eq!(admin_permission(path), want, "{path}");
        }
    }

    #[test]
    fn rotating_ones_own_credential_needs_an_admin_identity_and_no_role() {
        assert_eq!(
            need("/authsec.v1.ClusterService/RotateAdmin"),
            Need::AnyAdmin
        );
        assert_eq!(need("/authsec.v1.ClusterService/IssueAdmin"), Need::Admin);
        assert_eq!(need("/authsec.v1.ClusterService/ListAdmins"), Need::Admin);
    }
}
