//! A token issuer behind a private certificate authority, over real HTTPS.
//!
//! The test makes its own CA (rcgen), and serves OIDC discovery and a JWKS on
//! 127.0.0.1:0 with a certificate of that CA (tokio-rustls under axum). The
//! share server must trust it when told, and only then:
//!
//! - in process, through `auth.ca_file` (discovery from `auth.issuer`);
//! - as a real `guardian serve` process, through `SSL_CERT_FILE` (the system's
//!   store), with the issuer given the old way, `OAUTH2_PROVIDER_DOMAIN=host:port`.
//!
//! Without either, every token is refused with 503 `keys_unavailable` and no
//! request ever reaches the issuer: the TLS handshake fails first.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Json;
use axum::Router;
use axum::routing::get;
use guardian::config::{Environment, load};
use guardian::server::Server;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use common::Cluster;

/// The audience the servers accept.
const AUDIENCE: &str = "https://guardian.test";
/// The signing key's id.
const KID: &str = "private-ca-key";

/// A CA made for this test, and a server certificate it signed for 127.0.0.1.
struct PrivateCa {
    /// The CA certificate, PEM: what clients must be told to trust.
    ca_pem: String,
    /// The server's certificate chain (leaf only) and key.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Guardian test private CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "issuer.internal");
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        PrivateCa {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// An OpenID provider over HTTPS on loopback: discovery names `https://127.0.0.1:PORT`
/// as issuer, and the JWKS is at `/.well-known/jwks.json` (also where
/// `OAUTH2_PROVIDER_DOMAIN` looks for it).
struct HttpsIssuer {
    /// `127.0.0.1:PORT`.
    authority: String,
    /// Requests answered (after a completed TLS handshake).
    served: Arc<AtomicU64>,
    /// The signing key.
    key: EncodingKey,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsIssuer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl HttpsIssuer {
    async fn start(ca: &PrivateCa) -> HttpsIssuer {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let key = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(KID.to_owned());
        let jwks = json!({ "keys": [jwk] });

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let base = format!("https://{authority}");
        let discovery = json!({
            "issuer": base,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
        });
        let served = Arc::new(AtomicU64::new(0));
        // Each route answers its document and counts the request.
        let document = |body: Value| {
            let served = served.clone();
            get(move || {
                served.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { Json(body) }
            })
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", document(discovery))
            .route("/.well-known/jwks.json", document(jwks));

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(ca.chain.clone(), PrivateKeyDer::Pkcs8(ca.key.clone_key()))
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that does not trust the CA aborts here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        HttpsIssuer {
            authority,
            served,
            key,
            accept_loop,
        }
    }

    /// A token for `sub` with `iss` and these extra claims, signed by the issuer's key.
    fn token(&self, iss: &str, sub: &str, extra: Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({
            "iss": iss,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 600,
        });
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// `GET {base}/api/v1/me` with `token`: (status, JSON body).
async fn me(base: &str, token: &str) -> (StatusCode, Value) {
    let response = Client::new()
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A server in this process discovering its keys from `issuer`, with `extra`
/// settings (environment names).
async fn start_server(
    dir: &Path,
    issuer: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Server> {
    let mut vars = vec![
        ("GUARDIAN_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "GUARDIAN_SERVER_DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        ("GUARDIAN_AUTH_ISSUER", issuer.to_owned()),
        ("GUARDIAN_AUTH_AUDIENCES", AUDIENCE.to_owned()),
    ];
    vars.extend(extra.iter().cloned());
    let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
    let loaded = load(None, &Environment::new().with_process(vars))?;
    Server::start(loaded.config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_behind_a_private_ca_is_trusted_through_auth_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::new();
    let ca_file = ca.write_ca(dir.path());
    let issuer = HttpsIssuer::start(&ca).await;
    let iss = format!("https://{}", issuer.authority);
    let token = issuer.token(&iss, "alice", json!({"roles": ["scientist"]}));

    // Trusting only the built-in roots and the system's store, the issuer's
    // certificate is refused: no request gets through, every token waits for keys.
    let server = start_server(&dir.path().join("untrusting"), &iss, &[])
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (status, body) = me(&base, &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("keys_unavailable")),
        "{body}"
    );
    assert_eq!(issuer.served(), 0, "the TLS handshake must fail first");
    server.shutdown().await.unwrap();

    // With the CA in auth.ca_file, discovery and JWKS are fetched over HTTPS.
    let server = start_server(
        &dir.path().join("trusting"),
        &iss,
        &[("GUARDIAN_AUTH_CA_FILE", ca_file.display().to_string())],
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    let (status, body) = me(&base, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"sub": "alice", "roles": ["scientist"]}));
    assert!(issuer.served() >= 2, "discovery and JWKS");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_used_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (&missing, "cannot read it"),
        (&key_only, "holds no certificate"),
        (&broken, "not a PEM certificate bundle"),
    ];
    for (file, why) in cases {
        // Token checks on (the issuer's client) and off (the peer client): both
        // read the file at start.
        for disabled in ["false", "true"] {
            let error = start_server(
                &dir.path().join("server"),
                "https://id.example.org/",
                &[
                    ("GUARDIAN_AUTH_CA_FILE", file.display().to_string()),
                    ("GUARDIAN_AUTH_DISABLED", disabled.to_owned()),
                ],
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", file.display()));
            let message = format!("{error:#}");
            for part in ["auth.ca_file", &file.display().to_string(), why] {
                assert!(message.contains(part), "{message}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_is_trusted_and_the_provider_domain_may_have_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = PrivateCa::new();
    let ca_file = ca.write_ca(dir.path()).display().to_string();
    let issuer = HttpsIssuer::start(&ca).await;
    // The old variables: issuer `https://{domain}/`, keys at
    // `https://{domain}/.well-known/jwks.json`, roles from Auth0's `permissions`.
    let authority = issuer.authority.clone();
    let token = issuer.token(
        &format!("https://{authority}/"),
        "bob",
        json!({"permissions": ["get:eta-data"]}),
    );
    let mut cluster = Cluster::start_with(2, move |_| {
        vec![
            ("GUARDIAN_AUTH_DISABLED".to_owned(), "false".to_owned()),
            ("OAUTH2_PROVIDER_DOMAIN".to_owned(), authority.clone()),
            ("OAUTH2_PROVIDER_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
        ]
    })
    .await;

    // The system's store (the child's environment is cleared) lacks the CA.
    let (status, body) = me(&cluster.base(0), &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("keys_unavailable")),
        "{body}\n{}",
        cluster.log(0)
    );
    assert_eq!(issuer.served(), 0);

    // The same server, restarted with SSL_CERT_FILE naming the CA. Keys are
    // loaded before the server listens, so once it is ready they are there.
    cluster.kill(0);
    cluster
        .launch(0, &[("SSL_CERT_FILE", ca_file.as_str())])
        .await;
    let (status, body) = me(&cluster.base(0), &token).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", cluster.log(0));
    assert_eq!(body, json!({"sub": "bob", "roles": ["scientist"]}));
    assert!(issuer.served() >= 1);
}
