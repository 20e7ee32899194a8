//! `authsec svid x509|jwt|status`: mint SPIFFE credentials from any node, and see whether a
//! node issues. Also `authsec svid bench`, the in-process minting benchmark.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use authsec_api::v1::{self, svid_service_client::SvidServiceClient};
use clap::{Args, Subcommand};
use rustls::pki_types::CertificateDer;
use serde_json::json;

use crate::cli;
use crate::cli_identity::{CallError, Common, Output};

#[derive(Debug, Subcommand)]
pub enum SvidCmd {
    /// Mint an X.509-SVID for an entry. Without --csr a P-256 key is made here and written
    /// beside the certificate (0600); it never leaves this machine.
    X509 {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        entry: String,
        /// A PKCS#10 CSR (PEM or DER) for a key you already hold.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Seconds; default the entry's X.509 TTL.
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// Where to write svid.pem (leaf then intermediate), svid.key and bundle.pem.
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a JWT-SVID for an entry; prints the token.
    Jwt {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        entry: String,
        /// Repeat for several audiences.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Seconds; default the entry's JWT TTL.
        #[arg(long, default_value_t = 0)]
        ttl: u32,
    },
    /// Whether the node issues now: its freshness and active keys.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// In-process benchmark: X.509-SVIDs minted per second by one issuer with `threads`
    /// threads, from pre-made CSRs, against one ECDSA P-256 signature on this machine.
    #[command(hide = true)]
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Through the API instead: mint for this entry on the target node, over mutual TLS.
    #[arg(long)]
    pub entry: Option<String>,
    /// Requests in flight through the API.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[command(flatten)]
    pub target: cli::Target,
}

async fn client(common: &Common) -> anyhow::Result<SvidServiceClient<tonic::transport::Channel>> {
    Ok(SvidServiceClient::new(
        cli::connect(&cli::endpoints(&common.target)?).await?.1,
    ))
}

fn read_csr(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        Ok(
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: not a PEM CSR: {e}", path.display()))?
                .as_ref()
                .to_vec(),
        )
    } else {
        Ok(bytes)
    }
}

pub async fn svid(c: SvidCmd) -> anyhow::Result<()> {
    match c {
        SvidCmd::X509 {
            common,
            entry,
            csr,
            ttl,
            out,
        } => {
            let (key, csr_der) = match &csr {
                Some(p) => (None, read_csr(p)?),
                None => {
                    let key = rcgen::KeyPair::generate()?;
                    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
                    (Some(key), csr.der().to_vec())
                }
            };
            let r = client(&common)
                .await?
                .mint_x509_svid(v1::MintX509SvidRequest {
                    entry_id: entry,
                    csr_der,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(CallError)?
                .into_inner();
            let chain: Vec<CertificateDer<'static>> = r
                .cert_chain_der
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            let bundle: Vec<CertificateDer<'static>> = r
                .bundle_der
                .iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect();
            std::fs::create_dir_all(&out)?;
            if let Some(k) = &key {
                crate::pki::write_file(&out.join("svid.key"), k.serialize_pem().as_bytes(), 0o600)?;
            }
            crate::pki::write_file(
                &out.join("svid.pem"),
                crate::pki::pem_certs(&chain).as_bytes(),
                0o644,
            )?;
            crate::pki::write_file(
                &out.join("bundle.pem"),
                crate::pki::pem_certs(&bundle).as_bytes(),
                0o644,
            )?;
            // Each federated trust domain's X.509 authorities, for verifying its peers.
            let mut federated = Vec::new();
            for (td, b) in &r.federated_bundles {
                let name = td.trim_start_matches("spiffe://");
                let certs: Vec<CertificateDer<'static>> = b
                    .der
                    .iter()
                    .map(|d| CertificateDer::from(d.clone()))
                    .collect();
                let path = out.join(format!("federated-{name}.pem"));
                crate::pki::write_file(&path, crate::pki::pem_certs(&certs).as_bytes(), 0o644)?;
                federated.push(path.display().to_string());
            }
            let v = json!({
                "federated_bundles": federated,
                "spiffe_id": r.spiffe_id, "serial": r.serial_hex, "expires_at_unix": r.expires_at_unix,
                "issuer_node_id": r.issuer_node_id, "issued_at_index": r.issued_at_index,
                "out": out.display().to_string(),
            });
            match common.output {
                Output::Json => println!("{v}"),
                Output::Table => println!(
                    "minted {} on node {} (serial {}, expires at {}); wrote {}/svid.pem{}, bundle.pem{}",
                    r.spiffe_id,
                    r.issuer_node_id,
                    r.serial_hex,
                    r.expires_at_unix,
                    out.display(),
                    if key.is_some() { ", svid.key" } else { "" },
                    federated
                        .iter()
                        .map(|p| format!(", {}", p.rsplit('/').next().unwrap_or(p)))
                        .collect::<String>()
                ),
            }
        }
        SvidCmd::Jwt {
            common,
            entry,
            audience,
            ttl,
        } => {
            let r = client(&common)
                .await?
                .mint_jwt_svid(v1::MintJwtSvidRequest {
                    entry_id: entry,
                    audience,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(CallError)?
                .into_inner();
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"spiffe_id": r.spiffe_id, "token": r.token, "kid": r.kid,
                        "expires_at_unix": r.expires_at_unix, "issuer_node_id": r.issuer_node_id,
                        "issued_at_index": r.issued_at_index})
                ),
                Output::Table => println!("{}", r.token),
            }
        }
        SvidCmd::Status { common } => {
            let r = client(&common)
                .await?
                .issuer_status(v1::IssuerStatusRequest {})
                .await
                .map_err(CallError)?
                .into_inner();
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"node_id": r.node_id, "issuing": r.issuing, "reason": r.reason,
                        "freshness_ms": r.freshness_ms, "max_staleness_ms": r.max_staleness_ms,
                        "x509_kid": r.x509_kid, "jwt_kid": r.jwt_kid, "raft_role": r.raft_role})
                ),
                Output::Table => {
                    println!(
                        "node {} ({}): {}",
                        r.node_id,
                        r.raft_role,
                        if r.issuing {
                            "issuing".to_owned()
                        } else {
                            format!("not issuing: {}", r.reason)
                        }
                    );
                    println!(
                        "freshness: {} (max {} ms)",
                        r.freshness_ms
                            .map_or("unknown".to_owned(), |m| format!("{m} ms")),
                        r.max_staleness_ms
                    );
                    println!("intermediate CA: {}", or_dash(&r.x509_kid));
                    println!("JWT key: {}", or_dash(&r.jwt_kid));
                }
            }
        }
        SvidCmd::Bench(a) if a.entry.is_some() => bench_api(a).await?,
        SvidCmd::Bench(a) => bench(a)?,
    }
    Ok(())
}

// ---- federation ----

#[derive(Debug, Subcommand)]
pub enum FederationCmd {
    /// Trust another trust domain: its bundle is fetched from its endpoint and recorded.
    Create {
        #[command(flatten)]
        common: Common,
        /// The other trust domain, e.g. partner.example.
        #[arg(long)]
        trust_domain: String,
        /// Its bundle endpoint, https://host:port/path.
        #[arg(long)]
        url: String,
        /// https_web (a Web PKI certificate) or https_spiffe (an SVID of --endpoint-spiffe-id,
        /// checked against --bundle until the first fetch).
        #[arg(long, default_value = "https_web")]
        profile: String,
        #[arg(long)]
        endpoint_spiffe_id: Option<String>,
        /// The other domain's bundle (SPIFFE JSON), obtained out of band (https_spiffe).
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// The federated trust domains and their recorded bundles.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// A federated domain's recorded bundle: SPIFFE JSON, or its X.509 authorities as PEM.
    Bundle {
        #[command(flatten)]
        common: Common,
        trust_domain: String,
        #[arg(long, value_enum, default_value_t)]
        format: crate::cli_identity::BundleFormat,
    },
    /// Stop trusting a trust domain (refused while an entry federates with it).
    Delete {
        #[command(flatten)]
        common: Common,
        trust_domain: String,
    },
}

async fn federations(
    common: &Common,
) -> anyhow::Result<v1::federation_service_client::FederationServiceClient<tonic::transport::Channel>>
{
    Ok(v1::federation_service_client::FederationServiceClient::new(
        cli::connect(&cli::endpoints(&common.target)?).await?.1,
    ))
}

pub async fn federation(c: FederationCmd) -> anyhow::Result<()> {
    match c {
        FederationCmd::Create {
            common,
            trust_domain,
            url,
            profile,
            endpoint_spiffe_id,
            bundle,
        } => {
            let profile = match profile.as_str() {
                "https_web" => v1::FederationProfile::HttpsWeb,
                "https_spiffe" => v1::FederationProfile::HttpsSpiffe,
                other => anyhow::bail!("--profile {other}: use https_web or https_spiffe"),
            };
            let bundle_json = match &bundle {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?,
                None => String::new(),
            };
            let r = federations(&common)
                .await?
                .create_federation(v1::CreateFederationRequest {
                    trust_domain: trust_domain.clone(),
                    endpoint_url: url,
                    profile: profile as i32,
                    endpoint_spiffe_id: endpoint_spiffe_id.unwrap_or_default(),
                    bundle_json,
                })
                .await
                .map_err(CallError)?
                .into_inner();
            let index = r.receipt.map_or(0, |r| r.log_index);
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"trust_domain": trust_domain, "log_index": index})
                ),
                Output::Table => println!(
                    "federating with {trust_domain} (log index {index}); the leader fetches its bundle now"
                ),
            }
        }
        FederationCmd::List { common } => {
            let r = federations(&common)
                .await?
                .list_federations(v1::ListFederationsRequest {})
                .await
                .map_err(CallError)?
                .into_inner();
            for f in r.federations {
                let profile = match v1::FederationProfile::try_from(f.profile) {
                    Ok(v1::FederationProfile::HttpsSpiffe) => "https_spiffe",
                    _ => "https_web",
                };
                match common.output {
                    Output::Json => println!(
                        "{}",
                        json!({"trust_domain": f.trust_domain, "endpoint_url": f.endpoint_url,
                            "profile": profile, "endpoint_spiffe_id": f.endpoint_spiffe_id,
                            "bundle_sequence": f.bundle_sequence, "bundle_at_ms": f.bundle_at_ms,
                            "x509_authorities": f.x509_authorities_der.len(), "jwt_kids": f.jwt_kids})
                    ),
                    Output::Table => println!(
                        "{}  {}  {}  sequence {}  {} X.509 / {} JWT authorities",
                        f.trust_domain,
                        f.endpoint_url,
                        profile,
                        f.bundle_sequence,
                        f.x509_authorities_der.len(),
                        f.jwt_kids.len()
                    ),
                }
            }
        }
        FederationCmd::Bundle {
            common,
            trust_domain,
            format,
        } => {
            let r = federations(&common)
                .await?
                .list_federations(v1::ListFederationsRequest {})
                .await
                .map_err(CallError)?
                .into_inner();
            let f = r
                .federations
                .into_iter()
                .find(|f| f.trust_domain == trust_domain)
                .ok_or_else(|| {
                    CallError(tonic::Status::not_found(format!(
                        "no federation with {trust_domain}"
                    )))
                })?;
            if f.spiffe_bundle_json.is_empty() {
                return Err(CallError(tonic::Status::unavailable(format!(
                    "no bundle of {trust_domain} recorded yet"
                )))
                .into());
            }
            match format {
                crate::cli_identity::BundleFormat::Spiffe => println!("{}", f.spiffe_bundle_json),
                crate::cli_identity::BundleFormat::Pem => {
                    print!("{}", crate::pki::pem_of_ders(f.x509_authorities_der))
                }
            }
        }
        FederationCmd::Delete {
            common,
            trust_domain,
        } => {
            federations(&common)
                .await?
                .delete_federation(v1::DeleteFederationRequest {
                    trust_domain: trust_domain.clone(),
                })
                .await
                .map_err(CallError)?;
            println!("no longer federating with {trust_domain}");
        }
    }
    Ok(())
}

// ---- roots ----

#[derive(Debug, Subcommand)]
pub enum RootsCmd {
    /// The trust domain's roots: which signs node intermediates, which are in the bundle.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Make a new root (on a node holding the KEK) and put it in the bundle. Activate it once
    /// every holder has fetched the bundle (at least its refresh hint later).
    Prepare {
        #[command(flatten)]
        common: Common,
    },
    /// Sign node intermediates, node certificates and admin certificates with the prepared
    /// root from now on (nodes re-issue theirs at once; admins run `authsec admin rotate`).
    /// Refused until the root has been in the bundle for a refresh hint (300 s), unless
    /// --force.
    Activate {
        #[command(flatten)]
        common: Common,
        fingerprint: String,
        #[arg(long)]
        force: bool,
    },
    /// Take a root out of the bundle and out of every node's TLS trust. Refused while your own
    /// certificate, a member's certificate or an intermediate in use depends on it, unless
    /// --force.
    Retire {
        #[command(flatten)]
        common: Common,
        fingerprint: String,
        #[arg(long)]
        force: bool,
    },
}

pub async fn roots(c: RootsCmd) -> anyhow::Result<()> {
    let client = |common: &Common| {
        let t = common.target.clone();
        async move {
            Ok::<_, anyhow::Error>(v1::root_service_client::RootServiceClient::new(
                cli::connect(&cli::endpoints(&t)?).await?.1,
            ))
        }
    };
    let print = |common: &Common, roots: &[v1::TrustRoot]| {
        for r in roots {
            match common.output {
                Output::Json => println!(
                    "{}",
                    json!({"fingerprint": r.fingerprint, "state": r.state, "signing": r.signing, "in_bundle": r.in_bundle})
                ),
                Output::Table => println!(
                    "{}  {:<10} {}{}",
                    r.fingerprint,
                    r.state,
                    if r.signing { "signing " } else { "" },
                    if r.in_bundle {
                        "in bundle"
                    } else {
                        "retired from the bundle"
                    }
                ),
            }
        }
    };
    match c {
        RootsCmd::List { common } => {
            let r = client(&common)
                .await?
                .list_roots(v1::ListRootsRequest {})
                .await
                .map_err(CallError)?
                .into_inner();
            print(&common, &r.roots);
        }
        RootsCmd::Prepare { common } => {
            let r = client(&common)
                .await?
                .prepare_root(v1::PrepareRootRequest {})
                .await
                .map_err(CallError)?
                .into_inner();
            print(&common, r.root.as_slice());
        }
        RootsCmd::Activate {
            common,
            fingerprint,
            force,
        } => {
            client(&common)
                .await?
                .activate_root(v1::ActivateRootRequest {
                    fingerprint: fingerprint.clone(),
                    force,
                })
                .await
                .map_err(CallError)?;
            println!("{fingerprint} signs node intermediates now; nodes re-issue theirs");
        }
        RootsCmd::Retire {
            common,
            fingerprint,
            force,
        } => {
            client(&common)
                .await?
                .retire_root(v1::RetireRootRequest {
                    fingerprint: fingerprint.clone(),
                    force,
                })
                .await
                .map_err(CallError)?;
            println!("{fingerprint} is out of the trust bundle");
        }
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Mint X.509-SVIDs in process for `seconds` on `threads` threads, then sign as many P-256
/// digests for the same time: the ratio is the cost of one SVID in signatures.
fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use authsec_domain::keys::{KeyKind, KeyState, NodeKey};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let td = authsec_domain::TrustDomain::parse("bench.example")?;
    let dir = tempfile_dir()?;
    let issuer = Arc::new(crate::issuer::SvidIssuer::new(
        1,
        &dir,
        Arc::new(authsec_raft::Freshness::default()),
        &Default::default(),
    ));
    let root = crate::pki::Root::generate(&td)?;
    let (kid, kp) = issuer.new_key(KeyKind::X509Ca)?;
    let cert = root.sign_intermediate(&td, 1, &kp, Duration::from_secs(3600))?;
    issuer.store_cert(&kid, &cert)?;
    issuer.install(&NodeKey {
        kid,
        node_id: 1,
        kind: KeyKind::X509Ca,
        public: cert.to_vec(),
        not_after_ms: crate::issuer::now_ms() + 3_600_000,
        state: KeyState::Active,
        published_at_ms: 0,
        changed_at_ms: 0,
    })?;
    let entry = Arc::new(authsec_domain::identity::Entry {
        entry_id: authsec_domain::EntryId::parse("e-bench")?,
        spiffe_id: authsec_domain::SpiffeId::parse("spiffe://bench.example/workload")?,
        parent_id: None,
        selectors: Default::default(),
        x509_ttl_s: 3600,
        jwt_ttl_s: 300,
        dns_names: Default::default(),
        client_id: None,
        federates_with: Default::default(),
        revision: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
    });
    let csrs = sample_csrs()?;
    let run = |work: Arc<dyn Fn(usize) + Send + Sync>| -> f64 {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        work(i);
                        i += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(a.seconds));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    };
    let (i2, e2, c2) = (issuer.clone(), entry.clone(), csrs.clone());
    let svids = run(Arc::new(move |i| {
        if let Err(e) = i2.mint_x509(&e2, &c2[i % c2.len()], 0, 1) {
            eprintln!("mint failed: {e}");
        }
    }));
    // The proof-of-possession check alone: parse each CSR and verify its self-signature.
    let c3 = csrs.clone();
    let checks = run(Arc::new(move |i| {
        use x509_parser::prelude::FromDer;
        let ok = x509_parser::certification_request::X509CertificationRequest::from_der(
            &c3[i % c3.len()],
        )
        .map(|(_, c)| c.verify_signature().is_ok());
        if !matches!(ok, Ok(true)) {
            eprintln!("a CSR did not verify");
        }
    }));
    let sign_key = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    )
    .map_err(|_| anyhow::anyhow!("P-256 key"))?;
    let sign_key = Arc::new(sign_key);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let sigs = run(Arc::new(move |i| {
        let _ = sign_key.sign(&rng, &(i as u64).to_be_bytes());
    }));
    println!(
        "{}",
        json!({
            "mode": "in-process", "threads": a.threads, "seconds": a.seconds,
            "svids_per_s": svids.round(), "p256_signatures_per_s": sigs.round(),
            "csr_checks_per_s": checks.round(),
            "signatures_per_svid": (sigs / svids * 100.0).round() / 100.0,
            "signatures_per_csr_check": (sigs / checks * 100.0).round() / 100.0,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Mint through the API of one node with `concurrency` requests in flight.
async fn bench_api(a: BenchArgs) -> anyhow::Result<()> {
    let entry = a.entry.clone().unwrap_or_default();
    let ch = cli::connect(&cli::endpoints(&a.target)?).await?.1;
    let csrs = sample_csrs()?;
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for t in 0..a.concurrency {
        let mut c = SvidServiceClient::new(ch.clone());
        let (csrs, entry) = (csrs.clone(), entry.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failed, mut i) = (Vec::new(), 0u64, t);
            while Instant::now() < end {
                let s = Instant::now();
                let r = c
                    .mint_x509_svid(v1::MintX509SvidRequest {
                        entry_id: entry.clone(),
                        csr_der: csrs[i % csrs.len()].clone(),
                        ttl_seconds: 0,
                    })
                    .await;
                match r {
                    Ok(_) => lat.push(s.elapsed()),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (lat, failed)
        }));
    }
    let start = Instant::now();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "mode": "api", "concurrency": a.concurrency, "seconds": a.seconds,
            "svids_per_s": (lat.len() as f64 / secs).round(), "failed": failed,
            "p50_ms": (pct(0.5) * 100.0).round() / 100.0, "p99_ms": (pct(0.99) * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

/// 256 CSRs of fresh P-256 keys. Workloads make a new key per SVID; making them is the
/// workload's cost, so the benchmarks make them before the clock starts.
fn sample_csrs() -> anyhow::Result<std::sync::Arc<Vec<Vec<u8>>>> {
    Ok(std::sync::Arc::new(
        (0..256)
            .map(|_| {
                let k = rcgen::KeyPair::generate()?;
                Ok(rcgen::CertificateParams::default()
                    .serialize_request(&k)?
                    .der()
                    .to_vec())
            })
            .collect::<anyhow::Result<_>>()?,
    ))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let mut b = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    let d = std::env::temp_dir().join(format!("authsec-svid-bench-{}", hex::encode(b)));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
