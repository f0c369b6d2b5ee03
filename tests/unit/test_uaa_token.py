"""UAA token checks (copilot.uaa_token) against tokens signed independently (cryptography, devtools.uaa):
signature, algorithm, issuer, expiry, scope; and the public keys read from PEM as BOSH variables give them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from copilot.uaa_token import NOT_AUTHORIZED, TokenError, TokenValidator, load_public_keys
from devtools.certs import make_ca
from devtools.uaa import TestUAA

ISSUER = "https://uaa.sys.example.com/oauth/token"
READ = "routing.router_groups.read"


@pytest.fixture(scope="module")
def uaa() -> TestUAA:
    return TestUAA(ISSUER)


@pytest.fixture(scope="module")
def validator(uaa: TestUAA) -> TokenValidator:
    return TokenValidator(load_public_keys(uaa.public_key_pem), ISSUER)


def _reason(validator: TokenValidator, authorization: str | None, scope: str = READ) -> str:
    with pytest.raises(TokenError) as error:
        validator.check(authorization, scope)
    return str(error.value)


def test_a_good_token_with_the_scope_is_accepted_in_any_case_of_bearer(uaa: TestUAA, validator: TokenValidator) -> None:
    token = uaa.token([READ, "openid"])
    for scheme in ("bearer", "Bearer", "BEARER"):
        assert validator.check(f"{scheme} {token}", READ)["client_id"] == "cc_routing"


@pytest.mark.parametrize("algorithm", ["RS384", "RS512"])
def test_other_rsa_algorithms_uaa_may_sign_with(uaa: TestUAA, validator: TokenValidator, algorithm: str) -> None:
    assert validator.check(uaa.authorization([READ], algorithm=algorithm), READ)


def test_missing_scope_is_not_authorized(uaa: TestUAA, validator: TokenValidator) -> None:
    assert _reason(validator, uaa.authorization(["routing.routes.read"])) == NOT_AUTHORIZED
    assert _reason(validator, uaa.authorization([READ]), "routing.router_groups.write") == NOT_AUTHORIZED
    # A scope is matched whole, and only in `scope` (not `authorities` or `aud`).
    assert _reason(validator, uaa.authorization(["routing.router_groups"])) == NOT_AUTHORIZED
    assert _reason(validator, uaa.authorization([], extra_claims={"authorities": [READ]})) == NOT_AUTHORIZED
    assert _reason(validator, uaa.authorization([], extra_claims={"scope": READ})) == NOT_AUTHORIZED  # not a list


def test_a_token_signed_by_another_key_is_refused(validator: TokenValidator) -> None:
    assert _reason(validator, TestUAA(ISSUER).authorization([READ])) == "Token signature is invalid"


def test_a_tampered_token_is_refused(uaa: TestUAA, validator: TokenValidator) -> None:
    header, claims, signature = uaa.token(["openid"]).split(".")
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    decoded["scope"] = [READ]
    forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    assert _reason(validator, f"bearer {header}.{forged}.{signature}") == "Token signature is invalid"
    assert _reason(validator, f"bearer {header}.{claims}.{signature[:-4]}") == "Token signature is invalid"


def test_the_wrong_issuer_is_refused(uaa: TestUAA, validator: TokenValidator) -> None:
    token = uaa.authorization([READ], issuer="https://uaa.other.example.com/oauth/token")
    assert _reason(validator, token) == "Token has an invalid issuer"
    assert _reason(validator, uaa.authorization([READ], extra_claims={"iss": None})) == "Token has an invalid issuer"


def test_an_expired_token_is_refused_after_the_clock_skew(uaa: TestUAA, validator: TokenValidator) -> None:
    assert _reason(validator, uaa.authorization([READ], expires_in=-3600)) == "Token is expired"
    assert validator.check(uaa.authorization([READ], expires_in=-10), READ)  # within the 60 s skew
    assert _reason(validator, uaa.authorization([READ], extra_claims={"exp": None})) == "Token has no expiry (exp)"
    later = TokenValidator(load_public_keys(uaa.public_key_pem), ISSUER, clock=lambda: time.time() + 7200)
    assert _reason(later, uaa.authorization([READ])) == "Token is expired"


def test_a_token_not_valid_yet_is_refused(uaa: TestUAA, validator: TokenValidator) -> None:
    assert _reason(validator, uaa.authorization([READ], extra_claims={"nbf": time.time() + 600})) == "Token is not valid yet"


@pytest.mark.parametrize("algorithm", ["none", "HS256", "ES256", "PS256", None])
def test_only_rsa_pkcs1_algorithms_are_accepted(uaa: TestUAA, validator: TokenValidator, algorithm) -> None:
    token = uaa.token([READ], header={"alg": algorithm})  # RS256-signed, but the header claims another algorithm
    assert "unsupported algorithm" in _reason(validator, f"bearer {token}")
    head, claims, _ = token.split(".")
    assert "unsupported algorithm" in _reason(validator, f"bearer {head}.{claims}.")


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "No token in the Authorization header"),
        ("", "No token in the Authorization header"),
        ("bearer", "The Authorization header must be 'bearer <token>'"),
        ("Basic dXNlcjpwYXNz", "The Authorization header must be 'bearer <token>'"),
        ("bearer a.b", "Token is malformed: not a JWT"),
        ("bearer !!!.e30.sig", "Token is malformed: the header is not base64url"),
        ("bearer e30.e30.", "Token is signed with an unsupported algorithm 'None'"),
        ("bearer W10.e30.", "Token is malformed: the header is not a JSON object"),
        ("bearer bm90IGpzb24.e30.", "Token is malformed: the header is not JSON"),
    ],
)
def test_malformed_authorization(validator: TokenValidator, authorization, reason: str) -> None:
    assert _reason(validator, authorization) == reason


def test_several_keys_any_of_them_verifies(uaa: TestUAA) -> None:
    other = TestUAA(ISSUER, key_id="key-2")
    validator = TokenValidator(load_public_keys(uaa.public_key_pem + other.public_key_pem), ISSUER)
    assert validator.check(uaa.authorization([READ]), READ)
    assert validator.check(other.authorization([READ]), READ)
    with pytest.raises(ValueError):
        TokenValidator((), ISSUER)


def test_public_keys_from_the_pem_forms_bosh_variables_have(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    spki = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    ca = make_ca(tmp_path, "uaa_jwt_signing_cert")  # a `certificate` variable: its key is used as given
    cert_numbers = x509.load_pem_x509_certificate(ca.cert_pem).public_key().public_numbers()  # type: ignore[union-attr]
    keys = load_public_keys((spki + pkcs1).decode() + "\n" + ca.cert_pem.decode())
    assert [(k.n, k.e) for k in keys] == [(numbers.n, numbers.e)] * 2 + [(cert_numbers.n, cert_numbers.e)]


def test_what_is_not_a_usable_public_key_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    with pytest.raises(ValueError, match="never its private key"):
        load_public_keys(private)
    with pytest.raises(ValueError, match="no PEM block"):
        load_public_keys("ssh-rsa AAAA")
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(ValueError, match="1024-bit RSA key; at least 2048"):
        load_public_keys(short.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_pem = ec_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ValueError, match="not an RSA key"):
        load_public_keys(ec_pem)
    with pytest.raises(ValueError, match="not base64"):
        load_public_keys("-----BEGIN PUBLIC KEY-----\n***\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="PEM block 1"):
        load_public_keys("-----BEGIN PUBLIC KEY-----\nMAMCAQE=\n-----END PUBLIC KEY-----\n")
