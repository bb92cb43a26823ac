"""Delivery to the next hop: mandatory TLS, the hop's verdict mirrored, never a raise."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import MISSING, SMTP
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.memo import Memo
from gateway.smime import certgen
from gateway.transport import smtp_out, tls
from gateway.transport.smtp_out import NextHop, deliver
from tests.ports import free_port

MESSAGE = b"From: a@x.example\r\nTo: b@y.example\r\nSubject: t\r\n\r\nbody line\r\n.dot line\r\n"


# --- a throw-away TLS PKI (shared with the other SMTP test modules) --------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the trusted CA
    cert: Path  # server cert for "localhost", by the trusted CA
    key: Path
    client_cert: Path  # a client certificate by the trusted CA
    client_key: Path
    rogue_cert: Path  # server cert for "localhost" by another CA
    rogue_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    directory: Path
    anchors: tuple[Any, ...] = field(default=())


def _write(issued: certgen.Issued, directory: Path, name: str) -> tuple[Path, Path]:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(issued.key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return cert, key


def make_tls_files(directory: Path) -> TlsFiles:
    ca = certgen.make_ca("Test TLS CA", key_kind="p256")
    rogue = certgen.make_ca("Rogue TLS CA", key_kind="p256")
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    server = certgen.make_leaf(ca, "localhost", key_usage="tls", dns_names=["localhost"],
                               key_kind="p256")
    client = certgen.make_leaf(ca, "client", key_usage="tls", dns_names=["client.example"],
                               key_kind="p256")
    rogue_server = certgen.make_leaf(rogue, "localhost", key_usage="tls",
                                     dns_names=["localhost"], key_kind="p256")
    rogue_client = certgen.make_leaf(rogue, "client", key_usage="tls",
                                     dns_names=["client.example"], key_kind="p256")
    cert, key = _write(server, directory, "server")
    ccert, ckey = _write(client, directory, "client")
    rcert, rkey = _write(rogue_server, directory, "rogue")
    rccert, rckey = _write(rogue_client, directory, "rogue-client")
    return TlsFiles(ca_path, cert, key, ccert, ckey, rcert, rkey, rccert, rckey, directory,
                    anchors=(ca.certificate,))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# --- an in-process sink -----------------------------------------------------------------------


@dataclass
class SinkBehaviour:
    rcpt_reply: dict[str, str] = field(default_factory=dict)  # address -> reply
    data_reply: str | None = None
    hang_at_data: bool = False
    drop_at_data: bool = False
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    seen_tls: list[bool] = field(default_factory=list)


class SinkHandler:
    def __init__(self, behaviour: SinkBehaviour) -> None:
        self.b = behaviour

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = self.b.rcpt_reply.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.b.seen_tls.append(session.ssl is not None)
        if self.b.hang_at_data:
            await asyncio.sleep(3600)
        if self.b.drop_at_data:
            server.transport.close()
            return "250 never sent"
        if self.b.data_reply:
            return self.b.data_reply
        self.b.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                                bytes(envelope.content)))
        return "250 2.0.0 Ok: queued as ABC123"


@contextlib.asynccontextmanager
async def sink(behaviour: SinkBehaviour, *, cert: Path | None, key: Path | None,
               ) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    context = tls.server_context(cert, key) if cert and key else None
    server = await loop.create_server(
        lambda: SMTP(SinkHandler(behaviour), hostname="sink.example", tls_context=context,
                     require_starttls=context is not None, loop=loop),
        host="127.0.0.1", port=0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def hop(tls_files: TlsFiles, port: int, *, timeout: float = 5.0) -> NextHop:
    return NextHop(host="127.0.0.1", port=port,
                   ssl_context=tls.client_context(ca_files=[tls_files.ca]),
                   timeout_seconds=timeout, local_hostname="gateway.example",
                   tls_server_name="localhost")


# --- the tests --------------------------------------------------------------------------------


async def test_accepted_is_ok_and_bytes_arrive(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example",
                                                                    "c@y.example"], MESSAGE)
    assert reply.code == 250 and reply.status == "2.0.0"
    assert "ABC123" in reply.text
    assert b.received == [("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)]
    assert b.seen_tls == [True]


async def test_downstream_4xx_at_data_is_451(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(data_reply="451 4.3.0 try later")
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply == errors.NEXT_HOP_DEFERRED
    assert reply.code == 451


async def test_downstream_5xx_at_data_is_mirrored(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(data_reply="554 5.7.1 <b@y.example> rejected:\tpolicy\x7f \x01")
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert (reply.code, reply.status) == (554, "5.7.1")
    assert reply.text.startswith("Next hop refused: ")
    assert "b@y.example" not in reply.text and reply.text.isascii()


async def test_recipient_5xx_is_mirrored_and_nothing_sent(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(rcpt_reply={"c@y.example": "550 5.1.1 no such user"})
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example",
                              ["b@y.example", "c@y.example"], MESSAGE)
    assert (reply.code, reply.status) == (550, "5.1.1")
    assert b.received == [] and b.seen_tls == []  # all or nothing: no DATA


async def test_recipient_4xx_is_451(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(rcpt_reply={"c@y.example": "452 4.2.2 mailbox full"})
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example",
                              ["b@y.example", "c@y.example"], MESSAGE)
    assert reply.code == 451
    assert b.received == []


async def test_connection_refused_is_451(tls_files: TlsFiles) -> None:
    reply = await deliver(hop(tls_files, free_port()), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply == errors.NEXT_HOP_UNREACHABLE


async def test_hanging_hop_is_451_within_timeout(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(hang_at_data=True)
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await asyncio.wait_for(
            deliver(hop(tls_files, port, timeout=0.5), "a@x.example", ["b@y.example"],
                    MESSAGE), timeout=10)
    assert reply == errors.NEXT_HOP_TIMEOUT


async def test_drop_mid_data_is_451(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(drop_at_data=True)
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply.code == 451
    assert reply.transient


async def test_untrusted_certificate_is_451_and_nothing_sent(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with sink(b, cert=tls_files.rogue_cert, key=tls_files.rogue_key) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply == errors.NEXT_HOP_NO_TLS
    assert b.received == [] and b.seen_tls == []


async def test_wrong_name_is_451_unless_name_check_off(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with sink(b, cert=tls_files.cert, key=tls_files.key) as port:
        wrong = NextHop(host="127.0.0.1", port=port,
                        ssl_context=tls.client_context(ca_files=[tls_files.ca]),
                        timeout_seconds=5, tls_server_name="other.example")
        assert await deliver(wrong, "a@x.example", ["b@y.example"], MESSAGE) \
            == errors.NEXT_HOP_NO_TLS
        # The name check can go (relay by IP); the chain check stays.
        by_ip = NextHop(host="127.0.0.1", port=port, timeout_seconds=5,
                        ssl_context=tls.client_context(ca_files=[tls_files.ca],
                                                       check_hostname=False))
        assert (await deliver(by_ip, "a@x.example", ["b@y.example"], MESSAGE)).code == 250
    assert len(b.received) == 1


async def test_no_starttls_is_451_and_nothing_sent(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with sink(b, cert=None, key=None) as port:
        reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply == errors.NEXT_HOP_NO_TLS
    assert b.received == [] and b.seen_tls == []


def test_client_context_always_verifies(tls_files: TlsFiles) -> None:
    with pytest.raises(ValueError, match="CA"):
        tls.client_context()
    import ssl

    ctx = tls.client_context(ca_files=[tls_files.ca], check_hostname=False)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_mirror_text() -> None:
    r = smtp_out.mirror(552, "5.3.4 Message size exceeds limit for <x@y.z>\r\n" + "x" * 500)
    assert (r.code, r.status) == (552, "5.3.4")
    assert "x@y.z" not in r.text and len(r.text) <= len("Next hop refused: ") + 200
    assert "\r" not in str(r) and "\n" not in str(r)
    assert smtp_out.mirror(550, "no enhanced code").status == "5.0.0"
    assert smtp_out.mirror(550, "4.1.1 wrong class").status == "5.0.0"
    assert smtp_out.mirror(421, "4.3.2 shutting down") == errors.NEXT_HOP_DEFERRED


# --- a real Postfix smtp-sink: it speaks no TLS, so nothing may be sent to it ------------------


@pytest.fixture
def postfix_sink() -> Iterator[tuple[int, Path]]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(binary).exists():
        pytest.skip("postfix smtp-sink not installed")
    port = free_port()
    # smtp-sink drops root for "nobody", who must reach the dump folder: pytest's tmp_path is
    # private to root, so the folder is made directly under /tmp.
    dump = Path(tempfile.mkdtemp(prefix="passerelle-sink-"))
    dump.chmod(0o777)
    # -d: dump each received message into the folder; -u: the unprivileged user to run as.
    proc = subprocess.Popen([binary, "-u", "nobody", "-d", str(dump) + "/%M",
                             f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None:
                pytest.skip("smtp-sink could not start")
            time.sleep(0.05)
        yield port, dump
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(dump, ignore_errors=True)


async def test_real_postfix_sink_without_tls_gets_nothing(
        tls_files: TlsFiles, postfix_sink: tuple[int, Path]) -> None:
    port, dump = postfix_sink
    reply = await deliver(hop(tls_files, port), "a@x.example", ["b@y.example"], MESSAGE)
    assert reply == errors.NEXT_HOP_NO_TLS
    assert reply.code == 451
    await asyncio.sleep(0.1)
    assert list(dump.iterdir()) == []


async def test_real_postfix_sink_receives_in_clear_when_asked_directly(
        postfix_sink: tuple[int, Path]) -> None:
    # Control: the sink does accept mail (so the refusal above is ours, not the sink's).
    import aiosmtplib

    port, dump = postfix_sink
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
    async with smtp:
        await smtp.sendmail("a@x.example", ["b@y.example"], MESSAGE)
    for _ in range(50):
        if list(dump.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert len(list(dump.iterdir())) == 1
    assert errors.OK.code == 250


# --- DeliveryPool: the same verdicts over reused connections ---------------------------------


class PoolSinkHandler(SinkHandler):
    """The sink, with a settable reply to RSET (None: aiosmtpd's own 250)."""

    rset_reply: str | None = None

    async def handle_RSET(self, server: SMTP, session: Any, envelope: Any) -> Any:
        return MISSING if self.rset_reply is None else self.rset_reply


@dataclass
class CountingSink:
    port: int
    connections: list[SMTP]
    handler: PoolSinkHandler

    def drop_all(self) -> None:
        """The hop closes every connection (idle timeout, restart)."""
        for session in self.connections:
            if session.transport is not None:
                session.transport.close()


@contextlib.asynccontextmanager
async def counting_sink(behaviour: SinkBehaviour, tls_files: TlsFiles,
                        ) -> AsyncIterator[CountingSink]:
    loop = asyncio.get_running_loop()
    context = tls.server_context(tls_files.cert, tls_files.key)
    connections: list[SMTP] = []
    handler = PoolSinkHandler(behaviour)

    def factory() -> SMTP:
        session = SMTP(handler, hostname="sink.example", tls_context=context,
                       require_starttls=True, loop=loop)
        connections.append(session)
        return session

    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    try:
        yield CountingSink(int(server.sockets[0].getsockname()[1]), connections, handler)
    finally:
        server.close()


async def test_pool_reuses_one_connection_and_bytes_arrive(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        for i in range(5):
            reply = await pool.deliver(f"a{i}@x.example", ["b@y.example"], MESSAGE)
            assert reply.code == 250 and "ABC123" in reply.text
        assert pool.opened == 1 and len(s.connections) == 1
        await pool.close()
        assert pool.idle == 0
    assert b.received == [(f"a{i}@x.example", ["b@y.example"], MESSAGE) for i in range(5)]
    assert b.seen_tls == [True] * 5


async def test_pool_verdicts_match_deliver_on_a_reused_connection(tls_files: TlsFiles) -> None:
    """Refusals mirrored as by ``deliver``; the next message starts from a clean state."""
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        b.rcpt_reply = {"c@y.example": "550 5.1.1 no such user"}
        reply = await pool.deliver("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)
        assert (reply.code, reply.status) == (550, "5.1.1")
        b.rcpt_reply = {"c@y.example": "452 4.2.2 mailbox full"}
        reply = await pool.deliver("a@x.example", ["b@y.example", "c@y.example"], MESSAGE)
        assert reply.code == 451
        b.rcpt_reply = {}
        b.data_reply = "554 5.7.1 <b@y.example> rejected"
        reply = await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)
        assert (reply.code, reply.status) == (554, "5.7.1") and "b@y.example" not in reply.text
        b.data_reply = "451 4.3.0 try later"
        assert await pool.deliver("a@x.example", ["b@y.example"], MESSAGE) \
            == errors.NEXT_HOP_DEFERRED
        b.data_reply = None
        reply = await pool.deliver("z@x.example", ["d@y.example"], MESSAGE)
        assert reply.code == 250
        assert pool.opened == 1
        await pool.close()
    # All or nothing, and no recipient left over from a refused transaction.
    assert b.received == [("a@x.example", ["b@y.example"], MESSAGE),
                          ("z@x.example", ["d@y.example"], MESSAGE)]


async def test_pool_replaces_a_connection_the_hop_closed(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        s.drop_all()
        await asyncio.sleep(0.05)
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        assert pool.opened == 2
        await pool.close()
    assert len(b.received) == 2


async def test_pool_replaces_a_connection_that_fails_rset(tls_files: TlsFiles) -> None:
    """A connection whose RSET is not answered 250 is closed; the message goes on a new one."""
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        s.handler.rset_reply = "503 5.5.1 out of step"
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        assert s.connections[0].transport is None or s.connections[0].transport.is_closing()
        assert pool.opened == 2
        await pool.close()
    assert len(b.received) == 2


async def test_pool_never_reuses_after_a_failure(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(drop_at_data=True)
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        reply = await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)
        assert reply.code == 451 and reply.transient
        assert pool.idle == 0
        b.drop_at_data = False
        b.hang_at_data = True
        quick = smtp_out.DeliveryPool(hop(tls_files, s.port, timeout=0.5))
        assert await quick.deliver("a@x.example", ["b@y.example"], MESSAGE) \
            == errors.NEXT_HOP_TIMEOUT
        assert quick.idle == 0
        b.hang_at_data = False
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        assert pool.opened == 2
        await pool.close()
        await quick.close()
    assert len(b.received) == 1


async def test_pool_cancelled_mid_transaction_closes_the_connection(tls_files: TlsFiles) -> None:
    b = SinkBehaviour(hang_at_data=True)
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port))
        task = asyncio.create_task(pool.deliver("a@x.example", ["b@y.example"], MESSAGE))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.idle == 0
        await pool.close()
    assert b.received == []


async def test_pool_retires_connections_by_age_and_count(tls_files: TlsFiles) -> None:
    now = [0.0]
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port), max_messages=2, idle_seconds=10,
                                     clock=lambda: now[0])
        for _ in range(4):  # two per connection
            assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        assert pool.opened == 2
        now[0] += 11  # idle too long: not reused
        assert (await pool.deliver("a@x.example", ["b@y.example"], MESSAGE)).code == 250
        assert pool.opened == 3
        await pool.close()
        await asyncio.sleep(0.05)
        assert all(c.transport is None or c.transport.is_closing() for c in s.connections)
    assert len(b.received) == 5


async def test_pool_concurrent_messages_use_separate_connections(tls_files: TlsFiles) -> None:
    b = SinkBehaviour()
    async with counting_sink(b, tls_files) as s:
        pool = smtp_out.DeliveryPool(hop(tls_files, s.port), max_idle=2)
        for _ in range(2):
            replies = await asyncio.gather(*(
                pool.deliver(f"a{i}@x.example", [f"b{i}@y.example"], MESSAGE + f"{i}\r\n".encode())
                for i in range(4)))
            assert [r.code for r in replies] == [250] * 4
        assert pool.idle <= 2
        assert 4 <= pool.opened <= 6  # 4 at once, then at most 2 kept
        await pool.close()
    assert sorted(b.received) == sorted(
        [(f"a{i}@x.example", [f"b{i}@y.example"], MESSAGE + f"{i}\r\n".encode())
         for i in range(4)] * 2)


@pytest.mark.parametrize("case", ["refused", "untrusted", "no_starttls"])
async def test_pool_connection_failures_are_deliver_replies(tls_files: TlsFiles,
                                                            case: str) -> None:
    b = SinkBehaviour()
    cert, key = {"refused": (None, None), "untrusted": (tls_files.rogue_cert, tls_files.rogue_key),
                 "no_starttls": (None, None)}[case]
    if case == "refused":
        pool = smtp_out.DeliveryPool(hop(tls_files, free_port()))
        assert await pool.deliver("a@x.example", ["b@y.example"], MESSAGE) \
            == errors.NEXT_HOP_UNREACHABLE
        return
    async with sink(b, cert=cert, key=key) as port:
        pool = smtp_out.DeliveryPool(hop(tls_files, port))
        for _ in range(2):
            assert await pool.deliver("a@x.example", ["b@y.example"], MESSAGE) \
                == errors.NEXT_HOP_NO_TLS
        assert pool.idle == 0
        await pool.close()
    assert b.received == [] and b.seen_tls == []
    assert await smtp_out.DeliveryPool(hop(tls_files, 1)).deliver("a", [], MESSAGE) \
        == errors.LOCAL_ERROR


# --- the listener's fast paths (gateway.transport.smtp_in) ------------------------------------

_LOOKAROUND = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\r\r\n", b"\n\r"]),
                max_size=30))
def test_bare_newline_check_agrees_with_the_lookaround(parts: list[bytes]) -> None:
    from gateway.transport.wire import has_bare_cr_or_lf

    content = b"".join(parts)
    assert has_bare_cr_or_lf(content) == bool(_LOOKAROUND.search(content))


def test_cached_address_parsing_is_aiosmtpd_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.transport import smtp_in

    monkeypatch.setattr(smtp_in, "_addresses", Memo(3))
    session = SMTP(SinkHandler(SinkBehaviour()))
    ours = smtp_in._Session.__new__(smtp_in._Session)
    args = ["<a@b.example>", "FROM:<a@b.example>", "<a@b.example> SIZE=10", "a@b.example",
            "<bad", "<\"q u\"@b.example>", "", "<" + "l" * 70 + "@b.example>", "<@x:a@b>",
            "<a@b.example>" + " " * 600]
    for limit in (64, 0):
        session.local_part_limit = limit
        ours.local_part_limit = limit
        for arg in args * 2:
            assert ours._getaddr(arg) == session._getaddr(arg)
            assert len(smtp_in._addresses) <= 3
    assert all(len(arg) <= smtp_in._ADDRESS_CACHE_MAX_ARG for arg, _ in smtp_in._addresses)


def test_listener_tls_context_resumes_sessions(tls_files: TlsFiles) -> None:
    """Clients that reconnect skip the full handshake: tickets are on (TLS 1.2 and 1.3)."""
    import ssl
    import threading

    server_context = tls.server_context(tls_files.cert, tls_files.key)
    assert not server_context.options & ssl.OP_NO_TICKET
    assert server_context.num_tickets > 0
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve(listener: socket.socket = listener) -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with server_context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"220 ok\r\n")
                    tls_conn.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_context = tls.client_context(ca_files=[tls_files.ca])
        client_context.maximum_version = version
        session = None
        reused = []
        for _ in range(2):
            with client_context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                            server_hostname="localhost",
                                            session=session) as conn:
                conn.recv(8)  # the tickets (TLS 1.3) arrive with the first data
                reused.append(conn.session_reused)
                session = conn.session
                conn.sendall(b"x")
        thread.join(timeout=5)
        listener.close()
        assert reused == [False, True], version
