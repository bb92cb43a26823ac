"""The first message, by hand: ``gateway send`` and ``gateway demo-sink`` (development PKI).

Rule kept here: these stand in for the outside world of a development setup written by
``gateway pki init`` and nothing else: ``send`` is a user's mail client (it signs with the
sample user's key and encrypts for the gateway, then speaks SMTP with STARTTLS to the
listener of the sender's network); ``demo-sink`` is both networks' next hops (it accepts on
the ``relay`` addresses of the configuration, opens each message with the recipient's sample
key and prints what the recipient would read). Keys and certificates come from the folder of
the configuration; no message is written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import ssl
import sys
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.config import load_config, other, read_certificates
from gateway.demo import Style, show_relayed
from gateway.devpki import USERS, alias_of, user_identity
from gateway.smime.unwrap import seal
from gateway.translate.context import build_runtime


def network_of_user(address: str) -> str:
    for network, users in USERS.items():
        if address in users:
            return network
    raise KeyError(address)


def _recipient_on(network: str, rcpt: str) -> str:
    """A sample user of the other network is written to under their alias on ``network``."""
    with contextlib.suppress(KeyError):
        if network_of_user(rcpt) == other(network):
            return alias_of(rcpt, other(network))
    return rcpt


def build(config_path: Path, sender: str, rcpt: str, text: str) -> tuple[str, str, bytes]:
    """(source network, envelope recipient, message) as the sender's client writes it."""
    config = load_config(config_path)
    network = network_of_user(sender)
    to = _recipient_on(network, rcpt)
    identity = user_identity(config_path.parent, sender)
    net = config.network(network)
    gateway_cert = read_certificates(net.smime_cert)[0]
    entity = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
              f"\r\n{text}\r\n").encode()
    headers = [("From", sender), ("To", to), ("Subject", "Premier message"),
               ("Date", email.utils.format_datetime(dt.datetime.now(dt.UTC))),
               ("Message-ID", email.utils.make_msgid(domain=sender.rpartition("@")[2])),
               ("MIME-Version", "1.0")]
    return network, to, seal(entity, identity, [gateway_cert], headers)


async def send(config_path: Path, sender: str, rcpt: str, text: str) -> int:
    """Sign, encrypt and send one message; print the gateway's reply. Exit 0 on 250."""
    network, to, raw = build(config_path, sender, rcpt, text)
    config = load_config(config_path)
    net = config.network(network)
    if net.listen is None:
        print(f"error: networks.{network} has no listen address", file=sys.stderr)
        return 2
    host, _, port = net.listen.rpartition(":")
    context = ssl.create_default_context()
    for anchor in (*net.trust_anchors, *net.intermediates):
        context.load_verify_locations(cafile=str(anchor))
    context.check_hostname = False  # a loopback listener; the chain is still verified
    smtp = aiosmtplib.SMTP(hostname=host.strip("[]"), port=int(port), start_tls=True,
                           tls_context=context, timeout=60)
    print(f"{sender} -> {to} via the {network} listener {net.listen}")
    try:
        async with smtp:
            _, message = await smtp.sendmail(sender, [to], raw)
            reply = f"250 {message}"
    except aiosmtplib.SMTPResponseException as exc:
        reply = f"{exc.code} {exc.message}"
    except (OSError, aiosmtplib.SMTPException) as exc:
        print(f"error: cannot reach {net.listen}: {exc}", file=sys.stderr)
        return 2
    print(f"gateway answered: {reply}")
    return 0 if reply.startswith("250") else 1


class _Inbox:
    def __init__(self, config_path: Path, network: str) -> None:
        self.root = config_path.parent
        self.network = network
        self.store = build_runtime(load_config(config_path)).network(network).store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        print(f"\n{self.network} next hop: a message for {', '.join(envelope.rcpt_tos)} "
              f"({len(raw)} bytes)")
        for rcpt in envelope.rcpt_tos:
            try:
                show_relayed(Style(sys.stdout.isatty()), print, self.root, rcpt, self.network,
                             raw, self.store)
            except Exception as exc:  # a recipient without a sample key, or a broken message
                print(f"  (not opened for {rcpt}: {type(exc).__name__}: {exc})")
        return "250 2.0.0 queued as DEMO"


async def sink(config_path: Path) -> int:
    """Accept what the gateway relays, on both ``relay`` addresses, until interrupted."""
    config = load_config(config_path)
    servers = []
    loop = asyncio.get_running_loop()
    for name in ("apicrypt", "mssante"):
        host, _, port = config.network(name).relay.rpartition(":")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        folder = config_path.parent / name
        context.load_cert_chain(folder / "next-hop-tls.pem", folder / "next-hop-tls.key")
        inbox = _Inbox(config_path, name)
        servers.append(await loop.create_server(
            lambda inbox=inbox, context=context: SMTP(  # type: ignore[misc]
                inbox, tls_context=context, require_starttls=True, hostname="demo-sink"),
            host.strip("[]"), int(port)))
        print(f"{name} next hop listening on {host}:{port}")
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()
    return 0
