"""Free loopback ports for the servers a test starts.

Several ports are chosen with every socket held until all are known: a port closed and asked
for again can come back, and two listeners of one test on one port make the second fail to
bind while the first answers in its place.
"""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def port_map(*names: str) -> dict[str, int]:
    """One distinct free port per name."""
    return dict(zip(names, free_ports(len(names)), strict=True))
