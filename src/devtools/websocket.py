"""Just enough of RFC 6455 for tests: the handshake and single-frame messages, for the sample apps'
echo endpoint (server side) and for tests talking WebSocket through the router (client side)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
from typing import BinaryIO

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    header = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header += bytes([mask_bit | length])
    elif length < 1 << 16:
        header += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        header += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(stream: BinaryIO) -> tuple[int, bytes]:
    """(opcode, payload) of the next frame; raises EOFError when the peer closed the connection."""
    head = _read_exactly(stream, 2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", _read_exactly(stream, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", _read_exactly(stream, 8))[0]
    key = _read_exactly(stream, 4) if head[1] & 0x80 else None
    payload = _read_exactly(stream, length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = stream.read(count - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def serve_echo(rfile: BinaryIO, wfile: BinaryIO, prefix: bytes) -> None:
    """Echoes text frames back with `prefix` (the instance guid and a colon) until the client closes."""
    while True:
        try:
            opcode, payload = read_frame(rfile)
        except (EOFError, OSError):
            return
        if opcode == CLOSE:
            wfile.write(encode_frame(CLOSE, payload[:2], mask=False))
            wfile.flush()
            return
        if opcode == PING:
            wfile.write(encode_frame(PONG, payload, mask=False))
        else:
            wfile.write(encode_frame(TEXT, prefix + payload, mask=False))
        wfile.flush()


class WebSocketClient:
    """A client connection: `connect()` does the upgrade through `address` for `host` and `path`."""

    def __init__(self, address: tuple[str, int], host: str, path: str = "/ws", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.stream = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        status = self.stream.readline().decode()
        headers: dict[str, str] = {}
        while (line := self.stream.readline().decode()) not in ("\r\n", "\n", ""):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.status = int(status.split()[1]) if status else 0
        self.headers = headers
        self.accepted = self.status == 101 and headers.get("sec-websocket-accept") == accept_key(key)

    def send(self, text: str) -> None:
        self.sock.sendall(encode_frame(TEXT, text.encode(), mask=True))

    def receive(self) -> str:
        while True:
            opcode, payload = read_frame(self.stream)
            if opcode == TEXT:
                return payload.decode()
            if opcode == CLOSE:
                raise EOFError("closed by the server")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_frame(CLOSE, struct.pack("!H", 1000), mask=True))
        self.stream.close()
        self.sock.close()
