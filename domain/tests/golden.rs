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

mod identity {
    //! The identity model's rows, commands and events (issue 5).

    use super::*;
    use authsec_domain::command::{
        CreateClient, CredentialChange, DelegationSpec, EntryPatch, EntrySpec, RevocationTarget,
    };
    use authsec_domain::identity::{
        Agent, AgentToken, ClientAuth, ClientSecret, Delegation, Delegator, Entry, IdentityMeta,
        PublicKey, RevokedSubject, RevokedToken, Role, SecretHash, Subject,
    };
    use authsec_domain::{DelegationId, EntryId, RoleName, Selector, SpiffeId};

    fn spiffe(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("valid")
    }

    fn entry() -> Entry {
        Entry {
            entry_id: EntryId::parse("e-0123456789abcdef0123").expect("valid"),
            spiffe_id: spiffe("spiffe://example.org/agent/billing-agent"),
            parent_id: Some(spiffe("spiffe://example.org/authsec/agent/host-1")),
            selectors: [Selector::parse("unix:uid:1000").expect("valid")].into(),
            x509_ttl_s: 3600,
            jwt_ttl_s: 300,
            dns_names: ["billing.example.org".to_owned()].into(),
            client_id: Some(ClientId::parse("billing-agent").expect("valid")),
            federates_with: [TrustDomain::parse("partner.org").expect("valid")].into(),
            revision: 2,
            created_at_ms: 10,
            updated_at_ms: 20,
        }
    }

    fn auth() -> ClientAuth {
        ClientAuth {
            secret: Some(ClientSecret {
                current: SecretHash([0x21; 32]),
                created_at_ms: 30,
                previous: Some((SecretHash([0x22; 32]), 40)),
            }),
            public_keys: vec![PublicKey {
                kid: "k1".into(),
                key: "{\"kty\":\"EC\"}".into(),
            }],
            spiffe_id: Some(spiffe("spiffe://example.org/svc")),
        }
    }

    fn delegation() -> Delegation {
        Delegation {
            delegation_id: DelegationId::parse("d-1").expect("valid"),
            delegator: Delegator::Person {
                issuer: "https://idp.example".into(),
                subject: "alice".into(),
            },
            delegate: ClientId::parse("billing-agent").expect("valid"),
            permissions: scopes(&["orders:read"]),
            max_token_ttl_s: 300,
            max_depth: 1,
            depth: 0,
            parent: None,
            expires_at_ms: 50,
            created_at_ms: 5,
            revoked_at_index: Some(77),
        }
    }

    #[test]
    fn identity_rows_v1() {
        let role = Role {
            name: RoleName::parse("order-reader").expect("valid"),
            description: "reads orders".into(),
            permissions: scopes(&["orders:read", "orders.archive:*"]),
            revision: 3,
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        let binding = (
            Subject::Client(ClientId::parse("billing-agent").expect("valid")),
            role.name.clone(),
        );
        let agent = Agent {
            spiffe_id: spiffe("spiffe://example.org/authsec/agent/host-1"),
            token_id: "0123456789abcdef".into(),
            attested_at_ms: 6,
            last_seen_ms: 7,
            banned: false,
        };
        let meta = IdentityMeta {
            client_secret_key: true,
            agent_tokens: [(
                "0123456789abcdef".to_owned(),
                AgentToken {
                    token_id: "0123456789abcdef".into(),
                    secret_hash: [0x33; 32],
                    created_at_ms: 8,
                    expires_at_ms: 9,
                },
            )]
            .into(),
        };
        let id = ClientId::parse("billing-agent").expect("valid");
        check(
            "client_auth_v1",
            &codec::encode(Tag::CLIENT_AUTH, &(&id, &auth())),
        );
        check("entry_v1", &codec::encode(Tag::ENTRY, &entry()));
        check("role_v1", &codec::encode(Tag::ROLE, &role));
        check("binding_v1", &codec::encode(Tag::BINDING, &binding));
        check(
            "delegation_v1",
            &codec::encode(Tag::DELEGATION, &delegation()),
        );
        check("agent_v1", &codec::encode(Tag::AGENT, &agent));
        check(
            "identity_meta_v1",
            &codec::encode(Tag::IDENTITY_META, &meta),
        );
        check(
            "revoked_token_v1",
            &codec::encode(
                Tag::REVOKED_TOKEN,
                &RevokedToken {
                    jti: "jti-1".into(),
                    expires_at_ms: 11,
                    revoked_at_index: 12,
                },
            ),
        );
        check(
            "revoked_subject_v1",
            &codec::encode(
                Tag::REVOKED_SUBJECT,
                &RevokedSubject {
                    subject: "client:billing-agent".into(),
                    below_index: 13,
                },
            ),
        );
    }

    #[test]
    fn identity_commands_v1() {
        let id = ClientId::parse("billing-agent").expect("valid");
        let commands = vec![
            Command::CreateClient(CreateClient {
                client_id: id.clone(),
                kind: ClientKind::AiAgent,
                display_name: "Billing agent".into(),
                description: String::new(),
                owner: "team".into(),
                allowed_scopes: scopes(&["orders:*"]),
                default_scopes: scopes(&["orders:read"]),
                default_audience: "https://api".into(),
                secret_hash: Some(SecretHash([0x44; 32])),
                public_keys: Vec::new(),
                spiffe_id: None,
                agent_entry: Some((
                    EntryId::parse("e-1").expect("valid"),
                    "spiffe://{trust_domain}/agent/{client_id}".into(),
                )),
            }),
            Command::ChangeClientCredentials {
                client_id: id.clone(),
                change: CredentialChange::RotateSecret {
                    secret_hash: SecretHash([0x45; 32]),
                    overlap_ms: 3_600_000,
                },
                expected_revision: Some(1),
            },
            Command::CreateEntry(EntrySpec {
                entry_id: EntryId::parse("e-2").expect("valid"),
                spiffe_id: spiffe("spiffe://example.org/w"),
                parent_id: None,
                selectors: BTreeSet::new(),
                x509_ttl_s: 3600,
                jwt_ttl_s: 300,
                dns_names: BTreeSet::new(),
                client_id: None,
                federates_with: BTreeSet::new(),
            }),
            Command::UpdateEntry {
                entry_id: EntryId::parse("e-2").expect("valid"),
                patch: EntryPatch {
                    parent_id: Some(None),
                    ..Default::default()
                },
                expected_revision: None,
            },
            Command::CreateRole {
                name: RoleName::parse("r").expect("valid"),
                description: String::new(),
                permissions: scopes(&["a:b"]),
            },
            Command::Bind {
                role: RoleName::parse("r").expect("valid"),
                subject: Subject::Spiffe(spiffe("spiffe://example.org/authsec/admin/alice")),
            },
            Command::CreateDelegation(DelegationSpec {
                delegation_id: DelegationId::parse("d-1").expect("valid"),
                delegator: Delegator::Client(ClientId::parse("svc").expect("valid")),
                delegate: id.clone(),
                permissions: scopes(&["a:b"]),
                max_token_ttl_s: 300,
                max_depth: 2,
                ttl_ms: 86_400_000,
                parent: None,
            }),
            Command::Revoke(RevocationTarget::Token {
                jti: "j".into(),
                expires_at_ms: 99,
            }),
            Command::Revoke(RevocationTarget::Delegation(
                DelegationId::parse("d-1").expect("valid"),
            )),
            Command::CreateAgentToken {
                token_id: "0123456789abcdef".into(),
                secret_hash: [0x55; 32],
                ttl_ms: 60_000,
            },
        ];
        let batch = Batch {
            proposals: commands
                .into_iter()
                .map(|command| Proposal {
                    stamp: Stamp {
                        time_ms: 1_700_000_000_000,
                        seed: [9; 16],
                    },
                    actor: Actor {
                        principal: Principal::Named(
                            "spiffe://example.org/authsec/admin/root".into(),
                        ),
                        via_node: 2,
                    },
                    command,
                })
                .collect(),
        };
        let bytes = codec::encode(Tag::BATCH, &batch);
        check("identity_batch_v1", &bytes);
        assert_eq!(
            codec::decode::<Batch>(Tag::BATCH, &bytes).expect("decodes"),
            batch
        );
    }

    #[test]
    fn identity_audit_record_v1() {
        let r = AuditRecord {
            sequence: 8,
            log_index: 43,
            time_ms: 1_700_000_000_456,
            actor: Actor {
                principal: Principal::Named("spiffe://example.org/authsec/admin/root".into()),
                via_node: 1,
            },
            kind: "client.created".into(),
            subject: "client:billing-agent".into(),
            event: Event::ClientCreated {
                client: client(),
                auth: auth(),
            },
        };
        let bytes = r.to_bytes();
        check("identity_audit_record_v1", &bytes);
        assert_eq!(AuditRecord::from_bytes(&bytes).expect("decodes"), r);
        let r2 = AuditRecord {
            kind: "delegation.created".into(),
            event: Event::DelegationCreated {
                delegation: delegation(),
            },
            ..r.clone()
        };
        check("identity_audit_record_delegation_v1", &r2.to_bytes());
        let r3 = AuditRecord {
            kind: "entry.created".into(),
            event: Event::EntryCreated { entry: entry() },
            ..r
        };
        check("identity_audit_record_entry_v1", &r3.to_bytes());
    }
}

#[test]
fn node_keys_v1() {
    use authsec_domain::keys::{KeyKind, KeyState, KeysMeta, NodeKey};
    let key = NodeKey {
        kid: "n1-jwt-1".into(),
        node_id: 1,
        kind: KeyKind::Jwt,
        public: vec![0x30, 0x59, 0x30, 0x13],
        not_after_ms: 1_800_000_000_000,
        state: KeyState::Superseded,
        published_at_ms: 1,
        changed_at_ms: 2,
    };
    check("node_key_v1", &codec::encode(Tag::NODE_KEY, &key));
    check(
        "keys_meta_v1",
        &codec::encode(Tag::KEYS_META, &KeysMeta { bundle_sequence: 7 }),
    );
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [1; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command: Command::PublishNodeKey { key },
        }],
    };
    check("node_key_batch_v1", &codec::encode(Tag::BATCH, &batch));
}

#[test]
fn federation_v1() {
    use authsec_domain::federation::{FederatedBundle, Federation, Profile};
    let td = authsec_domain::TrustDomain::parse("partner.example").expect("td");
    let bundle = FederatedBundle {
        sequence: 3,
        refresh_hint_s: 300,
        x509_authorities: vec![vec![0x30, 0x82, 0x01]],
        jwt_authorities: vec![("k1".into(), vec![0x30, 0x59])],
    };
    let f = Federation {
        trust_domain: td.clone(),
        endpoint_url: "https://partner.example:8443/".into(),
        profile: Profile::HttpsSpiffe {
            endpoint_spiffe_id: authsec_domain::SpiffeId::parse(
                "spiffe://partner.example/authsec/node/1",
            )
            .expect("id"),
        },
        bundle: Some(bundle.clone()),
        bundle_at_ms: 5,
        created_at_ms: 4,
    };
    check("federation_v1", &codec::encode(Tag::FEDERATION, &f));
    let stamp = Stamp {
        time_ms: 1_700_000_000_000,
        seed: [2; 16],
    };
    let actor = Actor {
        principal: Principal::System,
        via_node: 2,
    };
    let batch = Batch {
        proposals: [
            Command::CreateFederation { federation: f },
            Command::RecordFederatedBundle {
                trust_domain: td.clone(),
                bundle,
            },
            Command::DeleteFederation { trust_domain: td },
        ]
        .into_iter()
        .map(|command| Proposal {
            stamp: stamp.clone(),
            actor: actor.clone(),
            command,
        })
        .collect(),
    };
    check("federation_batch_v1", &codec::encode(Tag::BATCH, &batch));
}

#[test]
fn roots_v1() {
    use authsec_domain::roots::{RootState, RootsMeta, SvidRoot};
    let meta = RootsMeta {
        roots: vec![SvidRoot {
            fingerprint: "sha256:00ff".into(),
            cert_der: vec![0x30, 0x82, 0x02],
            state: RootState::Superseded,
            changed_at_ms: 9,
        }],
        bootstrap_retired: true,
    };
    check("roots_meta_v1", &codec::encode(Tag::ROOTS_META, &meta));
    let batch = Batch {
        proposals: [
            Command::PrepareRoot {
                cert_der: vec![0x30, 0x82, 0x02],
                sealed_key: authsec_domain::Sealed(vec![7; 8]),
            },
            Command::ActivateRoot {
                fingerprint: "sha256:00ff".into(),
            },
            Command::RetireRoot {
                fingerprint: "sha256:00ff".into(),
            },
        ]
        .into_iter()
        .map(|command| Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [3; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 3,
            },
            command,
        })
        .collect(),
    };
    check("roots_batch_v1", &codec::encode(Tag::BATCH, &batch));
}

#[test]
fn issuance_shapes_are_pinned() {
    use authsec_domain::issuance::{CredentialKind, Issuance, IssuanceMeta};
    let meta = IssuanceMeta {
        recorded: [(1, 42), (3, 7)].into_iter().collect(),
    };
    check(
        "issuance_meta_v1",
        &codec::encode(Tag::ISSUANCE_META, &meta),
    );
    let issuance = Issuance {
        seq: 42,
        kind: CredentialKind::AccessToken,
        id: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        subject: "payments".into(),
        client_id: "agent-7".into(),
        method: "private_key_jwt".into(),
        audience: vec!["https://api.example.com".into()],
        scopes: vec!["orders:read".into(), "orders:write".into()],
        delegation: Some("dlg-1".into()),
        actor: Some("agent-7".into()),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_300_000,
        applied_index: 1234,
    };
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [4; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command: Command::RecordIssuances {
                node_id: 1,
                issuances: vec![issuance],
            },
        }],
    };
    check("issuance_batch_v1", &codec::encode(Tag::BATCH, &batch));
}

#[test]
fn prune_revocations_is_pinned() {
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [5; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 2,
            },
            command: Command::PruneRevocations,
        }],
    };
    check("prune_batch_v1", &codec::encode(Tag::BATCH, &batch));
    let rec = AuditRecord {
        sequence: 9,
        log_index: 12,
        time_ms: 1_700_000_000_000,
        actor: Actor {
            principal: Principal::System,
            via_node: 2,
        },
        kind: "token.revocations_pruned".into(),
        subject: "revocations".into(),
        event: authsec_domain::Event::RevocationsPruned {
            jtis: vec!["a1".into(), "b2".into()],
        },
    };
    check("prune_record_v1", &rec.to_bytes());
}

#[test]
fn sink_progress_is_pinned() {
    use authsec_domain::audit::{SinkAck, SinkAcks};
    let sinks = vec![
        SinkAck {
            name: "archive".into(),
            acked_through: 120,
        },
        SinkAck {
            name: "siem".into(),
            acked_through: 950,
        },
    ];
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [6; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 3,
            },
            command: Command::RecordSinkProgress {
                node_id: 3,
                sinks: sinks.clone(),
            },
        }],
    };
    check("sink_progress_batch_v1", &codec::encode(Tag::BATCH, &batch));
    let rec = AuditRecord {
        sequence: 10,
        log_index: 14,
        time_ms: 1_700_000_000_000,
        actor: Actor {
            principal: Principal::System,
            via_node: 3,
        },
        kind: "audit.sinks_acknowledged".into(),
        subject: "node:3".into(),
        event: authsec_domain::Event::SinksAcknowledged {
            node_id: 3,
            sinks: sinks.clone(),
        },
    };
    check("sink_progress_record_v1", &rec.to_bytes());
    let row = SinkAcks {
        by_node: [(3, sinks)].into_iter().collect(),
    };
    check("sink_acks_v1", &codec::encode(Tag::SINK_ACKS, &row));
}

#[test]
fn split_elision_is_pinned() {
    use authsec_domain::audit::{ElisionPart, SplitElision};
    let elision = SplitElision {
        node_id: 2,
        from_sequence: 41,
        through_sequence: 300,
        parts: vec![
            ElisionPart {
                through_sequence: 100,
                count: 3,
                digest: [7; 32],
            },
            ElisionPart {
                through_sequence: 300,
                count: 0,
                digest: [8; 32],
            },
        ],
        older_than_ms: 1_699_999_000_000,
        acked_by: vec!["siem".into()],
    };
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [7; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 2,
            },
            command: Command::ElideIssuanceParts(elision.clone()),
        }],
    };
    check("split_elision_batch_v1", &codec::encode(Tag::BATCH, &batch));
    let rec = AuditRecord {
        sequence: 11,
        log_index: 15,
        time_ms: 1_700_000_000_000,
        actor: Actor {
            principal: Principal::System,
            via_node: 2,
        },
        kind: "audit.issuances_elided".into(),
        subject: "node:2".into(),
        event: authsec_domain::Event::IssuancePartsElided { elision },
    };
    check("split_elision_record_v1", &rec.to_bytes());
}

#[test]
fn admin_certificates_are_pinned() {
    use authsec_domain::admins::{AdminCert, Admins};
    let cert = AdminCert {
        fingerprint: format!("sha256:{}", "ab".repeat(32)),
        root: format!("sha256:{}", "cd".repeat(32)),
        not_after_ms: 1_731_536_000_000,
        issued_at_ms: 1_700_000_000_000,
    };
    let batch = Batch {
        proposals: vec![Proposal {
            stamp: Stamp {
                time_ms: 1_700_000_000_000,
                seed: [8; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command: Command::RecordAdminCertificate {
                name: "ops".into(),
                fingerprint: cert.fingerprint.clone(),
                root: cert.root.clone(),
                not_after_ms: cert.not_after_ms,
                revokes: Some(format!("sha256:{}", "ef".repeat(32))),
            },
        }],
    };
    check(
        "admin_certificate_batch_v1",
        &codec::encode(Tag::BATCH, &batch),
    );
    let rec = AuditRecord {
        sequence: 12,
        log_index: 16,
        time_ms: 1_700_000_000_000,
        actor: Actor {
            principal: Principal::System,
            via_node: 1,
        },
        kind: "admin.issued".into(),
        subject: "admin:ops".into(),
        event: authsec_domain::Event::AdminCertificateIssued {
            name: "ops".into(),
            cert: cert.clone(),
        },
    };
    check("admin_certificate_record_v1", &rec.to_bytes());
    let row = Admins {
        by_name: [("ops".to_owned(), vec![cert])].into_iter().collect(),
    };
    check("admins_v1", &codec::encode(Tag::ADMINS, &row));
}
