"""IMAP ingress against a real Dovecot: messages made by openssl are appended to a mailbox, the
poller claims (UID MOVE), relays and removes them; the next hop's sink receives them and openssl
opens them with the recipient's key. Then two instances share the mailbox, the connection
drops, the next hop refuses for a while, an instance dies holding claims, and a message fails
for good (a DSN to its sender, the original in the rejected folder).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import imaplib
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.errors import Reply
from gateway.smime.certgen import make_ca, make_leaf
from gateway.translate.context import build_runtime
from gateway.transport import tls
from gateway.transport.dsn import build_dsn
from gateway.transport.imap_in import Bouncer, ImapPoller
from gateway.transport.imap_session import ImapSettings
from gateway.transport.smtp_in import InboundMessage
from tests.dovecot import Dovecot, running_dovecot
from tests.messages import Pki, open_as_recipient, text_entity, user_message
from tests.ports import free_port, port_map

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"
COLLEAGUE = "secretariat@cabinet12.apicrypt.org"  # same network: not for the gateway
PROCESSING = "Passerelle/Processing"
REJECTED = "Passerelle/Rejected"
_MID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.MULTILINE | re.IGNORECASE)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, int]]:
    ports = port_map("a_in", "a_out", "m_in", "m_out")
    root = tmp_path_factory.mktemp("pki")
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    return Pki(root), ports


@pytest.fixture(scope="module")
def templates(pki: tuple[Pki, dict[str, int]]) -> list[bytes]:
    """Ten distinct messages sealed by openssl; copies differ by their outer Message-ID
    (outside the signature), as bench/relay.py does."""
    keys, _ = pki
    return [user_message(keys, JEAN, MARIE_ON_APICRYPT,
                         text_entity(f"Résultat INR {i},2 (H)\n"),
                         extra_headers=f"Cc: {COLLEAGUE}\r\n" if i % 3 == 0 else "",
                         message_id=f"<tpl-{i}@test>") for i in range(10)]


def copies(templates: list[bytes], count: int, prefix: str) -> list[bytes]:
    out = []
    for i in range(count):
        raw = templates[i % len(templates)]
        out.append(_MID.sub(f"Message-ID: <{prefix}-{i}@test>".encode(), raw, count=1))
    return out


@dataclass
class Sink:
    """A next hop: STARTTLS SMTP; ``refuse`` DATA commands are answered 451 first."""

    refuse: int = 0
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    refused: int = 0
    hang: bool = False  # hold DATA until the client gives up (a slow next hop)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hang:
            await asyncio.sleep(60)
            return "451 4.3.0 too late"
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return "451 4.3.0 try later"
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos),
                              bytes(envelope.original_content or b"")))
        return "250 2.0.0 queued"

    def message_ids(self) -> collections.Counter[bytes]:
        found = collections.Counter[bytes]()
        for _, _, raw in self.received:
            match = _MID.search(raw.partition(b"\r\n\r\n")[0])
            found[match.group(1) if match else b"?"] += 1
        return found


@dataclass
class Rig:
    pki: Pki
    dovecot: Dovecot
    gateway: Gateway
    sinks: dict[str, Sink]

    def settings(self, *, port: int | None = None, lease: float = 30.0,
                 budget: float = 20.0) -> ImapSettings:
        return ImapSettings(
            network="apicrypt", host=self.dovecot.host, port=port or self.dovecot.port,
            user=self.dovecot.user, password=self.dovecot.password,
            ssl_context=tls.client_context(ca_files=[self.dovecot.ca_file]),
            processing_folder=PROCESSING, rejected_folder=REJECTED, lease_seconds=lease,
            poll_seconds=1.0, command_timeout=5.0, fetch_timeout=5.0, process_budget=budget,
            backoff_initial=0.05, backoff_max=0.5)

    def poller(self, settings: ImapSettings, *,
               process: Callable[[InboundMessage], object] | None = None) -> ImapPoller:
        g = self.gateway
        return ImapPoller(
            settings,
            check_sender=functools.partial(g._check_sender, "apicrypt"),
            route_recipient=functools.partial(g._route_recipient, "apicrypt"),
            process=process or g.process,  # type: ignore[arg-type]
            bounce=Bouncer(hostname=g.config.gateway.hostname,
                           runtime=lambda: g.runtime.network("apicrypt"),
                           hop=lambda: g._hops["apicrypt"]))

    # synchronous IMAP access for the test itself (imaplib, in a thread)
    def _imap(self) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=str(self.dovecot.ca_file))
        client = imaplib.IMAP4_SSL(self.dovecot.host, self.dovecot.port, ssl_context=ctx)
        client.login(self.dovecot.user, self.dovecot.password)
        return client

    def _append(self, messages: list[bytes], folder: str) -> None:
        client = self._imap()
        try:
            folder = self.dovecot.folder(folder)
            client.create(folder)
            for raw in messages:
                typ, _ = client.append(folder, None, None, raw)
                assert typ == "OK"
        finally:
            client.logout()

    async def append(self, messages: list[bytes], folder: str = "INBOX") -> None:
        await asyncio.to_thread(self._append, messages, folder)

    def _counts(self) -> dict[str, int]:
        client = self._imap()
        try:
            out = {}
            for folder in ("INBOX", PROCESSING, REJECTED):
                typ, data = client.status(self.dovecot.folder(folder), "(MESSAGES)")
                match = re.search(rb"MESSAGES (\d+)", data[0] or b"") if typ == "OK" else None
                out[folder] = int(match.group(1)) if match else 0
            return out
        finally:
            client.logout()

    def delimiter(self) -> str:
        """The hierarchy delimiter the server itself announces (``LIST "" ""``)."""
        client = self._imap()
        try:
            _, data = client.list('""', '""')
            match = re.match(rb'\([^)]*\) "(.)"', data[0] or b"")
            assert match, data
            return match.group(1).decode()
        finally:
            client.logout()

    async def counts(self) -> dict[str, int]:
        return await asyncio.to_thread(self._counts)

    def _claim(self, count: int) -> None:
        """What a crashed instance leaves behind: messages moved into processing."""
        client = self._imap()
        try:
            processing = self.dovecot.folder(PROCESSING)
            client.create(processing)
            client.select("INBOX")
            _, data = client.uid("SEARCH", "ALL")  # type: ignore[arg-type]
            for uid in data[0].split()[:count]:
                client.uid("MOVE", uid.decode(), processing)  # type: ignore[arg-type]
        finally:
            client.logout()

    async def wait_done(self, expected: int, timeout: float = 30.0,
                        rejected: int = 0) -> dict[str, int]:
        """Until the sink has ``expected`` distinct messages and the mailbox is drained."""
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            if len(self.sinks["mssante"].message_ids()) >= expected:
                counts = await self.counts()
                if counts == {"INBOX": 0, PROCESSING: 0, REJECTED: rejected}:
                    return counts
            await asyncio.sleep(0.1)
        raise AssertionError(f"not drained: sink {len(self.sinks['mssante'].message_ids())}"
                             f"/{expected}, folders {counts or await self.counts()}")


async def _start_sink(root: Path, network: str, port: int, sink: Sink) -> asyncio.AbstractServer:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / network / "next-hop-tls.pem", root / network / "next-hop-tls.key")
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink.test"),
        "127.0.0.1", port)


@pytest.fixture
def dovecot(request: pytest.FixtureRequest) -> Iterator[Dovecot]:
    """Dovecot as its package ships it (Maildir++, "."), or a layout a test asks for with
    ``@pytest.mark.parametrize("dovecot", [...], indirect=True)``."""
    with running_dovecot(layout=getattr(request, "param", "default")) as server:
        yield server


@pytest.fixture
async def rig(pki: tuple[Pki, dict[str, int]], dovecot: Dovecot) -> AsyncIterator[Rig]:
    keys, ports = pki
    config = load_config(keys.config)
    gateway = Gateway(config, build_runtime(config))
    sinks = {"apicrypt": Sink(), "mssante": Sink()}
    servers = [await _start_sink(keys.root, "apicrypt", ports["a_out"], sinks["apicrypt"]),
               await _start_sink(keys.root, "mssante", ports["m_out"], sinks["mssante"])]
    yield Rig(keys, dovecot, gateway, sinks)
    for server in servers:
        server.close()
    gateway.close()


async def _stop(poller: ImapPoller, task: asyncio.Task[None]) -> None:
    poller.stop()
    await asyncio.wait_for(task, timeout=10)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("dovecot", ["default", "slash"], indirect=True)
async def test_mailbox_messages_are_relayed_opened_by_openssl_and_removed(
        rig: Rig, templates: list[bytes]) -> None:
    # the layout really is the package's Maildir++ "." (or "/" where the test asks for it)
    assert await asyncio.to_thread(rig.delimiter) == rig.dovecot.delimiter
    messages = copies(templates, 4, "basic")
    await rig.append(messages)
    poller = rig.poller(rig.settings())
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        try:
            await rig.wait_done(4)
        finally:
            await _stop(poller, task)
    received = rig.sinks["mssante"].received
    assert len(received) == 4
    for mail_from, rcpts, _raw in received:
        assert (mail_from, rcpts) == (JEAN_ON_MSSANTE, [MARIE])  # the Cc colleague: not routed
    opened = open_as_recipient(rig.pki, MARIE, received[0][2])
    assert b"sultat INR " in opened.content and b",2 (H)" in opened.content
    assert b"smime=pass" in opened.headers
    assert set(rig.sinks["mssante"].message_ids()) == {f"<basic-{i}@test>".encode()
                                                      for i in range(4)}
    assert poller.counts["delivered"] == 4
    events = [e["event"] for e in logs]
    assert events.count("imap.claimed") == 4 and events.count("imap.delivered") == 4
    traces = {e["trace"] for e in logs if e["event"] == "imap.delivered"}
    assert traces == {e["trace"] for e in logs if e["event"] == "imap.claimed"}
    # one trace per message, shared with the gateway's own events; no clear address anywhere
    assert all("jean" not in repr(e) and "marie" not in repr(e) and "Résultat" not in repr(e)
               for e in logs)
    assert all(e.get("mailbox", "a:").startswith("a:") for e in logs if "mailbox" in e)


async def test_two_instances_200_messages_each_delivered_once(
        rig: Rig, templates: list[bytes]) -> None:
    count = 200
    await rig.append(copies(templates, count, "pair"))
    pollers = [rig.poller(rig.settings()) for _ in range(2)]
    started = time.perf_counter()
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        await rig.wait_done(count, timeout=45)
    finally:
        for poller, task in zip(pollers, tasks, strict=True):
            await _stop(poller, task)
    elapsed = time.perf_counter() - started
    ids = rig.sinks["mssante"].message_ids()
    duplicates = sum(n - 1 for n in ids.values())
    print(f"\n[imap] two instances, {count} messages: delivered {len(ids)} distinct, "
          f"duplicates {duplicates}, {elapsed:.2f} s "
          f"(instance A {pollers[0].counts['delivered']}, B {pollers[1].counts['delivered']}, "
          f"lost races {pollers[0].counts['lost_race'] + pollers[1].counts['lost_race']})")
    print(dict(pollers[0].counts), dict(pollers[1].counts))
    assert len(ids) == count
    assert duplicates == 0
    assert all(p.counts["delivered"] > 0 for p in pollers)  # both took part


class CuttingProxy:
    """A TCP proxy in front of Dovecot that kills its first ``cuts`` connections once the
    server has sent ``after`` bytes on them (bodies dominate: that is mid-FETCH)."""

    def __init__(self, target: int, cuts: int, after: int) -> None:
        self.target, self.cuts, self.after = target, cuts, after
        self.port = free_port()
        self.connections = 0
        self.cut = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       counted: bool) -> None:
            sent = 0
            try:
                while data := await src.read(4096):
                    if counted and self.cut < self.cuts and sent + len(data) > self.after:
                        dst.write(data[: self.after - sent])  # part of a literal, then nothing
                        self.cut += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    sent += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_connection_dropped_mid_fetch_nothing_lost(rig: Rig,
                                                         templates: list[bytes]) -> None:
    count = 30
    await rig.append(copies(templates, count, "drop"))
    proxy = CuttingProxy(rig.dovecot.port, cuts=3, after=20_000)
    await proxy.start()
    poller = rig.poller(rig.settings(port=proxy.port))
    task = asyncio.create_task(poller.run())
    try:
        await rig.wait_done(count)
    finally:
        await _stop(poller, task)
        proxy.close()
    ids = rig.sinks["mssante"].message_ids()
    duplicates = sum(n - 1 for n in ids.values())
    print(f"\n[imap] connection cut {proxy.cut} times mid-transfer: delivered {len(ids)}/{count},"
          f" duplicates {duplicates}, reconnections {poller.counts['disconnected']}")
    assert proxy.cut == 3 and poller.counts["disconnected"] >= 3
    assert len(ids) == count


async def test_server_restart_while_polling(rig: Rig, templates: list[bytes]) -> None:
    poller = rig.poller(rig.settings())
    task = asyncio.create_task(poller.run())
    try:
        await rig.append(copies(templates, 5, "restart-a"))
        await rig.wait_done(5)
        await asyncio.to_thread(rig.dovecot.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(rig.dovecot.start)
        await rig.append(copies(templates, 5, "restart-b"))
        await rig.wait_done(10)
    finally:
        await _stop(poller, task)
    ids = rig.sinks["mssante"].message_ids()
    print(f"\n[imap] server restarted: delivered {len(ids)}/10, "
          f"duplicates {sum(n - 1 for n in ids.values())}, "
          f"reconnections {poller.counts['disconnected']}")
    assert len(ids) == 10 and sum(ids.values()) == 10


async def test_next_hop_down_for_a_while_messages_requeued_then_delivered(
        rig: Rig, templates: list[bytes]) -> None:
    count = 10
    rig.sinks["mssante"].refuse = 8
    await rig.append(copies(templates, count, "down"))
    poller = rig.poller(rig.settings())
    task = asyncio.create_task(poller.run())
    try:
        await rig.wait_done(count)
    finally:
        await _stop(poller, task)
    ids = rig.sinks["mssante"].message_ids()
    print(f"\n[imap] next hop refused {rig.sinks['mssante'].refused} times: delivered "
          f"{len(ids)}/{count}, duplicates {sum(n - 1 for n in ids.values())}, "
          f"requeued {poller.counts['requeued']}")
    assert len(ids) == count and sum(ids.values()) == count
    assert poller.counts["requeued"] == 8


async def test_instance_killed_holding_claims_lease_returns_them(
        rig: Rig, templates: list[bytes]) -> None:
    count = 12
    await rig.append(copies(templates, count, "crash"))
    await asyncio.to_thread(rig._claim, 4)  # an instance that died right after claiming
    stuck = asyncio.Event()

    async def hang(message: InboundMessage) -> Reply:
        stuck.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    doomed = rig.poller(rig.settings(budget=3600, lease=3600), process=hang)
    doomed_task = asyncio.create_task(doomed.run())
    await asyncio.wait_for(stuck.wait(), timeout=10)
    doomed_task.cancel()  # killed: no requeue, no logout, its claim stays in processing
    with pytest.raises(asyncio.CancelledError):
        await doomed_task
    assert (await rig.counts())[PROCESSING] == 5
    survivor = rig.poller(rig.settings(lease=1.0))
    task = asyncio.create_task(survivor.run())
    try:
        await rig.wait_done(count)
    finally:
        await _stop(survivor, task)
    ids = rig.sinks["mssante"].message_ids()
    print(f"\n[imap] instance killed holding 5 claims: delivered {len(ids)}/{count}, "
          f"duplicates {sum(n - 1 for n in ids.values())}, "
          f"returned by the lease {survivor.counts['lease_expired']}")
    assert len(ids) == count
    assert survivor.counts["lease_expired"] == 5


def _rogue_message(pki: Pki, folder: Path) -> bytes:
    """From Jean, signed by a certificate for Jean's address issued by a CA nobody trusts."""
    ca = make_ca("Rogue CA")
    leaf = make_leaf(ca, "Jean Dupont (rogue)", emails=[JEAN])
    pem = serialization.Encoding.PEM
    cert, key = folder / "rogue.pem", folder / "rogue.key"
    cert.write_bytes(leaf.certificate.public_bytes(pem))
    key.write_bytes(leaf.key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def openssl(*args: str, data: bytes) -> bytes:
        return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True,
                              timeout=30).stdout

    entity = text_entity("Compte rendu confidentiel: INR 9,9\n")
    signed = openssl("cms", "-sign", "-signer", str(cert), "-inkey", str(key), "-md", "sha256",
                     "-binary", "-outform", "SMIME", data=entity)
    enveloped = openssl("cms", "-encrypt", "-aes-256-cbc", "-binary", "-outform", "SMIME",
                        str(pki.gateway_cert("apicrypt")), data=signed)
    head = (f"From: Jean Dupont <{JEAN}>\r\nTo: {MARIE_ON_APICRYPT}\r\nSubject: Résultats\r\n"
            "Message-ID: <rogue-1@test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n")
    return head.encode("utf-8") + enveloped.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_untrusted_signer_gets_no_dsn_and_lands_in_rejected(
        rig: Rig, templates: list[bytes], tmp_path: Path) -> None:
    """Signed by a key no anchor vouches for, From naming Jean: the From is only a claim, so
    no report goes to it (a forged From would aim the gateway's mail at anyone). The original
    is kept in the rejected folder for the operator; the good messages are relayed."""
    await rig.append([_rogue_message(rig.pki, tmp_path), *copies(templates, 2, "ok")])
    poller = rig.poller(rig.settings())
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        try:
            await rig.wait_done(2, rejected=1)
        finally:
            await _stop(poller, task)
    assert b"<rogue-1@test>" not in rig.sinks["mssante"].message_ids()
    assert rig.sinks["apicrypt"].received == []  # no DSN
    skipped = [e for e in logs if e["event"] == "imap.dsn_skipped"]
    assert skipped and skipped[0]["reason"] == "sender not verified"
    assert skipped[0]["status"] == "5.7.0"  # the one reply after a CBC decryption
    assert poller.counts["dsn_sent"] == 0 and poller.counts["rejected"] == 1


async def test_no_routable_recipient_is_a_permanent_failure(rig: Rig) -> None:
    raw = user_message(rig.pki, JEAN, COLLEAGUE, text_entity("interne\n"),
                       message_id="<local-1@test>")
    await rig.append([raw])
    poller = rig.poller(rig.settings())
    task = asyncio.create_task(poller.run())
    try:
        await rig.wait_done(0, rejected=1)
        deadline = time.monotonic() + 10
        while not rig.sinks["apicrypt"].received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await _stop(poller, task)
    [(_, rcpts, dsn)] = rig.sinks["apicrypt"].received
    assert rcpts == [JEAN]
    assert b"Status: 5.7.1" in open_as_recipient(rig.pki, JEAN, dsn).content


def test_dsn_builder_carries_no_content() -> None:
    import datetime as dt

    original = (b"From: Jean <jean@a.apicrypt.org>\r\nTo: x@y.org\r\nSubject: R\xe9sultats\r\n"
                b"Content-Type: text/plain\r\nX-Secret: nope\r\n\r\nbody text\r\n")
    dsn = build_dsn(original, sender="jean@a.apicrypt.org", recipients=["x@y.org", "bad\r\n"],
                    reply=Reply(550, "5.7.7", "Signature could not be verified"),
                    reporting_mta="gw.test", from_address="gw@gw.test",
                    at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC), message_id="id@gw.test",
                    boundary="b1")
    assert b"body text" not in dsn.entity and b"X-Secret" not in dsn.entity
    assert b"Content-Type: text/plain\r\nX-Secret" not in dsn.entity
    assert b"Subject:" not in dsn.entity.partition(b"text/rfc822-headers")[2]  # no sender text
    assert dsn.entity.count(b"Final-Recipient:") == 1
    assert b"Diagnostic-Code: smtp; 550 5.7.7 Signature could not be verified" in dsn.entity
    assert dsn.entity.isascii() is False  # the human part is UTF-8 French
    assert ("Auto-Submitted", "auto-replied") in dsn.headers


def _config_with_imap(rig: Rig, name: str, *, lease: float = 600) -> Path:
    cfg = rig.pki.config
    text = cfg.read_text()
    imap = (f'\n[networks.apicrypt.imap]\nhost = "{rig.dovecot.host}"\nport = {rig.dovecot.port}\n'
            f'user = "{rig.dovecot.user}"\npassword_file = "{rig.dovecot.password_file}"\n'
            f'tls_ca = "{rig.dovecot.ca_file}"\nprocessing_folder = "{PROCESSING}"\n'
            f'rejected_folder = "{REJECTED}"\npoll_seconds = 1\nlease_seconds = {lease}\n')
    # the table goes at the end of the apicrypt network's section
    text = text.replace("\n[networks.mssante]", imap + "\n[networks.mssante]", 1)
    configured = cfg.with_name(name)
    configured.write_text(text)
    return configured


async def test_configured_mailbox_is_polled_by_the_running_gateway(
        rig: Rig, templates: list[bytes]) -> None:
    """The ``imap`` table of a network: ``Gateway.start()`` runs its poller, stop drains it."""
    config = load_config(_config_with_imap(rig, "with-imap.toml"))
    gateway = Gateway(config, build_runtime(config))
    await rig.append(copies(templates, 3, "configured"))
    await gateway.start()
    try:
        await rig.wait_done(3)
    finally:
        await gateway.stop_accepting()
        assert await gateway.drain(10)
        await gateway.close_delivery()
        gateway.close()
    assert set(rig.sinks["mssante"].message_ids()) == {
        f"<configured-{i}@test>".encode() for i in range(3)}



async def test_instance_sigkilled_while_holding_a_claim_loses_nothing(
        rig: Rig, templates: list[bytes], tmp_path: Path) -> None:
    """A real ``gateway run`` process is SIGKILLed while it holds a claimed message (its next
    hop is hanging); a second process (started after, on the same ports) recovers the claim
    after the lease: all delivered."""
    import signal
    import subprocess
    import sys

    config = _config_with_imap(rig, "imap-kill.toml", lease=3)
    await rig.append(copies(templates, 4, "killed"))
    rig.sinks["mssante"].hang = True

    def start(log_name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log_name).open("wb") as log:
            return subprocess.Popen([sys.executable, "-m", "gateway", "run", "--workers", "1",
                                     "--config", str(config)], stdout=log, stderr=log)

    first = start("first.log")
    try:
        deadline = time.monotonic() + 20
        while (await rig.counts())[PROCESSING] == 0:  # wait until it holds a claim
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert (await rig.counts())[PROCESSING] >= 1  # the claim is stranded on the server
    rig.sinks["mssante"].hang = False
    second = start("second.log")
    try:
        await rig.wait_done(4, timeout=40)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    ids = rig.sinks["mssante"].message_ids()
    duplicates = sum(n - 1 for n in ids.values())
    print(f"SIGKILL while claiming: delivered {len(ids)}/4, duplicates {duplicates}")
    assert set(ids) == {f"<killed-{i}@test>".encode() for i in range(4)}


async def test_a_folder_the_server_cannot_hold_is_one_clear_error_with_back_off(
        rig: Rig, templates: list[bytes]) -> None:
    """Maildir++ (".") cannot hold "Proc.essing" as one name: the poller names the folder and
    why in ``imap.folder_unusable``, backs off, and relays nothing (no hot reconnect loop)."""
    await rig.append(copies(templates, 1, "folder"))
    settings = replace(rig.settings(), processing_folder="Passerelle/Proc.essing",
                       backoff_initial=0.2, backoff_max=0.4)
    poller = rig.poller(settings)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.5)
        await _stop(poller, task)
    unusable = [e for e in logs if e["event"] == "imap.folder_unusable"]
    assert unusable and unusable[0]["folder"] == "Passerelle/Proc.essing"
    assert "delimiter '.'" in unusable[0]["server"]
    assert unusable[0]["log_level"] == "error"
    assert 2 <= poller.counts["folder_unusable"] <= 8  # backed off, not a hot loop
    assert rig.sinks["mssante"].received == []
    assert (await rig.counts())["INBOX"] == 1  # nothing lost either


def test_a_recipient_a_directory_must_be_asked_holds_the_message() -> None:
    """A mailbox message to an alias only an LDAP directory knows: until the directory has
    answered, the message is "try again" (4xx: it stays in the mailbox), never "not for the
    gateway" (which would reject it with a DSN)."""
    from gateway import errors
    from gateway.transport.imap_in import envelope_of

    raw = (b"From: jean.dupont@medical59.apicrypt.org\r\n"
           b"To: alias.annuaire@passerelle.apicrypt.org, collegue@medical59.apicrypt.org\r\n"
           b"Subject: x\r\n\r\nx\r\n")

    def route(rcpt: str) -> str:
        if rcpt.startswith("alias."):
            raise errors.DirectoryUnavailable("alias not looked up in the directory")
        raise errors.RecipientRefused("same network")

    envelope = envelope_of(raw, lambda sender: sender, route)
    assert envelope.pending == ("alias.annuaire@passerelle.apicrypt.org",)
    assert envelope.refusal is not None and envelope.refusal.transient
    assert (envelope.refusal.code, envelope.refusal.status) == (451, "4.4.3")
