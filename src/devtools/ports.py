"""Free loopback ports for tests and the local tier."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from devtools.waiting import poll

# Where free_ports looks first: below the kernel's ephemeral range, which every bind to port 0 and every
# outgoing connection draws from. A port the tier names but binds only later (the router's TCP route
# port, bound when the first TCP route arrives) must not be handed to another process meanwhile.
_LOWEST = 10_000


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(names, host: str = "127.0.0.1") -> dict[str, int]:
    """A distinct free port for each name, outside the ephemeral range where it can (`_LOWEST` up to it):
    all are held open together while they are chosen, so no two names get the same port, and none is a
    port that a later bind to port 0 elsewhere (a cell instance, an app, a client's connection) can get."""
    sockets = []
    try:
        candidates = _below_ephemeral()
        for _ in names:
            sockets.append(_bound(host, candidates))
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def _below_ephemeral() -> list[int]:
    """The ports from _LOWEST to the ephemeral range's start, shuffled (none if that range is unknown)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    ports = list(range(_LOWEST, low))
    random.shuffle(ports)
    return ports


def _bound(host: str, candidates: list[int]) -> socket.socket:
    """A socket bound to the first candidate that is free (taken from the list), else to port 0."""
    while candidates:
        sock = socket.socket()
        try:
            sock.bind((host, candidates.pop()))
            return sock
        except OSError:
            sock.close()
    sock = socket.socket()
    sock.bind((host, 0))
    return sock


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> bool:
    """Whether something accepts TCP connections on `host`:`port` within `timeout` seconds."""

    def accepts() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, port)) == 0

    return poll(accepts, timeout, interval=0.05)
