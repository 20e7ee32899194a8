//! Data-driven tests: the tables under `domain/testdata/`, each documented at its top. Every
//! case of a table runs; failures are reported together, each as `testdata/<file>:<line>`.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::PathBuf;

use authsec_domain::command::{
    ClientPatch, CreateClient, DelegationSpec, EntrySpec, RevocationTarget,
};
use authsec_domain::decide::scope_covers;
use authsec_domain::identity::AGENT_TEMPLATE_DEFAULT;
use authsec_domain::permissions::{covers, effective, touches_admin, PermissionSet};
use authsec_domain::{
    apply_proposal, limits, Actor, ClientId, ClientKind, Command, DelegationId, Delegator, EntryId,
    FieldError, Principal, Proposal, RoleName, Scope, Selector, SpiffeId, Stamp, State, Subject,
    TrustDomain,
};

fn read_table(name: &str) -> String {
    // At run time, like the golden files: test binaries are shared across clones.
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("testdata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The case lines of a table with their line numbers: no comments, no blank lines.
fn case_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn columns(line: &str) -> Vec<&str> {
    line.split('|').map(str::trim).collect()
}

/// Failures of one table, reported together at the end.
struct Failures {
    file: &'static str,
    cases: usize,
    list: Vec<String>,
}

impl Failures {
    fn new(file: &'static str) -> Self {
        Failures {
            file,
            cases: 0,
            list: Vec::new(),
        }
    }

    fn add(&mut self, line: usize, msg: impl Display) {
        self.list
            .push(format!("testdata/{}:{line}: {msg}", self.file));
    }

    fn finish(self, at_least: usize) {
        assert!(
            self.list.is_empty(),
            "{} of {} cases failed:\n{}",
            self.list.len(),
            self.cases,
            self.list.join("\n")
        );
        assert!(
            self.cases >= at_least,
            "testdata/{} holds {} cases, fewer than {at_least}",
            self.file,
            self.cases
        );
    }
}

// ---------------------------------------------------------------------------------------------
// permissions.table

#[test]
fn permissions_table() {
    let text = read_table("permissions.table");
    let mut f = Failures::new("permissions.table");
    for (line, l) in case_lines(&text) {
        f.cases += 1;
        let [first, second, want] = columns(l)[..] else {
            f.add(line, "expected 3 columns");
            continue;
        };
        let want = match want {
            "true" => true,
            "false" => false,
            other => {
                f.add(line, format!("expected true or false, not {other:?}"));
                continue;
            }
        };
        let s = match Scope::parse(second) {
            Ok(s) => s,
            Err(e) => {
                f.add(line, e);
                continue;
            }
        };
        if first == "admin" {
            let got = touches_admin(&s);
            if got != want {
                f.add(line, format!("touches_admin({s}) = {got}, want {want}"));
            }
            continue;
        }
        let p = match Scope::parse(first) {
            Ok(p) => p,
            Err(e) => {
                f.add(line, e);
                continue;
            }
        };
        let set = PermissionSet::new([&p]);
        let mut got = vec![
            ("covers", covers(&p, &s)),
            ("PermissionSet::covers", set.covers(&s)),
        ];
        if !s.is_wildcard() {
            got.push(("PermissionSet::allows", set.allows(s.as_str())));
            got.push(("decide::scope_covers", scope_covers(&p, &s)));
        }
        for (what, got) in got {
            if got != want {
                f.add(line, format!("{what}({p}, {s}) = {got}, want {want}"));
            }
        }
    }
    f.finish(40);
}

// ---------------------------------------------------------------------------------------------
// scopes.table

/// `{N*text}` stands for `text` repeated N times.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 1..start + len];
        out.push_str(&rest[..start]);
        match inner
            .split_once('*')
            .and_then(|(n, t)| Some((n.parse::<usize>().ok()?, t)))
        {
            Some((n, text)) => out.push_str(&text.repeat(n)),
            None => out.push_str(&rest[start..=start + len]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn scopes_table() {
    let text = read_table("scopes.table");
    let mut f = Failures::new("scopes.table");
    for (line, l) in case_lines(&text) {
        f.cases += 1;
        let cols = columns(l);
        let input = expand(cols[0]);
        match (&cols[1..], Scope::parse(&input)) {
            (["valid"], Ok(s)) if s.as_str() == input => {}
            (["valid"], Ok(s)) => f.add(line, format!("parsed as {s}, not as itself")),
            (["valid"], Err(e)) => f.add(line, format!("rejected: {e}")),
            (["invalid", want], Err(e)) if e.to_string().contains(want) => {}
            (["invalid", want], Err(e)) => f.add(line, format!("error {e:?} lacks {want:?}")),
            (["invalid", _], Ok(_)) => f.add(line, "accepted"),
            _ => f.add(
                line,
                "expected `<input> | valid` or `<input> | invalid | <text>`",
            ),
        }
    }
    f.finish(20);
}

// ---------------------------------------------------------------------------------------------
// rejections.table

const TD: &str = "example.org";
const T0: u64 = 1_000_000_000;

/// Why a line could not run: the table is wrong (`Syntax`), or a value does not parse, which
/// is the command's outcome (`Value`).
enum Bad {
    Syntax(String),
    Value(String),
}

impl From<FieldError> for Bad {
    fn from(e: FieldError) -> Self {
        Bad::Value(e.to_string())
    }
}

fn syntax<T>(msg: impl Into<String>) -> Result<T, Bad> {
    Err(Bad::Syntax(msg.into()))
}

/// Positional words and `key=value` words.
struct Args<'a> {
    words: Vec<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn of(words: &[&'a str]) -> Self {
        let (pairs, words): (Vec<&str>, Vec<&str>) =
            words.iter().copied().partition(|w| w.contains('='));
        Args {
            words,
            pairs: pairs.iter().filter_map(|w| w.split_once('=')).collect(),
        }
    }

    fn word(&self, i: usize, what: &str) -> Result<&'a str, Bad> {
        self.words
            .get(i)
            .copied()
            .ok_or_else(|| Bad::Syntax(format!("missing {what}")))
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn number<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, Bad> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .or_else(|_| syntax(format!("{key}={v} is not a number"))),
        }
    }

    fn list(&self, key: &str) -> Vec<&'a str> {
        self.get(key)
            .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }
}

fn scopes<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<BTreeSet<Scope>, Bad> {
    list.into_iter()
        .map(|s| Scope::parse(s).map_err(Bad::from))
        .collect()
}

fn subject(s: &str) -> Result<Subject, Bad> {
    if let Some(c) = s.strip_prefix("client:") {
        Ok(Subject::Client(ClientId::parse(c)?))
    } else if let Some(e) = s.strip_prefix("entry:") {
        Ok(Subject::Entry(EntryId::parse(e)?))
    } else if let Some(p) = s.strip_prefix("person:") {
        let Some((issuer, subject)) = p.split_once('#') else {
            return syntax(format!("{s}: a person is person:<issuer>#<subject>"));
        };
        Ok(Subject::Person {
            issuer: issuer.into(),
            subject: subject.into(),
        })
    } else if s.starts_with("spiffe://") {
        Ok(Subject::Spiffe(SpiffeId::parse(s)?))
    } else {
        syntax(format!("{s}: not a subject"))
    }
}

fn delegator(s: &str) -> Result<Delegator, Bad> {
    match subject(s)? {
        Subject::Client(c) => Ok(Delegator::Client(c)),
        Subject::Person { issuer, subject } => Ok(Delegator::Person { issuer, subject }),
        _ => syntax(format!(
            "{s}: a delegator is client:<id> or person:<issuer>#<subject>"
        )),
    }
}

/// The command a table line stands for.
fn command(w: &[&str]) -> Result<Command, Bad> {
    let a = Args::of(w);
    let revision = |a: &Args| -> Result<Option<u64>, Bad> {
        a.get("rev").map(|_| a.number("rev", 0)).transpose()
    };
    let patch = |client: &str, patch: ClientPatch| -> Result<Command, Bad> {
        Ok(Command::UpdateClient {
            client_id: ClientId::parse(client)?,
            patch,
            expected_revision: None,
        })
    };
    Ok(match (a.word(0, "a command")?, a.words.get(1).copied()) {
        ("role", Some("create")) => Command::CreateRole {
            name: RoleName::parse(a.word(2, "the role")?)?,
            description: String::new(),
            permissions: scopes(a.words[3..].iter().copied())?,
        },
        ("role", Some("update")) => Command::UpdateRole {
            name: RoleName::parse(a.word(2, "the role")?)?,
            description: None,
            permissions: Some(scopes(a.words[3..].iter().copied())?),
            expected_revision: revision(&a)?,
        },
        ("role", Some("delete")) => Command::DeleteRole {
            name: RoleName::parse(a.word(2, "the role")?)?,
            expected_revision: revision(&a)?,
        },
        ("client", Some("create")) => {
            let id = ClientId::parse(a.word(2, "the client")?)?;
            let kind = a.word(3, "the kind")?;
            let Some(kind) = ClientKind::parse(kind) else {
                return syntax(format!("{kind}: not a client kind"));
            };
            let agent_entry = (kind == ClientKind::AiAgent).then(|| {
                (
                    EntryId::parse(&format!("{id}-entry")),
                    AGENT_TEMPLATE_DEFAULT.to_owned(),
                )
            });
            Command::CreateClient(CreateClient {
                client_id: id.clone(),
                kind,
                display_name: id.to_string(),
                description: String::new(),
                owner: String::new(),
                allowed_scopes: scopes(a.list("allowed"))?,
                default_scopes: BTreeSet::new(),
                default_audience: String::new(),
                secret_hash: None,
                public_keys: Vec::new(),
                spiffe_id: a.get("spiffe").map(SpiffeId::parse).transpose()?,
                agent_entry: match agent_entry {
                    Some((e, t)) => Some((e?, t)),
                    None => None,
                },
            })
        }
        ("client", Some("update")) => patch(
            a.word(2, "the client")?,
            ClientPatch {
                allowed_scopes: Some(scopes(a.list("allowed"))?),
                ..Default::default()
            },
        )?,
        ("client", Some(on @ ("enable" | "disable"))) => patch(
            a.word(2, "the client")?,
            ClientPatch {
                enabled: Some(on == "enable"),
                ..Default::default()
            },
        )?,
        ("client", Some("delete")) => Command::DeleteClient {
            client_id: ClientId::parse(a.word(2, "the client")?)?,
            expected_revision: None,
        },
        (verb @ ("bind" | "unbind"), _) => {
            let role = RoleName::parse(a.word(1, "the role")?)?;
            let subject = subject(a.word(2, "the subject")?)?;
            if verb == "bind" {
                Command::Bind { role, subject }
            } else {
                Command::Unbind { role, subject }
            }
        }
        ("entry", Some("create")) => Command::CreateEntry(EntrySpec {
            entry_id: EntryId::parse(a.word(2, "the entry")?)?,
            spiffe_id: SpiffeId::parse(a.get("spiffe").unwrap_or_default())?,
            parent_id: a.get("parent").map(SpiffeId::parse).transpose()?,
            selectors: a
                .list("selectors")
                .into_iter()
                .map(Selector::parse)
                .collect::<Result<_, _>>()?,
            x509_ttl_s: limits::X509_TTL_S_DEFAULT,
            jwt_ttl_s: limits::JWT_TTL_S_DEFAULT,
            dns_names: BTreeSet::new(),
            client_id: a.get("client").map(ClientId::parse).transpose()?,
            federates_with: BTreeSet::new(),
        }),
        ("delegate", _) => Command::CreateDelegation(DelegationSpec {
            delegation_id: DelegationId::parse(a.word(1, "the delegation")?)?,
            delegator: delegator(a.get("from").unwrap_or_default())?,
            delegate: ClientId::parse(a.get("to").unwrap_or_default())?,
            permissions: scopes(a.list("perms"))?,
            max_token_ttl_s: a.number("token_ttl", 3600)?,
            max_depth: a.number("depth", 0)?,
            ttl_ms: a.number("ttl", 3_600_000)?,
            parent: a.get("parent").map(DelegationId::parse).transpose()?,
        }),
        ("revoke", Some("delegation")) => Command::Revoke(RevocationTarget::Delegation(
            DelegationId::parse(a.word(2, "the delegation")?)?,
        )),
        ("revoke", Some("subject")) => Command::Revoke(RevocationTarget::Subject(subject(
            a.word(2, "the subject")?,
        )?)),
        _ => return syntax("unknown command"),
    })
}

struct Scenario {
    state: State,
    now: u64,
    index: u64,
    /// The last command's line and outcome, until an `expect` checks it.
    pending: Option<(usize, Result<(), String>)>,
}

impl Scenario {
    fn new() -> Self {
        let mut s = Scenario {
            state: State::default(),
            now: T0,
            index: 0,
            pending: None,
        };
        let td = Command::ConfigureTrustDomain {
            trust_domain: TrustDomain::parse(TD).expect("valid"),
        };
        s.apply(td).expect("a fresh state takes a trust domain");
        s
    }

    fn apply(&mut self, command: Command) -> Result<(), String> {
        self.index += 1;
        let p = Proposal {
            stamp: Stamp {
                time_ms: self.now,
                seed: [0; 16],
            },
            actor: Actor {
                principal: Principal::System,
                via_node: 1,
            },
            command,
        };
        apply_proposal(&mut self.state, &p, self.index)
            .map(|_| ())
            .map_err(|r| r.to_string())
    }

    /// A rejected command nobody expected is a failure.
    fn settle(&mut self, f: &mut Failures) {
        if let Some((line, Err(e))) = self.pending.take() {
            f.add(line, format!("rejected: {e}"));
        }
    }

    fn expect(&mut self, line: usize, want: &str, f: &mut Failures) {
        let Some((at, got)) = self.pending.take() else {
            f.add(line, "`expect` without a command before it");
            return;
        };
        match (want.split_once(' ').unwrap_or((want, "")), got) {
            (("ok", ""), Ok(())) => {}
            (("ok", ""), Err(e)) => f.add(line, format!("line {at} was rejected: {e}")),
            (("reject", text), Err(e)) if !text.is_empty() => {
                if !e.contains(text) {
                    f.add(
                        line,
                        format!("line {at} was rejected with {e:?}, not {text:?}"),
                    );
                }
            }
            (("reject", text), Ok(())) if !text.is_empty() => f.add(
                line,
                format!("line {at} was accepted, expected a rejection ({text})"),
            ),
            _ => f.add(line, "expected `expect ok` or `expect reject <text>`"),
        }
    }

    /// `effective <client> <scope,...> [via=<id>] [at=+<ms>] -> ok | deny <text>`
    fn effective(&self, line: usize, l: &str, f: &mut Failures) {
        let Some((call, want)) = l.split_once(" -> ") else {
            f.add(line, "expected `effective ... -> ok | deny <text>`");
            return;
        };
        let words: Vec<&str> = call.split_whitespace().collect();
        let a = Args::of(&words[1..]);
        let parsed = (|| -> Result<_, Bad> {
            let client = ClientId::parse(a.word(0, "the client")?)?;
            let requested = scopes(a.word(1, "the scopes")?.split(','))?;
            let via = a.get("via").map(DelegationId::parse).transpose()?;
            let at = match a.get("at") {
                None => self.now,
                Some(v) => match v.strip_prefix('+').and_then(|ms| ms.parse::<u64>().ok()) {
                    Some(ms) => self.now + ms,
                    None => return syntax(format!("at={v}: expected at=+<ms>")),
                },
            };
            Ok((client, requested, via, at))
        })();
        let (client, requested, via, at) = match parsed {
            Ok(p) => p,
            Err(Bad::Syntax(e) | Bad::Value(e)) => {
                f.add(line, e);
                return;
            }
        };
        let got = effective(&self.state, &client, &requested, via.as_ref(), at);
        match (
            want.trim().split_once(' ').unwrap_or((want.trim(), "")),
            got,
        ) {
            (("ok", ""), Ok(granted)) => {
                if granted != requested {
                    f.add(
                        line,
                        format!("granted {granted:?}, asked for {requested:?}"),
                    );
                }
            }
            (("ok", ""), Err(d)) => f.add(line, format!("denied: {d}")),
            (("deny", text), Err(d)) if !text.is_empty() => {
                if !d.to_string().contains(text) {
                    f.add(
                        line,
                        format!("denied with {:?}, not {text:?}", d.to_string()),
                    );
                }
            }
            (("deny", _), Ok(granted)) => f.add(line, format!("allowed {granted:?}")),
            _ => f.add(line, "expected `-> ok` or `-> deny <text>`"),
        }
    }
}

#[test]
fn rejections_table() {
    let text = read_table("rejections.table");
    let mut f = Failures::new("rejections.table");
    let mut scenario: Option<Scenario> = None;
    let mut scenarios = 0;
    for (line, l) in case_lines(&text) {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words[0] == "scenario" {
            if let Some(mut s) = scenario.take() {
                s.settle(&mut f);
            }
            scenario = Some(Scenario::new());
            scenarios += 1;
            continue;
        }
        let Some(s) = scenario.as_mut() else {
            f.add(line, "a line before the first `scenario`");
            continue;
        };
        match words[0] {
            "expect" => {
                f.cases += 1;
                s.expect(line, l["expect".len()..].trim(), &mut f);
            }
            "effective" => {
                f.cases += 1;
                s.settle(&mut f);
                s.effective(line, l, &mut f);
            }
            "time" => {
                s.settle(&mut f);
                match words
                    .get(1)
                    .and_then(|w| w.strip_prefix('+')?.parse::<u64>().ok())
                {
                    Some(ms) => s.now += ms,
                    None => f.add(line, "expected `time +<ms>`"),
                }
            }
            _ => {
                s.settle(&mut f);
                let outcome = match command(&words) {
                    Ok(c) => s.apply(c),
                    Err(Bad::Value(e)) => Err(e),
                    Err(Bad::Syntax(e)) => {
                        f.add(line, format!("cannot read this line: {e}"));
                        continue;
                    }
                };
                s.pending = Some((line, outcome));
            }
        }
    }
    if let Some(mut s) = scenario {
        s.settle(&mut f);
    }
    assert!(scenarios >= 10, "only {scenarios} scenarios");
    f.finish(60);
}
