//! authsec-sdk: what an AI agent or a service links to take part in an authsec trust domain.
//!
//! - [`workload`]: live X.509 and JWT sources from the SPIFFE Workload API (any agent that
//!   serves the standard API, authsec's or SPIRE's).
//! - [`tls`]: rustls client and server configs that present the current X.509-SVID, follow
//!   its rotation without a restart, and authorize the peer by SPIFFE ID.
//! - [`token`]: an OAuth 2.0 token client (client credentials with a secret, private_key_jwt
//!   or mTLS with the SVID; token exchange for delegated tokens), caching and refreshing
//!   before expiry.
//! - [`verify`]: a token verifier for resource servers: JWKS cache refreshed on an unknown
//!   kid, the revocation stream, audience, scope and `cnf` checks, a cache of verified tokens.
//! - [`layer`]: a tower layer that requires scopes on axum and tonic services and serves RFC
//!   9728 protected-resource metadata.
#![forbid(unsafe_code)]

pub mod layer;
pub mod tls;
pub mod token;
pub mod verify;
pub mod workload;

pub use layer::{BearerLayer, ResourceMetadata};
pub use tls::{client_config, server_config, Authorize};
pub use token::{AccessToken, AssertionKey, ClientAuth, TokenClient, TokenError, TokenRequest};
pub use verify::{
    AccessClaims, CertThumbprint, KeySource, RevocationSource, Verifier, VerifierConfig,
    VerifyError,
};
pub use workload::{JwtSource, WorkloadClient, X509Context, X509Source, X509Svid};
