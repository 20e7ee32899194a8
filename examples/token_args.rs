//! The token half of the examples, shared by both binaries.
#![allow(dead_code)]

use std::sync::Arc;

use authsec_sdk::tls::{client_config, Authorize};
use authsec_sdk::token::{ClientAuth, TokenClient, TokenRequest};
use authsec_sdk::workload::X509Source;

/// The AI agent's token settings: with `--token-endpoint`, it authenticates to authsec with
/// its X.509-SVID (tls_client_auth) and exchanges `--subject-token-file` (the delegator's
/// token) for a delegated token, or without one asks for its own (client credentials).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentTokenArgs {
    /// https://host:port/oauth2/token of any authsec node.
    #[arg(long)]
    pub token_endpoint: Option<String>,
    /// The agent's OAuth client id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// The delegator's access token, in a file: the agent gets a delegated token for it.
    #[arg(long)]
    pub subject_token_file: Option<std::path::PathBuf>,
    /// Scopes to ask for (space separated).
    #[arg(long, default_value = "")]
    pub scope: String,
    /// The resource (the tool's URL or audience).
    #[arg(long)]
    pub resource: Option<String>,
    /// The trust domain of the authsec nodes serving the token endpoint.
    #[arg(long, default_value = "example.org")]
    pub authsec_trust_domain: String,
}

/// A token source for the agent.
#[derive(Debug)]
pub struct AgentTokens {
    client: TokenClient,
    req: TokenRequest,
    source: X509Source,
    /// The SVID serial the cached token is bound to (tls_client_auth tokens carry
    /// `cnf.x5t#S256` of the certificate they were issued over).
    bound_to: std::sync::Mutex<String>,
}

impl AgentTokens {
    /// A bearer token: cached and refreshed before expiry by the SDK; fetched again when the
    /// SVID rotated, since the cached one is bound to the old certificate.
    pub async fn bearer(&self) -> anyhow::Result<String> {
        let serial = self.source.svid().map(|s| s.serial()).unwrap_or_default();
        {
            let mut b = self.bound_to.lock().unwrap_or_else(|p| p.into_inner());
            if *b != serial {
                self.client.invalidate(&self.req);
                *b = serial;
            }
        }
        Ok(self.client.token(&self.req).await?.secret().to_owned())
    }
}

impl AgentTokenArgs {
    pub async fn client(&self, source: &X509Source) -> anyhow::Result<Option<AgentTokens>> {
        let Some(endpoint) = &self.token_endpoint else {
            return Ok(None);
        };
        let client_id = self
            .client_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--client-id is required with --token-endpoint"))?;
        // The token endpoint is an authsec node: accept it by its SPIFFE ID; present the SVID.
        let prefix = format!("spiffe://{}/authsec/node/", self.authsec_trust_domain);
        let mut tls = client_config(source, Authorize::with(move |id| id.starts_with(&prefix)))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = TokenClient::new(
            endpoint.clone(),
            Arc::new(tls),
            ClientAuth::tls_client_auth(client_id),
        )?;
        let mut req = match &self.subject_token_file {
            Some(f) => TokenRequest::token_exchange(std::fs::read_to_string(f)?.trim().to_owned()),
            None => TokenRequest::client_credentials(),
        };
        if !self.scope.is_empty() {
            req = req.scope(&self.scope);
        }
        if let Some(r) = &self.resource {
            req = req.resource(r.clone());
        }
        Ok(Some(AgentTokens {
            client,
            req,
            source: source.clone(),
            bound_to: std::sync::Mutex::new(String::new()),
        }))
    }
}

/// The tool service's token settings: with `--issuer`, every call needs an access token of
/// that issuer for `--audience` with `--required-scope`, checked by the SDK verifier (keys
/// from `--jwks-url`, revocations streamed from `--authsec-node`).
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The issuer tokens must come from (their `iss`).
    #[arg(long)]
    pub issuer: Option<String>,
    /// JWKS URLs of the issuer's nodes (https://node:port/.well-known/jwks.json; repeat).
    #[arg(long = "jwks-url")]
    pub jwks_urls: Vec<String>,
    /// Node gRPC addresses to follow revocations from (repeat).
    #[arg(long = "authsec-node")]
    pub nodes: Vec<String>,
    /// The audience tokens must carry (this tool's resource identifier).
    #[arg(long, default_value = "")]
    pub audience: String,
    /// The scope every call needs (repeat).
    #[arg(long)]
    pub required_scope: Vec<String>,
    /// The trust domain of the authsec nodes (their SVIDs authenticate them).
    #[arg(long, default_value = "example.org")]
    pub authsec_trust_domain: String,
}

impl TokenArgs {
    /// The SDK's bearer layer, when `--issuer` is set.
    pub async fn layer(
        &self,
        source: &X509Source,
    ) -> anyhow::Result<Option<authsec_sdk::layer::BearerLayer>> {
        use authsec_sdk::verify::{KeySource, RevocationSource, Verifier, VerifierConfig};
        let Some(issuer) = &self.issuer else {
            return Ok(None);
        };
        anyhow::ensure!(
            !self.jwks_urls.is_empty(),
            "--jwks-url is required with --issuer"
        );
        anyhow::ensure!(
            !self.audience.is_empty(),
            "--audience is required with --issuer"
        );
        let prefix = format!("spiffe://{}/authsec/node/", self.authsec_trust_domain);
        let nodes = Authorize::with(move |id| id.starts_with(&prefix));
        let mut https = client_config(source, nodes.clone())?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        let keys = KeySource::Jwks {
            uris: self.jwks_urls.clone(),
            tls: Arc::new(https),
        };
        let revocations = if self.nodes.is_empty() {
            None
        } else {
            let mut grpc = client_config(source, nodes)?;
            grpc.alpn_protocols = vec![b"h2".to_vec()];
            let grpc = Arc::new(grpc);
            let channels = self
                .nodes
                .iter()
                .map(|a| authsec_tls::tls_channel(a.clone(), grpc.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(RevocationSource::new(channels)?)
        };
        let verifier = Verifier::new(
            VerifierConfig::new(issuer.clone(), self.audience.clone(), keys),
            revocations,
        )?;
        let meta =
            authsec_sdk::layer::ResourceMetadata::new(self.audience.clone(), [issuer.clone()])
                .scopes_supported(self.required_scope.clone());
        Ok(Some(
            authsec_sdk::layer::BearerLayer::new(verifier, meta)
                .require_scopes(self.required_scope.clone()),
        ))
    }
}
