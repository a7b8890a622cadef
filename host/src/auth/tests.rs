//! Token verification with real keys, real signatures and, for the fetched key
//! sources, a real HTTP issuer (axum on 127.0.0.1:0). Time is a manual clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RsaPublicKeyComponents,
};
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::keys::{KeySet, Keys, KeysError, KeysOptions, Source};
use super::*;
use crate::config::{AuthConfig, ClaimFormat, Role, RoleSource, Secret};

// ------------------------------------------------------------------ helpers

/// A clock the test moves by hand, starting at the real time (tokens are checked
/// by `jsonwebtoken` against the real time).
struct ManualClock(AtomicU64);

impl ManualClock {
    fn starting_now() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(
            SystemClock.now().as_millis() as u64
        )))
    }

    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A signing key and its public JWK.
struct TestKey {
    kid: &'static str,
    alg: jsonwebtoken::Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

/// The public key of an RSA test key in the encodings an HS256 forger would try.
struct RsaPublic {
    pem: String,
    spki_der: Vec<u8>,
    pkcs1_der: Vec<u8>,
    modulus: Vec<u8>,
}

fn public_jwk(encoding: &EncodingKey, alg: jsonwebtoken::Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_value(jwk).unwrap()
}

fn rsa_key(kid: &'static str) -> (TestKey, RsaPublic) {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let der = pair.as_der().unwrap();
    let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref()));
    let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    let public = pair.public_key();
    let spki_der = public.as_der().unwrap().as_ref().to_vec();
    let rsa_public = RsaPublic {
        pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki_der.clone())),
        spki_der,
        pkcs1_der: public.as_ref().to_vec(),
        modulus: RsaPublicKeyComponents::<Vec<u8>>::from(public).n,
    };
    let jwk = public_jwk(&encoding, jsonwebtoken::Algorithm::RS256, kid);
    let key = TestKey {
        kid,
        alg: jsonwebtoken::Algorithm::RS256,
        encoding,
        jwk,
    };
    (key, rsa_public)
}

fn ec_key(kid: &'static str) -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let encoding = EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref());
    let jwk = public_jwk(&encoding, jsonwebtoken::Algorithm::ES256, kid);
    TestKey {
        kid,
        alg: jsonwebtoken::Algorithm::ES256,
        encoding,
        jwk,
    }
}

fn ed_key(kid: &'static str) -> TestKey {
    let pair = Ed25519KeyPair::generate().unwrap();
    let encoding = EncodingKey::from_ed_der(pair.to_pkcs8v1().unwrap().as_ref());
    let jwk = public_jwk(&encoding, jsonwebtoken::Algorithm::EdDSA, kid);
    TestKey {
        kid,
        alg: jsonwebtoken::Algorithm::EdDSA,
        encoding,
        jwk,
    }
}

/// Keys generated once for the whole test binary (RSA generation is slow).
struct TestKeys {
    rsa: TestKey,
    rsa_public: RsaPublic,
    rotated: TestKey,
    attacker: TestKey,
    ec: TestKey,
    ed: TestKey,
}

static KEYS: LazyLock<TestKeys> = LazyLock::new(|| {
    let (rsa, rsa_public) = rsa_key("rsa-1");
    TestKeys {
        rsa,
        rsa_public,
        rotated: rsa_key("rsa-2").0,
        attacker: rsa_key("evil").0,
        ec: ec_key("ec-1"),
        ed: ed_key("ed-1"),
    }
});

const ISSUER: &str = "https://issuer.example.com/";
const AUDIENCE: &str = "guardian-api";

/// Claims of a valid token for `ISSUER`, with `changes` merged in (`null` removes).
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
        "roles": ["user"],
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn header(alg: jsonwebtoken::Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header
}

/// A token signed by `key`, naming it.
fn sign(key: &TestKey, claims: &Value) -> String {
    sign_as(key, key.alg, Some(key.kid), claims)
}

/// A token signed by `key` with any `alg` and `kid` in the header.
fn sign_as(
    key: &TestKey,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    jsonwebtoken::encode(&header(alg, kid), claims, &key.encoding).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token assembled by hand from a header and claims, with any signature.
fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// The authentication settings of the tests, with keys from `source`.
fn config() -> AuthConfig {
    AuthConfig {
        issuer: Some(ISSUER.to_owned()),
        audiences: vec![AUDIENCE.to_owned()],
        ..AuthConfig::default()
    }
}

/// A JWKS document.
fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// A verifier reading its keys from a JWKS file.
struct FileFixture {
    auth: JwtAuthenticator,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

async fn file_fixture(document: Value) -> FileFixture {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, document.to_string()).unwrap();
    let clock = ManualClock::starting_now();
    let config = AuthConfig {
        jwks_file: Some(path),
        ..config()
    };
    let auth = JwtAuthenticator::with_clock(&config, clock.clone())
        .await
        .unwrap();
    FileFixture {
        auth,
        clock,
        _dir: dir,
    }
}

/// The standard file fixture: RSA, EC and Ed25519 keys, plus an `oct` key.
async fn standard_fixture() -> FileFixture {
    let k = &*KEYS;
    let mut document = jwks(&[&k.rsa, &k.ec, &k.ed]);
    document["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "kid": "sym", "k": b64(b"a shared secret of some length")}));
    file_fixture(document).await
}

async fn code_of(auth: &JwtAuthenticator, token: &str) -> &'static str {
    match auth.verify(token).await {
        Ok(principal) => panic!("token accepted as {principal:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty());
            error.code()
        }
    }
}

/// Request parts with these `Authorization` header values.
fn parts(authorization: &[&str]) -> Parts {
    let mut builder = Request::builder().uri("/api/v1/me");
    for value in authorization {
        builder = builder.header(AUTHORIZATION, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

/// A stand-in identity provider: JWKS, discovery, a key URL an attacker would
/// point `jku` at, an oversized document. Counts what it serves.
#[derive(Default)]
struct Provider {
    jwks: Mutex<Value>,
    issuer: Mutex<String>,
    failing: AtomicBool,
    jwks_hits: AtomicU64,
    attacker_hits: AtomicU64,
}

impl Provider {
    fn set_jwks(&self, document: Value) {
        *self.jwks.lock().unwrap() = document;
    }
}

async fn serve(provider: Arc<Provider>) -> String {
    async fn keys(State(p): State<Arc<Provider>>) -> axum::response::Response {
        p.jwks_hits.fetch_add(1, Ordering::SeqCst);
        if p.failing.load(Ordering::SeqCst) {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Json(p.jwks.lock().unwrap().clone()).into_response()
    }
    async fn discovery(State(p): State<Arc<Provider>>) -> Json<Value> {
        let issuer = p.issuer.lock().unwrap().clone();
        let base = issuer.trim_end_matches('/');
        Json(json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks.json")}))
    }
    async fn attacker(State(p): State<Arc<Provider>>) -> Json<Value> {
        p.attacker_hits.fetch_add(1, Ordering::SeqCst);
        Json(jwks(&[&KEYS.attacker]))
    }
    async fn huge() -> Json<Value> {
        Json(json!({"keys": [], "padding": "x".repeat(300 << 10)}))
    }
    let app = Router::new()
        .route("/jwks.json", get(keys))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/attacker.json", get(attacker))
        .route("/huge.json", get(huge))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *provider.issuer.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A verifier fetching its keys from a [`Provider`] by URL.
struct UrlFixture {
    auth: Arc<JwtAuthenticator>,
    clock: Arc<ManualClock>,
    provider: Arc<Provider>,
    base: String,
}

const TTL: Duration = Duration::from_secs(600);
const COOLDOWN: Duration = Duration::from_secs(30);

async fn url_fixture(document: Value) -> UrlFixture {
    let provider = Arc::new(Provider::default());
    provider.set_jwks(document);
    let base = serve(provider.clone()).await;
    let clock = ManualClock::starting_now();
    let config = AuthConfig {
        jwks_url: Some(format!("{base}/jwks.json")),
        jwks_ttl_secs: TTL.as_secs(),
        jwks_refetch_cooldown_secs: COOLDOWN.as_secs(),
        ..config()
    };
    let auth = JwtAuthenticator::with_clock(&config, clock.clone())
        .await
        .unwrap();
    UrlFixture {
        auth: Arc::new(auth),
        clock,
        provider,
        base,
    }
}

/// Verifies `tokens` concurrently.
async fn verify_all(
    auth: &Arc<JwtAuthenticator>,
    tokens: Vec<String>,
) -> Vec<Result<Principal, TokenError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let auth = auth.clone();
        tasks.spawn(async move { auth.verify(&token).await });
    }
    tasks.join_all().await
}

// ------------------------------------------------------------------ accepting

#[tokio::test]
async fn accepts_valid_tokens_of_every_key_type() {
    let f = standard_fixture().await;
    let k = &*KEYS;
    assert_eq!(f.auth.keys().len(), 3, "the oct key is skipped");
    for key in [&k.rsa, &k.ec, &k.ed] {
        let principal = f.auth.verify(&sign(key, &claims(json!({})))).await;
        assert_eq!(
            principal,
            Ok(Principal {
                sub: "alice".into(),
                roles: vec![Role::User]
            }),
            "{}",
            key.kid
        );
    }
    // An audience list that includes ours; a token without `kid` when one key fits.
    let token = sign(&k.rsa, &claims(json!({"aud": ["other", AUDIENCE]})));
    assert!(f.auth.verify(&token).await.is_ok());
    let token = sign_as(&k.ec, k.ec.alg, None, &claims(json!({})));
    assert!(f.auth.verify(&token).await.is_ok());
}

#[tokio::test]
async fn the_authenticator_answers_through_the_hook() {
    let f = standard_fixture().await;
    let token = sign(&KEYS.rsa, &claims(json!({"roles": ["admin"]})));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let principal = f
            .auth
            .authenticate(&parts(&[&format!("{scheme} {token}")]))
            .await
            .unwrap();
        assert_eq!(
            principal.roles,
            Role::ALL.to_vec(),
            "admin implies the others"
        );
    }

    // How these become 401 answers (status, `WWW-Authenticate`) is tested with
    // the mapping, in `server::auth`.
    let error = f.auth.authenticate(&parts(&[])).await.unwrap_err();
    assert_eq!(error, TokenError::MissingToken);

    for bad in [
        format!("Basic {token}"),
        format!("Token {token}"),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
        token.clone(),
    ] {
        let error = f.auth.authenticate(&parts(&[&bad])).await.unwrap_err();
        assert_eq!(error.code(), "invalid_authorization", "{bad}");
    }
    let twice = format!("Bearer {token}");
    let error = f
        .auth
        .authenticate(&parts(&[&twice, &twice]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_authorization");

    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    );
    let mut request = parts(&[]);
    request.headers = headers;
    let error = f.auth.authenticate(&request).await.unwrap_err();
    assert_eq!(error.code(), "invalid_authorization");

    let huge = format!("Bearer {}", "a".repeat(100_000));
    let error = f.auth.authenticate(&parts(&[&huge])).await.unwrap_err();
    assert_eq!(error.code(), "token_too_large");
    assert_eq!(f.auth.signature_checks(), 1, "one token, checked once");
}

// ------------------------------------------------------------------ attacks

#[tokio::test]
async fn attack_matrix() {
    let f = standard_fixture().await;
    let k = &*KEYS;
    let valid = claims(json!({}));
    let rs256 = jsonwebtoken::Algorithm::RS256;
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let forged_hs256 = |secret: &[u8], kid: &str| {
        let key = EncodingKey::from_secret(secret).unwrap();
        jsonwebtoken::encode(&header(hs256, Some(kid)), &valid, &key).unwrap()
    };
    let good = sign(&k.rsa, &valid);
    let (good_header, good_claims) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let good_signature = good.rsplit('.').next().unwrap().to_owned();
    let tampered_claims = b64(claims(json!({"roles": ["admin"]})).to_string().as_bytes());
    let no_aud = claims(json!({"aud": null}));

    let mut cases: Vec<(&str, String, &str)> = vec![
        // Signatures.
        (
            "signed by another key under our kid",
            sign_as(&k.attacker, rs256, Some("rsa-1"), &valid),
            "bad_signature",
        ),
        (
            "claims changed after signing",
            format!("{good_header}.{tampered_claims}.{good_signature}"),
            "bad_signature",
        ),
        (
            "signature of another token",
            {
                let other = sign(&k.rsa, &claims(json!({"sub": "mallory"})));
                format!(
                    "{good_header}.{good_claims}.{}",
                    other.rsplit('.').next().unwrap()
                )
            },
            "bad_signature",
        ),
        (
            "empty signature",
            format!("{good_header}.{good_claims}."),
            "bad_signature",
        ),
        // HS256 "signed" with the RSA public key, in every encoding a forger would try.
        (
            "HS256 with the RSA public key as PEM",
            forged_hs256(k.rsa_public.pem.as_bytes(), "rsa-1"),
            "algorithm_not_allowed",
        ),
        (
            "HS256 with the RSA public key as SPKI DER",
            forged_hs256(&k.rsa_public.spki_der, "rsa-1"),
            "algorithm_not_allowed",
        ),
        (
            "HS256 with the RSA public key as PKCS#1 DER",
            forged_hs256(&k.rsa_public.pkcs1_der, "rsa-1"),
            "algorithm_not_allowed",
        ),
        (
            "HS256 with the raw RSA modulus",
            forged_hs256(&k.rsa_public.modulus, "rsa-1"),
            "algorithm_not_allowed",
        ),
        (
            "HS256 without kid",
            {
                let key = EncodingKey::from_secret(k.rsa_public.pem.as_bytes()).unwrap();
                jsonwebtoken::encode(&header(hs256, None), &valid, &key).unwrap()
            },
            "algorithm_not_allowed",
        ),
        // Key type confusion.
        (
            "ES256 header naming the RSA key",
            sign_as(&k.ec, jsonwebtoken::Algorithm::ES256, Some("rsa-1"), &valid),
            "key_mismatch",
        ),
        (
            "RS256 header naming the EC key",
            sign_as(&k.rsa, rs256, Some("ec-1"), &valid),
            "key_mismatch",
        ),
        (
            "EdDSA header naming the RSA key",
            sign_as(&k.ed, jsonwebtoken::Algorithm::EdDSA, Some("rsa-1"), &valid),
            "key_mismatch",
        ),
        (
            "PS256 naming a key whose JWK says RS256",
            sign_as(
                &k.rsa,
                jsonwebtoken::Algorithm::PS256,
                Some("rsa-1"),
                &valid,
            ),
            "key_mismatch",
        ),
        // The oct key in the JWKS is never used.
        (
            "HS256 signed with the JWKS's oct key",
            forged_hs256(b"a shared secret of some length", "sym"),
            "algorithm_not_allowed",
        ),
        (
            "RS256 naming the oct key",
            sign_as(&k.rsa, rs256, Some("sym"), &valid),
            "unknown_key",
        ),
        // Key ids that are not ours.
        (
            "unknown kid",
            sign_as(&k.attacker, rs256, Some("evil"), &valid),
            "unknown_key",
        ),
        (
            "kid with a path",
            sign_as(&k.rsa, rs256, Some("../../../../etc/passwd"), &valid),
            "unknown_key",
        ),
        (
            "kid with SQL",
            sign_as(&k.rsa, rs256, Some("x' OR '1'='1'; --"), &valid),
            "unknown_key",
        ),
        (
            "kid with a NUL",
            sign_as(&k.rsa, rs256, Some("rsa-1\u{0}"), &valid),
            "unknown_key",
        ),
        // Audience.
        (
            "wrong aud",
            sign(&k.rsa, &claims(json!({"aud": "someone-else"}))),
            "wrong_audience",
        ),
        (
            "aud list without ours",
            sign(&k.rsa, &claims(json!({"aud": ["a", "b"]}))),
            "wrong_audience",
        ),
        ("missing aud", sign(&k.rsa, &no_aud), "wrong_audience"),
        (
            "aud of the wrong type",
            sign(&k.rsa, &claims(json!({"aud": 7}))),
            "wrong_audience",
        ),
        // Issuer.
        (
            "wrong iss",
            sign(&k.rsa, &claims(json!({"iss": "https://evil.example.com/"}))),
            "wrong_issuer",
        ),
        (
            "iss without the trailing slash",
            sign(
                &k.rsa,
                &claims(json!({"iss": "https://issuer.example.com"})),
            ),
            "wrong_issuer",
        ),
        (
            "iss with another case",
            sign(
                &k.rsa,
                &claims(json!({"iss": "https://ISSUER.example.com/"})),
            ),
            "wrong_issuer",
        ),
        (
            "missing iss",
            sign(&k.rsa, &claims(json!({"iss": null}))),
            "wrong_issuer",
        ),
        (
            "iss list containing ours",
            sign(&k.rsa, &claims(json!({"iss": [ISSUER, "https://evil/"]}))),
            "wrong_issuer",
        ),
        // Time.
        (
            "expired",
            sign(&k.rsa, &claims(json!({"exp": now() - 120}))),
            "token_expired",
        ),
        (
            "nbf in the future",
            sign(&k.rsa, &claims(json!({"nbf": now() + 300}))),
            "token_not_yet_valid",
        ),
        (
            "exp as a string",
            sign(&k.rsa, &claims(json!({"exp": (now() + 600).to_string()}))),
            "invalid_claim",
        ),
        (
            "nbf as a string",
            sign(&k.rsa, &claims(json!({"nbf": (now() + 300).to_string()}))),
            "invalid_claim",
        ),
        (
            "missing exp",
            sign(&k.rsa, &claims(json!({"exp": null}))),
            "invalid_claim",
        ),
        (
            "missing sub",
            sign(&k.rsa, &claims(json!({"sub": null}))),
            "invalid_claim",
        ),
        (
            "empty sub",
            sign(&k.rsa, &claims(json!({"sub": ""}))),
            "invalid_claim",
        ),
        // Shape.
        ("one part", "abc".to_owned(), "malformed_token"),
        ("two parts", "abc.def".to_owned(), "malformed_token"),
        ("four parts", format!("{good}.xyz"), "malformed_token"),
        (
            "not base64 at all",
            "!!!.###.$$$".to_owned(),
            "malformed_token",
        ),
        (
            "claims not base64",
            format!("{good_header}.%%%%.{good_signature}"),
            "malformed_token",
        ),
        (
            "signature not base64",
            format!("{good_header}.{good_claims}.@@@@"),
            "malformed_token",
        ),
        (
            "header not JSON",
            format!("{}.{good_claims}.{good_signature}", b64(b"not json")),
            "malformed_token",
        ),
        (
            "header without alg",
            raw_token(
                &json!({"typ": "JWT", "kid": "rsa-1"}),
                &valid,
                &good_signature,
            ),
            "malformed_token",
        ),
        (
            "unsupported crit header",
            raw_token(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
                &valid,
                &good_signature,
            ),
            "malformed_token",
        ),
        (
            "claims not an object",
            raw_token(
                &json!({"alg": "RS256", "kid": "rsa-1"}),
                &json!(["x"]),
                &good_signature,
            ),
            "bad_signature",
        ),
        (
            "a peer credential",
            "3f1c9a7be0d24c55a1e8f6b9c2d7e4a03f1c9a7be0d24c55a1e8f6b9c2d7e4a0".to_owned(),
            "malformed_token",
        ),
        (
            "an algorithm nobody supports",
            raw_token(
                &json!({"alg": "ES512", "kid": "ec-1"}),
                &valid,
                &good_signature,
            ),
            "algorithm_not_allowed",
        ),
    ];
    // `alg: none` in several casings, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE", "none "] {
        let header = json!({"alg": alg, "typ": "JWT"});
        cases.push((
            "alg none, no signature",
            raw_token(&header, &valid, ""),
            "algorithm_not_allowed",
        ));
        cases.push((
            "alg none, a signature",
            raw_token(&header, &valid, &good_signature),
            "algorithm_not_allowed",
        ));
        let with_kid = json!({"alg": alg, "kid": "rsa-1"});
        cases.push((
            "alg none naming our key",
            raw_token(&with_kid, &valid, ""),
            "algorithm_not_allowed",
        ));
    }
    // Other symmetric algorithms are not allowed either.
    for alg in [
        jsonwebtoken::Algorithm::HS384,
        jsonwebtoken::Algorithm::HS512,
    ] {
        let key = EncodingKey::from_secret(k.rsa_public.pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header(alg, Some("rsa-1")), &valid, &key).unwrap();
        cases.push((
            "HS384/512 with the public key",
            token,
            "algorithm_not_allowed",
        ));
    }

    let mut failures = Vec::new();
    for (name, token, expected) in &cases {
        let got = match f.auth.verify(token).await {
            Ok(_) => "accepted",
            Err(error) => error.code(),
        };
        if got != *expected {
            failures.push(format!("{name}: expected {expected}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Unknown kids never reached the source again: the file was read once at start.
    assert_eq!(f.auth.keys().loads(), 1);
}

#[tokio::test]
async fn time_claims_have_the_configured_leeway() {
    let f = standard_fixture().await;
    let k = &*KEYS;
    let accepted = [
        json!({"exp": now() - 30}),
        json!({"nbf": now() + 30}),
        json!({"exp": now() + 10, "nbf": now() - 10}),
        json!({"exp": (now() + 600) as f64 + 0.5}),
    ];
    for changes in accepted {
        let token = sign(&k.rsa, &claims(changes.clone()));
        assert!(f.auth.verify(&token).await.is_ok(), "{changes}");
    }
    let token = sign(&k.rsa, &claims(json!({"exp": now() - 61})));
    assert_eq!(code_of(&f.auth, &token).await, "token_expired");
    let token = sign(&k.rsa, &claims(json!({"nbf": now() + 61})));
    assert_eq!(code_of(&f.auth, &token).await, "token_not_yet_valid");
}

#[tokio::test]
async fn an_oversized_token_is_refused_before_any_cryptography() {
    let f = standard_fixture().await;
    let padding = "x".repeat(10_000);
    let token = sign(&KEYS.rsa, &claims(json!({"padding": padding})));
    assert!(token.len() > AuthConfig::default().max_token_bytes);
    assert_eq!(code_of(&f.auth, &token).await, "token_too_large");
    assert_eq!(f.auth.signature_checks(), 0);
    assert!(f.auth.cache().is_empty());
}

#[tokio::test]
async fn messages_name_the_problem_without_key_material() {
    let f = standard_fixture().await;
    let k = &*KEYS;
    let cases = [
        (
            sign(&k.rsa, &claims(json!({"exp": now() - 600}))),
            "expired",
        ),
        (sign(&k.rsa, &claims(json!({"aud": "x"}))), AUDIENCE),
        (sign(&k.rsa, &claims(json!({"iss": "x"}))), ISSUER),
        (
            sign_as(
                &k.rsa,
                jsonwebtoken::Algorithm::RS256,
                Some("nope"),
                &claims(json!({})),
            ),
            "\"nope\"",
        ),
        (
            raw_token(&json!({"alg": "none"}), &claims(json!({})), ""),
            "none",
        ),
    ];
    let secrets = [
        k.rsa.jwk["n"].as_str().unwrap().to_owned(),
        k.rsa_public.pem.lines().nth(1).unwrap().to_owned(),
        b64(b"a shared secret of some length"),
    ];
    for (token, expected) in cases {
        let message = f.auth.verify(&token).await.unwrap_err().to_string();
        assert!(
            message.contains(expected),
            "{message:?} should mention {expected}"
        );
        for secret in &secrets {
            assert!(!message.contains(&secret[..20]), "{message:?} leaks a key");
        }
    }
}

// ------------------------------------------------------------------ roles

fn source(claim: &[&str], format: ClaimFormat, roles: &[(&str, Role)]) -> RoleSource {
    RoleSource {
        claim: claim.iter().map(|s| (*s).to_owned()).collect(),
        format,
        roles: roles
            .iter()
            .map(|(value, role)| ((*value).to_owned(), *role))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn check_roles(sources: &[RoleSource], claims: Value, expected: &[Role]) {
    let claims = claims.as_object().unwrap();
    assert_eq!(
        roles_from_claims(claims, sources),
        expected,
        "claims {claims:?}"
    );
}

#[test]
fn role_presets_of_common_providers() {
    use ClaimFormat::*;
    use Role::*;
    let auth0 = [source(
        &["permissions"],
        Array,
        &[
            ("post:reports", User),
            ("collect:batches", Scientist),
            ("manage:all", Admin),
        ],
    )];
    check_roles(
        &auth0,
        json!({"permissions": ["post:reports", "read:other"]}),
        &[User],
    );
    check_roles(
        &auth0,
        json!({"permissions": ["collect:batches", "post:reports"]}),
        &[User, Scientist],
    );
    check_roles(&auth0, json!({"permissions": ["manage:all"]}), &Role::ALL);

    let keycloak = [source(
        &["realm_access", "roles"],
        Array,
        &[("guardian-developer", Developer)],
    )];
    check_roles(
        &keycloak,
        json!({"realm_access": {"roles": ["offline_access", "guardian-developer"]}}),
        &[Developer],
    );
    check_roles(
        &keycloak,
        json!({"realm_access": ["guardian-developer"]}),
        &[],
    );
    check_roles(&keycloak, json!({"roles": ["guardian-developer"]}), &[]);

    let entra = [source(
        &["roles"],
        Array,
        &[("Guardian.Scientist", Scientist)],
    )];
    check_roles(
        &entra,
        json!({"roles": ["Guardian.Scientist"]}),
        &[Scientist],
    );
    check_roles(&entra, json!({"roles": ["guardian.scientist"]}), &[]);

    let cognito = [source(
        &["cognito:groups"],
        Array,
        &[("users", User), ("admins", Admin)],
    )];
    check_roles(&cognito, json!({"cognito:groups": ["users"]}), &[User]);
    check_roles(&cognito, json!({"cognito:groups": ["admins"]}), &Role::ALL);

    let scope = [source(
        &["scope"],
        SpaceDelimited,
        &[("guardian:report", User), ("guardian:collect", Scientist)],
    )];
    check_roles(
        &scope,
        json!({"scope": "openid profile guardian:report  guardian:collect"}),
        &[User, Scientist],
    );
    check_roles(&scope, json!({"scope": ["guardian:report"]}), &[]);

    let namespaced = [source(
        &["https://example.com/roles"],
        Array,
        &[("dev", Developer)],
    )];
    check_roles(
        &namespaced,
        json!({"https://example.com/roles": ["dev"]}),
        &[Developer],
    );
    check_roles(
        &namespaced,
        json!({"https:": {"example.com": {"roles": ["dev"]}}}),
        &[],
    );

    let zitadel = [source(
        &["urn:zitadel:iam:org:project:roles"],
        ObjectKeys,
        &[("scientist", Scientist)],
    )];
    check_roles(
        &zitadel,
        json!({"urn:zitadel:iam:org:project:roles": {"scientist": {"123": "org.example"}, "other": {}}}),
        &[Scientist],
    );

    let single = [source(&["role"], String, &[("dev", Developer)])];
    check_roles(&single, json!({"role": "dev"}), &[Developer]);
    check_roles(&single, json!({"role": "dev admin"}), &[]);

    // Sources are united; unknown values and shapes are ignored; nothing means no role.
    let both = [auth0[0].clone(), scope[0].clone()];
    check_roles(
        &both,
        json!({"permissions": ["post:reports"], "scope": "guardian:collect"}),
        &[User, Scientist],
    );
    check_roles(
        &both,
        json!({"permissions": "post:reports", "scope": 3}),
        &[],
    );
    check_roles(&both, json!({}), &[]);

    // The default: `roles`, app role names.
    let default = AuthConfig::default().role_sources;
    check_roles(
        &default,
        json!({"roles": ["scientist", "developer", "superuser"]}),
        &[Developer, Scientist],
    );
    check_roles(&default, json!({"roles": ["admin"]}), &Role::ALL);
}

#[tokio::test]
async fn a_token_without_roles_authenticates_with_none() {
    let f = standard_fixture().await;
    let token = sign(&KEYS.rsa, &claims(json!({"roles": null})));
    assert_eq!(
        f.auth.verify(&token).await.unwrap().roles,
        Vec::<Role>::new()
    );
    let token = sign(&KEYS.rsa, &claims(json!({"roles": ["root", "Admin"]})));
    assert_eq!(
        f.auth.verify(&token).await.unwrap().roles,
        Vec::<Role>::new()
    );
}

// ------------------------------------------------------------------ duplicate claims

/// A token signed by `key` over exactly these claim bytes: JSON that a `Value`
/// cannot hold, such as a key given twice.
fn sign_raw_claims(key: &TestKey, claims: &str) -> String {
    let header = serde_json::to_vec(&header(key.alg, Some(key.kid))).unwrap();
    let message = format!("{}.{}", b64(&header), b64(claims.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{message}.{signature}")
}

/// The claims of a valid token without roles, with the raw `members` put first.
fn claims_with(members: &str) -> String {
    let base = claims(json!({"roles": null})).to_string();
    format!("{{{members},{}", &base[1..])
}

#[tokio::test]
async fn a_key_given_twice_anywhere_in_the_claims_is_refused() {
    let f = standard_fixture().await;
    let k = &*KEYS;
    // Signed the same way, one `roles` is read as usual.
    let token = sign_raw_claims(&k.rsa, &claims_with(r#""roles":["admin"]"#));
    assert_eq!(f.auth.verify(&token).await.unwrap().roles, Role::ALL);
    // The same key in different objects is not a duplicate.
    let token = sign_raw_claims(
        &k.ec,
        &claims_with(r#""a":{"x":1},"b":{"x":2},"c":[{"x":1},{"x":2}]"#),
    );
    assert!(f.auth.verify(&token).await.is_ok());
    let checked = f.auth.signature_checks();

    for (members, path) in [
        // serde_json keeps the last one: this was an admin token.
        (r#""roles":["user"],"roles":["admin"]"#, "roles"),
        (r#""roles":["admin"],"roles":["user"]"#, "roles"),
        // Escapes spell the same key.
        (r#""roles":["user"],"roles":["admin"]"#, "roles"),
        // Registered claims too (the base claims hold these already).
        (r#""sub":"mallory""#, "sub"),
        (r#""iss":"https://evil.example/""#, "iss"),
        (r#""exp":99999999999"#, "exp"),
        (r#""aud":"guardian-api""#, "aud"),
        // At any depth, in objects and in arrays.
        (
            r#""realm_access":{"roles":["user"],"roles":["admin"]}"#,
            "realm_access.roles",
        ),
        (
            r#""https://guardian.test/roles":{"a":{"b":[1,{"c":0,"c":1}]}}"#,
            "https://guardian.test/roles.a.b[1].c",
        ),
        (r#""groups":[[],[{"x":1,"x":1}]]"#, "groups[1][0].x"),
    ] {
        for key in [&k.rsa, &k.ec, &k.ed] {
            let token = sign_raw_claims(key, &claims_with(members));
            let error = f.auth.verify(&token).await.unwrap_err();
            assert_eq!(
                error,
                TokenError::DuplicateClaim(format!("{path:?}")),
                "{members}"
            );
            assert_eq!(error.code(), "duplicate_claim");
            assert!(error.to_string().contains(path), "{error}");
        }
    }
    // Refused before any signature check (and any key fetch).
    assert_eq!(f.auth.signature_checks(), checked);

    // Not JSON objects at all stay malformed tokens.
    for claims in ["[]", "1", r#"{"a":1} x"#, r#"{"a":1"#] {
        let token = sign_raw_claims(&k.rsa, claims);
        assert_eq!(
            code_of(&f.auth, &token).await,
            "malformed_token",
            "{claims}"
        );
    }
}

// ------------------------------------------------------------------ token cache

#[tokio::test]
async fn a_reused_token_skips_the_signature_check_until_it_expires() {
    let f = standard_fixture().await;
    let token = sign(&KEYS.rsa, &claims(json!({"exp": now() + 5})));
    let first = f.auth.verify(&token).await.unwrap();
    assert_eq!(f.auth.signature_checks(), 1);
    assert_eq!(f.auth.verify(&token).await.unwrap(), first);
    assert_eq!(f.auth.verify(&token).await.unwrap(), first);
    assert_eq!(f.auth.signature_checks(), 1, "answered from the cache");

    let other = sign(&KEYS.rsa, &claims(json!({"sub": "bob"})));
    assert_eq!(f.auth.verify(&other).await.unwrap().sub, "bob");
    assert_eq!(f.auth.signature_checks(), 2);

    // Past the token's exp the cache no longer answers for it.
    f.clock.advance(Duration::from_secs(6));
    let _ = f.auth.verify(&token).await;
    assert_eq!(f.auth.signature_checks(), 3);

    // Refused tokens are not cached.
    let bad = sign(&KEYS.rsa, &claims(json!({"aud": "x"})));
    for _ in 0..2 {
        assert_eq!(code_of(&f.auth, &bad).await, "wrong_audience");
    }
    assert_eq!(f.auth.signature_checks(), 5);
}

#[test]
fn the_token_cache_is_bounded_and_never_serves_past_exp() {
    let cache = TokenCache::new(3);
    let principal = |sub: &str| Principal {
        sub: sub.into(),
        roles: vec![Role::User],
    };
    let now = 1_000;
    for i in 0..10u8 {
        cache.insert([i; 32], now + 100, principal(&i.to_string()), now);
        assert!(cache.len() <= 3);
    }
    assert_eq!(cache.get(&[9; 32], now), Some(principal("9")));
    assert_eq!(cache.get(&[9; 32], now + 99), Some(principal("9")));
    assert_eq!(cache.get(&[9; 32], now + 100), None, "exp is exclusive");
    // Already expired: not stored.
    cache.insert([42; 32], now, principal("late"), now);
    assert_eq!(cache.get(&[42; 32], now - 1), None);
    // Expired entries make room before live ones are evicted.
    let cache = TokenCache::new(2);
    cache.insert([1; 32], now + 10, principal("short"), now);
    cache.insert([2; 32], now + 1000, principal("long"), now);
    cache.insert([3; 32], now + 1000, principal("new"), now + 20);
    assert_eq!(cache.get(&[2; 32], now + 20), Some(principal("long")));
    assert_eq!(cache.get(&[3; 32], now + 20), Some(principal("new")));
}

// ------------------------------------------------------------------ key sources

#[tokio::test]
async fn keys_from_a_jwks_url_and_from_discovery() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    let token = sign(&KEYS.rsa, &claims(json!({})));
    assert!(f.auth.verify(&token).await.is_ok());
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 1);

    // Discovery: the issuer is the provider's base URL.
    let config = AuthConfig {
        issuer: Some(f.base.clone()),
        ..config()
    };
    let auth = JwtAuthenticator::with_clock(&config, f.clock.clone())
        .await
        .unwrap();
    assert_eq!(auth.keys().len(), 1);
    let token = sign(&KEYS.rsa, &claims(json!({"iss": f.base})));
    assert_eq!(auth.verify(&token).await.unwrap().sub, "alice");

    // A discovery document naming another issuer is not trusted.
    *f.provider.issuer.lock().unwrap() = "https://elsewhere.example.com".to_owned();
    let keys = Keys::new(
        Source::Discovery(f.base.clone()),
        KeysOptions {
            ttl: TTL,
            cooldown: COOLDOWN,
            roots: crate::tls::ExtraRoots::default(),
        },
        f.clock.clone(),
    )
    .unwrap();
    let error = keys.load().await.unwrap_err();
    assert!(matches!(error, KeysError::Invalid { .. }), "{error}");
    assert!(error.to_string().contains("elsewhere"), "{error}");
}

#[tokio::test]
async fn header_key_hints_are_never_followed() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    let k = &*KEYS;
    let attacker_url = format!("{}/attacker.json", f.base);
    let valid = claims(json!({}));
    let hints = [
        ("jku", json!(attacker_url)),
        ("x5u", json!(attacker_url)),
        ("jwk", k.attacker.jwk.clone()),
    ];
    f.clock.advance(COOLDOWN);
    for (name, value) in hints {
        for kid in ["evil", "rsa-1"] {
            let mut header = header(jsonwebtoken::Algorithm::RS256, Some(kid));
            match name {
                "jku" => header.jku = value.as_str().map(str::to_owned),
                "x5u" => header.x5u = value.as_str().map(str::to_owned),
                _ => header.jwk = Some(serde_json::from_value(value.clone()).unwrap()),
            }
            let token = jsonwebtoken::encode(&header, &valid, &k.attacker.encoding).unwrap();
            let expected = if kid == "evil" {
                "unknown_key"
            } else {
                "bad_signature"
            };
            assert_eq!(
                code_of(&f.auth, &token).await,
                expected,
                "{name} with kid {kid}"
            );
        }
    }
    assert_eq!(f.provider.attacker_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_is_fetched_once_for_all_concurrent_callers() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    assert_eq!(f.auth.keys().loads(), 1);
    // The issuer rotates: a new key appears.
    f.provider.set_jwks(jwks(&[&KEYS.rsa, &KEYS.rotated]));
    f.clock.advance(COOLDOWN);
    let tokens = (0..16)
        .map(|i| sign(&KEYS.rotated, &claims(json!({"sub": format!("user-{i}")}))))
        .collect();
    for result in verify_all(&f.auth, tokens).await {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(f.auth.keys().loads(), 2, "one refetch for all of them");
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 2);
    assert_eq!(f.auth.keys().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_causes_one_fetch_per_cooldown() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    let flood = |round: usize| {
        (0..50)
            .map(|i| {
                let kid = format!("made-up-{round}-{i}");
                sign_as(
                    &KEYS.attacker,
                    jsonwebtoken::Algorithm::RS256,
                    Some(&kid),
                    &claims(json!({})),
                )
            })
            .collect::<Vec<_>>()
    };
    // Within the cooldown of the initial load: no fetch at all.
    for result in verify_all(&f.auth, flood(0)).await {
        assert_eq!(result.unwrap_err().code(), "unknown_key");
    }
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 1);

    // Past the cooldown: exactly one refetch for the whole flood, then none.
    f.clock.advance(COOLDOWN);
    for result in verify_all(&f.auth, flood(1)).await {
        assert_eq!(result.unwrap_err().code(), "unknown_key");
    }
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 2);
    f.clock.advance(COOLDOWN - Duration::from_secs(1));
    for result in verify_all(&f.auth, flood(2)).await {
        assert_eq!(result.unwrap_err().code(), "unknown_key");
    }
    assert_eq!(
        f.provider.jwks_hits.load(Ordering::SeqCst),
        2,
        "cooldown respected"
    );
    f.clock.advance(Duration::from_secs(1));
    let token = sign_as(
        &KEYS.attacker,
        jsonwebtoken::Algorithm::RS256,
        Some("again"),
        &claims(json!({})),
    );
    assert_eq!(code_of(&f.auth, &token).await, "unknown_key");
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 3);
    // The valid key kept working throughout.
    assert!(
        f.auth
            .verify(&sign(&KEYS.rsa, &claims(json!({}))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_cached_keys() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    f.provider.failing.store(true, Ordering::SeqCst);
    // Past the TTL the keys are stale: the reload fails, the old keys stay in use.
    f.clock.advance(TTL);
    let token = sign(&KEYS.rsa, &claims(json!({})));
    assert!(f.auth.verify(&token).await.is_ok());
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 2);
    assert_eq!(f.auth.keys().len(), 1);
    // Failed loads are not retried on every request either.
    let token = sign(&KEYS.rsa, &claims(json!({"sub": "bob"})));
    assert!(f.auth.verify(&token).await.is_ok());
    let unknown = sign(&KEYS.rotated, &claims(json!({})));
    assert_eq!(code_of(&f.auth, &unknown).await, "unknown_key");
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 2);

    // An answer without usable keys is a failure too.
    f.provider.failing.store(false, Ordering::SeqCst);
    f.provider
        .set_jwks(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]}));
    f.clock.advance(COOLDOWN);
    let token = sign(&KEYS.rsa, &claims(json!({"sub": "carol"})));
    assert!(f.auth.verify(&token).await.is_ok());
    assert_eq!(f.provider.jwks_hits.load(Ordering::SeqCst), 3);
    assert_eq!(f.auth.keys().len(), 1);

    // Once the issuer answers again, the rotation is picked up.
    f.provider.set_jwks(jwks(&[&KEYS.rotated]));
    f.clock.advance(COOLDOWN);
    assert!(f.auth.verify(&unknown).await.is_ok());
    let old = sign(&KEYS.rsa, &claims(json!({"sub": "dave"})));
    assert_eq!(code_of(&f.auth, &old).await, "unknown_key");
}

#[tokio::test]
async fn an_issuer_down_at_start_answers_503_until_it_is_back() {
    let provider = Arc::new(Provider::default());
    provider.failing.store(true, Ordering::SeqCst);
    provider.set_jwks(jwks(&[&KEYS.rsa]));
    let base = serve(provider.clone()).await;
    let clock = ManualClock::starting_now();
    let config = AuthConfig {
        jwks_url: Some(format!("{base}/jwks.json")),
        ..config()
    };
    let auth = JwtAuthenticator::with_clock(&config, clock.clone())
        .await
        .unwrap();
    let token = sign(&KEYS.rsa, &claims(json!({})));
    let error = auth
        .authenticate(&parts(&[&format!("Bearer {token}")]))
        .await
        .unwrap_err();
    assert_eq!(
        (error.is_unavailable(), error.code()),
        (true, "keys_unavailable")
    );
    provider.failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(config.jwks_refetch_cooldown_secs));
    assert!(auth.verify(&token).await.is_ok());
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let f = url_fixture(jwks(&[&KEYS.rsa])).await;
    let keys = Keys::new(
        Source::Url(format!("{}/huge.json", f.base)),
        KeysOptions {
            ttl: TTL,
            cooldown: COOLDOWN,
            roots: crate::tls::ExtraRoots::default(),
        },
        f.clock.clone(),
    )
    .unwrap();
    let error = keys.load().await.unwrap_err();
    assert!(matches!(error, KeysError::TooLarge { .. }), "{error}");
}

#[test]
fn unusable_keys_are_skipped() {
    let k = &*KEYS;
    let mut enc = k.rotated.jwk.clone();
    enc["use"] = json!("enc");
    let mut sign_only = k.rotated.jwk.clone();
    sign_only["key_ops"] = json!(["sign"]);
    let mut hs_alg = k.rotated.jwk.clone();
    hs_alg["alg"] = json!("HS256");
    let mut wrong_alg = k.rotated.jwk.clone();
    wrong_alg["alg"] = json!("ES256");
    let mut small = k.rotated.jwk.clone();
    small["n"] = json!(b64(&[0xc5; 128]));
    let document = json!({"keys": [
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
        enc, sign_only, hs_alg, wrong_alg, small,
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AAAA", "y": "AAAA"},
        {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        {"kty": "XYZ", "kid": "alien"},
        "not even an object",
        k.rsa.jwk.clone(),
    ]});
    let set = KeySet::from_jwks(document.to_string().as_bytes(), "test").unwrap();
    assert_eq!(set.len(), 1);
    assert!(KeySet::from_jwks(b"{\"no\": \"keys\"}", "test").is_err());
    assert!(KeySet::from_jwks(b"<html>", "test").is_err());
}

#[tokio::test]
async fn a_pem_file_holds_keys_without_ids() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("issuer.pem");
    let private = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
    std::fs::write(&path, format!("{private}{}", KEYS.rsa_public.pem)).unwrap();
    let config = AuthConfig {
        jwks_file: Some(path.clone()),
        ..config()
    };
    let auth = JwtAuthenticator::from_config(&config).await.unwrap();
    assert_eq!(auth.keys().len(), 1, "the private key block is skipped");
    let rs256 = jsonwebtoken::Algorithm::RS256;
    for kid in [None, Some("whatever")] {
        let token = sign_as(&KEYS.rsa, rs256, kid, &claims(json!({})));
        assert!(auth.verify(&token).await.is_ok(), "kid {kid:?}");
    }
    let token = sign_as(&KEYS.attacker, rs256, None, &claims(json!({})));
    assert_eq!(code_of(&auth, &token).await, "bad_signature");
    let token = sign_as(
        &KEYS.ec,
        jsonwebtoken::Algorithm::ES256,
        None,
        &claims(json!({})),
    );
    assert_eq!(code_of(&auth, &token).await, "key_mismatch");

    // A key file without any usable key, or missing, is a configuration error.
    std::fs::write(&path, private).unwrap();
    assert!(JwtAuthenticator::from_config(&config).await.is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(JwtAuthenticator::from_config(&config).await.is_err());
}

#[tokio::test]
async fn without_kid_several_fitting_keys_are_ambiguous() {
    let f = file_fixture(jwks(&[&KEYS.rsa, &KEYS.rotated])).await;
    let token = sign_as(
        &KEYS.rsa,
        jsonwebtoken::Algorithm::RS256,
        None,
        &claims(json!({})),
    );
    assert_eq!(code_of(&f.auth, &token).await, "unknown_key");
}

// ------------------------------------------------------------------ constructor

#[tokio::test]
async fn the_constructor_follows_the_configuration() {
    let request = parts(&[]);
    let disabled = AuthConfig {
        disabled: true,
        ..AuthConfig::default()
    };
    let principal = authenticator_from_config(&disabled)
        .await
        .unwrap()
        .authenticate(&request)
        .await
        .unwrap();
    assert_eq!(principal.roles, Role::ALL.to_vec());

    let error = authenticator_from_config(&AuthConfig::default())
        .await
        .unwrap()
        .authenticate(&request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "no_key_source");
}

// ------------------------------------------------------------------ dev issuer

#[tokio::test]
async fn the_development_issuer_mints_tokens_its_servers_accept() {
    let dir = TempDir::new().unwrap();
    let issuer_dir = dir.path().join("dev-issuer");
    let issuer = DevIssuer::load_or_create(&issuer_dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = issuer_dir.join(dev_issuer::PRIVATE_KEY_FILE);
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let jwks: Value = serde_json::from_slice(&std::fs::read(issuer.jwks_path()).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], issuer.kid());
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part in the JWKS"
    );
    // Loading again (another server of the deployment) keeps the same key.
    assert_eq!(
        DevIssuer::load_or_create(&issuer_dir).unwrap().kid(),
        issuer.kid()
    );

    let config = AuthConfig {
        dev_issuer: true,
        dev_issuer_dir: issuer_dir.clone(),
        ..AuthConfig::default()
    };
    let auth = authenticator_from_config(&config).await.unwrap();
    let hour = Duration::from_secs(3600);
    for (role, expected) in [
        (Role::Scientist, vec![Role::Scientist]),
        (Role::Admin, Role::ALL.to_vec()),
    ] {
        let token = issuer.mint(role, "bob", hour).unwrap();
        let principal = auth
            .authenticate(&parts(&[&format!("Bearer {token}")]))
            .await
            .unwrap();
        assert_eq!(
            principal,
            Principal {
                sub: "bob".into(),
                roles: expected
            }
        );
    }
    // A token of a real issuer's shape, signed elsewhere, is still refused.
    let token = sign_as(
        &KEYS.rsa,
        jsonwebtoken::Algorithm::RS256,
        Some(issuer.kid()),
        &claims(json!({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE})),
    );
    let error = auth
        .authenticate(&parts(&[&format!("Bearer {token}")]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "bad_signature");
}

#[tokio::test]
async fn servers_starting_together_share_one_development_key() {
    let dir = TempDir::new().unwrap();
    let issuer_dir = dir.path().join("dev-issuer");
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let dir = issuer_dir.clone();
            tokio::task::spawn_blocking(move || DevIssuer::load_or_create(&dir).unwrap())
        })
        .collect();
    let mut kids = Vec::new();
    for task in tasks {
        kids.push(task.await.unwrap().kid().to_owned());
    }
    kids.dedup();
    assert_eq!(kids.len(), 1, "{kids:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&issuer_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.') || name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ------------------------------------------------------------------ peer credential

#[tokio::test]
async fn the_peer_credential_and_user_tokens_are_not_interchangeable() {
    let secret = "0123456789abcdef0123456789abcdef-peer";
    let peer = PeerAuth::new(Some(secret));
    let headers = |value: &str| parts(&[value]).headers;
    assert!(peer.check(&headers(&format!("Bearer {secret}"))).is_ok());

    let cases = [
        (format!("Bearer {secret}x"), "bad_peer_credential"),
        (
            format!("Bearer {}", &secret[..secret.len() - 1]),
            "bad_peer_credential",
        ),
        (
            format!(
                "Bearer {}",
                sign(&KEYS.rsa, &claims(json!({"roles": ["admin"]})))
            ),
            "bad_peer_credential",
        ),
        (format!("Basic {secret}"), "invalid_authorization"),
    ];
    for (value, code) in cases {
        let error = peer.check(&headers(&value)).unwrap_err();
        assert_eq!(
            (error.is_unavailable(), error.code()),
            (false, code),
            "{value}"
        );
    }
    assert_eq!(
        peer.check(&parts(&[]).headers).unwrap_err().code(),
        "missing_token"
    );
    // Unconfigured, the transport credential is not asked for: the signature is.
    let unconfigured = PeerAuth::new(None);
    assert!(unconfigured.check(&parts(&[]).headers).is_ok());

    // The user routes refuse the peer credential.
    let f = standard_fixture().await;
    let error = f
        .auth
        .authenticate(&parts(&[&format!("Bearer {secret}")]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "malformed_token");
    assert_eq!(f.auth.signature_checks(), 0);
}

#[test]
fn the_peer_credential_comes_from_the_configuration() {
    let dir = TempDir::new().unwrap();
    let secret = "fedcba9876543210fedcba9876543210";
    let path = dir.path().join("peer-token");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let bearer = parts(&[&format!("Bearer {secret}")]).headers;

    let from_file = AuthConfig {
        peer_token_file: Some(path.clone()),
        ..AuthConfig::default()
    };
    assert!(
        PeerAuth::from_config(&from_file)
            .unwrap()
            .check(&bearer)
            .is_ok()
    );
    let inline = AuthConfig {
        peer_token: Some(Secret::new(secret)),
        ..AuthConfig::default()
    };
    assert!(
        PeerAuth::from_config(&inline)
            .unwrap()
            .check(&bearer)
            .is_ok()
    );
    assert!(
        !PeerAuth::from_config(&AuthConfig::default())
            .unwrap()
            .is_configured()
    );

    std::fs::write(&path, "short\n").unwrap();
    assert!(PeerAuth::from_config(&from_file).is_err());
    let missing = AuthConfig {
        peer_token_file: Some(dir.path().join("absent")),
        ..AuthConfig::default()
    };
    assert!(PeerAuth::from_config(&missing).is_err());
}
