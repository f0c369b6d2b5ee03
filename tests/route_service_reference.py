"""The tests' own implementation of gorouter's route service signature, written from the protocol's
description (../shared/reference/route-services.md), never from the router's code: the tests check the
router against it both ways (the router's signatures open here; signatures made here pass the router).

    key       = PBKDF2-HMAC-SHA256(secret, salt b"", 100001 iterations, 16 bytes)   -> AES-128-GCM
    plaintext = {"forwarded_url":"<url>","requested_time":"<RFC 3339>"}   (Go's JSON encoding)
    signature = urlsafe_b64(ciphertext || tag), padded;  metadata = urlsafe_b64({"nonce": std_b64(nonce)})
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _aead(secret: str) -> AESGCM:
    return AESGCM(hashlib.pbkdf2_hmac("sha256", secret.encode("utf-8"), b"", 100001, dklen=16))


def _go_time(moment: datetime.datetime) -> str:
    text = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def seal(secret: str, forwarded_url: str, requested: datetime.datetime | None = None) -> tuple[str, str]:
    """(X-CF-Proxy-Signature, X-CF-Proxy-Metadata) as a gorouter sharing `secret` makes them."""
    moment = requested or datetime.datetime.now(datetime.UTC)
    body = json.dumps({"forwarded_url": forwarded_url, "requested_time": _go_time(moment)}, separators=(",", ":"))
    body = body.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    nonce = secrets.token_bytes(12)
    sealed = _aead(secret).encrypt(nonce, body.encode(), None)
    metadata = json.dumps({"nonce": base64.standard_b64encode(nonce).decode()})
    return base64.urlsafe_b64encode(sealed).decode(), base64.urlsafe_b64encode(metadata.encode()).decode()


def open_signature(secret: str, signature: str, metadata: str) -> dict:
    """The JSON a signature holds, with `requested_time` as an aware datetime; raises on any fault."""
    assert len(signature) % 4 == 0 and len(metadata) % 4 == 0, "padded base64 expected"
    nonce = base64.standard_b64decode(json.loads(base64.urlsafe_b64decode(metadata))["nonce"])
    assert len(nonce) == 12
    contents = json.loads(_aead(secret).decrypt(nonce, base64.urlsafe_b64decode(signature), None))
    assert set(contents) == {"forwarded_url", "requested_time"}, contents
    stamp = contents["requested_time"]  # RFC 3339; the router's zone is UTC
    assert stamp.endswith("Z"), stamp
    whole, _, fraction = stamp[:-1].partition(".")
    assert len(fraction) <= 9, stamp
    moment = datetime.datetime.fromisoformat(whole + "." + fraction[:6].ljust(6, "0")).replace(tzinfo=datetime.UTC)
    return {**contents, "requested_time": moment}
