"""The relay end to end on loopback: a client sends S/MIME mail (made by openssl) to one
listener, the gateway re-seals it, a next-hop sink receives it, and openssl opens it with the
recipient's key. Then the next hop misbehaves and the sender must never be told "delivered".
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from gateway.transport.limits import RateLimiter
from tests.messages import (
    Pki,
    network_of,
    open_as_recipient,
    text_entity,
    text_of,
    user_message,
)
from tests.ports import free_port, port_map

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, int]]:
    ports = port_map("a_in", "a_out", "m_in", "m_out")
    root = tmp_path_factory.mktemp("pki")
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    # short budgets so the hanging-sink case ends quickly
    cfg = root / "gateway.toml"
    cfg.write_text(cfg.read_text().replace(
        "log_level = \"info\"", "log_level = \"info\"\ndata_timeout_seconds = 4"))
    return Pki(root), ports


@dataclass
class Sink:
    """The next hop: an SMTP server with STARTTLS whose behaviour the test sets."""

    mode: str = "accept"  # accept | tempfail | permfail | hang | drop
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    accept_only: int | None = None  # tempfail every DATA after this many were accepted

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.mode == "tempfail" or (self.accept_only is not None
                                       and len(self.received) >= self.accept_only):
            return "451 4.3.0 try later"
        if self.mode == "permfail":
            return "554 5.7.1 refused by policy"
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "drop":
            assert server.transport is not None
            server.transport.abort()
            return "250 never seen"
        assert envelope.mail_from is not None
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              bytes(envelope.original_content or b"")))
        return "250 2.0.0 queued as T1"


@dataclass
class Rig:
    pki: Pki
    ports: dict[str, int]
    sinks: dict[str, Sink]
    gateway: Gateway


async def _start_sink(root: Path, network: str, port: int, sink: Sink) -> asyncio.AbstractServer:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / network / "next-hop-tls.pem", root / network / "next-hop-tls.key")
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink.test"),
        "127.0.0.1", port)


@pytest.fixture
async def rig(pki: tuple[Pki, dict[str, int]]) -> AsyncIterator[Rig]:
    keys, ports = pki
    config = load_config(keys.config)
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    sinks = {"apicrypt": Sink(), "mssante": Sink()}
    servers = [await _start_sink(keys.root, "apicrypt", ports["a_out"], sinks["apicrypt"]),
               await _start_sink(keys.root, "mssante", ports["m_out"], sinks["mssante"])]
    yield Rig(keys, ports, sinks, gateway)
    await gateway.stop_accepting()
    await gateway.close_delivery()
    for server in servers:
        server.close()
    gateway.close()


def _send(rig: Rig, network: str, sender: str, rcpt: str | list[str],
          raw: bytes) -> tuple[int, bytes]:
    """An MTA's view: the reply code (and text) to the DATA of one message."""
    port = rig.ports["a_in" if network == "apicrypt" else "m_in"]
    ctx = ssl.create_default_context(cafile=str(rig.pki.ca_file(network)))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for one in [rcpt] if isinstance(rcpt, str) else rcpt:
            code, text = client.rcpt(one)
            if code != 250:
                return code, text
        return client.data(raw)


async def test_a_client_probing_decrypted_content_is_held_off(rig: Rig) -> None:
    """A padding-oracle probe is thousands of messages refused after decryption: past the
    limit, the client gets 451 4.7.0 without anything being decrypted, an attack.suspected
    event and a metric; a genuine message from it waits for the hold to end."""
    path = rig.gateway.path
    path._refusals = RateLimiter(3, time.monotonic)  # three a minute, then the hold
    forged = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"),
                          signer="labo.biolille@labo59.apicrypt.org")
    with structlog.testing.capture_logs() as logs:
        codes = [(await send(rig, JEAN, MARIE_ON_APICRYPT, forged))[:1] for _ in range(5)]
        genuine = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"))
        held = await send(rig, JEAN, MARIE_ON_APICRYPT, genuine)
    assert [c[0] for c in codes] == [550, 550, 550, 550, 451]
    assert held[0] == 451 and held[1].startswith(b"4.7.0")
    assert [e["event"] for e in logs].count("attack.suspected") == 1
    assert any(e["event"] == "message.held_off" for e in logs)
    assert b"passerelle_suspected_attacks_total" in rig.gateway.metrics.render()
    path._suspects.clear()  # the hold ends: mail flows again
    assert (await send(rig, JEAN, MARIE_ON_APICRYPT, genuine))[0] == 250


async def send(rig: Rig, sender: str, rcpt: str | list[str], raw: bytes) -> tuple[int, bytes]:
    return await asyncio.to_thread(_send, rig, network_of(sender), sender, rcpt, raw)


async def test_apicrypt_to_mssante_opened_by_openssl(rig: Rig) -> None:
    raw = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT,
                       text_entity("Résultat INR 3,2 (H)\n"), message_id="<e2e-1@test>")
    code, _ = await send(rig, JEAN, MARIE_ON_APICRYPT, raw)
    assert code == 250
    [(mail_from, rcpts, relayed)] = rig.sinks["mssante"].received
    assert mail_from == JEAN_ON_MSSANTE
    assert rcpts == [MARIE]
    opened = open_as_recipient(rig.pki, MARIE, relayed)
    assert "Résultat INR 3,2" in text_of(opened.content)
    assert b'charset="utf-8"' in opened.content  # normalised for mssante
    assert b"Message-ID: <e2e-1@test>" in opened.headers
    assert b"smime=pass" in opened.headers
    assert f"From: <{JEAN_ON_MSSANTE}>".encode() in opened.headers
    assert b"Passerelle" in opened.signer_pem or opened.signer_pem.startswith(b"-----BEGIN")


async def test_a_bcc_recipient_is_delivered_its_own_copy(rig: Rig) -> None:
    """Two envelope recipients, To names one: the next hop gets two transactions, each
    sealed for its recipient alone. When the second copy is refused for now, the sender is
    told to retry (a duplicate for the first reader rather than a loss)."""
    secretariat = "secretariat.cardio.mssante@passerelle.apicrypt.org"
    raw = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,4\n"))
    code, _ = await send(rig, JEAN, [MARIE_ON_APICRYPT, secretariat], raw)
    assert code == 250
    sink = rig.sinks["mssante"]
    assert [rcpts for _, rcpts, _ in sink.received] == [
        [MARIE], ["secretariat.cardio@chu-test.mssante.fr"]]
    assert b"INR 2,4" in open_as_recipient(
        rig.pki, "secretariat.cardio@chu-test.mssante.fr", sink.received[1][2]).content
    sink.received.clear()
    sink.accept_only = 1
    code, _ = await send(rig, JEAN, [MARIE_ON_APICRYPT, secretariat], raw)
    assert code == 451
    assert [rcpts for _, rcpts, _ in sink.received] == [[MARIE]]


async def test_mssante_to_apicrypt_opened_by_openssl(rig: Rig) -> None:
    raw = user_message(rig.pki, MARIE, JEAN_ON_MSSANTE,
                       text_entity("Compte rendu: patient stable.\n", "utf-8"))
    code, _ = await send(rig, MARIE, JEAN_ON_MSSANTE, raw)
    assert code == 250
    [(mail_from, rcpts, relayed)] = rig.sinks["apicrypt"].received
    assert (mail_from, rcpts) == (MARIE_ON_APICRYPT, [JEAN])
    opened = open_as_recipient(rig.pki, JEAN, relayed)
    assert "patient stable" in text_of(opened.content)
    assert b'charset="iso-8859-1"' in opened.content  # normalised for apicrypt


@pytest.mark.parametrize(("mode", "expected"), [
    ("tempfail", 451), ("permfail", 554), ("hang", 451), ("drop", 451), ("down", 451)])
async def test_next_hop_failures_are_never_reported_delivered(rig: Rig, mode: str,
                                                              expected: int) -> None:
    sink = rig.sinks["mssante"]
    sink.mode = mode
    if mode == "down":  # nothing listens on the relay port any more
        rig.gateway._hops["mssante"] = rig.gateway._hops["mssante"].__class__(
            **{**rig.gateway._hops["mssante"].__dict__, "port": free_port()})
    raw = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,9\n"))
    code, _ = await send(rig, JEAN, MARIE_ON_APICRYPT, raw)
    assert code == expected
    assert sink.received == []
    # the next hop comes back: the sender's retry succeeds (nothing was lost)
    sink.mode = "accept"
    if mode == "down":
        await rig.gateway.stop_accepting()
        rig.gateway._hops["mssante"] = rig.gateway._next_hop(rig.gateway.config.network("mssante"))
        rig.gateway._servers.clear()
        await rig.gateway.start()
    code, _ = await send(rig, JEAN, MARIE_ON_APICRYPT, raw)
    assert code == 250
    assert len(sink.received) == 1


async def test_refusals_at_the_envelope_and_at_data(rig: Rig) -> None:
    raw = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"))
    # a recipient that is not an alias of the other network: no open relay
    code, _ = await send(rig, JEAN, "someone@example.com", raw)
    assert code == 550
    # a message signed by someone else than its From
    forged = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("x\n"),
                          signer="labo.biolille@labo59.apicrypt.org")
    code, text = await send(rig, JEAN, MARIE_ON_APICRYPT, forged)
    # after a CBC decryption every refusal is one reply (no padding oracle)
    assert (code, text[:5]) == (550, b"5.7.0")
    # a revoked signer
    revoked = user_message(rig.pki, "revoque@medical59.apicrypt.org", MARIE_ON_APICRYPT,
                           text_entity("x\n"))
    code, text = await send(rig, "revoque@medical59.apicrypt.org", MARIE_ON_APICRYPT, revoked)
    assert (code, text[:5]) == (550, b"5.7.0")
    # a clear (unencrypted) message
    code, text = await send(rig, JEAN, MARIE_ON_APICRYPT,
                            b"From: " + JEAN.encode() + b"\r\n\r\nhello\r\n")
    assert (code, text[:5]) == (550, b"5.7.5")
    # to a recipient whose certificate is revoked
    code, text = await send(rig, JEAN, "revoque.mssante@passerelle.apicrypt.org", raw)
    assert code == 550
    assert rig.sinks["mssante"].received == []


_WRITES: list[str] = []
_WATCHING = [False]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if not _WATCHING[0] or event != "open":
        return
    path, mode, flags = (*args, None, None, None)[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writing:
        _WRITES.append(str(path))


async def test_nothing_is_opened_for_writing_during_relays(rig: Rig) -> None:
    """DESIGN §2: no spool, no temp file. Watch every open() of the process while relaying."""
    raws = [user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity(f"INR {i}\n"),
                         message_id=f"<disk-{i}@test>") for i in range(3)]
    back = user_message(rig.pki, MARIE, JEAN_ON_MSSANTE, text_entity("ok\n", "utf-8"))
    sys.addaudithook(_audit)
    _WRITES.clear()
    _WATCHING[0] = True
    try:
        for raw in raws:
            assert (await send(rig, JEAN, MARIE_ON_APICRYPT, raw))[0] == 250
        assert (await send(rig, MARIE, JEAN_ON_MSSANTE, back))[0] == 250
    finally:
        _WATCHING[0] = False
    assert len(rig.sinks["mssante"].received) == 3
    assert _WRITES == []


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_metrics_and_readiness_endpoint(rig: Rig) -> None:
    from gateway.metrics import serve_http

    port = free_port()
    http = await serve_http("127.0.0.1", port, rig.gateway.metrics, rig.gateway.readiness)
    try:
        assert await _get(port, "/healthz") == (200, "alive\n")
        status, body = await _get(port, "/readyz")
        assert status == 200, body
        raw = user_message(rig.pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 3\n"))
        for _ in range(2):
            assert (await send(rig, JEAN, MARIE_ON_APICRYPT, raw))[0] == 250
        assert (await send(rig, JEAN, MARIE_ON_APICRYPT, b"From: x\r\n\r\nclear\r\n"))[0] == 550
        status, text = await _get(port, "/metrics")
        assert status == 200
        assert ('passerelle_messages_total{code="250",direction="apicrypt->mssante",'
                'outcome="relayed"} 2.0') in text
        assert ('passerelle_messages_total{code="550",direction="apicrypt->mssante",'
                'outcome="refused"} 1.0') in text
        assert 'passerelle_stage_seconds_count{direction="apicrypt->mssante",stage="deliver"} 2.0' \
            in text
        assert 'passerelle_limit{name="max_recipients"} 50.0' in text
        assert 'passerelle_certificate_days_left{key="networks.mssante.smime_cert"}' in text
        assert "passerelle_in_flight 0.0" in text
        assert "jean" not in text and "marie" not in text
        # the mssante next hop goes down: not ready any more
        rig.gateway._hops["mssante"] = rig.gateway._hops["mssante"].__class__(
            **{**rig.gateway._hops["mssante"].__dict__, "port": free_port()})
        status, body = await _get(port, "/readyz")
        assert status == 503
        assert "next_hop_mssante FAIL" in body and "next_hop_apicrypt ok" in body
    finally:
        http.close()
