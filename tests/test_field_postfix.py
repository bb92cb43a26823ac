"""Postfix as the gateway's peers: the sending MTA in front of it, and the next hop behind it.

Postfix runs from the configuration its Debian package ships (tests/postfix.py), varied only
by what each role needs. In front: the gateway's 451 makes Postfix keep the message in its
queue, and its retry delivers it once the next hop is back: nothing lost, nothing twice. Behind:
the gateway's outbound TLS verifies a chain Postfix sends with an intermediate (the dev PKI's
mssante next hop: leaf then intermediate; the gateway trusts only the root), and refuses to
relay, in clear or at all, when the intermediate is missing.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from tests.messages import Pki, open_as_recipient, text_entity, user_message
from tests.ports import port_map
from tests.postfix import Postfix
from tests.sinks import Sink

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Pki, dict[str, int], Gateway]]:
    ports = port_map("a_in", "a_out", "m_in", "m_out", "front")
    init_pki(tmp_path, force=True, apicrypt_port=ports["a_in"],
             apicrypt_relay_port=ports["a_out"], mssante_port=ports["m_in"],
             mssante_relay_port=ports["m_out"])
    config = load_config(tmp_path / "gateway.toml")
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    yield Pki(tmp_path), ports, gateway
    await gateway.stop_accepting()
    await gateway.close_delivery()
    gateway.close()


async def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def submit(port: int, raw: bytes) -> None:
    """A user's client handing the message to Postfix (plain SMTP on loopback)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(JEAN, [MARIE_ON_APICRYPT], raw)


async def test_postfix_in_front_keeps_a_deferred_message_and_delivers_it_once(
        world: tuple[Pki, dict[str, int], Gateway]) -> None:
    pki, ports, _ = world
    front = Postfix(ports["front"], {
        "mynetworks": "127.0.0.0/8",
        "relay_domains": "passerelle.apicrypt.org",
        "relayhost": f"[127.0.0.1]:{ports['a_in']}",
        "smtp_tls_security_level": "encrypt",  # the gateway's listener requires STARTTLS
    })
    front.start()
    server = None
    try:
        raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
        await asyncio.to_thread(submit, ports["front"], raw)
        # the mssante next hop is down: the gateway answers 451, Postfix keeps the message
        log = await asyncio.to_thread(front.wait_log, "status=deferred")
        assert re.search(r"status=deferred .*451 4\.4\.1", log), log
        assert "in 1 Request." in front.queue()  # kept by Postfix, the sender's side
        sink = Sink()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pki.root / "mssante" / "next-hop-tls.pem",
                            pki.root / "mssante" / "next-hop-tls.key")
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink.test"),
            "127.0.0.1", ports["m_out"])
        await asyncio.to_thread(front.flush)  # Postfix's own retry, brought forward
        await wait_until(lambda: "status=sent" in front.maillog())
        await wait_until(lambda: "Mail queue is empty" in front.queue())
        assert len(sink.received) == 1  # nothing lost, nothing twice
        opened = open_as_recipient(pki, MARIE, sink.contents[0])
        assert b"INR 2,2" in opened.content
    finally:
        if server is not None:
            server.close()
        front.stop()


def send_to_gateway(pki: Pki, port: int) -> tuple[int, bytes]:
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    ctx = ssl.create_default_context(cafile=str(pki.ca_file("apicrypt")))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        client.mail(JEAN)
        client.rcpt(MARIE_ON_APICRYPT)
        return client.data(raw)


@pytest.mark.parametrize("with_intermediate", [True, False])
async def test_outbound_tls_to_a_postfix_next_hop_with_an_intermediate(
        world: tuple[Pki, dict[str, int], Gateway], with_intermediate: bool) -> None:
    pki, ports, _ = world
    chain = pki.root / "mssante" / "next-hop-tls.pem"  # leaf, then the intermediate
    if not with_intermediate:
        leaf_only = pki.root / "mssante" / "leaf-only.pem"
        text = chain.read_text()
        leaf_only.write_text(text[: text.index("-----END CERTIFICATE-----") + 26])
        chain = leaf_only
    behind = Postfix(ports["m_out"], {
        "relay_domains": "hopital-test.mssante.fr",
        "relay_transport": "discard:delivered by the test's next hop",
        "smtpd_tls_security_level": "encrypt",  # no MAIL without TLS
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_chain_files": f"{pki.root / 'mssante' / 'next-hop-tls.key'}, {chain}",
    })
    behind.start()
    try:
        code, text = await asyncio.to_thread(send_to_gateway, pki, ports["a_in"])
        if with_intermediate:
            assert code == 250, text
            log = await asyncio.to_thread(behind.wait_log, "status=sent")
            assert "TLS connection established from localhost" in log
        else:
            assert (code, text[:5]) == (451, b"4.7.5"), text  # TLS failed: the sender retries
            assert "status=sent" not in behind.maillog()  # nothing relayed, in clear or not
            assert "Mail queue is empty" in behind.queue()
    finally:
        behind.stop()
