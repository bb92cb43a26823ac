"""max_sessions_per_ip holds for the host across --workers: the per-address counts live in a
mapping shared by the forked workers (gateway.transport.limits.SharedCounts)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from gateway.transport.inbound import ListenerSettings
from gateway.transport.limits import ListenerState, SharedCounts

IP = "203.0.113.7"


def settings(shared: SharedCounts, per_ip: int = 3) -> ListenerSettings:
    base = ListenerSettings(network="apicrypt", host="127.0.0.1", port=0,
                            hostname="gw.example", ssl_context=None, max_sessions=100,
                            max_sessions_per_ip=per_ip)
    return replace(base, shared_ips=shared)


def test_two_workers_share_one_per_address_limit() -> None:
    """The attack: 40 sessions from one address with two workers, 20 allowed. Each worker
    admits against the host's count, not its own."""
    shared = SharedCounts(workers=2)
    first, second = ListenerState(settings(shared)), ListenerState(settings(shared))
    assert first.admit(IP) and first.admit(IP)
    second_row = SharedCounts.__new__(SharedCounts)  # the second worker's view of the table
    second_row.__dict__.update(shared.__dict__)
    second_row.row = 1
    second.settings = settings(second_row)
    assert second.admit(IP)  # 3 for the host
    assert not second.admit(IP) and not first.admit(IP)  # the fourth, in either worker
    assert second.admit("198.51.100.1")  # another client is not held back
    first.release(IP)
    assert second.admit(IP)  # a slot freed in one worker is free for the other


def test_the_counts_are_shared_with_a_forked_worker() -> None:
    shared = SharedCounts(workers=2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: row 1, three sessions from IP
        shared.row = 1
        for _ in range(3):
            shared.add(IP, 1)
        os.write(write, b"x")
        os._exit(0)
    os.read(read, 1)
    os.waitpid(pid, 0)
    assert shared.total(IP) == 3  # the parent (the supervisor) sees the worker's sessions
    shared.clear_row(1)  # the worker died: its sessions are gone with it
    assert shared.total(IP) == 0


def test_counts_never_go_below_zero() -> None:
    shared = SharedCounts(workers=1)
    shared.add(IP, -1)
    assert shared.total(IP) == 0


def test_the_listener_takes_its_session_bounds_from_the_configuration(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    init_pki(root)
    text = (root / "gateway.toml").read_text().replace(
        "[gateway]\n", "[gateway]\nstarttls_seconds = 7\nsession_seconds = 70\n"
                       "max_idle_commands = 9\nmax_sessions_per_ip = 4\n", 1)
    (root / "gateway.toml").write_text(text)
    config = load_config(root / "gateway.toml")
    shared = {"apicrypt": SharedCounts(workers=2)}
    gateway = Gateway(config, build_runtime(config), shared_ips=shared)
    try:
        listener = gateway._listener(config.network("apicrypt"))
    finally:
        gateway.close()
    assert (listener.starttls_seconds, listener.session_seconds, listener.max_idle_commands,
            listener.max_sessions_per_ip) == (7, 70, 9, 4)
    assert listener.shared_ips is shared["apicrypt"]
