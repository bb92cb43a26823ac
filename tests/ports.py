"""Free loopback ports for the servers a test starts (``gateway.devpki.free_ports``: distinct,
every socket held until all are chosen)."""

from __future__ import annotations

from gateway.devpki import free_ports


def free_port() -> int:
    return free_ports(1)[0]


def port_map(*names: str) -> dict[str, int]:
    """One distinct free port per name."""
    return dict(zip(names, free_ports(len(names)), strict=True))
