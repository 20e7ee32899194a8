//! The web console over real HTTPS on a three-node cluster: sign-in with a one-time link
//! from `authsec console login`, the session cookie's attributes, CSRF, permissions, the
//! security headers, a secret shown once, and the audit record naming the admin.

use std::time::Duration;

use anyhow::Context;
use authsec_chaos_tests::oauth::{Admin, Https, Resp};
use authsec_chaos_tests::{cli_ok, run_cli, Cluster, Options, TRUST_DOMAIN};

const T: Duration = Duration::from_secs(60);

/// The value of the session cookie a response sets.
fn session_cookie(r: &Resp) -> anyhow::Result<String> {
    let set = r
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("__Host-authsec_session="))
        .map(|(_, v)| v.clone())
        .with_context(|| format!("no session cookie: {r:?}"))?;
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        anyhow::ensure!(set.contains(attr), "cookie lacks {attr}: {set}");
    }
    let value = set
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .context("cookie value")?;
    Ok(value)
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> anyhow::Result<String> {
    hidden(page, "_csrf")
}

/// The value of the first form field `name` on a page.
fn hidden(page: &str, name: &str) -> anyhow::Result<String> {
    let field = format!("name=\"{name}\" value=\"");
    let at = page
        .find(&field)
        .with_context(|| format!("no {name} field on the page"))?;
    let rest = &page[at + field.len()..];
    Ok(rest[..rest.find('"').context("unterminated")?].to_owned())
}

fn urlencode(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

struct Browser<'a> {
    h: &'a Https,
    addr: String,
    cookie: Option<String>,
}

impl Browser<'_> {
    async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        let cookie = self
            .cookie
            .as_ref()
            .map(|c| format!("__Host-authsec_session={c}"));
        let mut headers = vec![];
        if let Some(c) = &cookie {
            headers.push(("Cookie", c.as_str()));
        }
        self.h.request(&self.addr, "GET", path, &headers, b"").await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Resp> {
        let cookie = self
            .cookie
            .as_ref()
            .map(|c| format!("__Host-authsec_session={c}"));
        let mut headers = vec![
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Sec-Fetch-Site", "same-origin"),
        ];
        if let Some(c) = &cookie {
            headers.push(("Cookie", c.as_str()));
        }
        self.h
            .request(&self.addr, "POST", path, &headers, &urlencode(form))
            .await
    }
}

/// A sign-in link made with the admin credential in `admin_dir`, through node `via`.
fn login_link(c: &Cluster, via: u64, admin_dir: &std::path::Path) -> anyhow::Result<String> {
    let out = run_cli(&c.addr(via)?, admin_dir, &["console", "login", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(cli_ok(&out)?.trim())?;
    Ok(v["url"].as_str().context("url")?.to_owned())
}

/// The path and query of a link (`https://host:port/ui/login?code=...`).
fn path_of(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("https://").context("https link")?;
    Ok(rest[rest.find('/').context("path")?..].to_owned())
}

async fn sign_in(b: &mut Browser<'_>, link: &str) -> anyhow::Result<()> {
    let page = b.get(&path_of(link)?).await?;
    anyhow::ensure!(page.status == 200, "{page:?}");
    let code = link.split("code=").nth(1).context("code")?;
    let r = b.post("/ui/login", &[("code", code)]).await?;
    anyhow::ensure!(r.status == 303, "sign-in: {r:?}");
    b.cookie = Some(session_cookie(&r)?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_a_one_time_link_and_guards_every_action() -> anyhow::Result<()> {
    authsec_chaos_tests::init_test_tracing();
    let c = Cluster::start(3, Options::default())?;
    c.wait_leader(&[1, 2, 3], T).await?;
    c.wait_issuing(&[1, 2, 3], T).await?;
    let h = c.https()?;
    let addr = c.oauth_addr(2)?;
    let mut b = Browser {
        h: &h,
        addr: addr.clone(),
        cookie: None,
    };

    // No session: every page sends the browser to sign in, and a post does nothing.
    let r = b.get("/ui/clients").await?;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/ui/login"));
    let before = c.client_ids(1).await?;
    let r = b
        .post(
            "/ui/clients",
            &[
                ("kind", "ai_agent"),
                ("client_id", "sneaky"),
                ("_csrf", "x"),
            ],
        )
        .await?;
    assert_eq!(r.status, 303, "{r:?}");
    // The sign-in page explains both ways in, with the strict policy on it too.
    let r = b.get("/ui/login").await?;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("authsec console login"), "{}", r.body);
    let csp = r.header("content-security-policy").context("CSP")?;
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // A link made through node 2 signs in on node 2, once.
    let link = login_link(&c, 2, &c.admin_dir())?;
    assert!(
        link.starts_with(&format!("https://{addr}/ui/login?code=")),
        "{link}"
    );
    let page = b.get(&path_of(&link)?).await?;
    assert!(
        page.body
            .contains(&format!("spiffe://{TRUST_DOMAIN}/authsec/admin/root")),
        "the page names the admin: {}",
        page.body
    );
    sign_in(&mut b, &link).await?;
    let code = link.split("code=").nth(1).context("code")?;
    let again = Browser {
        h: &h,
        addr: addr.clone(),
        cookie: None,
    }
    .post("/ui/login", &[("code", code)])
    .await?;
    assert_eq!(again.status, 401, "a used link: {again:?}");
    assert!(again.body.contains("already used"), "{}", again.body);
    // Another node refuses a link it did not make.
    let other = Browser {
        h: &h,
        addr: c.oauth_addr(3)?,
        cookie: None,
    };
    let link2 = login_link(&c, 2, &c.admin_dir())?;
    let r = other
        .post(
            "/ui/login",
            &[("code", link2.split("code=").nth(1).context("code")?)],
        )
        .await?;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("made by node 2"), "{}", r.body);
    // The session itself works on every node.
    let on3 = Browser {
        h: &h,
        addr: c.oauth_addr(3)?,
        cookie: b.cookie.clone(),
    };
    // (The bootstrap admin's certificate is recorded once the root is in the log, right
    // after the start: wait for it.)
    let deadline = std::time::Instant::now() + T;
    let r = loop {
        let r = on3.get("/ui/cluster").await?;
        if r.body.contains("<td data-label=\"Admin\">root</td>")
            || std::time::Instant::now() > deadline
        {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Members"), "{}", r.body);
    // The Cluster page: keys and CAs with their state, rates, and on the leader each member's
    // replication lag.
    // The trust roots, and the live admin credentials with their root (the bootstrap admin's,
    // recorded at the bootstrap).
    for want in [
        "Signing keys and CAs",
        "x509-ca",
        "token",
        "active",
        "Rates",
        "Trust roots",
        "bootstrap, signing",
        "Admin credentials",
        "<td data-label=\"Admin\">root</td>",
    ] {
        assert!(
            r.body.contains(want),
            "the cluster page lacks {want}: {}",
            r.body
        );
    }
    let leader = c.wait_leader(&[1, 2, 3], T).await?;
    for id in [1, 2, 3] {
        let page = Browser {
            h: &h,
            addr: c.oauth_addr(id)?,
            cookie: b.cookie.clone(),
        }
        .get("/ui/cluster")
        .await?;
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(
            !page.body.contains("on the leader&#39;s console")
                && !page.body.contains("on the leader's console"),
            id == leader,
            "node {id} (leader {leader}): {}",
            page.body
        );
    }

    // Every node's page compares what each member holds: all three answer, with the same
    // digest and archive head at the same applied index (writes in flight may put them at
    // different indexes for a moment, so ask again until they settle).
    let deadline = std::time::Instant::now() + T;
    loop {
        let page = on3.get("/ui/cluster").await?;
        if page.body.contains("3 of 3 members agree") {
            // One row per member, each with its archive head.
            assert_eq!(page.body.matches("<code>#").count(), 3, "{}", page.body);
            break;
        }
        anyhow::ensure!(
            !page.body.contains("DIVERGED") && std::time::Instant::now() < deadline,
            "the members do not agree: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The clients page, empty state first.
    let r = b.get("/ui/clients").await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("No clients yet"), "{}", r.body);
    let csrf = csrf_of(&r.body)?;

    // A form post without the CSRF token (or with another's) is refused and writes nothing.
    for bad in ["", "AAAA"] {
        let r = b
            .post(
                "/ui/clients",
                &[
                    ("kind", "ai_agent"),
                    ("client_id", "no-csrf"),
                    ("_csrf", bad),
                ],
            )
            .await?;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.body.contains("CSRF"), "{}", r.body);
    }
    // A cross-site post is refused even with the token.
    let r = h
        .request(
            &addr,
            "POST",
            "/ui/clients",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Sec-Fetch-Site", "cross-site"),
                (
                    "Cookie",
                    &format!(
                        "__Host-authsec_session={}",
                        b.cookie.clone().unwrap_or_default()
                    ),
                ),
            ],
            &urlencode(&[
                ("kind", "ai_agent"),
                ("client_id", "xsite"),
                ("_csrf", &csrf),
            ]),
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        c.client_ids(1).await?,
        before,
        "refused posts wrote nothing"
    );

    // Onboard an AI agent: its workload entry appears at once, awaiting its agent, and the
    // secret is on this page only.
    let r = b
        .post(
            "/ui/clients",
            &[
                ("_csrf", &csrf),
                ("kind", "ai_agent"),
                ("client_id", "research-agent"),
                ("display_name", "Research <agent>"),
                ("allowed_scopes", "orders:read orders:list"),
                ("generate_secret", "1"),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body.contains("awaiting-agent"), "{}", r.body);
    assert!(r.body.contains("/research-agent"), "{}", r.body);
    let secret = {
        let at = r
            .body
            .find("<code id=\"secret\">")
            .context("secret shown")?;
        let rest = &r.body[at + "<code id=\"secret\">".len()..];
        rest[..rest.find('<').context("end")?].to_owned()
    };
    assert!(secret.starts_with("as_cs_"), "{secret}");
    let list = b.get("/ui/clients").await?;
    assert!(list.body.contains("research-agent"), "{}", list.body);
    assert!(
        list.body.contains("Research &lt;agent&gt;")
            || list.body.contains("Research &#60;agent&#62;"),
        "names are escaped: {}",
        list.body
    );
    assert!(
        !list.body.contains(&secret),
        "the secret is never rendered twice"
    );
    let w = b.get("/ui/workloads").await?;
    assert!(w.body.contains("research-agent") && w.body.contains("awaiting-agent"));
    assert!(!w.body.contains(&secret));

    // The audit log names the admin as the actor of the onboarding.
    let admin_id = format!("spiffe://{TRUST_DOMAIN}/authsec/admin/root");
    let deadline = std::time::Instant::now() + T;
    loop {
        let export = cli_ok(&run_cli(&c.addr(2)?, &c.admin_dir(), &["audit", "export"])?)?;
        if export
            .lines()
            .any(|l| l.contains("research-agent") && l.contains(&admin_id))
        {
            assert!(!export.contains(&secret), "no secret in the audit log");
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no audit record of the onboarding by {admin_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Roles and delegation. The agent and a service both hold orders:read and orders:list; a
    // delegation from the service grants the agent both. When the agent's roles shrink to
    // orders:read, the delegation's effective permissions are the intersection, and the page
    // says which permission was cut.
    let post_ok = |r: Resp| -> anyhow::Result<()> {
        anyhow::ensure!(r.status == 303, "{r:?}");
        Ok(())
    };
    for (name, perms) in [
        ("orders-reader", "orders:read orders:list"),
        ("orders-basic", "orders:read"),
    ] {
        post_ok(
            b.post(
                "/ui/access/roles",
                &[("_csrf", &csrf), ("name", name), ("permissions", perms)],
            )
            .await?,
        )?;
    }
    let r = b
        .post(
            "/ui/clients",
            &[
                ("_csrf", &csrf),
                ("kind", "service"),
                ("client_id", "orders-svc"),
                ("allowed_scopes", "orders:read orders:list"),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    for (role, subject) in [
        ("orders-reader", "client:research-agent"),
        ("orders-reader", "client:orders-svc"),
    ] {
        post_ok(
            b.post(
                "/ui/access/bindings",
                &[("_csrf", &csrf), ("role", role), ("subject", subject)],
            )
            .await?,
        )?;
    }
    post_ok(
        b.post(
            "/ui/access/delegations",
            &[
                ("_csrf", &csrf),
                ("delegation_id", "d1"),
                ("delegator", "client:orders-svc"),
                ("delegate", "client:research-agent"),
                ("permissions", "orders:read orders:list"),
                ("ttl_seconds", "3600"),
            ],
        )
        .await?,
    )?;
    let row = |page: &str, id: &str| -> anyhow::Result<String> {
        let at = page
            .find(&format!("data-delegation=\"{id}\""))
            .with_context(|| format!("no row for {id}: {page}"))?;
        let rest = &page[at..];
        Ok(rest[..rest.find("</tr>").context("row end")?].to_owned())
    };
    let page = b.get("/ui/access").await?;
    assert_eq!(page.status, 200, "{page:?}");
    let d1 = row(&page.body, "d1")?;
    assert!(
        d1.contains("class=\"effective\">orders:list orders:read</td>"),
        "{d1}"
    );
    assert!(d1.contains("status-active"), "{d1}");
    Admin(&c)
        .unbind("orders-reader", "client:research-agent")
        .await?;
    post_ok(
        b.post(
            "/ui/access/bindings",
            &[
                ("_csrf", &csrf),
                ("role", "orders-basic"),
                ("subject", "client:research-agent"),
            ],
        )
        .await?,
    )?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let d1 = row(&b.get("/ui/access").await?.body, "d1")?;
    assert!(
        d1.contains("class=\"effective\">orders:read</td>"),
        "effective = the intersection with the delegate's roles now: {d1}"
    );
    assert!(
        d1.contains("orders:list"),
        "the cut permission is named: {d1}"
    );
    // Revoking shows what it cascades to before it is confirmed.
    let preview = b.get("/ui/access/revoke?id=d1").await?;
    assert_eq!(preview.status, 200, "{preview:?}");
    assert!(preview.body.contains("confirm-revoke") && preview.body.contains("<code>d1</code>"));
    let after_preview = row(&b.get("/ui/access").await?.body, "d1")?;
    assert!(
        after_preview.contains("status-active"),
        "a preview revokes nothing"
    );
    let confirm_csrf = csrf_of(&preview.body)?;
    post_ok(
        b.post(
            "/ui/access/revoke",
            &[("_csrf", &confirm_csrf), ("id", "d1")],
        )
        .await?,
    )?;
    let d1 = row(&b.get("/ui/access").await?.body, "d1")?;
    assert!(d1.contains("status-revoked"), "{d1}");

    // Agents: none yet; a join token shown once, with the command that uses it.
    let page = b.get("/ui/agents").await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("No agent has attested yet"),
        "{}",
        page.body
    );
    let r = b
        .post(
            "/ui/agents/tokens",
            &[("_csrf", &csrf), ("name", "host9"), ("ttl_seconds", "600")],
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body.contains("/authsec/agent/host9"), "{}", r.body);
    let join_token = {
        let at = r.body.find("<code id=\"token\">").context("token shown")?;
        let rest = &r.body[at + "<code id=\"token\">".len()..];
        rest[..rest.find('<').context("end")?].to_owned()
    };
    assert!(
        join_token.contains('.') && join_token.len() > 20,
        "{join_token}"
    );
    assert!(!b.get("/ui/agents").await?.body.contains(&join_token));
    let r = b
        .post(
            "/ui/agents/tokens",
            &[
                ("_csrf", &csrf),
                ("name", "bad name!"),
                ("ttl_seconds", "600"),
            ],
        )
        .await?;
    assert_eq!(r.status, 400, "a bad agent name is explained: {r:?}");

    // Rotate the agent's secret: the new one is shown once and works; the old one stops.
    let token_with = |secret: String| {
        let (h, addr) = (h.clone(), addr.clone());
        async move {
            h.client_credentials(
                &addr,
                "research-agent",
                &secret,
                &[
                    ("scope", "orders:read"),
                    ("resource", "https://orders.example"),
                ],
            )
            .await
        }
    };
    let first = token_with(secret.clone()).await?;
    assert_eq!(first.status, 200, "{first:?}");
    let r = b
        .post(
            "/ui/clients/rotate",
            &[("_csrf", &csrf), ("client_id", "research-agent")],
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let new_secret = {
        let at = r
            .body
            .find("<code id=\"secret\">")
            .context("secret shown")?;
        let rest = &r.body[at + "<code id=\"secret\">".len()..];
        rest[..rest.find('<').context("end")?].to_owned()
    };
    assert_ne!(new_secret, secret);
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    assert_eq!(
        token_with(secret.clone()).await?.status,
        401,
        "the old secret stopped"
    );
    assert_eq!(token_with(new_secret.clone()).await?.status, 200);
    assert!(!b.get("/ui/clients").await?.body.contains(&new_secret));

    // Disable a client, and enable it again.
    let client_row = |page: &str, id: &str| -> anyhow::Result<String> {
        let at = page
            .find(&format!("data-client=\"{id}\""))
            .with_context(|| format!("no row for {id}"))?;
        let rest = &page[at..];
        Ok(rest[..rest.find("</tr>").context("row end")?].to_owned())
    };
    post_ok(
        b.post(
            "/ui/clients/disable",
            &[("_csrf", &csrf), ("client_id", "orders-svc")],
        )
        .await?,
    )?;
    let row_now = client_row(&b.get("/ui/clients").await?.body, "orders-svc")?;
    assert!(row_now.contains("<strong>disabled</strong>"), "{row_now}");
    post_ok(
        b.post(
            "/ui/clients/disable",
            &[
                ("_csrf", &csrf),
                ("client_id", "orders-svc"),
                ("enable", "1"),
            ],
        )
        .await?,
    )?;
    let row_now = client_row(&b.get("/ui/clients").await?.body, "orders-svc")?;
    assert!(row_now.contains(">enabled<"), "{row_now}");

    // Edit the agent's entry: parent and selectors; a stale revision is refused.
    let w = b.get("/ui/workloads").await?;
    let entry_id = {
        let at = w.body.find("data-entry=\"").context("an entry row")?;
        let rest = &w.body[at + "data-entry=\"".len()..];
        rest[..rest.find('"').context("end")?].to_owned()
    };
    let edit = b.get(&format!("/ui/workloads/edit?id={entry_id}")).await?;
    assert_eq!(edit.status, 200, "{edit:?}");
    let revision = {
        let at = edit
            .body
            .find("name=\"revision\" value=\"")
            .context("revision")?;
        let rest = &edit.body[at + "name=\"revision\" value=\"".len()..];
        rest[..rest.find('"').context("end")?].to_owned()
    };
    let parent = format!("spiffe://{TRUST_DOMAIN}/authsec/agent/host9");
    let form = |rev: &str| {
        vec![
            ("_csrf", csrf.clone()),
            ("entry_id", entry_id.clone()),
            ("revision", rev.to_owned()),
            ("parent_id", parent.clone()),
            (
                "selectors",
                "unix:uid:1000\r\nunix:path:/opt/agent/bin/agent\r\n".to_owned(),
            ),
        ]
    };
    let f = form(&revision);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_ok(b.post("/ui/workloads/edit", &f).await?)?;
    let edit = b.get(&format!("/ui/workloads/edit?id={entry_id}")).await?;
    assert!(
        edit.body.contains("unix:uid:1000")
            && edit.body.contains("unix:path:/opt/agent/bin/agent")
            && edit.body.contains(&parent),
        "{}",
        edit.body
    );
    let r = b.post("/ui/workloads/edit", &f).await?;
    assert_eq!(r.status, 409, "a stale revision: {r:?}");

    // The audit page: all of it, newest first, each subject linked to its page; a filter;
    // a bad filter explained; the export verifies offline.
    let page = b.get("/ui/audit").await?;
    assert_eq!(page.status, 200, "{page:?}");
    for want in [
        "client:research-agent",
        "delegation:d1",
        "href=\"/ui/clients?q=research-agent\"",
        admin_id.as_str(),
    ] {
        assert!(page.body.contains(want), "the audit page lacks {want}");
    }
    let page = b.get("/ui/audit?types=delegation.*").await?;
    assert!(page.body.contains("delegation:d1"), "{}", page.body);
    assert!(
        !page.body.contains("client:orders-svc</a></td><td>"),
        "filtered"
    );
    let r = b.get("/ui/audit?since=yesterday-ish").await?;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("2h"), "{}", r.body);
    let r = b.get("/ui/audit?types=nonsense.kind").await?;
    assert_eq!(r.status, 400, "{r:?}");
    // Live follow: each record carries its sequence as the event id, and a browser that
    // reconnects with the last id it got goes on after it, so no record shows twice.
    let cookie = format!(
        "__Host-authsec_session={}",
        b.cookie.as_deref().context("signed in")?
    );
    let ids = |text: &str| -> Vec<u64> {
        // An event is its own chunk: `id: N`, then `event: record` on the next line (an id
        // alone is a progress mark).
        text.split("\nid: ")
            .skip(1)
            .filter_map(|rest| {
                let mut lines = rest.split('\n');
                let id = lines.next()?.trim().parse().ok()?;
                (lines.next()? == "event: record").then_some(id)
            })
            .collect()
    };
    let three = |t: &str| ids(t).len() >= 3;
    let first =
        b.h.stream_until(
            &b.addr,
            "/ui/audit/events?from=1",
            &[("Cookie", &cookie)],
            three,
        )
        .await?;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let seen = ids(&first);
    assert_eq!(seen[..3], [1, 2, 3], "records from sequence 1 on: {first}");
    let again =
        b.h.stream_until(
            &b.addr,
            "/ui/audit/events?from=1",
            &[("Cookie", &cookie), ("Last-Event-ID", "2")],
            |t| !ids(t).is_empty(),
        )
        .await?;
    assert_eq!(
        ids(&again).first(),
        Some(&3),
        "a reconnect after id 2 starts at record 3: {again}"
    );
    let bad =
        b.h.request(
            &b.addr,
            "GET",
            "/ui/audit/events?from=1",
            &[("Cookie", &cookie), ("Last-Event-ID", "yesterday")],
            b"",
        )
        .await?;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("Last-Event-ID"), "{}", bad.body);

    let r = b.get("/ui/audit/export").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert!(!r.body.contains(&secret), "no secret in the export");
    let file = c
        .admin_dir()
        .parent()
        .context("dir")?
        .join("console-export.jsonl");
    std::fs::write(&file, &r.body)?;
    let out = run_cli(
        &c.addr(1)?,
        &c.admin_dir(),
        &[
            "audit",
            "verify",
            file.to_str().context("path")?,
            "--allow-unsigned",
        ],
    )?;
    cli_ok(&out).with_context(|| format!("verify the console's export: {out:?}"))?;

    // An admin whose roles grant the console and reading clients, but not writing them: it
    // sees the page, and its create is refused with nothing written.
    let ops_dir = c.admin_dir().parent().context("dir")?.join("ops-admin");
    c.issue_admin(1, "ops", &ops_dir)?;
    let ops = format!("spiffe://{TRUST_DOMAIN}/authsec/admin/ops");
    Admin(&c)
        .role(
            "console-reader",
            &[
                "authsec.admin:console.write",
                "authsec.admin:clients.read",
                "authsec.admin:cluster.read",
            ],
        )
        .await?;
    Admin(&c).bind("console-reader", &ops).await?;
    c.wait_converged(&[1, 2, 3], 0, T).await?;
    let mut o = Browser {
        h: &h,
        addr: addr.clone(),
        cookie: None,
    };
    sign_in(&mut o, &login_link(&c, 2, &ops_dir)?).await?;
    let r = o.get("/ui/clients").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let ops_csrf = csrf_of(&r.body)?;
    assert_ne!(ops_csrf, csrf, "each session its own CSRF token");
    let ids = c.client_ids(1).await?;
    let r = o
        .post(
            "/ui/clients",
            &[
                ("_csrf", &ops_csrf),
                ("kind", "service"),
                ("client_id", "not-allowed"),
            ],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("clients.write"), "{}", r.body);
    let r = o.get("/ui/workloads").await?;
    assert_eq!(r.status, 403, "no entries.read: {r:?}");
    // The cluster page without admins.read shows the roots, not who holds admin credentials;
    // with it, ops is listed beside root.
    let r = o.get("/ui/cluster").await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Trust roots"), "{}", r.body);
    assert!(!r.body.contains("Admin credentials"), "{}", r.body);
    let r = b.get("/ui/cluster").await?;
    assert!(
        r.body.contains("<td data-label=\"Admin\">ops</td>"),
        "{}",
        r.body
    );
    assert_eq!(
        c.client_ids(1).await?,
        ids,
        "the refused create wrote nothing"
    );

    // Every page carries the strict policy.
    for path in [
        "/ui/clients",
        "/ui/workloads",
        "/ui/agents",
        "/ui/access",
        "/ui/audit",
        "/ui/cluster",
        "/ui/nowhere",
    ] {
        let r = b.get(path).await?;
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp:?}"
        );
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
    }

    // An admin client certificate signs in without a link; its forms still need the token.
    let (chain, key) = {
        use rustls::pki_types::pem::PemObject;
        let dir = c.admin_dir();
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_file_iter(dir.join("admin.crt"))?
                .collect::<Result<_, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("admin.key"))?;
        (chain, key)
    };
    let hc = Https::with_client_cert(&c.admin_dir().join("ca.crt"), chain, key)?;
    let cert = Browser {
        h: &hc,
        addr: addr.clone(),
        cookie: None,
    };
    let r = cert.get("/ui/clients").await?;
    assert_eq!(r.status, 200, "{r:?}");
    let cert_csrf = csrf_of(&r.body)?;
    let r = cert
        .post(
            "/ui/clients",
            &[("kind", "service"), ("client_id", "by-cert"), ("_csrf", "")],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = cert
        .post(
            "/ui/clients",
            &[
                ("kind", "service"),
                ("client_id", "by-cert"),
                ("_csrf", &cert_csrf),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");

    // Deleting a workload entry: a page says what it means first, then the delete is made
    // at the revision that page showed.
    let r = b
        .post(
            "/ui/clients",
            &[
                ("_csrf", &csrf),
                ("kind", "ai_agent"),
                ("client_id", "scratch-agent"),
            ],
        )
        .await?;
    assert_eq!(r.status, 201, "{r:?}");
    let w = b.get("/ui/workloads").await?;
    let scratch_entry = {
        let row = w
            .body
            .split("<tr data-entry=\"")
            .find(|r| r.contains("/scratch-agent"))
            .context("the scratch agent's entry")?;
        row[..row.find('"').context("end")?].to_owned()
    };
    let page = b
        .get(&format!("/ui/workloads/delete?id={scratch_entry}"))
        .await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("/scratch-agent") && page.body.contains("not revoked"),
        "{}",
        page.body
    );
    let revision = hidden(&page.body, "revision")?;
    let r = b
        .post(
            "/ui/workloads/delete",
            &[
                ("_csrf", &csrf),
                ("entry_id", &scratch_entry),
                ("revision", &revision),
            ],
        )
        .await?;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(
        !b.get("/ui/workloads")
            .await?
            .body
            .contains(&format!("data-entry=\"{scratch_entry}\"")),
        "the entry is gone"
    );

    // Deleting a client: its page lists the entry and the role that go with it and says how
    // to stop the tokens it holds. An admin without clients.write is refused, a revision
    // other than the one shown gets 409, and nothing goes until the delete itself.
    let page = b.get("/ui/clients/delete?client_id=research-agent").await?;
    assert_eq!(page.status, 200, "{page:?}");
    for want in [
        "/research-agent",
        "authsec revoke client research-agent",
        "name=\"revision\"",
    ] {
        assert!(
            page.body.contains(want),
            "the delete page lacks {want}: {}",
            page.body
        );
    }
    let revision = hidden(&page.body, "revision")?;
    let other = (revision.parse::<u64>()? + 1).to_string();
    let r = o
        .post(
            "/ui/clients/delete",
            &[
                ("_csrf", &ops_csrf),
                ("client_id", "research-agent"),
                ("revision", &revision),
            ],
        )
        .await?;
    assert_eq!(r.status, 403, "{r:?}");
    let r = b
        .post(
            "/ui/clients/delete",
            &[
                ("_csrf", &csrf),
                ("client_id", "research-agent"),
                ("revision", &other),
            ],
        )
        .await?;
    assert_eq!(r.status, 409, "another revision: {r:?}");
    assert!(
        b.get("/ui/clients")
            .await?
            .body
            .contains("data-client=\"research-agent\""),
        "refused deletes removed nothing"
    );
    let r = b
        .post(
            "/ui/clients/delete",
            &[
                ("_csrf", &csrf),
                ("client_id", "research-agent"),
                ("revision", &revision),
            ],
        )
        .await?;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(!b
        .get("/ui/clients")
        .await?
        .body
        .contains("data-client=\"research-agent\""));
    assert!(!b
        .get("/ui/workloads")
        .await?
        .body
        .contains("/research-agent"));
    let r = b.get("/ui/clients/delete?client_id=research-agent").await?;
    assert_eq!(r.status, 404, "{r:?}");

    // A role still bound is not deleted (409, with how to go on); unbound, it is.
    for (path, form) in [
        (
            "/ui/access/roles",
            vec![("name", "scratch-role"), ("permissions", "orders:read")],
        ),
        (
            "/ui/access/bindings",
            vec![("role", "scratch-role"), ("subject", "client:orders-svc")],
        ),
    ] {
        let mut f = vec![("_csrf", csrf.as_str())];
        f.extend(form);
        let r = b.post(path, &f).await?;
        assert_eq!(r.status, 303, "{path}: {r:?}");
    }
    let delete_role = [("_csrf", csrf.as_str()), ("name", "scratch-role")];
    let r = b.post("/ui/access/roles/delete", &delete_role).await?;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("unbind it first"), "{}", r.body);
    let r = b
        .post(
            "/ui/access/unbind",
            &[
                ("_csrf", &csrf),
                ("role", "scratch-role"),
                ("subject", "client:orders-svc"),
            ],
        )
        .await?;
    assert_eq!(r.status, 303, "{r:?}");
    let r = b.post("/ui/access/roles/delete", &delete_role).await?;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(!b
        .get("/ui/access")
        .await?
        .body
        .contains("data-role=\"scratch-role\""));

    // Banning an agent that never attested: 404 with the reason, nothing written.
    let r = b
        .post(
            "/ui/agents/ban",
            &[
                ("_csrf", &csrf),
                (
                    "spiffe_id",
                    &format!("spiffe://{TRUST_DOMAIN}/authsec/agent/ghost"),
                ),
            ],
        )
        .await?;
    assert_eq!(r.status, 404, "{r:?}");

    // Signing out clears the cookie.
    let r = b.post("/ui/logout", &[("_csrf", &csrf)]).await?;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == "set-cookie" && v.contains("Max-Age=0")));
    Ok(())
}
