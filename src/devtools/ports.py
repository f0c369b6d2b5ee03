"""Free loopback ports for tests and the local tier."""

from __future__ import annotations

import socket

from devtools.waiting import poll


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(names, host: str = "127.0.0.1") -> dict[str, int]:
    """A distinct free port for each name: all are held open together while they are chosen, so no two
    names get the same port (separate free_port() calls can return one port twice)."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> bool:
    """Whether something accepts TCP connections on `host`:`port` within `timeout` seconds."""

    def accepts() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((host, port)) == 0

    return poll(accepts, timeout, interval=0.05)
