//! Every bound the domain enforces, in one place.

/// Longest trust domain name, per the SPIFFE ID standard.
pub const TRUST_DOMAIN_BYTES_MAX: usize = 255;
/// Longest SPIFFE ID accepted, per the SPIFFE ID standard.
pub const SPIFFE_ID_BYTES_MAX: usize = 2048;
/// Longest client id. Client ids become SPIFFE path segments, so they share that alphabet.
pub const CLIENT_ID_BYTES_MAX: usize = 128;
/// Longest scope or permission string.
pub const SCOPE_BYTES_MAX: usize = 256;
/// Most scopes in a client's allow-list or default scopes.
pub const SCOPES_PER_CLIENT_MAX: usize = 256;
/// Longest free-text field (display name, owner, description, audience).
pub const TEXT_BYTES_MAX: usize = 1024;
/// Longest node address (`host:port`).
pub const NODE_ADDR_BYTES_MAX: usize = 256;
/// Most clients one trust domain holds.
pub const CLIENTS_MAX: usize = 10_000_000;
/// Most proposals the leader packs into one log entry (group commit).
pub const PROPOSALS_PER_BATCH_MAX: usize = 512;
/// Most encoded bytes of one log entry's batch.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Largest value the codec will decode (a corrupt length can never make it allocate more).
pub const CODEC_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most unspent join tokens at once.
pub const JOIN_TOKENS_MAX: usize = 1024;
/// Longest join token id.
pub const JOIN_TOKEN_ID_BYTES_MAX: usize = 64;
/// Longest join token lifetime: a week.
pub const JOIN_TOKEN_TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Largest root CA certificate.
pub const ROOT_CERT_BYTES_MAX: usize = 16 * 1024;
/// Most single certificates on the revocation list.
pub const REVOKED_CERTS_MAX: usize = 100_000;
/// Longest admin name (a SPIFFE path segment).
pub const ADMIN_NAME_BYTES_MAX: usize = 64;
