#!/usr/bin/env python3
"""Makes the jwt_header target's key set and seed tokens.

Writes host/src/fuzz_targets/jwks.json (public keys only: an RSA key like the
development issuer's, a P-256 key and an Ed25519 key) and the seeds in
fuzz/seeds/jwt_header/: `Authorization` header values carrying valid tokens
with the development issuer's claims (for the fixed clock of the target), and
hostile ones (alg none, HS256, ES512, wrong key type,
unknown kid, bad segments). The private keys are thrown away. Needs the
`cryptography` package; run it only to regenerate (the target's clock,
`FIXED_NOW`, must stay within the tokens' validity, and so must the real
clock), then replace
fuzz/corpus/jwt_header/ by the new seeds and run `run.sh -m 180 jwt_header`.
"""

import base64
import json
import pathlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = pathlib.Path(__file__).resolve().parent.parent
IAT = 1_700_000_000  # FIXED_NOW in host/src/fuzz_targets is IAT + 60.
# jsonwebtoken checks exp and nbf against the system clock, not the verifier's
# injected one, so valid seeds must stay valid in real time too.
EXP = 4_102_444_800  # 2100-01-01


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def segment(value) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()

rsa_pub = rsa_key.public_key().public_numbers()
ec_pub = ec_key.public_key().public_numbers()
ed_pub = ed_key.public_key().public_bytes_raw()
jwks = {
    "keys": [
        {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "dev-rsa",
         "n": uint(rsa_pub.n), "e": uint(rsa_pub.e)},
        {"kty": "EC", "use": "sig", "alg": "ES256", "kid": "p256", "crv": "P-256",
         "x": b64(ec_pub.x.to_bytes(32, "big")), "y": b64(ec_pub.y.to_bytes(32, "big"))},
        {"kty": "OKP", "use": "sig", "alg": "EdDSA", "kid": "ed25519", "crv": "Ed25519",
         "x": b64(ed_pub)},
    ]
}
(ROOT / "host/src/fuzz_targets/jwks.json").write_text(json.dumps(jwks, indent=2) + "\n")


def claims(**over):
    base = {"iss": "guardian-dev", "aud": "guardian", "sub": "alice",
            "roles": ["user"], "iat": IAT, "nbf": IAT, "exp": EXP}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(alg: str, kid, body: dict) -> str:
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{segment(header)}.{segment(body)}".encode()
    if alg == "RS256":
        sig = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        sig = rsa_key.sign(signing_input,
                           padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                           hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(ec_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "EdDSA":
        sig = ed_key.sign(signing_input)
    else:
        sig = b"not a signature"
    return f"{signing_input.decode()}.{b64(sig)}"


seeds = {
    "rs256_user": sign("RS256", "dev-rsa", claims()),
    "rs256_admin": sign("RS256", "dev-rsa", claims(roles=["admin"], sub="root")),
    "ps256_scientist": sign("PS256", "dev-rsa", claims(roles=["scientist", "developer"])),
    "es256_user": sign("ES256", "p256", claims()),
    "eddsa_user": sign("EdDSA", "ed25519", claims(aud=["other", "guardian"])),
    "rs256_no_kid": sign("RS256", None, claims()),
    "rs256_expired": sign("RS256", "dev-rsa", claims(exp=IAT - 7200, nbf=IAT - 9000)),
    "rs256_wrong_iss_list": sign("RS256", "dev-rsa", claims(iss=["guardian-dev", "x"])),
    "rs256_no_sub": sign("RS256", "dev-rsa", claims(sub=None)),
    "rs256_string_exp": sign("RS256", "dev-rsa", claims(exp=str(EXP))),
    "es256_with_rsa_kid": sign("ES256", "dev-rsa", claims()),
    "rs256_unknown_kid": sign("RS256", "nope", claims()),
    "none_alg": f"{segment({'alg': 'none'})}.{segment(claims())}.",
    "none_alg_mixed_case": f"{segment({'alg': 'nOnE', 'kid': 'dev-rsa'})}.{segment(claims())}.x",
    "hs256": sign("HS256", "dev-rsa", claims()),
    "es512": sign("ES512", "p256", claims()),
    "header_not_object": f"{b64(b'[1,2]')}.{segment(claims())}.AAAA",
    "header_jku": f"{segment({'alg': 'RS256', 'kid': 'dev-rsa', 'jku': 'http://x/'})}"
                  f".{segment(claims())}.AAAA",
    "two_parts": f"{segment({'alg': 'RS256'})}.{segment(claims())}",
}
corpus = ROOT / "fuzz/seeds/jwt_header"
corpus.mkdir(parents=True, exist_ok=True)
for name, token in seeds.items():
    (corpus / name).write_text(f"Bearer {token}")
(corpus / "lowercase_scheme").write_text(f"bearer  {seeds['rs256_user']} ")
(corpus / "basic_scheme").write_text("Basic YWxpY2U6c2VjcmV0")
