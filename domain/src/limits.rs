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
/// Longest workload entry id.
pub const ENTRY_ID_BYTES_MAX: usize = 128;
/// Longest role name.
pub const ROLE_NAME_BYTES_MAX: usize = 128;
/// Longest delegation id.
pub const DELEGATION_ID_BYTES_MAX: usize = 128;
/// Longest selector (`type:value`).
pub const SELECTOR_BYTES_MAX: usize = 512;
/// Most selectors on one entry.
pub const SELECTORS_PER_ENTRY_MAX: usize = 32;
/// Most DNS names on one entry.
pub const DNS_NAMES_PER_ENTRY_MAX: usize = 32;
/// Most trust domains one entry federates with.
pub const FEDERATES_WITH_MAX: usize = 32;
/// X.509-SVID lifetime bounds, seconds (default one hour; as short as 10 s for workloads that
/// rotate fast, the agent renewing at half-life).
pub const X509_TTL_S_MIN: u32 = 10;
pub const X509_TTL_S_MAX: u32 = 7 * 24 * 3600;
pub const X509_TTL_S_DEFAULT: u32 = 3600;
/// JWT-SVID lifetime bounds, seconds (default five minutes).
pub const JWT_TTL_S_MIN: u32 = 30;
pub const JWT_TTL_S_MAX: u32 = 24 * 3600;
pub const JWT_TTL_S_DEFAULT: u32 = 300;
/// Most permissions in one role.
pub const PERMISSIONS_PER_ROLE_MAX: usize = 1024;
/// Most roles, entries, delegations, agents.
pub const ROLES_MAX: usize = 100_000;
pub const ENTRIES_MAX: usize = 10_000_000;
pub const DELEGATIONS_MAX: usize = 10_000_000;
pub const AGENTS_MAX: usize = 1_000_000;
/// Most roles bound to one subject.
pub const ROLES_PER_SUBJECT_MAX: usize = 256;
/// Most public keys (private_key_jwt) one client registers.
pub const PUBLIC_KEYS_PER_CLIENT_MAX: usize = 8;
/// Largest public key (a JWK as JSON, or PEM).
pub const PUBLIC_KEY_BYTES_MAX: usize = 4096;
/// Longest key id.
pub const KEY_ID_BYTES_MAX: usize = 128;
/// Longest overlap during which a rotated client secret still works: 30 days.
pub const SECRET_OVERLAP_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Longest a delegation may live: one year.
pub const DELEGATION_LIFETIME_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
/// Longest token a delegation lets a delegate hold: one day.
pub const DELEGATION_TOKEN_TTL_S_MAX: u32 = 24 * 3600;
/// Deepest re-delegation chain.
pub const DELEGATION_DEPTH_MAX: u8 = 8;
/// Longest token id (jti) a revocation names.
pub const JTI_BYTES_MAX: usize = 256;
/// Most revoked tokens kept at once (each until it expires).
pub const REVOKED_TOKENS_MAX: usize = 10_000_000;
/// Expired token revocations forgotten per `PruneRevocations`.
pub const PRUNE_PER_COMMAND_MAX: usize = 1000;
/// Longest external issuer or subject naming a person.
pub const PERSON_BYTES_MAX: usize = 512;
/// Longest SPIFFE ID template.
pub const TEMPLATE_BYTES_MAX: usize = 512;
/// Largest public key material of a node key (a CA certificate or an SPKI).
pub const NODE_KEY_BYTES_MAX: usize = 16 * 1024;
/// Most keys of one kind one node keeps in the bundle (published, active or superseded).
pub const NODE_KEYS_PER_KIND_MAX: usize = 4;
/// Largest page a list call returns.
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Page size when a list call names none.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
