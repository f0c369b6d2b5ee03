"""The protobuf wire layout of what Copilot sends istiod, in one place: MCP resource envelopes and
DiscoveryResponses, written field by field from serialized specs.

A resource is sent as a DiscoveryResponse `resources` field holding
Any{mcp.Resource{Metadata{name, version}, Any{spec}}}, its metadata.version the content digest. It is
encoded once per content, when the store takes the object (`resource()`); a response is then a byte join
of the encoded resources of one kind, never a re-serialization. Building the four messages only to
serialize them would cost more than the spec itself on a full rebuild.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

from copilot.istio.kinds import Kind
from copilot.xds.snapshot import KindSnapshot, Resource

MCP_RESOURCE_TYPE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"

# DiscoveryResponse fields (envoy.service.discovery.v3)
_VERSION_INFO, _RESOURCES, _TYPE_URL, _NONCE = 1, 2, 4, 5
# google.protobuf.Any: type_url=1, value=2; istio.mcp.v1alpha1.Resource: metadata=1, body=2;
# istio.mcp.v1alpha1.Metadata: name=1, version=3.


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Every varint up to 65535, looked up: the lengths of nearly every field (a full rebuild encodes six
# per object) and every port number (each endpoint has one). 64k short bytes objects, about 2 MiB.
VARINTS = [_varint(n) for n in range(0x10000)]


def varint(value: int) -> bytes:
    return VARINTS[value] if value < 0x10000 else _varint(value)


def _field_header(field_number: int, length: int) -> bytes:
    return varint((field_number << 3) | 2) + varint(length)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Encodes one length-delimited field (strings, bytes, sub-messages)."""
    return _field_header(field_number, len(payload)) + payload


_MCP_TYPE_FIELD = length_delimited(1, MCP_RESOURCE_TYPE.encode())


@functools.cache
def _spec_type(kind: Kind) -> tuple[bytes, bytes]:
    """(the Any.type_url field of the kind's spec, the spec's full proto name and separators for the digest)."""
    full_name = kind.message.DESCRIPTOR.full_name
    return length_delimited(1, f"type.googleapis.com/{full_name}".encode()), b"\0" + full_name.encode() + b"\0"


def _digest(name: bytes, typed: bytes, body: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(name + typed + body, digest_size=16)


def content_digest(kind: Kind, name: str, body: bytes) -> int:
    """A resource's content digest (its MCP metadata.version): over its name, spec type and spec bytes."""
    return int.from_bytes(_digest(name.encode(), _spec_type(kind)[1], body).digest(), "big")


# The header of Metadata.version: field 3, length 32 (a 16-byte digest's hex digits).
_VERSION_HEADER = _field_header(3, 32)
_NAME_TAG, _BODY_TAG, _RESOURCES_TAG = varint((1 << 3) | 2), varint((2 << 3) | 2), varint((_RESOURCES << 3) | 2)


_MCP_HEAD = _MCP_TYPE_FIELD + _BODY_TAG  # Any{type_url = MCP_RESOURCE_TYPE, then value's tag}
_META_FIXED = 1 + len(_VERSION_HEADER) + 32  # Metadata's name tag, version header and 32 hex digits
_MCP_FIXED = len(_MCP_HEAD)


@functools.cache
def _spec_head(kind: Kind) -> tuple[bytes, bytes]:
    """(Any.type_url field of the kind's spec and the tag of its value, what the digest puts between
    name and spec): what `resource` writes the same for every object of a kind."""
    type_field, typed = _spec_type(kind)
    return type_field + _BODY_TAG, typed


def resource(kind: Kind, name: str, body: bytes) -> Resource:
    """The serialized spec `body` of (kind, name) as it is sent: a DiscoveryResponse `resources` field.
    (It runs once per object built, 300,000 times in a full rebuild at 100,000 hosts: each nested
    message's length is worked out from its parts' lengths, looked up in the varint table, and the
    resource written in one join.)"""
    spec_head, typed = _spec_head(kind)
    name_bytes = name.encode()
    raw = hashlib.blake2b(name_bytes + typed + body, digest_size=16).digest()  # as _digest
    name_length, body_length = len(name_bytes), len(body)
    try:
        value, spec_header, name_header, meta_header, mcp_header, wrapped_header = _headers(
            spec_head, name_length, body_length, _TABLE_LOOKUP
        )
    except IndexError:  # a length of 64 KiB or more: past the varint table
        value, spec_header, name_header, meta_header, mcp_header, wrapped_header = _headers(
            spec_head, name_length, body_length, varint
        )
    encoded = b"".join(
        (
            _RESOURCES_TAG,
            wrapped_header,
            _MCP_HEAD,
            mcp_header,
            _NAME_TAG,
            meta_header,
            _NAME_TAG,
            name_header,
            name_bytes,
            _VERSION_HEADER,
            raw.hex().encode(),
            _BODY_TAG,
            spec_header,
            spec_head,
            value,
            body,
        )
    )
    return Resource(int.from_bytes(raw, "big"), encoded, len(encoded) - body_length)


_TABLE_LOOKUP = VARINTS.__getitem__  # IndexError past the table


def _headers(spec_head: bytes, name_length: int, body_length: int, header: Callable[[int], bytes]) -> tuple[bytes, ...]:
    """resource's length headers, each nested message's length worked out from its parts' lengths:
    (the spec's value, the spec Any, the name, Metadata, Resource, the wrapping Any). `header` writes a
    length: the varint table's lookup (lengths up to 65535) or varint()."""
    value = header(body_length)
    spec_length = len(spec_head) + len(value) + body_length  # Any{type_url, value = the spec}
    spec_header = header(spec_length)
    name_header = header(name_length)
    meta_length = _META_FIXED + len(name_header) + name_length  # Metadata{name, version: 32 hex digits}
    meta_header = header(meta_length)
    mcp_length = 2 + len(meta_header) + meta_length + len(spec_header) + spec_length  # Resource{metadata, body}
    mcp_header = header(mcp_length)
    # Any{type_url, value = the Resource}, the DiscoveryResponse's `resources` field
    return value, spec_header, name_header, meta_header, mcp_header, header(_MCP_FIXED + len(mcp_header) + mcp_length)


def encode_response(resources: KindSnapshot, type_url: str, nonce: str) -> bytes:
    """A DiscoveryResponse carrying every resource of one type at its snapshot's version."""
    return b"".join(
        (
            length_delimited(_VERSION_INFO, resources.version.encode()),
            *resources.encoded(),
            length_delimited(_TYPE_URL, type_url.encode()),
            length_delimited(_NONCE, nonce.encode()),
        )
    )
