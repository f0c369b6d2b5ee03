"""Protobuf wire encoding helpers, so DiscoveryResponses can be assembled from pre-encoded resources."""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Encodes one length-delimited field (strings, bytes, sub-messages)."""
    return varint((field_number << 3) | 2) + varint(len(payload)) + payload
