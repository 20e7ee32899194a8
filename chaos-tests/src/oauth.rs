//! A small HTTPS client for the OAuth endpoints (one request per connection), and helpers to
//! read tokens. The tests speak plain HTTP/1.1 over rustls, as any OAuth client library does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Cluster;

/// An answer: status, lower-cased headers, body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The OAuth `error` code of an error answer.
    pub fn error(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Https {
    config: Arc<rustls::ClientConfig>,
}

fn roots(ca: &Path) -> anyhow::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))? {
        roots.add(c?)?;
    }
    Ok(roots)
}

impl Https {
    pub fn new(ca: &Path) -> anyhow::Result<Self> {
        let c = rustls::ClientConfig::builder_with_provider(authsec_tls::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(c),
        })
    }

    /// The same, presenting a client certificate (tls_client_auth).
    pub fn with_client_cert(
        ca: &Path,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Self> {
        let c = rustls::ClientConfig::builder_with_provider(authsec_tls::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(chain, key)?;
        Ok(Self {
            config: Arc::new(c),
        })
    }

    /// TCP and TLS to `addr` (`host:port`), the host checked against the server's certificate.
    async fn connect(
        &self,
        addr: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let name = ServerName::try_from(host.to_owned())?;
        Ok(tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?)
    }

    pub async fn request(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        let work = async {
            let mut tls = self.connect(addr).await?;
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                req += &format!("{k}: {v}\r\n");
            }
            req += "\r\n";
            tls.write_all(req.as_bytes()).await?;
            tls.write_all(body).await?;
            let mut out = Vec::new();
            match tls.read_to_end(&mut out).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e.into()),
            }
            Ok::<_, anyhow::Error>(out)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| anyhow!("{method} https://{addr}{path}: no answer within 10 s"))??;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP head in {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Resp {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    /// GET a streaming answer (server-sent events) and read it until `done` holds for what
    /// arrived (head and body, chunked framing included) or 10 s pass; the text read so far.
    pub async fn stream_until(
        &self,
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let work = async {
            let mut tls = self.connect(addr).await?;
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
            for (k, v) in headers {
                req += &format!("{k}: {v}\r\n");
            }
            req += "\r\n";
            tls.write_all(req.as_bytes()).await?;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&out);
                if done(&text) {
                    return Ok::<_, anyhow::Error>(text.into_owned());
                }
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    return Err(anyhow!("the stream ended: {text}"));
                }
                out.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| anyhow!("GET https://{addr}{path}: not done within 10 s"))?
    }

    /// POST a form to `path`, optionally with HTTP Basic credentials.
    pub async fn post_form(
        &self,
        addr: &str,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        let body = form_encode(form);
        let auth;
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some((id, secret)) = basic {
            auth = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
            );
            headers.push(("Authorization", &auth));
        }
        self.request(addr, "POST", path, &headers, body.as_bytes())
            .await
    }

    /// `client_credentials` with client_secret_basic; the answer as it came.
    pub async fn client_credentials(
        &self,
        addr: &str,
        id: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        self.post_form(addr, "/oauth2/token", Some((id, secret)), &form)
            .await
    }
}

/// `application/x-www-form-urlencoded`.
pub fn form_encode(form: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The claims of a JWT, unverified (the tests verify separately).
pub fn claims(token: &str) -> anyhow::Result<Value> {
    let part = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The header of a JWT.
pub fn header(token: &str) -> anyhow::Result<Value> {
    let part = token
        .split('.')
        .next()
        .ok_or_else(|| anyhow!("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The bootstrap admin's calls the OAuth tests set clusters up with (node 1's gRPC API).
#[derive(Debug)]
pub struct Admin<'a>(pub &'a Cluster);

impl Admin<'_> {
    pub async fn role(&self, name: &str, perms: &[&str]) -> anyhow::Result<()> {
        let mut c =
            authsec_api::v1::role_service_client::RoleServiceClient::new(self.0.channel(1).await?);
        let perms: Vec<String> = perms.iter().map(|p| p.to_string()).collect();
        let exists = c
            .get_role(authsec_api::v1::GetRoleRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .is_ok();
        if exists {
            c.update_role(authsec_api::v1::UpdateRoleRequest {
                name: name.into(),
                permissions: Some(authsec_api::v1::StringList { values: perms }),
                ..Default::default()
            })
            .await?;
        } else {
            c.create_role(authsec_api::v1::CreateRoleRequest {
                name: name.into(),
                permissions: perms,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    pub async fn bind(&self, role: &str, subject: &str) -> anyhow::Result<()> {
        authsec_api::v1::role_service_client::RoleServiceClient::new(self.0.channel(1).await?)
            .bind(authsec_api::v1::Binding {
                role: role.into(),
                subject: subject.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn unbind(&self, role: &str, subject: &str) -> anyhow::Result<()> {
        authsec_api::v1::role_service_client::RoleServiceClient::new(self.0.channel(1).await?)
            .unbind(authsec_api::v1::Binding {
                role: role.into(),
                subject: subject.into(),
            })
            .await?;
        Ok(())
    }

    pub async fn client(
        &self,
        req: authsec_api::v1::CreateClientRequest,
    ) -> anyhow::Result<String> {
        Ok(
            authsec_api::v1::client_service_client::ClientServiceClient::new(
                self.0.channel(1).await?,
            )
            .create_client(authsec_api::v1::CreateClientRequest {
                generate_secret: true,
                ..req
            })
            .await?
            .into_inner()
            .client_secret,
        )
    }

    pub async fn allow(&self, id: &str, scopes: &[&str]) -> anyhow::Result<()> {
        authsec_api::v1::client_service_client::ClientServiceClient::new(self.0.channel(1).await?)
            .update_client(authsec_api::v1::UpdateClientRequest {
                client_id: id.into(),
                allowed_scopes: Some(authsec_api::v1::ScopeList {
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    pub async fn delegate(
        &self,
        id: &str,
        from: &str,
        to: &str,
        perms: &[&str],
    ) -> Result<(), tonic::Status> {
        let mut c = authsec_api::v1::delegation_service_client::DelegationServiceClient::new(
            self.0
                .channel(1)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
        );
        c.create_delegation(authsec_api::v1::CreateDelegationRequest {
            delegation_id: id.into(),
            delegator: from.into(),
            delegate: to.into(),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            max_token_ttl_seconds: 120,
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    pub async fn revoke_delegation(&self, id: &str) -> anyhow::Result<()> {
        authsec_api::v1::revocation_service_client::RevocationServiceClient::new(
            self.0.channel(1).await?,
        )
        .revoke(authsec_api::v1::RevokeRequest {
            target: Some(authsec_api::v1::revoke_request::Target::DelegationId(
                id.into(),
            )),
        })
        .await?;
        Ok(())
    }
}
