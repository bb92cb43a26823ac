"""Next hops for tests: an SMTP (or LMTP) server that keeps what it receives.

One class for every test that needs a peer to relay to; the real MTAs (Postfix) are started
by tests/postfix.py, this is the in-process stand-in of unit and field tests alike.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session


class Sink:
    """Keeps (envelope recipients, content) of each message; answers ``reply``."""

    def __init__(self, reply: str = "250 2.0.0 queued as SINK1") -> None:
        self.reply = reply
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content or b"")))
        return self.reply

    @property
    def contents(self) -> list[bytes]:
        return [content for _, content in self.received]


async def start_tls_sink(sink: Sink, pki_root: Path, network: str,
                         port: int) -> asyncio.AbstractServer:
    """``sink`` on 127.0.0.1:``port`` with STARTTLS required, as the dev PKI's next hop of
    ``network`` (its next-hop-tls certificate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki_root / network / "next-hop-tls.pem",
                            pki_root / network / "next-hop-tls.key")
    return await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, tls_context=context, require_starttls=True), "127.0.0.1", port)
