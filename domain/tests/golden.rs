//! Golden files pin every persisted and hashed shape: a change that alters bytes already on
//! disk or in an archive fails here. Regenerate only for a new codec version:
//! `UPDATE_GOLDEN=1 cargo test -p authsec-domain --test golden`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use authsec_domain::codec::{self, Tag};
use authsec_domain::command::{ClientPatch, RegisterClient};
use authsec_domain::{
    chain_next, Actor, ArchiveHead, AuditRecord, Batch, Client, ClientId, ClientKind, Command,
    Event, JoinToken, NodeRecord, Principal, Proposal, Scope, SecurityState, Stamp, StateMeta,
    TrustDomain, GENESIS_HASH,
};

fn scopes(list: &[&str]) -> BTreeSet<Scope> {
    list.iter()
        .map(|s| Scope::parse(s).expect("valid scope"))
        .collect()
}

fn client() -> Client {
    Client {
        client_id: ClientId::parse("billing-agent").expect("valid"),
        kind: ClientKind::AiAgent,
        display_name: "Billing agent".into(),
        description: "pays invoices".into(),
        owner: "team-finance".into(),
        allowed_scopes: scopes(&["invoices:*", "orders:read"]),
        default_scopes: scopes(&["orders:read"]),
        default_audience: "https://api.example".into(),
        enabled: true,
        revision: 1,
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000,
    }
}

fn record() -> AuditRecord {
    AuditRecord {
        sequence: 7,
        log_index: 42,
        time_ms: 1_700_000_000_123,
        actor: Actor {
            principal: Principal::Named("spiffe://example.org/admin".into()),
            via_node: 2,
        },
        kind: "client.registered".into(),
        subject: "client:billing-agent".into(),
        event: Event::ClientRegistered { client: client() },
    }
}

fn check(name: &str, bytes: &[u8]) {
    // At run time: test binaries are shared across clones through one target directory.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden")
        .join(format!("{name}.hex"));
    let hex = hex::encode(bytes);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, format!("{hex}\n")).expect("write golden file");
        return;
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        hex,
        want.trim(),
        "{name}: encoding changed; this breaks data already stored"
    );
}

#[test]
fn audit_record_v1() {
    let bytes = record().to_bytes();
    check("audit_record_v1", &bytes);
    assert_eq!(AuditRecord::from_bytes(&bytes).expect("decodes"), record());
}

#[test]
fn hash_chain_v1() {
    let h1 = chain_next(&GENESIS_HASH, &record().to_bytes());
    let h2 = chain_next(&h1, b"second");
    check("hash_chain_v1", &[h1, h2].concat());
}

#[test]
fn projections_v1() {
    check("client_v1", &codec::encode(Tag::CLIENT, &client()));
    let meta = StateMeta {
        trust_domain: Some(TrustDomain::parse("example.org").expect("valid")),
        clock_ms: 99,
    };
    check("state_meta_v1", &codec::encode(Tag::STATE_META, &meta));
    let security = SecurityState {
        root_cert: Some(vec![0x30, 0x82, 0x01]),
        join_tokens: [(
            "0123456789abcdef".to_owned(),
            JoinToken {
                secret_hash: [0x11; 32],
                created_at_ms: 10,
                expires_at_ms: 20,
            },
        )]
        .into(),
        revoked_nodes: [4u64].into(),
        revoked_certs: [format!("sha256:{}", "ab".repeat(32))].into(),
        pending_admission: [5u64].into(),
    };
    check(
        "security_state_v1",
        &codec::encode(Tag::SECURITY_STATE, &security),
    );
    let node = NodeRecord {
        node_id: 3,
        addr: "10.0.0.3:7101".into(),
        recorded_at_ms: 5,
    };
    check("node_record_v1", &codec::encode(Tag::NODE_RECORD, &node));
    check(
        "archive_head_v1",
        &codec::encode(
            Tag::ARCHIVE_HEAD,
            &ArchiveHead {
                sequence: 9,
                hash: [0xab; 32],
            },
        ),
    );
}

#[test]
fn batch_v1() {
    let batch = Batch {
        proposals: vec![
            Proposal {
                stamp: Stamp {
                    time_ms: 1_700_000_000_000,
                    seed: [7; 16],
                },
                actor: Actor {
                    principal: Principal::Anonymous,
                    via_node: 1,
                },
                command: Command::RegisterClient(RegisterClient {
                    client_id: None,
                    kind: ClientKind::Service,
                    display_name: "svc".into(),
                    description: String::new(),
                    owner: String::new(),
                    allowed_scopes: scopes(&["a:b"]),
                    default_scopes: BTreeSet::new(),
                    default_audience: "aud".into(),
                }),
            },
            Proposal {
                stamp: Stamp {
                    time_ms: 1_700_000_000_000,
                    seed: [8; 16],
                },
                actor: Actor {
                    principal: Principal::System,
                    via_node: 0,
                },
                command: Command::UpdateClient {
                    client_id: ClientId::parse("svc").expect("valid"),
                    patch: ClientPatch {
                        enabled: Some(false),
                        ..Default::default()
                    },
                    expected_revision: Some(1),
                },
            },
        ],
    };
    let bytes = codec::encode(Tag::BATCH, &batch);
    check("batch_v1", &bytes);
    assert_eq!(
        codec::decode::<Batch>(Tag::BATCH, &bytes).expect("decodes"),
        batch
    );
}
