"""Protobuf wire encoding helpers, so DiscoveryResponses can be assembled from pre-encoded resources."""

from __future__ import annotations

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Encodes one length-delimited field (strings, bytes, sub-messages)."""
    return b"".join((varint((field_number << 3) | 2), varint(len(payload)), payload))
