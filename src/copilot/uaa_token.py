"""UAA access tokens as routing-api checks them: `Authorization: bearer <JWT>`, the signature made with
one of UAA's signing keys, the issuer UAA's, not expired, and the required scope in the `scope` claim.

Only what verification needs, with the standard library (the copilot package vendors no crypto
library): RSA PKCS#1 v1.5 signatures (RS256, RS384, RS512, what UAA signs with) checked by encoding the
expected block and comparing it whole (RFC 8017 8.2.2, no parsing of the signed block), and public
keys read from PEM: `PUBLIC KEY` (what a BOSH `rsa` variable's `public_key` is), `RSA PUBLIC KEY`, or a
`CERTIFICATE` (what a BOSH `certificate` variable is, e.g. cf-deployment's `uaa_jwt_signing_cert`),
whose key is used as given: the certificate itself is not checked, it is configuration.

Any other algorithm (`none`, HMAC, EC) is refused: a token is only accepted on an RSA signature by a
configured key. A token without a key id is tried against every key; UAA's `kid` is not needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

NOT_AUTHORIZED = "You are not authorized to perform the requested action"
# Tokens are accepted up to this long after their `exp` (and before their `nbf`): clock skew between
# UAA and Copilot, as common JWT libraries allow.
CLOCK_SKEW_SECONDS = 60.0
MIN_KEY_BITS = 2048
MAX_TOKEN_BYTES = 64 * 1024

# DER DigestInfo prefixes of EMSA-PKCS1-v1_5 (RFC 8017 9.2, note 1), by JWS algorithm.
_ALGORITHMS: dict[str, tuple[str, bytes]] = {
    "RS256": ("sha256", bytes.fromhex("3031300d060960864801650304020105000420")),
    "RS384": ("sha384", bytes.fromhex("3041300d060960864801650304020205000430")),
    "RS512": ("sha512", bytes.fromhex("3051300d060960864801650304020305000440")),
}
_RSA_ENCRYPTION_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_PEM_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_SEQUENCE, _INTEGER, _BIT_STRING, _OID, _VERSION = 0x30, 0x02, 0x03, 0x06, 0xA0


class TokenError(Exception):
    """The request is not authorized; the message says why (it is sent to the client)."""


@dataclass(frozen=True)
class RSAPublicKey:
    n: int
    e: int

    @property
    def bits(self) -> int:
        return self.n.bit_length()

    def verify(self, algorithm: str, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's RSASSA-PKCS1-v1_5 signature of `message` with `algorithm`."""
        hash_name, prefix = _ALGORITHMS[algorithm]
        size = (self.n.bit_length() + 7) // 8
        if len(signature) != size:
            return False
        s = int.from_bytes(signature, "big")
        if s >= self.n:
            return False
        encoded = pow(s, self.e, self.n).to_bytes(size, "big")
        digest_info = prefix + hashlib.new(hash_name, message).digest()
        if size < len(digest_info) + 11:
            return False
        expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
        return hmac.compare_digest(encoded, expected)


def load_public_keys(pem_text: str) -> tuple[RSAPublicKey, ...]:
    """Every RSA public key in a PEM text (public keys, PKCS#1 public keys, certificates). Raises
    ValueError naming what is wrong: no PEM block, a private key, a non-RSA or short key, bad DER."""
    keys = []
    blocks = _PEM_RE.findall(pem_text)
    if not blocks:
        raise ValueError("no PEM block (-----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----)")
    for index, (label, body) in enumerate(blocks):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"PEM block {index + 1} ({label}) is not base64") from None
        try:
            if label == "PUBLIC KEY":
                key = _spki(der)
            elif label == "RSA PUBLIC KEY":
                key = _rsa_public_key(der)
            elif label == "CERTIFICATE":
                key = _certificate_key(der)
            else:
                raise ValueError(f"a {label} is not a public key or certificate" + (
                    " (give UAA's public key, never its private key)" if "PRIVATE" in label else ""))
        except (IndexError, ValueError) as error:
            raise ValueError(f"PEM block {index + 1} ({label}): {error or 'malformed DER'}") from None
        if key.bits < MIN_KEY_BITS:
            raise ValueError(f"PEM block {index + 1} ({label}): a {key.bits}-bit RSA key; at least {MIN_KEY_BITS} bits")
        if key.e < 3 or key.e % 2 == 0:
            raise ValueError(f"PEM block {index + 1} ({label}): {key.e} is not a usable RSA public exponent")
        keys.append(key)
    return tuple(keys)


class TokenValidator:
    """Checks `Authorization` header values against UAA's keys and issuer."""

    def __init__(self, keys: Sequence[RSAPublicKey], issuer: str, *, clock: Callable[[], float] = time.time) -> None:
        if not keys:
            raise ValueError("at least one verification key is needed")
        self._keys = tuple(keys)
        self._issuer = issuer
        self._clock = clock

    def check(self, authorization: str | None, scope: str) -> dict:
        """The token's claims if `authorization` is `bearer <token>` with a valid token holding `scope`;
        raises TokenError otherwise."""
        claims = self.claims(authorization)
        scopes = claims.get("scope")
        if not isinstance(scopes, list) or scope not in scopes:
            raise TokenError(NOT_AUTHORIZED)
        return claims

    def claims(self, authorization: str | None) -> dict:
        if not authorization:
            raise TokenError("No token in the Authorization header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenError("The Authorization header must be 'bearer <token>'")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("Token is too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("Token is malformed: not a JWT")
        header = _json_segment(parts[0], "header")
        algorithm = header.get("alg")
        if algorithm not in _ALGORITHMS:
            raise TokenError(f"Token is signed with an unsupported algorithm {str(algorithm)[:20]!r}")
        signature = _b64url(parts[2], "signature")
        signed = f"{parts[0]}.{parts[1]}".encode()
        if not any(key.verify(algorithm, signed, signature) for key in self._keys):
            raise TokenError("Token signature is invalid")
        claims = _json_segment(parts[1], "claims")
        now = self._clock()
        expiry = claims.get("exp")
        if isinstance(expiry, bool) or not isinstance(expiry, int | float):
            raise TokenError("Token has no expiry (exp)")
        if now > expiry + CLOCK_SKEW_SECONDS:
            raise TokenError("Token is expired")
        not_before = claims.get("nbf")
        if isinstance(not_before, int | float) and not isinstance(not_before, bool) and now + CLOCK_SKEW_SECONDS < not_before:
            raise TokenError("Token is not valid yet")
        if claims.get("iss") != self._issuer:
            raise TokenError("Token has an invalid issuer")
        return claims


def _b64url(segment: str, what: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment):
        raise TokenError(f"Token is malformed: the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"Token is malformed: the {what} is not base64url") from None


def _json_segment(segment: str, what: str) -> dict:
    try:
        value = json.loads(_b64url(segment, what))
    except (ValueError, RecursionError):
        raise TokenError(f"Token is malformed: the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"Token is malformed: the {what} is not a JSON object")
    return value


# ---------------------------------------------------------------- DER, only as far as keys need it


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `offset`: its value is data[start:end]."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, offset, value start, value end) of each element in data[start:end]."""
    items = []
    while start < end:
        tag, value_start, value_end = _tlv(data, start)
        items.append((tag, start, value_start, value_end))
        start = value_end
    if start != end:
        raise ValueError("malformed DER")
    return items


def _expect(data: bytes, offset: int, tag: int) -> tuple[int, int]:
    found, start, end = _tlv(data, offset)
    if found != tag:
        raise ValueError(f"expected DER tag {tag:#x}, found {found:#x}")
    return start, end


def _rsa_public_key(der: bytes, offset: int = 0) -> RSAPublicKey:
    """RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }"""
    start, end = _expect(der, offset, _SEQUENCE)
    items = _children(der, start, end)
    if len(items) != 2 or any(item[0] != _INTEGER for item in items):
        raise ValueError("not an RSA public key")
    n, e = (_unsigned(der[s:t]) for _, _, s, t in items)
    return RSAPublicKey(n, e)


def _unsigned(value: bytes) -> int:
    if not value or value[0] & 0x80:
        raise ValueError("negative or empty DER INTEGER")
    return int.from_bytes(value, "big")


def _spki(der: bytes, offset: int = 0) -> RSAPublicKey:
    """SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }"""
    start, end = _expect(der, offset, _SEQUENCE)
    items = _children(der, start, end)
    if len(items) != 2 or items[0][0] != _SEQUENCE or items[1][0] != _BIT_STRING:
        raise ValueError("not a SubjectPublicKeyInfo")
    algorithm = _children(der, items[0][2], items[0][3])
    if not algorithm or algorithm[0][0] != _OID or der[algorithm[0][2]:algorithm[0][3]] != _RSA_ENCRYPTION_OID:
        raise ValueError("not an RSA key")
    _, _, bits_start, bits_end = items[1]
    if bits_end - bits_start < 2 or der[bits_start] != 0:
        raise ValueError("malformed key BIT STRING")
    if _tlv(der, bits_start + 1)[2] != bits_end:
        raise ValueError("trailing data after the RSA key")
    return _rsa_public_key(der, bits_start + 1)


def _certificate_key(der: bytes) -> RSAPublicKey:
    """Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
    issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }"""
    start, end = _expect(der, 0, _SEQUENCE)
    items = _children(der, start, end)
    if not items or items[0][0] != _SEQUENCE:
        raise ValueError("not a certificate")
    fields = _children(der, items[0][2], items[0][3])
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("not a certificate")
    return _spki(der, fields[5][1])
