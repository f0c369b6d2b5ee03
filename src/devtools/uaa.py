"""A stand-in for UAA's token signing, for tests: RS256 JWTs shaped like UAA's access tokens (`iss`,
`exp`, `iat`, `jti`, `client_id`, `scope` as a list), signed with an RSA key given as PEM (a BOSH `rsa`
variable's `private_key`, e.g. the local tier's `uaa_jwt_signing_key`) or generated. Signing uses the
`cryptography` library, not Copilot's own code, so tests check Copilot against an independent signer."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestUAA:
    """Issues tokens as UAA would with one signing key."""

    __test__ = False  # not a pytest test class

    def __init__(self, issuer: str, private_key_pem: str | bytes | None = None, *, key_id: str = "key-1") -> None:
        if private_key_pem is None:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
            key = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise TypeError("UAA signs with an RSA key")
            self._key = key
        self.issuer = issuer
        self.key_id = key_id

    @property
    def public_key_pem(self) -> str:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def token(
        self,
        scopes: Sequence[str],
        *,
        client_id: str = "cc_routing",
        issuer: str | None = None,
        expires_in: float = 3600,
        algorithm: str = "RS256",
        extra_claims: dict | None = None,
        header: dict | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "jti": uuid.uuid4().hex, "sub": client_id, "client_id": client_id, "cid": client_id,
            "authorities": list(scopes), "scope": list(scopes), "grant_type": "client_credentials",
            "iat": now, "exp": int(now + expires_in), "iss": issuer or self.issuer, "zid": "uaa",
            "aud": sorted({scope.rsplit(".", 1)[0] for scope in scopes}),
            **(extra_claims or {}),
        }
        head = {"alg": algorithm, "kid": self.key_id, "typ": "JWT", **(header or {})}
        signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
        digest = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}[algorithm]
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), digest)
        return f"{signing_input}.{_b64(signature)}"

    def authorization(self, scopes: Sequence[str], **kwargs) -> str:
        """An `Authorization` header value, as Cloud Controller and the cf CLI send it."""
        return f"bearer {self.token(scopes, **kwargs)}"
