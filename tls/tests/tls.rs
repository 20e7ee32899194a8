//! Mutual TLS with SPIFFE-ID authorization, over real sockets: who gets in, who does not, and
//! rotation without a restart.

use std::sync::Arc;
use std::time::Duration;

use authsec_domain::TrustDomain;
use authsec_tls::tls::{self, Expect, PeerInfo, TlsState};
use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = p.self_signed(&key).expect("self-signed");
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

struct Leaf {
    uris: Vec<String>,
    is_ca: bool,
}

fn leaf(ca: &Ca, l: Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.subject_alt_names = l
        .uris
        .iter()
        .map(|u| SanType::URI(u.as_str().try_into().expect("ia5")))
        .collect();
    p.is_ca = if l.is_ca {
        IsCa::Ca(BasicConstraints::Constrained(0))
    } else {
        IsCa::ExplicitNoCa
    };
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.issuer).expect("signed");
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").expect("td")
}

fn node(ca: &Ca, bundle: &[&Ca], id: u64) -> Arc<TlsState> {
    let (chain, key) = leaf(
        ca,
        Leaf {
            uris: vec![format!("spiffe://example.org/authsec/node/{id}")],
            is_ca: false,
        },
    );
    TlsState::new(
        td(),
        bundle.iter().map(|c| c.der.clone()).collect(),
        chain,
        key,
    )
    .expect("tls state")
}

type Refusals = tokio::sync::mpsc::UnboundedReceiver<tls::Refused>;

/// A listener's limits: connections, of which anonymous, each anonymous one closed after
/// `lifetime_s`.
fn limits(connections: usize, anonymous: usize, lifetime_s: u64) -> tls::Limits {
    tls::Limits {
        connections,
        anonymous,
        anonymous_lifetime: Duration::from_secs(lifetime_s),
    }
}

/// A TLS echo server on loopback; returns its address and the identities it accepted.
async fn server(state: &Arc<TlsState>) -> (String, tokio::sync::mpsc::UnboundedReceiver<PeerInfo>) {
    let (addr, seen, _) = server_refusing(state).await;
    (addr, seen)
}

/// The same, also returning the handshakes it refused for the client's certificate.
async fn server_refusing(
    state: &Arc<TlsState>,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<PeerInfo>,
    Refusals,
) {
    server_capped(state, tls::ClientAuth::Required, limits(64, 64, 300)).await
}

/// The same, with `auth` and `limits`.
async fn server_capped(
    state: &Arc<TlsState>,
    auth: tls::ClientAuth,
    limits: tls::Limits,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<PeerInfo>,
    Refusals,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (refused_tx, refused) = tokio::sync::mpsc::unbounded_channel();
    let mut conns = Box::pin(tls::incoming(
        listener,
        state.server_config(auth).expect("server config"),
        limits,
        move |r| {
            let _ = refused_tx.send(r);
        },
    ));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(mut c)) = conns.next().await {
            let _ = tx.send(c.peer().clone());
            tokio::spawn(async move {
                // Echo five bytes at a time until the client closes.
                let mut buf = [0u8; 5];
                while c.read_exact(&mut buf).await.is_ok() {
                    if c.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx, refused)
}

/// Connect and echo five bytes; Ok only if the whole exchange worked.
async fn exchange(addr: &str, client: &Arc<TlsState>, expect: Expect) -> Result<(), String> {
    let cfg = client.client_config(expect).map_err(|e| e.to_string())?;
    let mut io = tls::connect(addr, cfg)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    io.write_all(b"hello").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if &buf != b"hello" {
        return Err("echo differs".into());
    }
    Ok(())
}

#[tokio::test]
async fn nodes_of_the_trust_domain_get_in_with_their_spiffe_id() {
    let root = ca("root");
    let n1 = node(&root, &[&root], 1);
    let n2 = node(&root, &[&root], 2);
    let (addr, mut seen) = server(&n1).await;
    exchange(&addr, &n2, Expect::Node(1))
        .await
        .expect("node 2 reaches node 1");
    exchange(&addr, &n2, Expect::AnyNode)
        .await
        .expect("any node will do");
    let p = seen.recv().await.expect("accepted");
    assert_eq!(
        p.spiffe_id.map(|s| s.to_string()).as_deref(),
        Some("spiffe://example.org/authsec/node/2")
    );
    assert_eq!(
        n1.own_id().expect("own id").to_string(),
        "spiffe://example.org/authsec/node/1"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let root = ca("root");
    let n1 = node(&root, &[&root], 1);
    let n2 = node(&root, &[&root], 2);
    let (addr, mut seen, _) =
        server_capped(&n1, tls::ClientAuth::Required, limits(1, 1, 300)).await;
    let cfg = n2.client_config(Expect::Node(1)).expect("client config");
    let mut first = tls::connect(&addr, cfg.clone())
        .await
        .expect("the first connection")
        .into_inner();
    first.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    first.read_exact(&mut buf).await.expect("echo");
    seen.recv().await.expect("the first is accepted");

    // The second waits in the backlog: its handshake gets no answer while the first is open.
    let second =
        tokio::spawn(async move { tls::connect(&addr, cfg).await.map(|c| c.into_inner()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "a second connection was served beside the first"
    );
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second is served once the first closed")
        .expect("task")
        .expect("the second connection");
    second.write_all(b"again").await.expect("write");
    second.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"again");
}

/// A client config that trusts any server (these tests judge the server's side).
fn trusting_anything(
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
}

/// A client that trusts any server and presents no certificate: echo five bytes.
async fn anonymous_echo(
    addr: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    echo_with(addr, trusting_anything().with_no_client_auth()).await
}

/// Connect with `cfg` (ALPN h2) and echo five bytes.
async fn echo_with(
    addr: &str,
    mut cfg: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let mut io = tls::connect(addr, Arc::new(cfg)).await?.into_inner();
    io.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no echo within 5 s"))??;
    Ok(io)
}

#[tokio::test]
async fn connections_without_a_certificate_are_bounded_and_closed_in_time() {
    let root = ca("root");
    let n1 = node(&root, &[&root], 1);
    let n2 = node(&root, &[&root], 2);
    let (addr, _seen, _) = server_capped(&n1, tls::ClientAuth::Optional, limits(8, 1, 1)).await;
    let mut first = anonymous_echo(&addr)
        .await
        .expect("the first stranger is served");
    assert!(
        anonymous_echo(&addr).await.is_err(),
        "a second stranger is closed while the first holds the one place"
    );
    exchange(&addr, &n2, Expect::Node(1))
        .await
        .expect("a node still gets in");
    // The first is closed once its lifetime is over, and its place is free again.
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while anonymous_echo(&addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_refuses_a_server_that_is_not_the_expected_node() {
    let root = ca("root");
    let n1 = node(&root, &[&root], 1);
    let n2 = node(&root, &[&root], 2);
    let (addr, _seen) = server(&n1).await;
    let err = exchange(&addr, &n2, Expect::Node(3))
        .await
        .expect_err("node 1 is not node 3");
    assert!(err.contains("node/3"), "{err}");
}

#[tokio::test]
async fn strangers_are_refused_at_the_handshake() {
    let root = ca("root");
    let other_root = ca("other root");
    let n1 = node(&root, &[&root], 1);
    let (addr, mut seen, mut refused) = server_refusing(&n1).await;

    // Signed by another CA, same trust domain name.
    let stranger = node(&other_root, &[&root], 2);
    assert!(exchange(&addr, &stranger, Expect::Node(1)).await.is_err());

    // Our CA, another trust domain.
    let (chain, key) = leaf(
        &root,
        Leaf {
            uris: vec!["spiffe://evil.org/authsec/node/2".into()],
            is_ca: false,
        },
    );
    let foreign = TlsState::new(
        TrustDomain::parse("evil.org").expect("td"),
        vec![root.der.clone()],
        chain.clone(),
        key.clone_key(),
    )
    .expect("state");
    assert!(exchange(&addr, &foreign, Expect::AnyNode).await.is_err());

    // Clients that trust anything: one presents the foreign certificate (the client above
    // gave up on our server before it sent it), one presents none.
    let presenting = trusting_anything()
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    let err = echo_with(&addr, presenting)
        .await
        .expect_err("a certificate of another trust domain is refused");
    // The client is told its certificate is bad, not that the server failed.
    assert!(err.to_string().contains("CertificateUnknown"), "{err}");
    assert!(
        anonymous_echo(&addr).await.is_err(),
        "a client without a certificate is refused"
    );

    // Each refusal is reported (to be audited as a failed authentication) with what the
    // certificate claimed to be and why it was refused.
    let mut got = vec![];
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(5), refused.recv())
            .await
            .expect("a refusal within 5 s")
            .expect("refusals");
        assert!(r.remote.ip().is_loopback(), "{r:?}");
        got.push((r.claimed, r.reason));
    }
    assert_eq!(
        got[0].0.as_deref(),
        Some("spiffe://example.org/authsec/node/2"),
        "{got:?}"
    );
    assert!(got[0].1.contains("UnknownIssuer"), "{got:?}");
    assert_eq!(
        got[1].0.as_deref(),
        Some("spiffe://evil.org/authsec/node/2"),
        "{got:?}"
    );
    assert!(got[1].1.contains("not in trust domain"), "{got:?}");
    assert_eq!(got[2], (None, "no client certificate".to_owned()));

    // Nothing was accepted.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "no connection was accepted"
    );
}

#[test]
fn only_x509_svids_pass() {
    let root = ca("root");
    let svid = |uris: Vec<&str>, is_ca| {
        let (chain, _) = leaf(
            &root,
            Leaf {
                uris: uris.into_iter().map(str::to_owned).collect(),
                is_ca,
            },
        );
        tls::svid_id(&chain[0]).map(|id| id.to_string())
    };
    assert_eq!(
        svid(vec!["spiffe://example.org/w"], false).expect("one URI SAN"),
        "spiffe://example.org/w"
    );
    assert!(svid(
        vec!["spiffe://example.org/a", "spiffe://example.org/b"],
        false
    )
    .is_err());
    assert!(
        svid(vec!["spiffe://example.org/w"], true).is_err(),
        "a CA is no leaf"
    );
    assert!(
        svid(vec!["spiffe://example.org"], false).is_err(),
        "no path"
    );
    assert!(svid(vec!["https://example.org/w"], false).is_err());
    assert!(svid(vec![], false).is_err());
    assert!(tls::svid_id(&root.der).is_err());
}

#[test]
fn node_ids_parse_only_from_node_spiffe_ids() {
    let td = td();
    let id = |s: &str| authsec_domain::SpiffeId::parse(s).expect("id");
    assert_eq!(tls::node_id_of(&td, &tls::node_spiffe_id(&td, 7)), Some(7));
    assert_eq!(
        tls::node_id_of(&td, &id("spiffe://example.org/authsec/node/07")),
        None
    );
    assert_eq!(
        tls::node_id_of(&td, &id("spiffe://example.org/authsec/admin/1")),
        None
    );
    assert_eq!(
        tls::node_id_of(&td, &id("spiffe://other.org/authsec/node/1")),
        None
    );
}

#[tokio::test]
async fn rotation_takes_effect_without_a_restart() {
    let old = ca("old root");
    let new = ca("new root");
    let n1 = node(&old, &[&old], 1);
    let n2 = node(&old, &[&old], 2);
    let (addr, _seen) = server(&n1).await;
    exchange(&addr, &n2, Expect::Node(1)).await.expect("before");

    // Node 1 moves to a certificate from the new root and trusts both during the overlap.
    let (chain, key) = leaf(
        &new,
        Leaf {
            uris: vec!["spiffe://example.org/authsec/node/1".into()],
            is_ca: false,
        },
    );
    n1.replace(vec![old.der.clone(), new.der.clone()], chain, key)
        .expect("rotate");
    // Node 2 still trusts only the old root: it refuses node 1's new certificate.
    assert!(exchange(&addr, &n2, Expect::Node(1)).await.is_err());
    // Once node 2 has the new bundle, they talk again, still on node 2's old certificate.
    let (chain2, key2) = leaf(
        &old,
        Leaf {
            uris: vec!["spiffe://example.org/authsec/node/2".into()],
            is_ca: false,
        },
    );
    n2.replace(vec![old.der.clone(), new.der.clone()], chain2, key2)
        .expect("bundle");
    exchange(&addr, &n2, Expect::Node(1)).await.expect("after");
}

/// A client-side verifier that accepts any server, to test the server's side alone.
#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
