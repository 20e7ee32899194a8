//! The identity services of `authsec.v1`: client credentials and onboarding, workload entries,
//! roles and bindings, delegations, revocations and agents. Authorization (the caller's admin
//! permission) happens before any of this, in [`crate::authz`].

use std::sync::Arc;

use authsec_api::identity as wire;
use authsec_api::v1::{
    self, agent_service_server::AgentService, delegation_service_server::DelegationService,
    entry_service_server::EntryService, revocation_service_server::RevocationService,
    role_service_server::RoleService,
};
use authsec_api::{convert, ApiError};
use authsec_domain::codec::{self, Tag};
use authsec_domain::command::{Command, CredentialChange};
use authsec_domain::identity::ClientAuth;
use authsec_domain::persist::{self, binding_prefix};
use authsec_domain::{
    Agent, Client, ClientId, Delegation, DelegationId, Entry, EntryId, FieldError, Role, RoleName,
    SpiffeId, Subject,
};
use authsec_storage::{cf, StoreError};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use crate::secrets::{NewSecret, SecretKey, SecretKeyError};
use crate::services::Ctx;

/// Rows looked at per list call before it answers with a partial page and a token.
const SCAN_MAX: usize = 10_000;

fn invalid(e: FieldError) -> Status {
    ApiError::from(e).into()
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed");
    ApiError::Internal("storage read failed; see the node's log".into()).into()
}

fn secret_key_status(e: SecretKeyError) -> Status {
    match e {
        SecretKeyError::NotInstalled | SecretKeyError::NoKek(_) => {
            ApiError::FailedPrecondition(e.to_string()).into()
        }
        e => internal(e),
    }
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// `<prefix>-<20 hex digits>` from the OS random source (never in the state machine).
fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 10];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    format!("{prefix}-{}", hex::encode(b))
}

fn decode<T: DeserializeOwned>(
    family: &'static str,
    tag: Tag,
    k: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    codec::decode(tag, v).map_err(|e| StoreError::damaged(family, k, e))
}

fn get<T: DeserializeOwned>(
    ctx: &Ctx,
    family: &'static str,
    tag: Tag,
    key: &[u8],
) -> Result<Option<T>, Status> {
    match ctx.reader.row(family, key).map_err(internal)? {
        Some(v) => decode(family, tag, key, &v).map(Some).map_err(internal),
        None => Ok(None),
    }
}

/// One page of a family's rows whose keys start with `prefix`, filtered and converted.
#[allow(clippy::too_many_arguments)]
fn page<T: DeserializeOwned, W>(
    ctx: &Ctx,
    family: &'static str,
    tag: Tag,
    prefix: &[u8],
    size: u32,
    token: &str,
    filter: impl Fn(&T) -> bool,
    to_wire: impl Fn(&T) -> W,
) -> Result<(Vec<W>, String), Status> {
    let size = wire::page_size(size).map_err(invalid)?;
    let after = wire::page_token(token).map_err(invalid)?;
    let (rows, last) = ctx
        .reader
        .scan(family, prefix, after.as_deref(), size, SCAN_MAX, |k, v| {
            let t: T = decode(family, tag, k, v)?;
            Ok(filter(&t).then(|| to_wire(&t)))
        })
        .map_err(internal)?;
    Ok((rows, wire::page_token_of(last)))
}

fn receipt_only(r: v1::WriteReceipt) -> Response<v1::WriteResponse> {
    Response::new(v1::WriteResponse { receipt: Some(r) })
}

fn client_auth(ctx: &Ctx, id: &ClientId) -> Result<ClientAuth, Status> {
    let v: Option<(ClientId, ClientAuth)> = get(
        ctx,
        cf::PROJ_CLIENT_AUTH,
        Tag::CLIENT_AUTH,
        id.as_str().as_bytes(),
    )?;
    Ok(v.map(|(_, a)| a).unwrap_or_default())
}

fn entry(ctx: &Ctx, id: &EntryId) -> Result<Option<Entry>, Status> {
    get(ctx, cf::PROJ_ENTRIES, Tag::ENTRY, id.as_str().as_bytes())
}

fn entries_of_client(ctx: &Ctx, id: &ClientId) -> Result<Vec<Entry>, Status> {
    let (rows, _) = ctx
        .reader
        .scan(
            cf::PROJ_ENTRIES,
            b"",
            None,
            usize::MAX,
            usize::MAX,
            |k, v| {
                let e: Entry = decode(cf::PROJ_ENTRIES, Tag::ENTRY, k, v)?;
                Ok((e.client_id.as_ref() == Some(id)).then_some(e))
            },
        )
        .map_err(internal)?;
    Ok(rows)
}

fn roles_of(ctx: &Ctx, s: &Subject) -> Result<Vec<String>, Status> {
    let (rows, _) = ctx
        .reader
        .scan(
            cf::PROJ_BINDINGS,
            &binding_prefix(s),
            None,
            usize::MAX,
            usize::MAX,
            |k, v| {
                let (_, r): (Subject, RoleName) = decode(cf::PROJ_BINDINGS, Tag::BINDING, k, v)?;
                Ok(Some(r.to_string()))
            },
        )
        .map_err(internal)?;
    Ok(rows)
}

/// What the operator does after onboarding an AI agent.
fn next_steps(c: &Client, e: &Entry) -> Vec<String> {
    let id = &c.client_id;
    let td = e.spiffe_id.trust_domain();
    vec![
        format!(
            "Deploy an agent on the host that runs {id}: `authsec agent token create --name <host>` prints a single-use token; start `authsec-agent run --trust-domain {td} --server <node:port> --ca-pin <sha256:...> --join-token-file <file>` there (docs/guide/2-agent-and-sdk.md)."
        ),
        format!(
            "Tell the agent how to recognize the workload: `authsec entry update {} --parent spiffe://{td}/authsec/agent/<host> --selector unix:uid:<uid> --selector unix:path:<binary>` (the entry is awaiting-agent until the agent attests).",
            e.entry_id
        ),
        format!(
            "Link the SDK in the agent's code: it gets {} from the agent's Workload API socket (SPIFFE_ENDPOINT_SOCKET) and tokens as client {id} with that SVID (tls_client_auth).",
            e.spiffe_id
        ),
        format!(
            "Configure delegation: `authsec role create <role> --permission <resource:action>`, `authsec bind <role> client:{id}`, then `authsec delegation create --from client:<service> --to {id} --permission <resource:action>` (docs/guide/3-delegation.md)."
        ),
    ]
}

// ---- ClientService (the calls beyond register/update/remove/get/list) ----

pub async fn create_client(
    ctx: &Ctx,
    req: Request<v1::CreateClientRequest>,
) -> Result<Response<v1::CreateClientResponse>, Status> {
    let actor = ctx.actor(&req);
    let r = req.into_inner();
    let secret = if r.generate_secret {
        let key = SecretKey::load(
            &ctx.reader,
            ctx.sec.kek_path(),
            &ctx.sec.td,
            ctx.sec.tls_dir(),
        )
        .map_err(secret_key_status)?;
        let s = NewSecret::generate();
        let h = key.hash(s.reveal());
        Some((s, h))
    } else {
        None
    };
    let generated = ClientId::parse(&random_id("c")).map_err(invalid)?;
    let entry_id = EntryId::parse(&random_id("e")).map_err(invalid)?;
    let cmd = wire::create_client(
        r,
        generated,
        secret.as_ref().map(|(_, h)| *h),
        entry_id.clone(),
        &ctx.agent_template,
    )
    .map_err(invalid)?;
    let id = cmd.client_id.clone();
    let is_agent = cmd.agent_entry.is_some();
    let (receipt, _) = ctx.write(actor, Command::CreateClient(cmd)).await?;
    let client = ctx
        .reader
        .client(&id)
        .map_err(internal)?
        .ok_or_else(|| internal("a created client is missing"))?;
    let entry = if is_agent {
        entry(ctx, &entry_id)?
    } else {
        None
    };
    let steps = match &entry {
        Some(e) => next_steps(&client, e),
        None => Vec::new(),
    };
    Ok(Response::new(v1::CreateClientResponse {
        receipt: Some(receipt),
        credentials: Some(wire::credentials_to_wire(&client_auth(ctx, &id)?)),
        client: Some(convert::client_to_wire(&client)),
        client_secret: secret
            .map(|(s, _)| s.reveal().to_owned())
            .unwrap_or_default(),
        entry: entry.as_ref().map(|e| entry_out(ctx, e)),
        next_steps: steps,
    }))
}

pub async fn describe_client(
    ctx: &Ctx,
    req: Request<v1::GetClientRequest>,
) -> Result<Response<v1::ClientDetail>, Status> {
    let r = req.into_inner();
    let id = convert::client_id(&r.client_id).map_err(invalid)?;
    ctx.read_point(r.consistency).await?;
    let client = ctx
        .reader
        .client(&id)
        .map_err(internal)?
        .ok_or_else(|| Status::from(ApiError::NotFound(format!("client {id}"))))?;
    Ok(Response::new(v1::ClientDetail {
        client: Some(convert::client_to_wire(&client)),
        credentials: Some(wire::credentials_to_wire(&client_auth(ctx, &id)?)),
        entries: entries_of_client(ctx, &id)?
            .iter()
            .map(|e| entry_out(ctx, e))
            .collect(),
        roles: roles_of(ctx, &Subject::Client(id))?,
    }))
}

pub async fn rotate_secret(
    ctx: &Ctx,
    req: Request<v1::RotateSecretRequest>,
) -> Result<Response<v1::RotateSecretResponse>, Status> {
    let actor = ctx.actor(&req);
    let r = req.into_inner();
    let id = convert::client_id(&r.client_id).map_err(invalid)?;
    let overlap_ms = r
        .overlap_seconds
        .checked_mul(1000)
        .ok_or_else(|| invalid(FieldError::new("overlap_seconds", "too large")))?;
    let key = SecretKey::load(
        &ctx.reader,
        ctx.sec.kek_path(),
        &ctx.sec.td,
        ctx.sec.tls_dir(),
    )
    .map_err(secret_key_status)?;
    let s = NewSecret::generate();
    let (receipt, _) = ctx
        .write(
            actor,
            Command::ChangeClientCredentials {
                client_id: id.clone(),
                change: CredentialChange::RotateSecret {
                    secret_hash: key.hash(s.reveal()),
                    overlap_ms,
                },
                expected_revision: r.expected_revision,
            },
        )
        .await?;
    let auth = client_auth(ctx, &id)?;
    Ok(Response::new(v1::RotateSecretResponse {
        receipt: Some(receipt),
        client_secret: s.reveal().to_owned(),
        previous_valid_until_ms: auth
            .secret
            .and_then(|s| s.previous.map(|(_, until)| until))
            .unwrap_or(0),
    }))
}

pub async fn set_credentials(
    ctx: &Ctx,
    req: Request<v1::SetCredentialsRequest>,
) -> Result<Response<v1::WriteResponse>, Status> {
    let actor = ctx.actor(&req);
    let r = req.into_inner();
    let id = convert::client_id(&r.client_id).map_err(invalid)?;
    let change = match (r.public_keys, r.spiffe_id) {
        (Some(keys), None) => {
            CredentialChange::SetPublicKeys(wire::public_keys(keys.keys).map_err(invalid)?)
        }
        (None, Some(s)) if s.is_empty() => CredentialChange::SetSpiffeId(None),
        (None, Some(s)) => {
            CredentialChange::SetSpiffeId(Some(wire::spiffe_id("spiffe_id", &s).map_err(invalid)?))
        }
        _ => {
            return Err(invalid(FieldError::new(
                "public_keys",
                "set exactly one of public_keys and spiffe_id per call",
            )))
        }
    };
    let (receipt, _) = ctx
        .write(
            actor,
            Command::ChangeClientCredentials {
                client_id: id,
                change,
                expected_revision: r.expected_revision,
            },
        )
        .await?;
    Ok(receipt_only(receipt))
}

pub async fn delete_client(
    ctx: &Ctx,
    req: Request<v1::DeleteClientRequest>,
) -> Result<Response<v1::WriteResponse>, Status> {
    let actor = ctx.actor(&req);
    let r = req.into_inner();
    let client_id = convert::client_id(&r.client_id).map_err(invalid)?;
    let (receipt, _) = ctx
        .write(
            actor,
            Command::DeleteClient {
                client_id,
                expected_revision: r.expected_revision,
            },
        )
        .await?;
    Ok(receipt_only(receipt))
}

/// Clients, optionally of one kind or owner.
pub async fn list_clients(
    ctx: &Ctx,
    r: v1::ListClientsRequest,
) -> Result<v1::ListClientsResponse, Status> {
    let kind = match r.kind {
        0 => None,
        k => Some(convert::kind_from_wire(k).map_err(invalid)?),
    };
    ctx.read_point(r.consistency).await?;
    // Page tokens of this call are client ids (the key itself), as before the filters came.
    let token = if r.page_token.is_empty() {
        String::new()
    } else {
        convert::client_id(&r.page_token).map_err(|e| invalid(e.at("page_token")))?;
        hex::encode(r.page_token.as_bytes())
    };
    let (clients, next) = page(
        ctx,
        cf::PROJ_CLIENTS,
        Tag::CLIENT,
        b"",
        r.page_size,
        &token,
        |c: &Client| kind.is_none_or(|k| c.kind == k) && (r.owner.is_empty() || c.owner == r.owner),
        convert::client_to_wire,
    )?;
    let next_page_token = hex::decode(&next)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    Ok(v1::ListClientsResponse {
        clients,
        next_page_token,
    })
}

// ---- EntryService ----

#[derive(Debug, Clone)]
pub struct Entries(pub Arc<Ctx>);

#[tonic::async_trait]
impl EntryService for Entries {
    async fn create_entry(
        &self,
        req: Request<v1::CreateEntryRequest>,
    ) -> Result<Response<v1::CreateEntryResponse>, Status> {
        let actor = self.0.actor(&req);
        let generated = EntryId::parse(&random_id("e")).map_err(invalid)?;
        let spec = wire::create_entry(req.into_inner(), generated).map_err(invalid)?;
        let id = spec.entry_id.clone();
        let (receipt, _) = self.0.write(actor, Command::CreateEntry(spec)).await?;
        Ok(Response::new(v1::CreateEntryResponse {
            receipt: Some(receipt),
            entry: entry(&self.0, &id)?.as_ref().map(|e| entry_out(&self.0, e)),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<v1::GetEntryRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        let r = req.into_inner();
        let id = wire::entry_id(&r.entry_id).map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        match entry(&self.0, &id)? {
            Some(e) => Ok(Response::new(entry_out(&self.0, &e))),
            None => Err(ApiError::NotFound(format!("entry {id}")).into()),
        }
    }

    async fn list_entries(
        &self,
        req: Request<v1::ListEntriesRequest>,
    ) -> Result<Response<v1::ListEntriesResponse>, Status> {
        let r = req.into_inner();
        let spiffe = (!r.spiffe_id.is_empty())
            .then(|| wire::spiffe_id("spiffe_id", &r.spiffe_id))
            .transpose()
            .map_err(invalid)?;
        let parent = (!r.parent_id.is_empty())
            .then(|| wire::spiffe_id("parent_id", &r.parent_id))
            .transpose()
            .map_err(invalid)?;
        let client = (!r.client_id.is_empty())
            .then(|| convert::client_id(&r.client_id))
            .transpose()
            .map_err(invalid)?;
        if !matches!(
            r.status.as_str(),
            "" | "awaiting-agent" | "active" | "agent-offline" | "agent-banned"
        ) {
            return Err(invalid(FieldError::new(
                "status",
                "must be awaiting-agent, active, agent-offline or agent-banned",
            )));
        }
        self.0.read_point(r.consistency).await?;
        let (entries, next_page_token) = page(
            &self.0,
            cf::PROJ_ENTRIES,
            Tag::ENTRY,
            b"",
            r.page_size,
            &r.page_token,
            |e: &Entry| {
                spiffe.as_ref().is_none_or(|s| e.spiffe_id == *s)
                    && parent
                        .as_ref()
                        .is_none_or(|p| e.parent_id.as_ref() == Some(p))
                    && client
                        .as_ref()
                        .is_none_or(|c| e.client_id.as_ref() == Some(c))
                    && (r.status.is_empty() || entry_status(&self.0, e).as_str() == r.status)
            },
            |e| entry_out(&self.0, e),
        )?;
        Ok(Response::new(v1::ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn update_entry(
        &self,
        req: Request<v1::UpdateEntryRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let (entry_id, patch, expected_revision) =
            wire::update_entry(req.into_inner()).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::UpdateEntry {
                    entry_id,
                    patch,
                    expected_revision,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn delete_entry(
        &self,
        req: Request<v1::DeleteEntryRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let entry_id = wire::entry_id(&r.entry_id).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::DeleteEntry {
                    entry_id,
                    expected_revision: r.expected_revision,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }
}

// ---- RoleService ----

#[derive(Debug, Clone)]
pub struct Roles(pub Arc<Ctx>);

#[tonic::async_trait]
impl RoleService for Roles {
    async fn create_role(
        &self,
        req: Request<v1::CreateRoleRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let (name, description, permissions) =
            wire::create_role(req.into_inner()).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::CreateRole {
                    name,
                    description,
                    permissions,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn get_role(
        &self,
        req: Request<v1::GetRoleRequest>,
    ) -> Result<Response<v1::Role>, Status> {
        let r = req.into_inner();
        let name = wire::role_name(&r.name).map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        match get::<Role>(&self.0, cf::PROJ_ROLES, Tag::ROLE, name.as_str().as_bytes())? {
            Some(role) => Ok(Response::new(wire::role_to_wire(&role))),
            None => Err(ApiError::NotFound(format!("role {name}")).into()),
        }
    }

    async fn list_roles(
        &self,
        req: Request<v1::ListRolesRequest>,
    ) -> Result<Response<v1::ListRolesResponse>, Status> {
        let r = req.into_inner();
        self.0.read_point(r.consistency).await?;
        let (roles, next_page_token) = page(
            &self.0,
            cf::PROJ_ROLES,
            Tag::ROLE,
            b"",
            r.page_size,
            &r.page_token,
            |_: &Role| true,
            wire::role_to_wire,
        )?;
        Ok(Response::new(v1::ListRolesResponse {
            roles,
            next_page_token,
        }))
    }

    async fn update_role(
        &self,
        req: Request<v1::UpdateRoleRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let (name, description, permissions, expected_revision) =
            wire::update_role(req.into_inner()).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::UpdateRole {
                    name,
                    description,
                    permissions,
                    expected_revision,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn delete_role(
        &self,
        req: Request<v1::DeleteRoleRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let name = wire::role_name(&r.name).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::DeleteRole {
                    name,
                    expected_revision: r.expected_revision,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn bind(&self, req: Request<v1::Binding>) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let (role, subject) = wire::binding(req.get_ref()).map_err(invalid)?;
        let (receipt, _) = self.0.write(actor, Command::Bind { role, subject }).await?;
        Ok(receipt_only(receipt))
    }

    async fn unbind(
        &self,
        req: Request<v1::Binding>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let (role, subject) = wire::binding(req.get_ref()).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(actor, Command::Unbind { role, subject })
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn list_bindings(
        &self,
        req: Request<v1::ListBindingsRequest>,
    ) -> Result<Response<v1::ListBindingsResponse>, Status> {
        let r = req.into_inner();
        let prefix = if r.subject.is_empty() {
            Vec::new()
        } else {
            binding_prefix(&wire::subject("subject", &r.subject).map_err(invalid)?)
        };
        let role = (!r.role.is_empty())
            .then(|| wire::role_name(&r.role))
            .transpose()
            .map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        let (bindings, next_page_token) = page(
            &self.0,
            cf::PROJ_BINDINGS,
            Tag::BINDING,
            &prefix,
            r.page_size,
            &r.page_token,
            |(_, rn): &(Subject, RoleName)| role.as_ref().is_none_or(|want| rn == want),
            |(s, rn): &(Subject, RoleName)| v1::Binding {
                role: rn.to_string(),
                subject: s.key(),
            },
        )?;
        Ok(Response::new(v1::ListBindingsResponse {
            bindings,
            next_page_token,
        }))
    }
}

// ---- DelegationService ----

#[derive(Debug, Clone)]
pub struct Delegations(pub Arc<Ctx>);

fn delegation(ctx: &Ctx, id: &DelegationId) -> Result<Option<Delegation>, Status> {
    get(
        ctx,
        cf::PROJ_DELEGATIONS,
        Tag::DELEGATION,
        id.as_str().as_bytes(),
    )
}

#[tonic::async_trait]
impl DelegationService for Delegations {
    async fn create_delegation(
        &self,
        req: Request<v1::CreateDelegationRequest>,
    ) -> Result<Response<v1::CreateDelegationResponse>, Status> {
        let actor = self.0.actor(&req);
        let generated = DelegationId::parse(&random_id("d")).map_err(invalid)?;
        let spec = wire::create_delegation(req.into_inner(), generated).map_err(invalid)?;
        let id = spec.delegation_id.clone();
        let (receipt, _) = self.0.write(actor, Command::CreateDelegation(spec)).await?;
        Ok(Response::new(v1::CreateDelegationResponse {
            receipt: Some(receipt),
            delegation: delegation(&self.0, &id)?.map(|d| wire::delegation_to_wire(&d, now_ms())),
        }))
    }

    async fn get_delegation(
        &self,
        req: Request<v1::GetDelegationRequest>,
    ) -> Result<Response<v1::Delegation>, Status> {
        let r = req.into_inner();
        let id = wire::delegation_id(&r.delegation_id).map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        match delegation(&self.0, &id)? {
            Some(d) => Ok(Response::new(wire::delegation_to_wire(&d, now_ms()))),
            None => Err(ApiError::NotFound(format!("delegation {id}")).into()),
        }
    }

    async fn list_delegations(
        &self,
        req: Request<v1::ListDelegationsRequest>,
    ) -> Result<Response<v1::ListDelegationsResponse>, Status> {
        let r = req.into_inner();
        let client = (!r.client_id.is_empty())
            .then(|| convert::client_id(&r.client_id))
            .transpose()
            .map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        let now = now_ms();
        let (delegations, next_page_token) = page(
            &self.0,
            cf::PROJ_DELEGATIONS,
            Tag::DELEGATION,
            b"",
            r.page_size,
            &r.page_token,
            |d: &Delegation| {
                (r.include_revoked || d.revoked_at_index.is_none())
                    && client.as_ref().is_none_or(|c| {
                        d.delegate == *c
                            || d.delegator == authsec_domain::Delegator::Client(c.clone())
                    })
            },
            |d| wire::delegation_to_wire(d, now),
        )?;
        Ok(Response::new(v1::ListDelegationsResponse {
            delegations,
            next_page_token,
        }))
    }

    async fn check(
        &self,
        req: Request<v1::CheckRequest>,
    ) -> Result<Response<v1::CheckResponse>, Status> {
        let r = req.into_inner();
        let client = convert::client_id(&r.client_id).map_err(invalid)?;
        let scopes = convert::scopes("scopes", r.scopes).map_err(invalid)?;
        if scopes.is_empty() {
            return Err(invalid(FieldError::new(
                "scopes",
                "name at least one scope",
            )));
        }
        let delegation = (!r.delegation_id.is_empty())
            .then(|| wire::delegation_id(&r.delegation_id))
            .transpose()
            .map_err(|e| invalid(e.at("delegation_id")))?;
        self.0.read_point(r.consistency).await?;
        // An admin diagnostic: it loads the projections; issuance keeps its own view.
        let state = self.0.reader.load_state().map_err(internal)?;
        let answer = match authsec_domain::permissions::effective(
            &state,
            &client,
            &scopes,
            delegation.as_ref(),
            now_ms().max(state.meta.clock_ms),
        ) {
            Ok(granted) => v1::CheckResponse {
                allowed: true,
                granted: granted.iter().map(ToString::to_string).collect(),
                reason: String::new(),
            },
            Err(d) => v1::CheckResponse {
                allowed: false,
                granted: Vec::new(),
                reason: d.to_string(),
            },
        };
        Ok(Response::new(answer))
    }
}

// ---- RevocationService ----

#[derive(Debug, Clone)]
pub struct Revocations(pub Arc<Ctx>);

#[tonic::async_trait]
impl RevocationService for Revocations {
    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let actor = self.0.actor(&req);
        let target = wire::revoke(req.into_inner()).map_err(invalid)?;
        let (receipt, _) = self.0.write(actor, Command::Revoke(target)).await?;
        let index = receipt.log_index;
        Ok(Response::new(v1::RevokeResponse {
            receipt: Some(receipt),
            revoked_at_index: index,
        }))
    }

    async fn list_revocations(
        &self,
        req: Request<v1::ListRevocationsRequest>,
    ) -> Result<Response<v1::ListRevocationsResponse>, Status> {
        let r = req.into_inner();
        let size = wire::page_size(r.page_size).map_err(invalid)?;
        let after = wire::page_token(&r.page_token).map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        let (revocations, last) = self
            .0
            .reader
            .scan(
                cf::PROJ_REVOCATIONS,
                b"",
                after.as_deref(),
                size,
                SCAN_MAX,
                |k, v| {
                    if k.starts_with(persist::REVOKED_TOKEN_PREFIX) {
                        let t: authsec_domain::identity::RevokedToken =
                            decode(cf::PROJ_REVOCATIONS, Tag::REVOKED_TOKEN, k, v)?;
                        Ok(Some(v1::Revocation {
                            target: format!("token:{}", t.jti),
                            index: t.revoked_at_index,
                            expires_at_ms: t.expires_at_ms,
                        }))
                    } else {
                        let s: authsec_domain::identity::RevokedSubject =
                            decode(cf::PROJ_REVOCATIONS, Tag::REVOKED_SUBJECT, k, v)?;
                        Ok(Some(v1::Revocation {
                            target: s.subject,
                            index: s.below_index,
                            expires_at_ms: 0,
                        }))
                    }
                },
            )
            .map_err(internal)?;
        Ok(Response::new(v1::ListRevocationsResponse {
            revocations,
            next_page_token: wire::page_token_of(last),
        }))
    }
}

// ---- AgentService ----

#[derive(Debug, Clone)]
pub struct Agents(pub Arc<Ctx>);

/// An entry's status as an operator reads it: with its parent authsec agent's attestation,
/// ban and heartbeats (a read-time view; the log holds only the facts).
fn entry_status(ctx: &Ctx, e: &Entry) -> authsec_domain::identity::EntryStatus {
    let td = &ctx.sec.td;
    let parent = e
        .parent_id
        .as_ref()
        .filter(|p| authsec_domain::identity::agent_name_of(td, p).is_some());
    let agent = parent.and_then(|p| {
        get::<Agent>(ctx, cf::PROJ_AGENTS, Tag::AGENT, &agent_key(p))
            .ok()
            .flatten()
    });
    e.status_with_agent(
        parent.is_some(),
        agent.as_ref(),
        crate::issuer::now_ms(),
        ctx.agents.offline_after_ms(),
    )
}

/// An entry on the wire, with [`entry_status`].
pub fn entry_out(ctx: &Ctx, e: &Entry) -> v1::Entry {
    let mut w = wire::entry_to_wire(e);
    w.status = entry_status(ctx, e).as_str().into();
    w
}

fn agent_key(id: &SpiffeId) -> Vec<u8> {
    let mut k = persist::AGENT_PREFIX.to_vec();
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

#[tonic::async_trait]
impl AgentService for Agents {
    async fn create_join_token(
        &self,
        req: Request<v1::CreateAgentTokenRequest>,
    ) -> Result<Response<v1::CreateAgentTokenResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let ttl_s = if r.ttl_seconds == 0 {
            3600
        } else {
            r.ttl_seconds
        };
        let ttl_ms = ttl_s
            .checked_mul(1000)
            .ok_or_else(|| invalid(FieldError::new("ttl_seconds", "too large")))?;
        let mut token = crate::pki::JoinToken::generate();
        if !r.name.is_empty() {
            token.id = r.name.clone();
        }
        let agent_id = authsec_domain::identity::agent_spiffe_id(&self.0.sec.td, &token.id)
            .map_err(|e| invalid(FieldError::new("name", e.reason)))?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::CreateAgentToken {
                    token_id: token.id.clone(),
                    secret_hash: token.secret_hash(),
                    ttl_ms,
                },
            )
            .await?;
        let state = self.0.reader.load_identity().map_err(internal)?;
        let expires_at_ms = state
            .agent_tokens
            .get(&token.id)
            .map(|t| t.expires_at_ms)
            .unwrap_or(0);
        Ok(Response::new(v1::CreateAgentTokenResponse {
            token: token.reveal(),
            expires_at_ms,
            receipt: Some(receipt),
            agent_id: agent_id.to_string(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let r = req.into_inner();
        let id = wire::spiffe_id("spiffe_id", &r.spiffe_id).map_err(invalid)?;
        self.0.read_point(r.consistency).await?;
        match get::<Agent>(&self.0, cf::PROJ_AGENTS, Tag::AGENT, &agent_key(&id))? {
            Some(a) => Ok(Response::new(wire::agent_to_wire(&a))),
            None => Err(ApiError::NotFound(format!("agent {id}")).into()),
        }
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let r = req.into_inner();
        self.0.read_point(r.consistency).await?;
        let (agents, next_page_token) = page(
            &self.0,
            cf::PROJ_AGENTS,
            Tag::AGENT,
            persist::AGENT_PREFIX,
            r.page_size,
            &r.page_token,
            |_: &Agent| true,
            wire::agent_to_wire,
        )?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn set_banned(
        &self,
        req: Request<v1::SetAgentBannedRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let r = req.into_inner();
        let agent_id = wire::spiffe_id("spiffe_id", &r.spiffe_id).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(
                actor,
                Command::SetAgentBanned {
                    agent_id,
                    banned: r.banned,
                },
            )
            .await?;
        Ok(receipt_only(receipt))
    }

    async fn delete_agent(
        &self,
        req: Request<v1::DeleteAgentRequest>,
    ) -> Result<Response<v1::WriteResponse>, Status> {
        let actor = self.0.actor(&req);
        let agent_id =
            wire::spiffe_id("spiffe_id", &req.into_inner().spiffe_id).map_err(invalid)?;
        let (receipt, _) = self
            .0
            .write(actor, Command::DeleteAgent { agent_id })
            .await?;
        Ok(receipt_only(receipt))
    }
}
