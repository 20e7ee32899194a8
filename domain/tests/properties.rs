//! Property tests: replaying the archived events rebuilds exactly the state that applying the
//! proposals built, and decisions depend only on the state and the stamp (determinism).

use std::collections::BTreeSet;

use authsec_domain::command::{ClientPatch, RegisterClient};
use authsec_domain::{
    apply_proposal, codec, evolve, Actor, Client, ClientId, ClientKind, Command, Principal,
    Proposal, Scope, Stamp, State,
};
use proptest::prelude::*;

fn scope_strategy() -> impl Strategy<Value = Scope> {
    prop_oneof![
        Just("orders:read"),
        Just("orders:write"),
        Just("orders:*"),
        Just("billing.eu:read")
    ]
    .prop_map(|s| Scope::parse(s).expect("valid"))
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let id = prop_oneof![
        Just(None),
        (0u8..6).prop_map(|i| Some(ClientId::parse(&format!("c{i}")).expect("valid")))
    ];
    let register = (
        id,
        proptest::collection::btree_set(scope_strategy(), 0..3),
        proptest::collection::btree_set(scope_strategy(), 0..2),
    )
        .prop_map(
            |(client_id, allowed, defaults): (
                Option<ClientId>,
                BTreeSet<Scope>,
                BTreeSet<Scope>,
            )| {
                Command::RegisterClient(RegisterClient {
                    client_id,
                    kind: ClientKind::Service,
                    display_name: "x".into(),
                    description: String::new(),
                    owner: String::new(),
                    allowed_scopes: allowed,
                    default_scopes: defaults,
                    default_audience: "aud".into(),
                })
            },
        );
    let update =
        ((0u8..6), any::<bool>(), proptest::option::of(0u64..4)).prop_map(|(i, enabled, rev)| {
            Command::UpdateClient {
                client_id: ClientId::parse(&format!("c{i}")).expect("valid"),
                patch: ClientPatch {
                    enabled: Some(enabled),
                    display_name: Some(format!("n{i}")),
                    ..Default::default()
                },
                expected_revision: rev,
            }
        });
    let remove = (0u8..6).prop_map(|i| Command::RemoveClient {
        client_id: ClientId::parse(&format!("c{i}")).expect("valid"),
    });
    prop_oneof![register, update, remove]
}

fn proposals() -> impl Strategy<Value = Vec<Proposal>> {
    proptest::collection::vec(
        (command_strategy(), any::<[u8; 16]>(), 0u64..1_000_000),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(command, seed, t)| Proposal {
                stamp: Stamp { time_ms: t, seed },
                actor: Actor {
                    principal: Principal::Anonymous,
                    via_node: 1,
                },
                command,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn replaying_events_equals_applying(props in proposals()) {
        let mut applied = State::default();
        let mut log = Vec::new();
        for p in &props {
            if let Ok((events, time)) = apply_proposal(&mut applied, p, 1) {
                for e in events { log.push((e, time)); }
            }
        }
        let mut replayed = State::default();
        for (e, t) in &log {
            replayed.meta.clock_ms = replayed.meta.clock_ms.max(*t);
            evolve(&mut replayed, e, *t);
        }
        // The clock advances on every accepted proposal, events or not; compare the rest.
        replayed.meta.clock_ms = applied.meta.clock_ms;
        prop_assert_eq!(replayed, applied);
    }

    #[test]
    fn deterministic(props in proposals()) {
        let run = || {
            let mut s = State::default();
            let out: Vec<_> = props.iter().map(|p| apply_proposal(&mut s, p, 1)).collect();
            (s, out)
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn clock_never_runs_backwards(props in proposals()) {
        let mut s = State::default();
        let mut last = 0;
        for p in &props {
            if let Ok((_, t)) = apply_proposal(&mut s, p, 1) {
                prop_assert!(t >= last);
                last = t;
            }
        }
    }

    #[test]
    fn client_codec_round_trip(name in ".{0,40}", rev in 1u64.., enabled in any::<bool>()) {
        let c = Client {
            client_id: ClientId::parse("c1").expect("valid"),
            kind: ClientKind::Device,
            display_name: name,
            description: String::new(),
            owner: String::new(),
            allowed_scopes: BTreeSet::new(),
            default_scopes: BTreeSet::new(),
            default_audience: String::new(),
            enabled,
            revision: rev,
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        let bytes = codec::encode(codec::Tag::CLIENT, &c);
        prop_assert_eq!(codec::decode::<Client>(codec::Tag::CLIENT, &bytes).expect("decodes"), c);
    }
}
