"""A server-sent-events parser for BBS's event stream: bytes in, (id, event, data) out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    id: str
    event: str
    data: str


def parse_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Yields each complete event; tolerates \\r\\n line ends and events split across chunks."""
    buffer = b""
    fields: dict[str, list[str]] = {}
    for chunk in chunks:
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line = buffer[:newline].rstrip(b"\r").decode("utf-8", errors="replace")
            buffer = buffer[newline + 1 :]
            if not line:
                if fields:
                    yield ServerSentEvent(
                        "".join(fields.get("id", [])), "".join(fields.get("event", [])), "\n".join(fields.get("data", []))
                    )
                    fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
