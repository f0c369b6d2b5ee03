"""The router's route service signatures against the tests' own implementation of gorouter's algorithm
(tests/route_service_reference.py, written from the protocol's description): each side opens what the
other made; expiry, tampering, rotation and the encodings' strictness."""

from __future__ import annotations

import base64
import datetime
import json
import time

import pytest

import route_service_reference as reference
from route_services.signature import (
    RouteServiceKeys,
    SignatureError,
    SignatureExpired,
    format_rfc3339,
    parse_rfc3339,
    plaintext,
)

SECRET = "my-route-services-secret"
URL = "https://app.example.com/path/a%20b?q=1&r=<2>"


@pytest.fixture(scope="module")
def keys() -> RouteServiceKeys:
    return RouteServiceKeys(SECRET, timeout_seconds=60)


def test_the_routers_signature_opens_with_the_reference_implementation(keys: RouteServiceKeys) -> None:
    before = datetime.datetime.now(datetime.UTC)
    signature, metadata = keys.sign(URL)
    contents = reference.open_signature(SECRET, signature, metadata)
    assert contents["forwarded_url"] == URL
    assert before - datetime.timedelta(milliseconds=1) <= contents["requested_time"] <= datetime.datetime.now(datetime.UTC)
    # The encodings: URL-safe, padded base64; the metadata a JSON object with the nonce in standard base64.
    assert len(signature) % 4 == 0 and len(metadata) % 4 == 0
    assert set(signature) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    nonce = json.loads(base64.urlsafe_b64decode(metadata))
    assert list(nonce) == ["nonce"] and len(base64.standard_b64decode(nonce["nonce"])) == 12


def test_each_signature_has_its_own_nonce(keys: RouteServiceKeys) -> None:
    assert keys.sign(URL) != keys.sign(URL)


def test_a_reference_signature_passes_the_router(keys: RouteServiceKeys) -> None:
    contents = keys.verify(*reference.seal(SECRET, URL))
    assert contents.forwarded_url == URL
    assert abs(contents.requested_time_ns - time.time_ns()) < 5 * 10**9


def test_the_plaintext_is_gos_json() -> None:
    # Field order, no spaces, HTML characters escaped as Go's encoder does, RFC 3339 in UTC with the
    # fraction's trailing zeros dropped.
    ns = 1_700_000_000_120_000_000
    assert plaintext("https://a.example.com/x?a=1&b=<c>", ns) == (
        b'{"forwarded_url":"https://a.example.com/x?a=1\\u0026b=\\u003cc\\u003e","requested_time":"2023-11-14T22:13:20.12Z"}'
    )
    assert format_rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert format_rfc3339(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
        ("2023-11-14T22:13:20.123456789Z", 1_700_000_000 * 10**9 + 123_456_789),
        ("2023-11-14T23:13:20.5+01:00", 1_700_000_000 * 10**9 + 500_000_000),  # a router in another zone
        ("2023-11-14T17:13:20-05:00", 1_700_000_000 * 10**9),
    ],
)
def test_requested_times_are_read_in_any_zone_to_the_nanosecond(text: str, ns: int) -> None:
    assert parse_rfc3339(text) == ns


@pytest.mark.parametrize("text", ["2023-11-14 22:13:20Z", "2023-11-14T22:13:20", "2023-11-14T22:13:20.1234567890Z", "x"])
def test_a_malformed_requested_time_is_refused(text: str) -> None:
    with pytest.raises(SignatureError):
        parse_rfc3339(text)


def test_a_signature_older_than_the_timeout_has_expired(keys: RouteServiceKeys) -> None:
    now = datetime.datetime.now(datetime.UTC)
    keys.verify(*reference.seal(SECRET, URL, now - datetime.timedelta(seconds=55)))
    with pytest.raises(SignatureExpired, match="^route service request expired$"):
        keys.verify(*reference.seal(SECRET, URL, now - datetime.timedelta(seconds=61)))
    # The boundary, with the router's clock fixed: exactly the timeout is still valid, a nanosecond more is not.
    signature, metadata = keys.sign(URL, now_ns=10**18)
    assert keys.verify(signature, metadata, now_ns=10**18 + 60 * 10**9).forwarded_url == URL
    with pytest.raises(SignatureExpired):
        keys.verify(signature, metadata, now_ns=10**18 + 60 * 10**9 + 1)
    # A signature from the future (clocks apart) is not expired, as with gorouter.
    keys.verify(*reference.seal(SECRET, URL, now + datetime.timedelta(seconds=120)))


def test_a_shorter_timeout_is_honoured() -> None:
    short = RouteServiceKeys(SECRET, timeout_seconds=5)
    with pytest.raises(SignatureExpired):
        short.verify(*reference.seal(SECRET, URL, datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=6)))


def test_every_tampered_byte_is_detected(keys: RouteServiceKeys) -> None:
    signature, metadata = reference.seal(SECRET, URL)
    sealed = bytearray(base64.urlsafe_b64decode(signature))
    for index in range(len(sealed)):
        changed = bytearray(sealed)
        changed[index] ^= 0x01
        with pytest.raises(SignatureError, match="message authentication failed"):
            keys.verify(base64.urlsafe_b64encode(bytes(changed)).decode(), metadata)
    # Another nonce in the metadata: the same failure.
    other_nonce = base64.urlsafe_b64encode(json.dumps({"nonce": base64.b64encode(b"\x00" * 12).decode()}).encode()).decode()
    with pytest.raises(SignatureError, match="message authentication failed"):
        keys.verify(signature, other_nonce)


def test_another_secret_is_refused(keys: RouteServiceKeys) -> None:
    with pytest.raises(SignatureError, match="message authentication failed"):
        keys.verify(*reference.seal("another foundation", URL))


def test_rotation_the_decrypt_only_secret_still_checks_but_never_signs() -> None:
    rotated = RouteServiceKeys("new-secret", decrypt_only=SECRET)
    # A request signed before the rotation (old secret) still comes back valid ...
    assert rotated.verify(*reference.seal(SECRET, URL)).forwarded_url == URL
    # ... and so does one signed with the new secret; new signatures use only the new one.
    assert rotated.verify(*reference.seal("new-secret", URL)).forwarded_url == URL
    signature, metadata = rotated.sign(URL)
    assert reference.open_signature("new-secret", signature, metadata)["forwarded_url"] == URL
    with pytest.raises(Exception):  # noqa: B017 (any failure: the tag does not match)
        reference.open_signature(SECRET, signature, metadata)
    # An expired old-secret signature is expired, not merely unknown; a third secret is refused.
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=61)
    with pytest.raises(SignatureExpired):
        rotated.verify(*reference.seal(SECRET, URL, old))
    with pytest.raises(SignatureError, match="message authentication failed"):
        rotated.verify(*reference.seal("third", URL))
    # Once the rotation is over (no decrypt-only secret), old signatures are refused.
    with pytest.raises(SignatureError):
        RouteServiceKeys("new-secret").verify(*reference.seal(SECRET, URL))


def test_missing_or_malformed_metadata_is_refused(keys: RouteServiceKeys) -> None:
    signature, metadata = reference.seal(SECRET, URL)
    with pytest.raises(SignatureError, match="^No metadata found$"):
        keys.verify(signature, "")
    for bad in ("not base64!", metadata.rstrip("="), base64.urlsafe_b64encode(b"[]").decode(),
                base64.urlsafe_b64encode(b'{"nonce": "AAAA"}').decode(), base64.urlsafe_b64encode(b"{").decode()):
        with pytest.raises(SignatureError):
            keys.verify(signature, bad)


def test_the_base64_is_strict_as_gos(keys: RouteServiceKeys) -> None:
    signature, metadata = reference.seal(SECRET, URL)
    unpadded = signature.rstrip("=")
    if unpadded != signature:
        with pytest.raises(SignatureError, match="illegal base64"):
            keys.verify(unpadded, metadata)
    standard = base64.b64encode(base64.urlsafe_b64decode(signature)).decode()
    if standard != signature:  # '+' or '/' instead of '-' or '_'
        with pytest.raises(SignatureError, match="illegal base64"):
            keys.verify(standard, metadata)
    with pytest.raises(SignatureError, match="illegal base64"):
        keys.verify(signature[:8] + " " + signature[9:], metadata)


def test_keys_need_a_secret() -> None:
    with pytest.raises(ValueError):
        RouteServiceKeys("")
