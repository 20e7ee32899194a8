//! Who may call what, by SPIFFE ID, decided per request before any handler runs.
//!
//! - Raft traffic and forwarding (`authsec.internal.v1.PeerService`) and node renewal and
//!   admission (`authsec.v1.NodeService`): nodes of the trust domain, `.../authsec/node/<id>`.
//! - `NodeService/Join`: anyone; the join token authenticates it.
//! - Everything else (the admin API): admins, `.../authsec/admin/<name>`.
//!
//! A revoked node is refused here too, so revocation applies at once to requests on
//! connections opened before it. With `--insecure` there is no identity and no check.

use std::sync::Arc;
use std::task::{Context, Poll};

use authsec_domain::SpiffeId;
use authsec_raft::tls::{node_id_of, PeerInfo, TlsState};

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Anyone,
    Node,
    Admin,
}

pub fn need(path: &str) -> Need {
    if path == "/authsec.v1.NodeService/Join" {
        Need::Anyone
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
pub fn check(tls: &TlsState, path: &str, peer: Option<&PeerInfo>) -> Result<(), tonic::Status> {
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
        Need::Admin => crate::pki::admin_name_of(td, id).is_some(),
        Need::Anyone => true,
    };
    if ok {
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
pub struct AuthzLayer(pub Option<Arc<TlsState>>);

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
    tls: Option<Arc<TlsState>>,
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
        if let Some(tls) = &self.tls {
            let peer = req.extensions().get::<PeerInfo>();
            if let Err(status) = check(tls, req.uri().path(), peer) {
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
