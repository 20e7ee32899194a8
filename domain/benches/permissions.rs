//! Permission decision throughput, one thread:
//!
//! - (a) `PermissionSet::allows` on a client's compiled role permissions,
//! - (b) the full `permissions::effective` call for one scope (it compiles the sets each time),
//! - (c) a baseline: `HashSet<String>::contains` of the same probe strings.
//!
//! The client holds 10 roles of 50 permissions each (about 10 % wildcard patterns) and an
//! allow-list of per-family wildcards. Probes are a third exact hits, a third hits through a
//! wildcard only, a third misses, shuffled.
//!
//! Run: `cargo bench -p authsec-domain --bench permissions` (plain `Instant`, no harness).

use std::collections::{BTreeSet, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use authsec_domain::command::CreateClient;
use authsec_domain::permissions::{covers, effective, PermissionSet};
use authsec_domain::{
    apply_proposal, Actor, ClientId, ClientKind, Command, Principal, Proposal, RoleName, Scope,
    Stamp, State, Subject, TrustDomain,
};

const ROLES: usize = 10;
const PERMS_PER_ROLE: usize = 50;
const WILDCARDS_PER_ROLE: usize = 5;
const PROBES: usize = 4096;
const ROUND: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 3;
const NOW: u64 = 1_700_000_000_000;

const FAMILIES: &[&str] = &[
    "orders",
    "billing",
    "inventory",
    "shipping",
    "payments",
    "customers",
    "reports",
    "catalog",
    "pricing",
    "invoices",
    "refunds",
    "accounts",
    "ledger",
    "audit",
    "tickets",
    "messages",
    "files",
    "search",
    "analytics",
    "webhooks",
];
const SUBS: &[&str] = &["", ".eu", ".us", ".items", ".archive", ".v2"];
const ACTIONS: &[&str] = &[
    "read",
    "write",
    "list",
    "delete",
    "create",
    "update",
    "approve",
    "export",
    "read.all",
    "write.own",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

fn scope(s: &str) -> Scope {
    Scope::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// One role: 45 concrete permissions and 5 patterns, over a few families.
fn role_permissions(rng: &mut Rng, r: usize) -> BTreeSet<Scope> {
    let families: Vec<&str> = (0..4)
        .map(|k| FAMILIES[(r * 2 + k * 5) % FAMILIES.len()])
        .collect();
    let mut out = BTreeSet::new();
    while out.len() < PERMS_PER_ROLE - WILDCARDS_PER_ROLE {
        let s = format!(
            "{}{}:{}",
            rng.pick(&families),
            rng.pick(SUBS),
            rng.pick(ACTIONS)
        );
        out.insert(scope(&s));
    }
    let mut patterns = 0;
    while patterns < WILDCARDS_PER_ROLE {
        let (f, sub, act) = (rng.pick(&families), rng.pick(SUBS), rng.pick(ACTIONS));
        let verb = act.split('.').next().unwrap_or(act);
        let s = match rng.next() % 3 {
            0 => format!("{f}{sub}:*"),
            1 => format!("{f}.*:{act}"),
            _ => format!("{f}:{verb}.*"),
        };
        if out.insert(scope(&s)) {
            patterns += 1;
        }
    }
    out
}

fn propose(state: &mut State, index: u64, command: Command) {
    let p = Proposal {
        stamp: Stamp {
            time_ms: NOW,
            seed: [0; 16],
        },
        actor: Actor {
            principal: Principal::System,
            via_node: 1,
        },
        command,
    };
    apply_proposal(state, &p, index).unwrap_or_else(|r| panic!("setup rejected: {r}"));
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Exact,
    Wildcard,
    Miss,
}

/// Runs `f` over the probes for `ROUND`, `ROUNDS` times; the median decisions per second.
fn measure(probes: &[&str], mut f: impl FnMut(&str) -> bool) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..=ROUNDS {
        let (start, mut n, mut allowed) = (Instant::now(), 0u64, 0u64);
        while start.elapsed() < ROUND {
            for p in probes {
                allowed += u64::from(f(black_box(p)));
            }
            n += probes.len() as u64;
        }
        black_box(allowed);
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.remove(0); // the first round warms up
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn rate(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let client = ClientId::parse("svc").expect("valid");
    let mut state = State::default();
    let mut index = 0;
    let mut next = || {
        index += 1;
        index
    };
    propose(
        &mut state,
        next(),
        Command::ConfigureTrustDomain {
            trust_domain: TrustDomain::parse("example.org").expect("valid"),
        },
    );
    let allowed: BTreeSet<Scope> = FAMILIES
        .iter()
        .flat_map(|f| [scope(&format!("{f}:*")), scope(&format!("{f}.*:*"))])
        .collect();
    propose(
        &mut state,
        next(),
        Command::CreateClient(CreateClient {
            client_id: client.clone(),
            kind: ClientKind::Service,
            display_name: "svc".into(),
            description: String::new(),
            owner: String::new(),
            allowed_scopes: allowed,
            default_scopes: BTreeSet::new(),
            default_audience: String::new(),
            secret_hash: None,
            public_keys: Vec::new(),
            spiffe_id: None,
            agent_entry: None,
        }),
    );
    let mut all: Vec<Scope> = Vec::new();
    for r in 0..ROLES {
        let perms = role_permissions(&mut rng, r);
        all.extend(perms.iter().cloned());
        let name = RoleName::parse(&format!("role-{r}")).expect("valid");
        propose(
            &mut state,
            next(),
            Command::CreateRole {
                name: name.clone(),
                description: String::new(),
                permissions: perms,
            },
        );
        propose(
            &mut state,
            next(),
            Command::Bind {
                role: name,
                subject: Subject::Client(client.clone()),
            },
        );
    }
    let patterns = all.iter().filter(|p| p.is_wildcard()).count();
    let distinct: BTreeSet<&Scope> = all.iter().collect();

    // Probes: a third exact hits, a third hits through a pattern only, a third misses.
    let exact: HashSet<&str> = all
        .iter()
        .filter(|p| !p.is_wildcard())
        .map(Scope::as_str)
        .collect();
    let classify = |s: &Scope| {
        if exact.contains(s.as_str()) {
            Kind::Exact
        } else if all.iter().any(|p| covers(p, s)) {
            Kind::Wildcard
        } else {
            Kind::Miss
        }
    };
    let mut probes: Vec<(Kind, Scope)> = Vec::new();
    let want = PROBES / 3;
    let count = |probes: &[(Kind, Scope)], k: Kind| probes.iter().filter(|(x, _)| *x == k).count();
    let exact_list: Vec<&str> = exact.iter().copied().collect();
    while probes.len() < 3 * want {
        let s = match rng.next() % 4 {
            0 => scope(rng.pick(&exact_list)),
            1 => scope(&format!(
                "{}{}:{}.{}",
                rng.pick(FAMILIES),
                rng.pick(SUBS),
                rng.pick(ACTIONS),
                rng.pick(&["x", "all", "own"])
            )),
            2 => scope(&format!(
                "{}.{}:{}",
                rng.pick(FAMILIES),
                rng.pick(&["eu", "us", "items", "archive", "v2", "apac"]),
                rng.pick(ACTIONS)
            )),
            _ => scope(&format!(
                "{}{}:{}",
                rng.pick(FAMILIES),
                rng.pick(SUBS),
                rng.pick(ACTIONS)
            )),
        };
        let k = classify(&s);
        if count(&probes, k) < want {
            probes.push((k, s));
        }
    }
    // Shuffle (Fisher-Yates) so the branch predictor sees the mix, not runs of one kind.
    for i in (1..probes.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        probes.swap(i, j);
    }

    let set = PermissionSet::new(&all);
    let baseline: HashSet<String> = all.iter().map(|p| p.as_str().to_owned()).collect();
    let requests: Vec<BTreeSet<Scope>> = probes
        .iter()
        .map(|(_, s)| BTreeSet::from([s.clone()]))
        .collect();
    // The three ways decide the same for every probe (the allow-list covers every role
    // permission, so `effective` allows exactly what the roles allow).
    for ((k, s), req) in probes.iter().zip(&requests) {
        let allows = set.allows(s.as_str());
        assert_eq!(allows, *k != Kind::Miss, "{s}");
        let eff = effective(&state, &client, req, None, NOW).is_ok();
        assert_eq!(eff, allows, "effective({s})");
    }

    let strs: Vec<&str> = probes.iter().map(|(_, s)| s.as_str()).collect();
    let of_kind = |k: Kind| -> Vec<&str> {
        probes
            .iter()
            .filter(|(x, _)| *x == k)
            .map(|(_, s)| s.as_str())
            .collect()
    };

    println!(
        "permissions bench: {ROLES} roles x {PERMS_PER_ROLE} permissions bound to one client \
         ({} distinct, {patterns} patterns); {} probes ({} exact hits, {} wildcard hits, {} misses); \
         one thread; median of {ROUNDS} rounds of {} ms",
        distinct.len(),
        probes.len(),
        want,
        want,
        want,
        ROUND.as_millis()
    );

    let a = measure(&strs, |p| set.allows(p));
    let a_exact = measure(&of_kind(Kind::Exact), |p| set.allows(p));
    let a_wild = measure(&of_kind(Kind::Wildcard), |p| set.allows(p));
    let a_miss = measure(&of_kind(Kind::Miss), |p| set.allows(p));
    let c = measure(&strs, |p| baseline.contains(p));
    let mut i = 0;
    let b = measure(&strs, |_| {
        i = (i + 1) % requests.len();
        effective(&state, &client, &requests[i], None, NOW).is_ok()
    });

    println!(
        "(a) PermissionSet::allows          {:>14} decisions/s",
        rate(a)
    );
    println!(
        "      exact hits only              {:>14} decisions/s",
        rate(a_exact)
    );
    println!(
        "      wildcard hits only           {:>14} decisions/s",
        rate(a_wild)
    );
    println!(
        "      misses only                  {:>14} decisions/s",
        rate(a_miss)
    );
    println!(
        "(b) effective(), one scope         {:>14} decisions/s",
        rate(b)
    );
    println!(
        "(c) HashSet<String>::contains      {:>14} lookups/s",
        rate(c)
    );
    println!("ratio (a)/(c) = {:.3}   (b)/(c) = {:.5}", a / c, b / c);
    println!(
        "target (a) >= 1,000,000 decisions/s on one core: {}",
        if a >= 1e6 { "met" } else { "NOT met" }
    );
}
