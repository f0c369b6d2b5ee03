"""Free loopback ports for tests and the local tier."""

from __future__ import annotations

import socket


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
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False
