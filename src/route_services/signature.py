"""Route service signatures as gorouter makes and checks them, so route services and gorouters of the
same foundation interoperate with this router (docs/gorouter-parity.md, "Route services").

- key: PBKDF2-HMAC-SHA256 of the secret, empty salt, 100001 iterations, 16 bytes -> AES-128-GCM;
- plaintext: the JSON gorouter's Go encoder writes, `{"forwarded_url":..,"requested_time":..}`, the time
  in RFC 3339 with up to nine fraction digits;
- X-CF-Proxy-Signature: URL-safe base64 (padded) of ciphertext || tag, with a random 12-byte nonce and
  no additional data;
- X-CF-Proxy-Metadata: URL-safe base64 (padded) of `{"nonce":"<standard base64 of the nonce>"}`.

Deriving a key costs 100001 hash rounds: keys are derived once, when `RouteServiceKeys` is made.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PBKDF2_ITERATIONS = 100_001
KEY_BYTES = 16
NONCE_BYTES = 12
EXPIRED_MESSAGE = "route service request expired"

_URLSAFE_B64 = re.compile(r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?$")
_STD_B64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
# What Go's encoding/json escapes beyond what JSON requires (HTML-safe output).
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class SignatureError(ValueError):
    """The signature or its metadata is missing, malformed, or not one of ours."""


class SignatureExpired(SignatureError):
    """A valid signature older than the route service timeout."""

    def __init__(self) -> None:
        super().__init__(EXPIRED_MESSAGE)


@dataclass(frozen=True)
class SignatureContents:
    forwarded_url: str
    requested_time_ns: int  # nanoseconds since the epoch


def derive_key(secret: str) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), b"", PBKDF2_ITERATIONS, KEY_BYTES)


def go_json_string(value: str) -> str:
    """A JSON string literal as Go's encoding/json writes it (UTF-8 kept, <, >, & and U+2028/9 escaped)."""
    out = json.dumps(value, ensure_ascii=False)
    return "".join(_GO_ESCAPES.get(ch, ch) for ch in out)


def format_rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped, no fraction when it is zero."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to nine fraction digits."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise SignatureError(f"requested_time {text[:64]!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = int((match.group(7) or "").ljust(9, "0"))
    offset = 0
    if match.group(9):
        offset = (int(match.group(10)) * 60 + int(match.group(11))) * 60
        offset = offset if match.group(9) == "+" else -offset
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        raise SignatureError(f"requested_time {text[:64]!r} is not a valid time") from None
    return (seconds - offset) * 1_000_000_000 + fraction


def plaintext(forwarded_url: str, requested_time_ns: int) -> bytes:
    return (
        '{"forwarded_url":' + go_json_string(forwarded_url)
        + ',"requested_time":' + go_json_string(format_rfc3339(requested_time_ns)) + "}"
    ).encode()


def _b64decode(value: str, what: str, *, urlsafe: bool) -> bytes:
    """Strict, padded base64 (Go's URLEncoding / StdEncoding): no stray characters, padding required."""
    if not (_URLSAFE_B64 if urlsafe else _STD_B64).fullmatch(value):
        raise SignatureError(f"illegal base64 data in {what}")
    try:
        return base64.b64decode(value, altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"illegal base64 data in {what}") from None


class _Key:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive_key(secret))

    def seal(self, nonce: bytes, data: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, None)

    def contents(self, sealed: bytes, nonce: bytes) -> SignatureContents:
        try:
            data = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise SignatureError("cipher: message authentication failed") from None
        try:
            fields = json.loads(data)
        except ValueError:
            raise SignatureError("the signature does not hold JSON") from None
        if not isinstance(fields, dict):
            raise SignatureError("the signature does not hold a JSON object")
        url, requested = fields.get("forwarded_url"), fields.get("requested_time")
        if not isinstance(url, str) or not isinstance(requested, str):
            raise SignatureError("the signature lacks forwarded_url or requested_time")
        return SignatureContents(url, parse_rfc3339(requested))


class RouteServiceKeys:
    """The router's route service keys: `secret` signs and checks, `decrypt_only` (the previous secret,
    during a rotation) only checks, after the current one failed. `timeout_seconds`: how old a signature
    may be when the route service comes back."""

    def __init__(self, secret: str, decrypt_only: str = "", timeout_seconds: float = 60.0) -> None:
        if not secret:
            raise ValueError("the route services secret is empty")
        self._current = _Key(secret)
        self._previous = _Key(decrypt_only) if decrypt_only else None
        self.timeout_ns = int(timeout_seconds * 1_000_000_000)

    def sign(self, forwarded_url: str, now_ns: int | None = None) -> tuple[str, str]:
        """(X-CF-Proxy-Signature, X-CF-Proxy-Metadata) for a request to `forwarded_url` made now."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.seal(nonce, plaintext(forwarded_url, time.time_ns() if now_ns is None else now_ns))
        metadata = '{"nonce":' + json.dumps(base64.b64encode(nonce).decode()) + "}"
        return base64.urlsafe_b64encode(sealed).decode(), base64.urlsafe_b64encode(metadata.encode()).decode()

    def verify(self, signature: str, metadata: str, now_ns: int | None = None) -> SignatureContents:
        """The contents of a signature made by this router (or one sharing its secret) that has not
        expired; raises SignatureExpired or SignatureError."""
        if not metadata:
            raise SignatureError("No metadata found")
        try:
            contents = self._contents(self._current, signature, metadata)
        except SignatureError:
            if self._previous is None:
                raise
            contents = self._contents(self._previous, signature, metadata)
        now = time.time_ns() if now_ns is None else now_ns
        if now - contents.requested_time_ns > self.timeout_ns:
            raise SignatureExpired()
        return contents

    @staticmethod
    def _contents(key: _Key, signature: str, metadata: str) -> SignatureContents:
        sealed = _b64decode(signature, "X-CF-Proxy-Signature", urlsafe=True)
        decoded = _b64decode(metadata, "X-CF-Proxy-Metadata", urlsafe=True)
        try:
            fields = json.loads(decoded)
        except ValueError:
            raise SignatureError("X-CF-Proxy-Metadata does not hold JSON") from None
        nonce_text = fields.get("nonce") if isinstance(fields, dict) else None
        if not isinstance(nonce_text, str):
            raise SignatureError("X-CF-Proxy-Metadata has no nonce")
        nonce = _b64decode(nonce_text, "the metadata's nonce", urlsafe=False)
        if len(nonce) != NONCE_BYTES:
            raise SignatureError("incorrect nonce length given to GCM")
        return key.contents(sealed, nonce)
