//! The web console (issue 11), served by every node on its HTTPS (OAuth) listener under `/ui`.
//!
//! - **Pages are rendered here**, from askama templates compiled into the binary
//!   (`node/templates/console/`), with a small stylesheet and script embedded beside them: no
//!   build chain, no request leaves the cluster, and any node serves all of it.
//! - **The console is a client of the node's own admin API, in process.** Every page and
//!   every action is the gRPC call the CLI would make (`ClientService/CreateClient`, ...),
//!   checked first with the same rule as the gRPC listener ([`crate::authz::check`], the
//!   admin permission the call needs) and made with the signed-in admin as the caller, so the
//!   audit log records that admin as the actor and the services' own validation applies.
//! - **Sign-in**: an admin client certificate, or a session opened with a one-time link from
//!   `authsec console login` ([`session`]). Sessions are `__Host-` cookies, HttpOnly, Secure,
//!   SameSite=Strict; every form carries a CSRF token bound to the session (or to the
//!   certificate), and a cross-site POST is refused before anything else.
//! - **Headers**: a strict Content-Security-Policy (`default-src 'none'`, scripts and styles
//!   from the console's own paths only, no inline code), `no-store`, `nosniff`, no referrer,
//!   no framing.

pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use askama::Template;
use authsec_api::v1;
use authsec_api::v1::agent_service_server::AgentService;
use authsec_api::v1::client_service_server::ClientService;
use authsec_api::v1::cluster_service_server::ClusterService;
use authsec_api::v1::delegation_service_server::DelegationService;
use authsec_api::v1::entry_service_server::EntryService;
use authsec_api::v1::revocation_service_server::RevocationService;
use authsec_api::v1::role_service_server::RoleService;
use authsec_domain::SpiffeId;
use authsec_raft::tls::PeerInfo;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::Uri;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::oauth::{Conn, Oauth};
use session::{Claims, Sessions};

/// The session cookie (the `__Host-` prefix: Secure, no Domain, Path=/, so no other host or
/// path can set or read it).
pub const SESSION_COOKIE: &str = "__Host-authsec_session";
/// Form bodies the console accepts, at most.
const FORM_BYTES_MAX: usize = 16 * 1024;
/// Default lifetime of a sign-in link and of the session it opens.
pub const LOGIN_TTL_DEFAULT_S: u32 = 300;
pub const LOGIN_TTL_MAX_S: u32 = 900;
pub const SESSION_DEFAULT_S: u32 = 3600;
pub const SESSION_MAX_S: u32 = 43_200;
/// List calls: the page size and how many pages a console page reads at most.
const PAGE_SIZE: u32 = 1000;
const PAGES_MAX: usize = 10;
/// Permissions of one delegation whose effect the page works out (one check each).
const DELEGATION_PERMISSIONS_SHOWN: usize = 64;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const APP_CSS: &str = include_str!("../../assets/console/app.css");
const APP_JS: &str = include_str!("../../assets/console/app.js");

/// The console's state: the authorization server's (for the node context, the in-memory
/// projections and the cluster key) and the session keys, derived once the key is loaded.
pub struct Console {
    oauth: Arc<Oauth>,
    /// Where the console is served (the OAuth listener), for sign-in links.
    addr: std::net::SocketAddr,
    sessions: OnceLock<Arc<Sessions>>,
    /// Recent (time, applied index, credentials recorded) samples, for the Cluster page's
    /// charts: every [`SAMPLE_EVERY`], the last [`SAMPLES_MAX`].
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    applied: u64,
    issued: u64,
}

const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const SAMPLES_MAX: usize = 120;

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// Who is signed in, and what their forms' CSRF token is bound to.
#[derive(Debug, Clone)]
struct Who {
    admin: SpiffeId,
    csrf: String,
}

impl Console {
    pub fn new(oauth: Arc<Oauth>, addr: std::net::SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            oauth,
            addr,
            sessions: OnceLock::new(),
            samples: Default::default(),
        })
    }

    /// Sample the commit and issuance counters for the charts, until `shutdown`.
    pub async fn sample_loop(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        use std::sync::atomic::Ordering;
        loop {
            let sample = Sample {
                at_ms: crate::issuer::now_ms(),
                applied: crate::svid_api::applied_index(&self.oauth.ctx),
                issued: self.oauth.recorder.stats.recorded.load(Ordering::Relaxed),
            };
            {
                let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() == SAMPLES_MAX {
                    q.pop_front();
                }
                q.push_back(sample);
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Per-second rates between consecutive samples: (commits, credentials).
    fn rates(&self) -> (Vec<f64>, Vec<f64>) {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut commits = Vec::new();
        let mut issued = Vec::new();
        for w in q.iter().collect::<Vec<_>>().windows(2) {
            let dt = (w[1].at_ms.saturating_sub(w[0].at_ms)).max(1) as f64 / 1000.0;
            commits.push(w[1].applied.saturating_sub(w[0].applied) as f64 / dt);
            issued.push(w[1].issued.saturating_sub(w[0].issued) as f64 / dt);
        }
        (commits, issued)
    }

    /// The session keys, once the cluster's client-secret key is available on this node.
    pub fn sessions(&self) -> Option<Arc<Sessions>> {
        if let Some(s) = self.sessions.get() {
            return Some(s.clone());
        }
        let key = self.oauth.secret_key()?;
        let s = Arc::new(Sessions::new(&key, self.oauth.ctx.node_id));
        Some(self.sessions.get_or_init(|| s).clone())
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ui", get(|| async { see_other("/ui/clients") }))
            .route("/ui/", get(|| async { see_other("/ui/clients") }))
            .route("/ui/login", get(login_page).post(login))
            .route("/ui/logout", post(logout))
            .route("/ui/clients", get(clients_page).post(create_client))
            .route("/ui/workloads", get(workloads_page))
            .route("/ui/workloads/events", get(workloads_events))
            .route("/ui/workloads/edit", get(entry_edit_page).post(entry_edit))
            .route("/ui/agents", get(agents_page))
            .route("/ui/agents/tokens", post(create_join_token))
            .route("/ui/clients/disable", post(disable_client))
            .route(
                "/ui/clients/delete",
                get(client_delete_page).post(delete_client),
            )
            .route(
                "/ui/workloads/delete",
                get(entry_delete_page).post(delete_entry),
            )
            .route("/ui/agents/ban", post(ban_agent))
            .route("/ui/agents/delete", post(delete_agent))
            .route("/ui/clients/rotate", post(rotate_secret))
            .route("/ui/cluster", get(cluster_page))
            .route("/ui/audit", get(audit_page))
            .route("/ui/audit/events", get(audit_events))
            .route("/ui/audit/export", get(audit_export))
            .route("/ui/access", get(access_page))
            .route("/ui/access/roles", post(create_role))
            .route("/ui/access/bindings", post(bind_role))
            .route("/ui/access/unbind", post(unbind_role))
            .route("/ui/access/roles/delete", post(delete_role))
            .route("/ui/access/delegations", post(create_delegation))
            .route(
                "/ui/access/revoke",
                get(revoke_preview).post(revoke_delegation),
            )
            .route(
                "/ui/static/app.css",
                get(|| async { asset("text/css", APP_CSS) }),
            )
            .route(
                "/ui/static/app.js",
                get(|| async { asset("text/javascript", APP_JS) }),
            )
            .route(
                "/ui/{*rest}",
                get(|| async {
                    page_error(
                        StatusCode::NOT_FOUND,
                        "No such page. The console's pages: clients, workloads, cluster.",
                    )
                }),
            )
            .layer(axum::middleware::map_response(secure_headers))
            .layer(axum::extract::DefaultBodyLimit::max(FORM_BYTES_MAX))
            .with_state(self.clone())
    }

    fn tls(&self) -> Option<&Arc<authsec_raft::tls::TlsState>> {
        self.oauth.ctx.sec.tls.as_ref()
    }

    /// The signed-in admin: a client certificate naming an admin, or a valid session cookie.
    fn who(&self, conn: &Conn, headers: &HeaderMap) -> Result<Who, Response> {
        let Some(tls) = self.tls() else {
            return Err(page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "This node runs without TLS identities (--insecure): the console needs them.",
            ));
        };
        let td = tls.trust_domain();
        let sessions = self.sessions();
        if let Some(cert) = &conn.peer_cert {
            if let Ok(id) = authsec_raft::tls::svid_id(cert) {
                if crate::pki::admin_name_of(td, &id).is_some() {
                    let fp = hex::encode(aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        cert.as_ref(),
                    ));
                    let csrf = match &sessions {
                        Some(s) => s.csrf_token(&cert_claims(&id, &fp)),
                        None => String::new(),
                    };
                    return Ok(Who { admin: id, csrf });
                }
            }
        }
        let Some(cookie) = cookie(headers, SESSION_COOKIE) else {
            return Err(see_other("/ui/login"));
        };
        let Some(sessions) = sessions else {
            return Err(page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "This node does not hold the cluster key yet, so it cannot check sessions; try another node.",
            ));
        };
        match sessions.session(cookie, crate::issuer::now_ms()) {
            Ok(c) => match SpiffeId::parse(&c.admin) {
                Ok(admin) if crate::pki::admin_name_of(td, &admin).is_some() => Ok(Who {
                    csrf: sessions.csrf_token(&c),
                    admin,
                }),
                _ => Err(login_again(
                    "The session names no admin of this trust domain.",
                )),
            },
            Err(e) => Err(login_again(&e.to_string())),
        }
    }

    /// `Ok` when `who` may make the admin call at `path` (the gRPC listener's rule).
    fn allow(&self, who: &Who, path: &str) -> Result<(), Response> {
        let Some(tls) = self.tls() else {
            return Err(page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no TLS identities",
            ));
        };
        let policy = crate::authz::AdminPolicy {
            reader: self.oauth.ctx.reader.clone(),
        };
        crate::authz::check(tls, &policy, path, Some(&peer(&who.admin))).map_err(|s| {
            tracing::info!(admin = %who.admin, path, reason = %s.message(), "console: refused");
            page_error(StatusCode::FORBIDDEN, s.message())
        })
    }

    /// A POST's checks: same-site, signed in, the CSRF token of the session.
    fn post_who(&self, conn: &Conn, headers: &HeaderMap, form: &Form) -> Result<Who, Response> {
        cross_site_refused(headers)?;
        let who = self.who(conn, headers)?;
        let presented = form.get("_csrf").unwrap_or("");
        // The token expected for this session (or certificate), compared in constant time.
        let expected = who.csrf.as_bytes();
        let ok = !expected.is_empty()
            && aws_lc_rs::constant_time::verify_slices_are_equal(expected, presented.as_bytes())
                .is_ok();
        if !ok {
            tracing::info!(admin = %who.admin, "console: a form without a valid CSRF token; nothing done");
            return Err(page_error(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or not this session's; reload the page and try again.",
            ));
        }
        Ok(who)
    }

    /// A page's checks: signed in, and allowed the admin call at `path`.
    fn signed_in(&self, conn: &Conn, headers: &HeaderMap, path: &str) -> Result<Who, Response> {
        let who = self.who(conn, headers)?;
        self.allow(&who, path)?;
        Ok(who)
    }

    /// A form's checks: a bounded body, same-site, signed in, this session's CSRF token, and
    /// allowed the admin call at `path`. Nothing is done unless all hold.
    fn posted(
        &self,
        conn: &Conn,
        headers: &HeaderMap,
        body: &[u8],
        path: &str,
    ) -> Result<(Who, Form), Response> {
        let form = Form::parse(body)?;
        let who = self.post_who(conn, headers, &form)?;
        self.allow(&who, path)?;
        Ok((who, form))
    }

    fn chrome(&self, who: Option<&Who>, title: &'static str) -> Chrome {
        Chrome::new(who, title, self.oauth.ctx.node_id)
    }
}

/// `ConsoleService`: one-time sign-in links (the authz layer already checked that the
/// caller is an admin holding `authsec.admin:console.write`).
#[derive(Debug, Clone)]
pub struct Logins(pub Arc<OnceLock<Arc<Console>>>);

#[tonic::async_trait]
impl v1::console_service_server::ConsoleService for Logins {
    async fn create_login(
        &self,
        req: tonic::Request<v1::CreateConsoleLoginRequest>,
    ) -> Result<tonic::Response<v1::CreateConsoleLoginResponse>, tonic::Status> {
        let Some(console) = self.0.get() else {
            return Err(tonic::Status::failed_precondition(
                "this node serves no console: it is served on the OAuth endpoint ([oauth] addr)",
            ));
        };
        let Some(admin) = crate::authz::caller(&req) else {
            return Err(tonic::Status::unauthenticated(
                "a console sign-in link is made for the calling admin: call with its certificate",
            ));
        };
        let r = req.into_inner();
        let ttl = match r.ttl_seconds {
            0 => LOGIN_TTL_DEFAULT_S,
            t @ 1..=LOGIN_TTL_MAX_S => t,
            t => {
                return Err(tonic::Status::invalid_argument(format!(
                    "ttl_seconds {t}: at most {LOGIN_TTL_MAX_S}"
                )))
            }
        };
        let session = match r.session_seconds {
            0 => SESSION_DEFAULT_S,
            t @ 60..=SESSION_MAX_S => t,
            t => {
                return Err(tonic::Status::invalid_argument(format!(
                    "session_seconds {t}: 60 to {SESSION_MAX_S}"
                )))
            }
        };
        let Some(sessions) = console.sessions() else {
            return Err(tonic::Status::unavailable(
                "this node does not hold the cluster key yet; ask another node",
            ));
        };
        let claims = sessions.login_code(admin.as_str(), crate::issuer::now_ms(), ttl, session);
        let code = sessions.encode(&claims);
        tracing::info!(admin = %admin, ttl_s = ttl, "console: sign-in link made");
        Ok(tonic::Response::new(v1::CreateConsoleLoginResponse {
            url: format!("https://{}/ui/login?code={code}", console.addr),
            expires_at_ms: claims.expires_at_ms,
            code,
        }))
    }
}

/// What the CSRF token of a certificate-authenticated browser is bound to.
fn cert_claims(id: &SpiffeId, fingerprint: &str) -> Claims {
    Claims {
        kind: session::Kind::Session,
        admin: id.to_string(),
        expires_at_ms: 0,
        nonce: format!("cert:{fingerprint}"),
        node: None,
        session_s: None,
    }
}

fn peer(id: &SpiffeId) -> PeerInfo {
    PeerInfo {
        remote: None,
        spiffe_id: Some(id.clone()),
        cert_fingerprint: None,
        leaf: None,
    }
}

/// A request to the node's own service, made as `who`.
fn as_admin<T>(who: &Who, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(peer(&who.admin));
    r
}

/// Browsers send `Sec-Fetch-Site`; a POST from another site is refused whatever it carries.
fn cross_site_refused(headers: &HeaderMap) -> Result<(), Response> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(other) => Err(page_error(
            StatusCode::FORBIDDEN,
            &format!("A form posted from another site ({other}) is refused."),
        )),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An urlencoded form, bounded, with repeated keys joined by a space.
#[derive(Default)]
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Result<Self, Response> {
        if body.len() > FORM_BYTES_MAX {
            return Err(page_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
            ));
        }
        let mut m: HashMap<String, String> = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            m.entry(k.into_owned())
                .and_modify(|e| {
                    e.push(' ');
                    e.push_str(&v);
                })
                .or_insert_with(|| v.into_owned());
        }
        Ok(Self(m))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn text(&self, k: &str) -> String {
        self.get(k).unwrap_or("").trim().to_owned()
    }

    /// A number of seconds (empty: 0), or the page that says what is wrong.
    fn seconds(&self, k: &str, what: &str) -> Result<u64, Response> {
        match self.text(k).as_str() {
            "" => Ok(0),
            t => t.parse::<u64>().map_err(|_| {
                page_error(
                    StatusCode::BAD_REQUEST,
                    &format!("{what} {t:?} is not a number of seconds."),
                )
            }),
        }
    }

    fn words(&self, k: &str) -> Vec<String> {
        self.get(k)
            .unwrap_or("")
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A request's query parameters (the first of each name; bounded by the request line).
fn query(uri: &Uri) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    m
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn login_again(reason: &str) -> Response {
    let mut r = see_other(&format!(
        "/ui/login?reason={}",
        form_urlencoded::byte_serialize(reason.as_bytes()).collect::<String>()
    ));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-authsec_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// A `text/event-stream` response fed by `rx`.
fn event_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::convert::Infallible>>,
) -> Response {
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the page failed",
            )
                .into_response()
        }
    }
}

fn page_error(status: StatusCode, message: &str) -> Response {
    html(
        status,
        &ErrorPage {
            chrome: Chrome::new(None, "Error", 0),
            status: status.as_u16(),
            message: message.to_owned(),
        },
    )
}

fn status_error(s: &tonic::Status) -> Response {
    let status = match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition | tonic::Code::Aborted => {
            StatusCode::CONFLICT
        }
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    page_error(status, s.message())
}

// ---------------------------------------------------------------------------------------------
// Templates

#[derive(Debug)]
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every page shows around its content.
#[derive(Debug)]
pub struct Chrome {
    pub title: &'static str,
    pub admin: String,
    pub admin_name: String,
    pub csrf: String,
    pub node_id: u64,
    pub nav: Vec<NavItem>,
}

impl Chrome {
    fn new(who: Option<&Who>, title: &'static str, node_id: u64) -> Self {
        let nav = [
            ("/ui/clients", "Clients"),
            ("/ui/workloads", "Autonomous Workloads"),
            ("/ui/agents", "Agents"),
            ("/ui/access", "Roles and delegation"),
            ("/ui/audit", "Audit"),
            ("/ui/cluster", "Cluster"),
        ]
        .into_iter()
        .map(|(href, label)| NavItem {
            href,
            label,
            current: label == title,
        })
        .collect();
        let admin = who.map(|w| w.admin.to_string()).unwrap_or_default();
        Self {
            title,
            admin_name: admin.rsplit('/').next().unwrap_or("").to_owned(),
            admin,
            csrf: who.map(|w| w.csrf.clone()).unwrap_or_default(),
            node_id,
            nav,
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    message: String,
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    chrome: Chrome,
    code: String,
    admin: String,
    reason: String,
}

#[derive(Debug)]
pub struct ClientRow {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub owner: String,
    pub scopes: String,
    pub enabled: bool,
}

#[derive(Debug)]
pub struct KindOption {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "console/clients.html")]
struct ClientsPage {
    chrome: Chrome,
    q: String,
    kinds: Vec<KindOption>,
    filtered: bool,
    clients: Vec<ClientRow>,
}

#[derive(Debug)]
pub struct EntryRow {
    pub entry_id: String,
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: String,
    pub client_id: String,
    pub status: String,
}

#[derive(Template)]
#[template(path = "console/client_created.html")]
struct ClientCreatedPage {
    chrome: Chrome,
    client_id: String,
    kind: &'static str,
    secret: String,
    entry: Option<EntryRow>,
    next_steps: Vec<String>,
    issuer: String,
}

#[derive(Template)]
#[template(path = "console/workloads.html")]
struct WorkloadsPage {
    chrome: Chrome,
    status: String,
    entries: Vec<EntryRow>,
}

#[derive(Debug)]
pub struct MemberRow {
    pub id: u64,
    pub addr: String,
    pub role: String,
    /// Entries behind the leader's log, as the leader sees it ("" when this node does not lead).
    pub lag: String,
}

/// A root of the trust bundle, as the cluster page shows it.
#[derive(Debug)]
pub struct RootRow {
    pub fingerprint: String,
    pub state: &'static str,
    pub signing: bool,
}

/// A live admin certificate, as the cluster page shows it.
#[derive(Debug)]
pub struct AdminRow {
    pub name: String,
    pub fingerprint: String,
    pub root: String,
    /// Signed by the root that signs now (else it must rotate before its root retires).
    pub current: bool,
    pub not_after: String,
}

#[derive(Debug)]
pub struct KeyRow {
    pub kind: &'static str,
    pub node: u64,
    pub state: &'static str,
    pub kid: String,
    pub not_after: String,
}

/// A rate over the last minutes, drawn as an SVG polyline (no script, no style).
#[derive(Debug)]
pub struct Chart {
    pub title: &'static str,
    pub points: String,
    pub peak: String,
    pub last: String,
    pub samples: usize,
}

fn chart(title: &'static str, values: &[f64]) -> Chart {
    let (w, h) = (600.0, 100.0);
    let peak = values.iter().copied().fold(0.0_f64, f64::max);
    let scale = if peak > 0.0 { h / peak } else { 0.0 };
    let step = if values.len() > 1 {
        w / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, h - v * scale))
        .collect::<Vec<_>>()
        .join(" ");
    Chart {
        title,
        points,
        peak: format!("{peak:.1}"),
        last: format!("{:.1}", values.last().copied().unwrap_or(0.0)),
        samples: values.len(),
    }
}

/// One member's replicated state as it reported it, for the agreement table.
#[derive(Debug)]
pub struct AgreementRow {
    pub id: u64,
    pub applied: String,
    pub digest: String,
    pub head: String,
    /// Why the row is empty, or "" when the node answered.
    pub note: String,
}

/// Longest the Cluster page waits for another node's status.
const PEER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Every member's applied index, projection digest and archive head, asked of each node as
/// this node (`NodeService/PeerStatus`, mutual TLS), and what they say together: nodes at
/// the same applied index must hold the same digest and head.
async fn agreement(c: &Console, own: &v1::StatusResponse) -> (Vec<AgreementRow>, String) {
    use authsec_api::v1::node_service_client::NodeServiceClient;
    let transport = c.oauth.ctx.writer.transport().clone();
    let asks = own.members.iter().map(|m| {
        let (transport, id, addr) = (transport.clone(), m.node_id, m.addr.clone());
        let own = (id == own.node_id).then(|| own.clone());
        async move {
            if let Some(s) = own {
                return (id, Ok(s));
            }
            let ask = async {
                let ch = transport
                    .channel_to(&addr, authsec_raft::tls::Expect::Node(id))
                    .map_err(|e| e.to_string())?;
                NodeServiceClient::new(ch)
                    .peer_status(v1::StatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_owned())
            };
            let got = match tokio::time::timeout(PEER_STATUS_TIMEOUT, ask).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {PEER_STATUS_TIMEOUT:?}")),
            };
            (id, got)
        }
    });
    judge_agreement(futures::future::join_all(asks).await)
}

/// The agreement table and its verdict from each member's status (or why it gave none).
fn judge_agreement(
    answers: Vec<(u64, Result<v1::StatusResponse, String>)>,
) -> (Vec<AgreementRow>, String) {
    let mut rows = Vec::with_capacity(answers.len());
    let mut by_index: std::collections::BTreeMap<u64, Vec<(u64, String, String)>> =
        Default::default();
    for (id, got) in answers {
        match got {
            Ok(s) => {
                let head = s
                    .archive_head
                    .as_ref()
                    .map(|h| {
                        format!(
                            "#{} {}",
                            h.sequence,
                            h.hash.chars().take(16).collect::<String>()
                        )
                    })
                    .unwrap_or_default();
                by_index.entry(s.applied_index).or_default().push((
                    id,
                    s.projection_digest.clone(),
                    head.clone(),
                ));
                rows.push(AgreementRow {
                    id,
                    applied: s.applied_index.to_string(),
                    digest: s.projection_digest.chars().take(16).collect(),
                    head,
                    note: String::new(),
                });
            }
            Err(why) => rows.push(AgreementRow {
                id,
                applied: String::new(),
                digest: String::new(),
                head: String::new(),
                note: why,
            }),
        }
    }
    let answered: usize = by_index.values().map(Vec::len).sum();
    let split = by_index.iter().find_map(|(index, at)| {
        let (first, rest) = at.split_first()?;
        rest.iter()
            .find(|o| (&o.1, &o.2) != (&first.1, &first.2))
            .map(|o| (*index, first.0, o.0))
    });
    let verdict = match (split, by_index.len()) {
        (Some((index, a, b)), _) => format!(
            "DIVERGED: nodes {a} and {b} have both applied index {index} but hold different state; stop writes and compare their exports (authsec audit export, authsec cluster status)"
        ),
        (None, 1) => format!(
            "{answered} of {} members agree: the same digest and archive head at applied index {}",
            rows.len(),
            by_index.keys().next().copied().unwrap_or(0)
        ),
        (None, 0) => "no member answered".into(),
        (None, _) => format!(
            "{answered} of {} members answered at {} different applied indexes (writes in flight); those at the same index agree. Reload to compare when the cluster is quiet",
            rows.len(),
            by_index.len()
        ),
    };
    (rows, verdict)
}

#[derive(Template)]
#[template(path = "console/cluster.html")]
struct ClusterPage {
    chrome: Chrome,
    agreement: Vec<AgreementRow>,
    verdict: String,
    s: v1::StatusResponse,
    members: Vec<MemberRow>,
    freshness: String,
    keys: Vec<KeyRow>,
    roots: Vec<RootRow>,
    /// `None`: the admin lacks `admins.read`.
    admins: Option<Vec<AdminRow>>,
    charts: Vec<Chart>,
    /// Whether this node leads (then the members show their replication lag).
    leads: bool,
}

#[derive(Debug)]
pub struct AgentRow {
    pub spiffe_id: String,
    pub attested: String,
    pub last_seen: String,
    pub banned: bool,
}

#[derive(Template)]
#[template(path = "console/agents.html")]
struct AgentsPage {
    chrome: Chrome,
    agents: Vec<AgentRow>,
}

#[derive(Template)]
#[template(path = "console/join_token.html")]
struct JoinTokenPage {
    chrome: Chrome,
    agent_id: String,
    token: String,
    expires: String,
    trust_domain: String,
    server: String,
}

#[derive(Template)]
#[template(path = "console/secret_rotated.html")]
struct SecretRotatedPage {
    chrome: Chrome,
    client_id: String,
    secret: String,
    previous_valid_until: String,
}

#[derive(Debug)]
pub struct SvidRow {
    pub kind: &'static str,
    pub id: String,
    pub node: u64,
    pub issued: String,
    pub expires: String,
    /// When its holder renews it (at half its lifetime, as agents do).
    pub renews: String,
}

#[derive(Template)]
#[template(path = "console/entry_edit.html")]
struct EntryEditPage {
    chrome: Chrome,
    e: EntryRow,
    svids: Vec<SvidRow>,
    /// Why the SVIDs are not shown ("" when they are).
    svids_note: String,
    /// One selector per line.
    selectors: String,
    revision: u64,
}

#[derive(Debug)]
pub struct RoleRow {
    pub name: String,
    pub permissions: String,
    pub subjects: String,
}

#[derive(Debug)]
pub struct DelegationRow {
    pub id: String,
    pub delegator: String,
    pub delegate: String,
    pub granted: String,
    /// The effective permissions: what the delegation grants that both ends still hold.
    pub effective: String,
    /// Granted by the delegation but cut by the roles (or why nothing is effective).
    pub cut: String,
    pub parent: String,
    pub status: String,
}

#[derive(Template)]
#[template(path = "console/access.html")]
struct AccessPage {
    chrome: Chrome,
    roles: Vec<RoleRow>,
    delegations: Vec<DelegationRow>,
}

/// "Delete X?": what goes with it, and a form that does it at the revision shown.
#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    title: String,
    lines: Vec<String>,
    items: Vec<String>,
    action: &'static str,
    fields: Vec<(&'static str, String)>,
    button: String,
    cancel: &'static str,
}

#[derive(Template)]
#[template(path = "console/revoke.html")]
struct RevokePage {
    chrome: Chrome,
    id: String,
    /// The delegation and everything derived from it, root first.
    cascade: Vec<DelegationRow>,
}

#[derive(Debug)]
pub struct AuditRow {
    pub sequence: u64,
    pub time: String,
    pub kind: String,
    pub subject: String,
    /// Where the subject is shown in the console ("" when it has no page).
    pub href: String,
    pub actor: String,
    pub via_node: u64,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    chrome: Chrome,
    types: String,
    client: String,
    actor: String,
    since: String,
    /// The same filter as a query string, for the export link and the live stream.
    filter_query: String,
    head: u64,
    shown: usize,
    rows: Vec<AuditRow>,
}

const KINDS: [(&str, &str, v1::ClientKind); 4] = [
    ("ai_agent", "AI agent", v1::ClientKind::AiAgent),
    ("service", "Service", v1::ClientKind::Service),
    ("ci", "CI job", v1::ClientKind::Ci),
    ("device", "Device", v1::ClientKind::Device),
];

fn kind_label(k: i32) -> &'static str {
    KINDS
        .iter()
        .find(|(_, _, kind)| *kind as i32 == k)
        .map_or("unspecified", |(v, _, _)| *v)
}

fn entry_row(e: &v1::Entry) -> EntryRow {
    EntryRow {
        entry_id: e.entry_id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent_id: e.parent_id.clone(),
        selectors: e.selectors.join(" "),
        client_id: e.client_id.clone(),
        status: e.status.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn login_page(AxState(c): AxState<Arc<Console>>, uri: Uri) -> Response {
    let q = query(&uri);
    let code = q.get("code").cloned().unwrap_or_default();
    let mut reason = q.get("reason").cloned().unwrap_or_default();
    let mut admin = String::new();
    if !code.is_empty() {
        // Show whom the link signs in as (its MAC checked), without spending it: a link
        // prefetched by a mail scanner or a preview must not be used up.
        match c.sessions().map(|s| s.peek(&code, crate::issuer::now_ms())) {
            Some(Ok(cl)) => admin = cl.admin,
            Some(Err(e)) => reason = e.to_string(),
            None => {
                reason = "This node does not hold the cluster key yet; try another node.".into()
            }
        }
    }
    html(
        StatusCode::OK,
        &LoginPage {
            chrome: c.chrome(None, "Sign in"),
            code: if admin.is_empty() {
                String::new()
            } else {
                code
            },
            admin,
            reason,
        },
    )
}

async fn login(AxState(c): AxState<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = cross_site_refused(&headers) {
        return r;
    }
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(sessions) = c.sessions() else {
        return page_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "This node does not hold the cluster key yet; try another node.",
        );
    };
    match sessions.redeem(&form.text("code"), crate::issuer::now_ms()) {
        Ok((claims, cookie)) => {
            tracing::info!(admin = %claims.admin, node_id = c.oauth.ctx.node_id, "console: session opened");
            let max_age = claims.expires_at_ms.saturating_sub(crate::issuer::now_ms()) / 1000;
            let mut r = see_other("/ui/clients");
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}={cookie}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::info!(reason = %e, "console: a sign-in link was refused");
            html(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    chrome: c.chrome(None, "Sign in"),
                    code: String::new(),
                    admin: String::new(),
                    reason: e.to_string(),
                },
            )
        }
    }
}

async fn logout(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match Form::parse(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match c.post_who(&conn, &headers, &form) {
        Ok(_) => login_again("Signed out."),
        Err(r) => r,
    }
}

async fn clients_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.ClientService/ListClients") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let kind = q.get("kind").map(String::as_str).unwrap_or("");
    let text = q
        .get("q")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    let kind_filter = KINDS
        .iter()
        .find(|(v, _, _)| *v == kind)
        .map(|(_, _, k)| *k);
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let (svc, who_ref) = (&svc, &who);
    let clients = match all_pages(move |page_token| async move {
        let r = svc
            .list_clients(as_admin(
                who_ref,
                v1::ListClientsRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                    kind: kind_filter.map_or(0, |k| k as i32),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        Ok((r.clients, r.next_page_token))
    })
    .await
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let rows: Vec<ClientRow> = clients
        .into_iter()
        .filter(|cl| {
            text.is_empty()
                || cl.client_id.to_lowercase().contains(&text)
                || cl.display_name.to_lowercase().contains(&text)
                || cl.owner.to_lowercase().contains(&text)
        })
        .map(|cl| ClientRow {
            kind: kind_label(cl.kind),
            scopes: cl.allowed_scopes.join(" "),
            id: cl.client_id,
            name: cl.display_name,
            owner: cl.owner,
            enabled: cl.enabled,
        })
        .collect();
    let mut kinds = vec![KindOption {
        value: "",
        label: "All kinds",
        selected: kind_filter.is_none(),
    }];
    kinds.extend(KINDS.iter().map(|(v, l, _)| KindOption {
        value: v,
        label: l,
        selected: *v == kind,
    }));
    html(
        StatusCode::OK,
        &ClientsPage {
            chrome: c.chrome(Some(&who), "Clients"),
            filtered: !text.is_empty() || kind_filter.is_some(),
            q: text,
            kinds,
            clients: rows,
        },
    )
}

async fn create_client(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.ClientService/CreateClient",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let kind_text = form.text("kind");
    let Some((kind_value, _, kind)) = KINDS.iter().find(|(v, _, _)| *v == kind_text) else {
        return page_error(
            StatusCode::BAD_REQUEST,
            &format!("Unknown client kind {kind_text:?}: choose ai_agent, service, ci or device."),
        );
    };
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let r = match svc
        .create_client(as_admin(
            &who,
            v1::CreateClientRequest {
                client_id: form.text("client_id"),
                kind: *kind as i32,
                display_name: form.text("display_name"),
                owner: form.text("owner"),
                allowed_scopes: form.words("allowed_scopes"),
                default_audience: form.text("default_audience"),
                generate_secret: form.get("generate_secret").is_some(),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    let client_id = r.client.map(|cl| cl.client_id).unwrap_or_default();
    tracing::info!(admin = %who.admin, client_id = %client_id, "console: client created");
    html(
        StatusCode::CREATED,
        &ClientCreatedPage {
            chrome: c.chrome(Some(&who), "Clients"),
            client_id,
            kind: kind_value,
            // Shown this once: the page is no-store and the node keeps only a keyed hash.
            secret: r.client_secret,
            entry: r.entry.as_ref().map(entry_row),
            next_steps: r.next_steps,
            issuer: c.oauth.issuer_url.clone(),
        },
    )
}

async fn workloads_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.EntryService/ListEntries") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let status = q.get("status").cloned().unwrap_or_default();
    let svc = crate::identity_api::Entries(c.oauth.ctx.clone());
    let (svc, who_ref, status_ref) = (&svc, &who, &status);
    let entries = match all_pages(move |page_token| async move {
        let r = svc
            .list_entries(as_admin(
                who_ref,
                v1::ListEntriesRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                    status: status_ref.clone(),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        Ok((r.entries, r.next_page_token))
    })
    .await
    {
        Ok(e) => e.iter().map(entry_row).collect(),
        Err(r) => return r,
    };
    html(
        StatusCode::OK,
        &WorkloadsPage {
            chrome: c.chrome(Some(&who), "Autonomous Workloads"),
            status,
            entries,
        },
    )
}

/// Every delegation (revoked ones too), through the node's own service as `who`.
async fn all_delegations(c: &Console, who: &Who) -> Result<Vec<v1::Delegation>, Response> {
    let svc = crate::identity_api::Delegations(c.oauth.ctx.clone());
    let svc = &svc;
    all_pages(move |page_token| async move {
        let r = svc
            .list_delegations(as_admin(
                who,
                v1::ListDelegationsRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                    include_revoked: true,
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        Ok((r.delegations, r.next_page_token))
    })
    .await
}

/// A delegation as the page shows it, with its effective permissions computed by the rule
/// issuance uses (`DelegationService/Check` for the delegate, under the delegation).
async fn delegation_row(c: &Console, who: &Who, d: &v1::Delegation) -> DelegationRow {
    let svc = crate::identity_api::Delegations(c.oauth.ctx.clone());
    let delegate = d.delegate.strip_prefix("client:").unwrap_or(&d.delegate);
    let (effective, cut) = if d.status != "active" {
        (
            String::new(),
            format!("nothing: the delegation is {}", d.status),
        )
    } else {
        // One question per permission: Check answers all or nothing for a set of scopes.
        let (mut granted, mut cut) = (Vec::new(), Vec::new());
        for p in d.permissions.iter().take(DELEGATION_PERMISSIONS_SHOWN) {
            match svc
                .check(as_admin(
                    who,
                    v1::CheckRequest {
                        client_id: delegate.to_owned(),
                        scopes: vec![p.clone()],
                        delegation_id: d.delegation_id.clone(),
                        ..Default::default()
                    },
                ))
                .await
            {
                Ok(r) if r.get_ref().allowed => granted.push(p.as_str()),
                Ok(r) => cut.push(format!("{p} ({})", r.into_inner().reason)),
                Err(s) => cut.push(format!("{p} ({})", s.message())),
            }
        }
        (granted.join(" "), cut.join("; "))
    };
    DelegationRow {
        id: d.delegation_id.clone(),
        delegator: d.delegator.clone(),
        delegate: d.delegate.clone(),
        granted: d.permissions.join(" "),
        effective,
        cut,
        parent: d.parent.clone(),
        status: d.status.clone(),
    }
}

async fn access_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
) -> Response {
    let who = match c.who(&conn, &headers) {
        Ok(w) => w,
        Err(r) => return r,
    };
    for path in [
        "/authsec.v1.RoleService/ListRoles",
        "/authsec.v1.DelegationService/ListDelegations",
    ] {
        if let Err(r) = c.allow(&who, path) {
            return r;
        }
    }
    let roles_svc = crate::identity_api::Roles(c.oauth.ctx.clone());
    let roles = match roles_svc
        .list_roles(as_admin(
            &who,
            v1::ListRolesRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner().roles,
        Err(s) => return status_error(&s),
    };
    let bindings = match roles_svc
        .list_bindings(as_admin(
            &who,
            v1::ListBindingsRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner().bindings,
        Err(s) => return status_error(&s),
    };
    let roles = roles
        .into_iter()
        .map(|r| RoleRow {
            subjects: bindings
                .iter()
                .filter(|b| b.role == r.name)
                .map(|b| b.subject.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            permissions: r.permissions.join(" "),
            name: r.name,
        })
        .collect();
    let ds = match all_delegations(&c, &who).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut delegations = Vec::with_capacity(ds.len());
    for d in &ds {
        delegations.push(delegation_row(&c, &who, d).await);
    }
    html(
        StatusCode::OK,
        &AccessPage {
            chrome: c.chrome(Some(&who), "Roles and delegation"),
            roles,
            delegations,
        },
    )
}

/// Pages of a list call made `PAGE_SIZE` at a time, at most `PAGES_MAX` of them (a larger
/// registry is for the CLI's paging). `page` makes one call from a page token and answers
/// (items, next page token).
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, Response>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..PAGES_MAX {
        let (items, next) = page(token).await.map_err(|s| status_error(&s))?;
        out.extend(items);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    Ok(out)
}

/// After a write made through a form: back to the page it came from.
fn written(r: Result<tonic::Response<impl Sized>, tonic::Status>, back: &str) -> Response {
    match r {
        Ok(_) => see_other(back),
        Err(s) => status_error(&s),
    }
}

async fn create_role(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(&conn, &headers, &body, "/authsec.v1.RoleService/CreateRole") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Roles(c.oauth.ctx.clone());
    let r = svc
        .create_role(as_admin(
            &who,
            v1::CreateRoleRequest {
                name: form.text("name"),
                description: form.text("description"),
                permissions: form.words("permissions"),
            },
        ))
        .await;
    written(r, "/ui/access")
}

async fn bind_role(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change_binding(&c, &conn, &headers, &body, true).await
}

async fn unbind_role(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    change_binding(&c, &conn, &headers, &body, false).await
}

/// The bind and unbind forms: the same fields (`role`, `subject`), one call or the other.
async fn change_binding(
    c: &Console,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
    bind: bool,
) -> Response {
    let path = if bind {
        "/authsec.v1.RoleService/Bind"
    } else {
        "/authsec.v1.RoleService/Unbind"
    };
    let (who, form) = match c.posted(conn, headers, body, path) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Roles(c.oauth.ctx.clone());
    let req = as_admin(
        &who,
        v1::Binding {
            role: form.text("role"),
            subject: form.text("subject"),
        },
    );
    let r = if bind {
        svc.bind(req).await
    } else {
        svc.unbind(req).await
    };
    written(r, "/ui/access")
}

/// Delete a role nobody holds (one still bound is refused with 409 and how many hold it).
async fn delete_role(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(&conn, &headers, &body, "/authsec.v1.RoleService/DeleteRole") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Roles(c.oauth.ctx.clone());
    let r = svc
        .delete_role(as_admin(
            &who,
            v1::DeleteRoleRequest {
                name: form.text("name"),
                expected_revision: None,
            },
        ))
        .await;
    written(r, "/ui/access")
}

async fn create_delegation(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.DelegationService/CreateDelegation",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ttl = match form.seconds("ttl_seconds", "Lifetime") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Delegations(c.oauth.ctx.clone());
    let r = svc
        .create_delegation(as_admin(
            &who,
            v1::CreateDelegationRequest {
                delegation_id: form.text("delegation_id"),
                delegator: form.text("delegator"),
                // The delegate is a client; accept it written as a subject too.
                delegate: form
                    .text("delegate")
                    .trim_start_matches("client:")
                    .to_owned(),
                permissions: form.words("permissions"),
                ttl_seconds: ttl,
                ..Default::default()
            },
        ))
        .await;
    written(r, "/ui/access")
}

/// The delegation `id` and every delegation derived from it (children by `parent`), root
/// first: what revoking it cascades to.
fn cascade<'a>(all: &'a [v1::Delegation], id: &str) -> Vec<&'a v1::Delegation> {
    let mut out: Vec<&v1::Delegation> = all.iter().filter(|d| d.delegation_id == id).collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].delegation_id.clone();
        for d in all.iter().filter(|d| d.parent == parent) {
            if !out.iter().any(|o| o.delegation_id == d.delegation_id) {
                out.push(d);
            }
        }
        i += 1;
    }
    out
}

async fn revoke_preview(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(
        &conn,
        &headers,
        "/authsec.v1.DelegationService/ListDelegations",
    ) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let id = q.get("id").cloned().unwrap_or_default();
    let all = match all_delegations(&c, &who).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let chain = cascade(&all, &id);
    if chain.is_empty() {
        return page_error(StatusCode::NOT_FOUND, &format!("No delegation {id:?}."));
    }
    let mut rows = Vec::with_capacity(chain.len());
    for d in chain {
        rows.push(delegation_row(&c, &who, d).await);
    }
    html(
        StatusCode::OK,
        &RevokePage {
            chrome: c.chrome(Some(&who), "Roles and delegation"),
            id,
            cascade: rows,
        },
    )
}

async fn revoke_delegation(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.RevocationService/Revoke",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Revocations(c.oauth.ctx.clone());
    let r = svc
        .revoke(as_admin(
            &who,
            v1::RevokeRequest {
                target: Some(v1::revoke_request::Target::DelegationId(form.text("id"))),
            },
        ))
        .await;
    written(r, "/ui/access")
}

/// "12 s ago" from unix ms (the node's clock).
fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let s = crate::issuer::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

async fn agents_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
) -> Response {
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.AgentService/ListAgents") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Agents(c.oauth.ctx.clone());
    let agents = match svc
        .list_agents(as_admin(
            &who,
            v1::ListAgentsRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner().agents,
        Err(s) => return status_error(&s),
    };
    html(
        StatusCode::OK,
        &AgentsPage {
            chrome: c.chrome(Some(&who), "Agents"),
            agents: agents
                .iter()
                .map(|a| AgentRow {
                    spiffe_id: a.spiffe_id.clone(),
                    attested: if a.attested_at_ms == 0 {
                        "not yet".into()
                    } else {
                        crate::audit::rfc3339_ms(a.attested_at_ms)
                    },
                    last_seen: ago(a.last_seen_ms),
                    banned: a.banned,
                })
                .collect(),
        },
    )
}

async fn create_join_token(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.AgentService/CreateJoinToken",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ttl = match form.seconds("ttl_seconds", "The token's lifetime") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Agents(c.oauth.ctx.clone());
    let r = match svc
        .create_join_token(as_admin(
            &who,
            v1::CreateAgentTokenRequest {
                ttl_seconds: ttl,
                name: form.text("name"),
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    tracing::info!(admin = %who.admin, agent_id = %r.agent_id, "console: agent join token made");
    html(
        StatusCode::CREATED,
        &JoinTokenPage {
            chrome: c.chrome(Some(&who), "Agents"),
            agent_id: r.agent_id,
            // Shown this once: the node keeps only its hash.
            token: r.token,
            expires: crate::audit::rfc3339_ms(r.expires_at_ms),
            trust_domain: c
                .tls()
                .map(|t| t.trust_domain().to_string())
                .unwrap_or_default(),
            server: c.oauth.ctx.addr.clone(),
        },
    )
}

async fn disable_client(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.ClientService/UpdateClient",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let enable = form.get("enable").is_some();
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let r = svc
        .update_client(as_admin(
            &who,
            v1::UpdateClientRequest {
                client_id: form.text("client_id"),
                enabled: Some(enable),
                ..Default::default()
            },
        ))
        .await;
    written(r, "/ui/clients")
}

/// What deleting a client takes with it, before it is done.
async fn client_delete_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.ClientService/DescribeClient") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let id = q.get("client_id").cloned().unwrap_or_default();
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let d = match svc
        .describe_client(as_admin(
            &who,
            v1::GetClientRequest {
                client_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    let revision = d.client.as_ref().map_or(0, |c| c.revision);
    let mut items: Vec<String> = d
        .entries
        .iter()
        .map(|e| format!("workload entry {}", e.spiffe_id))
        .collect();
    items.extend(d.roles.iter().map(|r| format!("its binding to role {r}")));
    html(
        StatusCode::OK,
        &ConfirmPage {
            chrome: c.chrome(Some(&who), "Clients"),
            title: format!("Delete client {id}?"),
            lines: vec![
                "The client goes with its credentials, its workload entries and role bindings (listed below, if any), in one write. Every delegation it made or holds is revoked, with everything derived from it.".into(),
                format!("Introspection reports its tokens inactive at once, but tokens and SVIDs already issued to it are not revoked: verifiers that check them offline accept them until they expire. To stop them everywhere, revoke the client first (`authsec revoke client {id}`)."),
            ],
            items,
            action: "/ui/clients/delete",
            fields: vec![("client_id", id.clone()), ("revision", revision.to_string())],
            button: format!("Delete {id}"),
            cancel: "/ui/clients",
        },
    )
}

async fn delete_client(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.ClientService/DeleteClient",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let r = svc
        .delete_client(as_admin(
            &who,
            v1::DeleteClientRequest {
                client_id: form.text("client_id"),
                // Deleted as the page showed it: a client changed since gets 409.
                expected_revision: form.text("revision").parse().ok(),
            },
        ))
        .await;
    written(r, "/ui/clients")
}

/// What deleting a workload entry means, before it is done.
async fn entry_delete_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.EntryService/GetEntry") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let id = q.get("id").cloned().unwrap_or_default();
    let svc = crate::identity_api::Entries(c.oauth.ctx.clone());
    let e = match svc
        .get_entry(as_admin(
            &who,
            v1::GetEntryRequest {
                entry_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    let mut lines = vec![format!(
        "Its agent stops serving SVIDs for {} to the workload; role bindings of the entry go with it.",
        e.spiffe_id
    )];
    if !e.client_id.is_empty() {
        lines.push(format!(
            "The client {} stays; it can no longer authenticate with this identity.",
            e.client_id
        ));
    }
    lines.push("SVIDs already issued for it are not revoked by deleting it: they last until they expire (a few hours at most).".into());
    html(
        StatusCode::OK,
        &ConfirmPage {
            chrome: c.chrome(Some(&who), "Autonomous Workloads"),
            title: format!("Delete workload {}?", e.spiffe_id),
            lines,
            items: Vec::new(),
            action: "/ui/workloads/delete",
            fields: vec![
                ("entry_id", e.entry_id),
                ("revision", e.revision.to_string()),
            ],
            button: "Delete the workload entry".into(),
            cancel: "/ui/workloads",
        },
    )
}

async fn delete_entry(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.EntryService/DeleteEntry",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Entries(c.oauth.ctx.clone());
    let r = svc
        .delete_entry(as_admin(
            &who,
            v1::DeleteEntryRequest {
                entry_id: form.text("entry_id"),
                expected_revision: form.text("revision").parse().ok(),
            },
        ))
        .await;
    written(r, "/ui/workloads")
}

/// Ban an agent (refused at its next call, it withdraws every SVID it serves and exits), or
/// allow it again.
async fn ban_agent(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(&conn, &headers, &body, "/authsec.v1.AgentService/SetBanned") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Agents(c.oauth.ctx.clone());
    let r = svc
        .set_banned(as_admin(
            &who,
            v1::SetAgentBannedRequest {
                spiffe_id: form.text("spiffe_id"),
                banned: form.get("allow").is_none(),
            },
        ))
        .await;
    written(r, "/ui/agents")
}

/// Delete a banned agent's record (the page offers it only once the agent is banned, so a
/// running agent is refused before its record goes; a deleted agent attests again only with a
/// new join token).
async fn delete_agent(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.AgentService/DeleteAgent",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Agents(c.oauth.ctx.clone());
    let r = svc
        .delete_agent(as_admin(
            &who,
            v1::DeleteAgentRequest {
                spiffe_id: form.text("spiffe_id"),
            },
        ))
        .await;
    written(r, "/ui/agents")
}

async fn rotate_secret(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.ClientService/RotateSecret",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let overlap = match form.seconds("overlap_seconds", "Overlap") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let client_id = form.text("client_id");
    let svc = crate::services::Clients(c.oauth.ctx.clone());
    let r = match svc
        .rotate_secret(as_admin(
            &who,
            v1::RotateSecretRequest {
                client_id: client_id.clone(),
                overlap_seconds: overlap,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    tracing::info!(admin = %who.admin, client_id = %client_id, "console: client secret rotated");
    html(
        StatusCode::OK,
        &SecretRotatedPage {
            chrome: c.chrome(Some(&who), "Clients"),
            client_id,
            secret: r.client_secret,
            previous_valid_until: if r.previous_valid_until_ms == 0 {
                "it stopped working now".into()
            } else {
                format!(
                    "it keeps working until {}",
                    crate::audit::rfc3339_ms(r.previous_valid_until_ms)
                )
            },
        },
    )
}

async fn entry_edit_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.EntryService/GetEntry") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let svc = crate::identity_api::Entries(c.oauth.ctx.clone());
    let e = match svc
        .get_entry(as_admin(
            &who,
            v1::GetEntryRequest {
                entry_id: q.get("id").cloned().unwrap_or_default(),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    let (svids, svids_note) = match entry_svids(&c, &who, &e.spiffe_id).await {
        Ok(v) => (v, String::new()),
        Err(why) => (Vec::new(), why),
    };
    html(
        StatusCode::OK,
        &EntryEditPage {
            chrome: c.chrome(Some(&who), "Autonomous Workloads"),
            svids,
            svids_note,
            selectors: e.selectors.join("\n"),
            revision: e.revision,
            e: entry_row(&e),
        },
    )
}

/// SVIDs shown per entry, at most (the newest).
const ENTRY_SVIDS_MAX: usize = 20;

/// The unexpired SVIDs issued for `spiffe_id` in the last day, newest first, from the
/// issuance records of the audit log (every credential is recorded before it is handed out).
async fn entry_svids(c: &Console, who: &Who, spiffe_id: &str) -> Result<Vec<SvidRow>, String> {
    use authsec_domain::issuance::CredentialKind;
    if c.allow(who, "/authsec.v1.AuditService/Export").is_err() {
        return Err("Seeing the SVIDs issued for an entry needs authsec.admin:audit.read.".into());
    }
    let now = crate::issuer::now_ms();
    let head = c.oauth.ctx.head_rx.borrow().sequence;
    let first = c.oauth.view.read().audit_pruned.through_sequence + 1;
    let req = v1::ExportRequest {
        from_sequence: (head.saturating_sub(AUDIT_WINDOW) + 1).max(first),
        to_sequence: head,
        since_ms: now.saturating_sub(24 * 3600 * 1000),
        types: vec!["credential.issued".into()],
        spiffe_id: spiffe_id.to_owned(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    audit_records(c, who, req, None, |r| {
        let Ok(rec) = authsec_domain::record::AuditRecord::from_bytes(&r.record_bytes) else {
            return Ok(());
        };
        if let authsec_domain::Event::IssuanceBatchRecorded { node_id, batch } = &rec.event {
            for item in &batch.items {
                let Some(p) = batch.profiles.get(item.profile as usize) else {
                    continue;
                };
                let kind = match p.kind {
                    CredentialKind::X509Svid => "X.509-SVID",
                    CredentialKind::JwtSvid => "JWT-SVID",
                    CredentialKind::AccessToken => continue,
                };
                let expires = item.issued_at_ms.saturating_add(item.lifetime_ms);
                if p.subject != spiffe_id || expires <= now {
                    continue;
                }
                rows.push(SvidRow {
                    kind,
                    id: item.id.clone(),
                    node: *node_id,
                    issued: crate::audit::rfc3339_ms(item.issued_at_ms),
                    expires: crate::audit::rfc3339_ms(expires),
                    renews: crate::audit::rfc3339_ms(item.issued_at_ms + item.lifetime_ms / 2),
                });
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| "Reading the issuance records failed; see the node's log.".to_owned())?;
    rows.reverse();
    rows.truncate(ENTRY_SVIDS_MAX);
    Ok(rows)
}

async fn entry_edit(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (who, form) = match c.posted(
        &conn,
        &headers,
        &body,
        "/authsec.v1.EntryService/UpdateEntry",
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let revision = form.text("revision").parse::<u64>().ok();
    let selectors: Vec<String> = form
        .get("selectors")
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let svc = crate::identity_api::Entries(c.oauth.ctx.clone());
    let r = svc
        .update_entry(as_admin(
            &who,
            v1::UpdateEntryRequest {
                entry_id: form.text("entry_id"),
                parent_id: Some(form.text("parent_id")),
                selectors: Some(v1::StringList { values: selectors }),
                // Someone else's change in between is refused, not overwritten.
                expected_revision: revision,
                ..Default::default()
            },
        ))
        .await;
    written(r, "/ui/workloads")
}

/// Records the audit page shows, at most.
const AUDIT_ROWS_MAX: usize = 200;
/// How far back from the head the page looks for them.
const AUDIT_WINDOW: u64 = 20_000;

/// The audit filter a page's query names, as the export request (`follow` and the range
/// left to the caller).
fn audit_filter(q: &HashMap<String, String>) -> Result<v1::ExportRequest, Response> {
    let since_ms = match q.get("since").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => crate::cli_audit::parse_time(s, crate::issuer::now_ms()).map_err(|e| {
            page_error(
                StatusCode::BAD_REQUEST,
                &format!("Since {s:?}: {e}. Write 30m, 2h, 7d or an RFC 3339 time."),
            )
        })?,
    };
    let text = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    Ok(v1::ExportRequest {
        since_ms,
        types: text("types")
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        client_id: text("client"),
        actor: text("actor"),
        ..Default::default()
    })
}

/// Where a record's subject is shown in the console.
fn subject_href(subject: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    if let Some(id) = subject.strip_prefix("client:") {
        format!("/ui/clients?q={}", enc(id))
    } else if subject.starts_with("entry:") || subject.starts_with("spiffe://") {
        "/ui/workloads".into()
    } else if subject.starts_with("delegation:")
        || subject.starts_with("role:")
        || subject.starts_with("binding:")
    {
        "/ui/access".into()
    } else if subject.starts_with("node:") {
        "/ui/cluster".into()
    } else {
        String::new()
    }
}

fn audit_row(r: &v1::AuditRecord) -> AuditRow {
    AuditRow {
        sequence: r.sequence,
        time: crate::audit::rfc3339_ms(r.time_ms),
        kind: r.kind.clone(),
        href: subject_href(&r.subject),
        subject: r.subject.clone(),
        actor: r.actor.clone(),
        via_node: r.via_node,
    }
}

/// The records of `req` up to the archive's head when it started (export, not follow).
async fn audit_records(
    c: &Console,
    who: &Who,
    req: v1::ExportRequest,
    keep_last: Option<usize>,
    mut each: impl FnMut(&v1::AuditRecord) -> Result<(), Response>,
) -> Result<(u64, Vec<v1::AuditRecord>), Response> {
    use authsec_api::v1::audit_service_server::AuditService;
    use futures::StreamExt;
    let svc = crate::audit::Audit {
        ctx: c.oauth.ctx.clone(),
        view: c.oauth.view.clone(),
    };
    let mut stream = svc
        .export(as_admin(who, req))
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let mut kept = std::collections::VecDeque::new();
    let mut head = 0;
    while let Some(m) = stream.next().await {
        let m = m.map_err(|s| status_error(&s))?;
        head = head.max(m.head_sequence);
        if let Some(r) = m.record {
            each(&r)?;
            if let Some(n) = keep_last {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(r);
            }
        }
    }
    Ok((head, kept.into()))
}

async fn audit_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.AuditService/Export") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut req = match audit_filter(&q) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let head = c.oauth.ctx.head_rx.borrow().sequence;
    req.from_sequence = head.saturating_sub(AUDIT_WINDOW) + 1;
    req.to_sequence = head;
    let (_, recs) = match audit_records(&c, &who, req, Some(AUDIT_ROWS_MAX), |_| Ok(())).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let rows: Vec<AuditRow> = recs.iter().rev().map(audit_row).collect();
    let text = |k: &str| q.get(k).map(|s| s.trim().to_owned()).unwrap_or_default();
    let filter_query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            ["types", "client", "actor", "since"]
                .iter()
                .map(|k| (*k, text(k)))
                .filter(|(_, v)| !v.is_empty()),
        )
        .finish();
    html(
        StatusCode::OK,
        &AuditPage {
            chrome: c.chrome(Some(&who), "Audit"),
            types: text("types"),
            client: text("client"),
            actor: text("actor"),
            since: text("since"),
            filter_query,
            head,
            shown: rows.len(),
            rows,
        },
    )
}

/// The current filter's records as JSON lines, exactly as `authsec audit export` writes them
/// (so `authsec audit verify` checks a download).
async fn audit_export(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.AuditService/Export") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let req = match audit_filter(&q) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut out = String::new();
    let done = audit_records(&c, &who, req, None, |r| {
        let line = crate::cli_audit::jsonl_line(r).map_err(|e| {
            tracing::error!(error = %e, sequence = r.sequence, "console: rendering a record failed");
            page_error(StatusCode::INTERNAL_SERVER_ERROR, "rendering a record failed; see the node's log")
        })?;
        out.push_str(&line);
        out.push('\n');
        Ok(())
    })
    .await;
    if let Err(r) = done {
        return r;
    }
    tracing::info!(admin = %who.admin, bytes = out.len(), "console: audit export");
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"authsec-audit.jsonl\"",
            ),
        ],
        out,
    )
        .into_response()
}

/// Live follow for the audit page: records matching the filter, from `from` on, as
/// server-sent events.
async fn audit_events(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    use authsec_api::v1::audit_service_server::AuditService;
    use futures::StreamExt;
    let q = query(&uri);
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.AuditService/Export") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut req = match audit_filter(&q) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.from_sequence = q.get("from").and_then(|f| f.parse().ok()).unwrap_or(0);
    // A browser that reconnects sends the id of the last event it got (the sequence through
    // which the filter was applied): go on after it, so no record shows twice.
    if let Some(last) = headers.get("last-event-id") {
        match last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(seq) => req.from_sequence = seq.saturating_add(1),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be the sequence number this stream last sent",
                )
                    .into_response()
            }
        }
    }
    req.follow = true;
    let svc = crate::audit::Audit {
        ctx: c.oauth.ctx.clone(),
        view: c.oauth.view.clone(),
    };
    let mut stream = match svc.export(as_admin(&who, req)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return status_error(&s),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                m = stream.next() => m,
                _ = tx.closed() => return,
            };
            let msg = match next {
                Some(Ok(m)) => match m.record {
                    Some(r) => {
                        let row = audit_row(&r);
                        let data = serde_json::json!({
                            "sequence": row.sequence, "time": row.time, "kind": row.kind,
                            "subject": row.subject, "href": row.href, "actor": row.actor,
                            "via_node": row.via_node,
                        });
                        format!("id: {}\nevent: record\ndata: {data}\n\n", row.sequence)
                    }
                    // No event, but the browser keeps the id: a reconnect after a long
                    // stretch of records the filter skips does not scan them again.
                    None if m.scanned_through > 0 => format!("id: {}\n\n", m.scanned_through),
                    None => ": progress\n\n".to_owned(),
                },
                Some(Err(s)) => {
                    format!("event: error\ndata: {}\n\n", s.message().replace('\n', " "))
                }
                None => return,
            };
            if tx.send(Ok(Bytes::from(msg))).await.is_err() {
                return;
            }
        }
    });
    event_stream(rx)
}

/// Server-sent events for the workloads page: every entry's status, sent again whenever this
/// node applies a change (at most every 250 ms) and every 15 s, so an entry turns `active`
/// in an open page when its agent attests, without a reload.
async fn workloads_events(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
) -> Response {
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.EntryService/ListEntries") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(2);
    let ctx = c.oauth.ctx.clone();
    tokio::spawn(async move {
        let mut changes = ctx.head_rx.clone();
        let svc = crate::identity_api::Entries(ctx.clone());
        let mut last = String::new();
        loop {
            let r = svc
                .list_entries(as_admin(
                    &who,
                    v1::ListEntriesRequest {
                        page_size: 1000,
                        ..Default::default()
                    },
                ))
                .await;
            let data = match r {
                Ok(r) => serde_json::Value::Array(
                    r.into_inner()
                        .entries
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "id": e.entry_id, "status": e.status, "parent": e.parent_id,
                                "selectors": e.selectors.join(" "),
                            })
                        })
                        .collect(),
                )
                .to_string(),
                Err(s) => {
                    let _ = tx
                        .send(Ok(Bytes::from(format!(
                            "event: error\ndata: {}\n\n",
                            s.message().replace('\n', " ")
                        ))))
                        .await;
                    return;
                }
            };
            let msg = if data != last {
                format!("event: entries\ndata: {data}\n\n")
            } else {
                ": keep-alive\n\n".to_owned()
            };
            last = data;
            if tx.send(Ok(Bytes::from(msg))).await.is_err() {
                return; // the page closed
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
                _ = tx.closed() => return,
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    event_stream(rx)
}

async fn cluster_page(
    AxState(c): AxState<Arc<Console>>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
) -> Response {
    let who = match c.signed_in(&conn, &headers, "/authsec.v1.ClusterService/Status") {
        Ok(w) => w,
        Err(r) => return r,
    };
    let svc = crate::services::Cluster(c.oauth.ctx.clone());
    let s = match svc.status(as_admin(&who, v1::StatusRequest {})).await {
        Ok(r) => r.into_inner(),
        Err(s) => return status_error(&s),
    };
    let replication = c
        .oauth
        .ctx
        .writer
        .raft()
        .metrics()
        .borrow()
        .replication
        .clone();
    let leads = replication.is_some();
    let members = s
        .members
        .iter()
        .map(|m| MemberRow {
            lag: match &replication {
                Some(_) if m.node_id == s.node_id => "0".into(),
                Some(r) => match r.get(&m.node_id) {
                    Some(Some(matched)) => {
                        s.last_log_index.saturating_sub(matched.index).to_string()
                    }
                    _ => "not replicating".into(),
                },
                None => String::new(),
            },
            id: m.node_id,
            addr: m.addr.clone(),
            role: match (m.node_id == s.leader_id, m.role.as_str()) {
                (true, _) => "leader".into(),
                (false, "learner") => "learner (issuer replica)".into(),
                (false, r) => r.to_owned(),
            },
        })
        .collect();
    let freshness = match s.freshness_ms {
        Some(ms) => format!("{ms} ms (bound {} ms)", s.max_staleness_ms),
        None => "unknown (no leader heard since start)".into(),
    };
    let keys = {
        let state = c.oauth.view.read();
        let mut keys: Vec<KeyRow> = state
            .keys
            .values()
            .filter(|k| k.state != authsec_domain::keys::KeyState::Retired)
            .map(|k| KeyRow {
                kind: k.kind.as_str(),
                node: k.node_id,
                state: k.state.as_str(),
                kid: k.kid.chars().take(16).collect(),
                not_after: crate::audit::rfc3339_ms(k.not_after_ms),
            })
            .collect();
        keys.sort_by(|a, b| (a.node, a.kind, a.state).cmp(&(b.node, b.kind, b.state)));
        keys
    };
    let may_list_admins = c
        .allow(&who, "/authsec.v1.ClusterService/ListAdmins")
        .is_ok();
    let (roots, admins) = {
        let state = c.oauth.view.read();
        let signing = state
            .roots_meta
            .signing(&state)
            .map(authsec_domain::fingerprint);
        let mut roots: Vec<RootRow> = state
            .roots_meta
            .bundle(&state)
            .into_iter()
            .map(|der| {
                let fingerprint = authsec_domain::fingerprint(der);
                let rotated = state
                    .roots_meta
                    .roots
                    .iter()
                    .find(|r| r.fingerprint == fingerprint);
                RootRow {
                    signing: signing.as_deref() == Some(fingerprint.as_str()),
                    state: match rotated {
                        Some(r) => r.state.as_str(),
                        None => "bootstrap",
                    },
                    fingerprint,
                }
            })
            .collect();
        roots.sort_by_key(|r| !r.signing);
        let admins = may_list_admins.then(|| {
            state
                .admins
                .live(&state.security.revoked_certs, crate::issuer::now_ms())
                .map(|(name, cert)| AdminRow {
                    name: name.to_owned(),
                    fingerprint: cert.fingerprint.chars().take(23).collect(),
                    root: cert.root.chars().take(23).collect(),
                    current: signing.as_deref() == Some(cert.root.as_str()),
                    not_after: crate::audit::rfc3339_ms(cert.not_after_ms),
                })
                .collect()
        });
        (roots, admins)
    };
    let (agreement, verdict) = agreement(&c, &s).await;
    let (commits, issued) = c.rates();
    html(
        StatusCode::OK,
        &ClusterPage {
            chrome: c.chrome(Some(&who), "Cluster"),
            agreement,
            verdict,
            s,
            members,
            freshness,
            keys,
            roots,
            admins,
            charts: vec![
                chart("Log entries applied per second (this node)", &commits),
                chart("Credentials issued per second (this node)", &issued),
            ],
            leads,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The CLI: `authsec console login`

#[derive(Debug, clap::Subcommand)]
pub enum ConsoleCmd {
    /// Print a one-time link that signs a browser in to the web console as this admin (the
    /// node that makes it serves it, on its OAuth listener under /ui).
    Login {
        #[command(flatten)]
        target: crate::cli::Target,
        /// How long the link works, in seconds (at most 900).
        #[arg(long, default_value_t = LOGIN_TTL_DEFAULT_S)]
        ttl: u32,
        /// How long the session it opens lasts, in seconds (60 to 43200).
        #[arg(long, default_value_t = SESSION_DEFAULT_S)]
        session: u32,
        /// Print JSON (`url`, `expires_at_ms`).
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ConsoleCmd) -> anyhow::Result<()> {
    match cmd {
        ConsoleCmd::Login {
            target,
            ttl,
            session,
            json,
        } => {
            let eps = crate::cli::endpoints(&target)?;
            let (_, ch) = crate::cli::connect(&eps).await?;
            let r = v1::console_service_client::ConsoleServiceClient::new(ch)
                .create_login(v1::CreateConsoleLoginRequest {
                    ttl_seconds: ttl,
                    session_seconds: session,
                })
                .await
                .map_err(|s| anyhow::Error::from(crate::cli_identity::CallError(s)))?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"url": r.url, "expires_at_ms": r.expires_at_ms})
                );
            } else {
                println!("{}", r.url);
                eprintln!(
                    "Open it once, within {ttl} s, in a browser that trusts the cluster's CA; it signs in as this admin. Treat it as a password."
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(applied: u64, digest: &str, head: u64) -> Result<v1::StatusResponse, String> {
        Ok(v1::StatusResponse {
            applied_index: applied,
            projection_digest: digest.into(),
            archive_head: Some(v1::ArchiveHead {
                sequence: head,
                hash: format!("{head:064x}"),
            }),
            ..Default::default()
        })
    }

    #[test]
    fn members_at_the_same_index_must_hold_the_same_state() {
        let (rows, v) = judge_agreement(vec![
            (1, status(9, "aa", 7)),
            (2, status(9, "aa", 7)),
            (3, Err("no answer within 1s".into())),
        ]);
        assert_eq!(
            v,
            "2 of 3 members agree: the same digest and archive head at applied index 9"
        );
        assert_eq!(rows[2].note, "no answer within 1s");
        let (_, v) = judge_agreement(vec![(1, status(9, "aa", 7)), (2, status(10, "bb", 8))]);
        assert!(v.contains("2 different applied indexes"), "{v}");
        // Same index, different digest or head: divergence, named.
        let (_, v) = judge_agreement(vec![
            (1, status(9, "aa", 7)),
            (2, status(10, "bb", 8)),
            (3, status(9, "ab", 7)),
        ]);
        assert!(v.starts_with("DIVERGED: nodes 1 and 3"), "{v}");
        let (_, v) = judge_agreement(vec![(1, status(9, "aa", 7)), (2, status(9, "aa", 6))]);
        assert!(v.starts_with("DIVERGED: nodes 1 and 2"), "{v}");
        let (_, v) = judge_agreement(vec![(1, Err("refused".into()))]);
        assert_eq!(v, "no member answered");
    }

    #[test]
    fn a_chart_scales_its_rates_to_the_box() {
        let c = chart("rates", &[0.0, 5.0, 10.0]);
        assert_eq!(c.points, "0.0,100.0 300.0,50.0 600.0,0.0");
        assert_eq!(
            (c.peak.as_str(), c.last.as_str(), c.samples),
            ("10.0", "10.0", 3)
        );
        // All zero: a flat line on the axis, no division by zero.
        assert_eq!(chart("idle", &[0.0, 0.0]).points, "0.0,100.0 600.0,100.0");
        assert_eq!(chart("none", &[]).points, "");
    }

    #[test]
    fn a_form_joins_repeats_and_bounds_its_size() {
        let f = Form::parse(b"a=1&a=2&s=+x+&n=12").expect("form");
        assert_eq!(f.get("a"), Some("1 2"));
        assert_eq!(f.text("s"), "x");
        assert!(matches!(f.seconds("n", "N"), Ok(12)));
        assert!(f.seconds("a", "A").is_err());
        assert!(matches!(f.seconds("missing", "M"), Ok(0)));
        assert!(Form::parse(&vec![b'a'; FORM_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn subjects_link_to_their_pages() {
        assert_eq!(subject_href("client:a b"), "/ui/clients?q=a+b");
        assert_eq!(subject_href("delegation:d1"), "/ui/access");
        assert_eq!(subject_href("spiffe://td/x"), "/ui/workloads");
        assert_eq!(subject_href("something-else"), "");
    }
}
