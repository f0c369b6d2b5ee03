"""The tier's ports (devtools.ports.free_ports): distinct, free, and outside the kernel's ephemeral range,
so a port the tier binds only later (the router's TCP route port) is never given to a bind to port 0 or
an outgoing connection meanwhile (a cell instance took one once: "cannot bind ... Address already in use")."""

from __future__ import annotations

import socket
from pathlib import Path

from devtools.ports import free_ports


def test_free_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports([f"p{n}" for n in range(20)])
    assert len(set(ports.values())) == 20
    assert all(10_000 <= port < low for port in ports.values()), ports
    for port in ports.values():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free once chosen
