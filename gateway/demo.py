"""``gateway demo``: the whole gateway on loopback, in one command, leaving nothing behind.

Rule kept here: the demo uses the production code paths (listeners, pipeline, delivery) and
only stands in for the outside world: a throw-away PKI and config in a temporary folder
(certificates and keys only — no message is ever written), one in-process mail server per
network as the next hop, and users' mail clients that sign and encrypt as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import errors
from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import alias_of, free_ports, init_pki, user_identity
from gateway.formats.convert import hprim_to_xdm
from gateway.formats.hprim import parse_hprim
from gateway.formats.xdm import read_xdm
from gateway.obs import configure_logging
from gateway.smime.trust import TrustStore
from gateway.smime.unwrap import seal, unwrap
from gateway.translate.context import build_runtime

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"

HPRIM_LAB = (
    "DUP123\r\nDUPONT\r\nJEANNE\r\n12 rue des Écoles\r\n\r\n59000 LILLE\r\n"
    "14/07/1956\r\n2560759123456 65\r\nREQ-2026-1128\r\n28/11/2026\r\n"
    "LABO59    Laboratoire Biolille\r\nDUPONTJ   Dr Jean Dupont\r\n"
    "Résultats de biologie - contrôle anticoagulant.\r\n"
    "****LAB****\r\n"
    "RES|INR|INR|N|3.2||2.0|3.0|H|F\r\n"
    "RES|Hémoglobine|HB|N|11.2|g/dL|12.0|16.0|L|F\r\n"
    "RES|Plaquettes|PLQ|N|250|G/L|150|400|N|F\r\n"
    "TEX|Traitement par AVK : INR au-dessus de la cible.\r\n"
    "****FIN****\r\n****FINFICHIER****\r\n"
)


@dataclass
class Mailbox:
    """A network's mail server as seen from the gateway: it accepts and keeps what arrives."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              bytes(envelope.original_content or b"")))
        self.arrived.set()
        return "250 2.0.0 stored in the demo mailbox"


class Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def title(self, text: str) -> str:
        return self._c("1;36", text)

    def ok(self, text: str) -> str:
        return self._c("32", text)

    def bad(self, text: str) -> str:
        return self._c("31", text)

    def dim(self, text: str) -> str:
        return self._c("2", text)


def _lab_entity() -> bytes:
    body = HPRIM_LAB.encode("iso-8859-1", "replace")
    return (b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)


HOSPITAL_LETTER = (
    "DUP123\r\nDUPONT\r\nJEANNE\r\n12 rue des Écoles\r\n\r\n59000 LILLE\r\n"
    "14/07/1956\r\n2560759123456 65\r\nCR-2026-4471\r\n28/11/2026\r\n"
    "CHUCARDIO Service de cardiologie\r\nDUPONTJ   Dr Jean Dupont\r\n"
    "Compte rendu de consultation : INR à 3,2 sous AVK ; dose réduite d'un quart,\r\n"
    "contrôle de l'INR dans 5 jours. Cœur : rythme régulier, pas de souffle.\r\n"
    "****FINFICHIER****\r\n"
)


def _reply_entity(now: dt.datetime) -> bytes:
    """What an MSSanté hospital sends: a short note and the report as IHE_XDM.ZIP (CDA R2)."""
    _, xdm = hprim_to_xdm(parse_hprim(HOSPITAL_LETTER), effective_time=now,
                          submission_time=now)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg.set_content("Bonjour Docteur,\r\nci-joint le compte rendu (XDM).\r\n"
                    "Cordialement,\r\nDr Marie Curie\r\n", charset="utf-8")
    msg.add_attachment(xdm, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    del msg["MIME-Version"]
    return msg.as_bytes()


async def _send(port: int, cafile: Path, sender: str, rcpt: str, raw: bytes) -> str:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False  # the demo's listener is 127.0.0.1; the chain is verified
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                           tls_context=context, timeout=30)
    async with smtp:
        try:
            response = await smtp.sendmail(sender, [rcpt], raw)
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message}"
    return response[1]


def show_relayed(style: Style, out: Callable[[str], None], root: Path, recipient: str,
          network: str, raw: bytes, runtime_store: TrustStore) -> None:
    identity = user_identity(root, recipient)
    # The relayed message is signed by the gateway (named in its Sender header), not by the
    # author named in From: check the signature, then show who signed.
    opened = unwrap(raw, [identity], runtime_store, dt.datetime.now(dt.UTC),
                    require_signed=False)
    if opened.signer is None:
        raise errors.NotSigned("relayed message is not signed")
    headers = email.message_from_bytes(raw.partition(b"\r\n\r\n")[0] + b"\r\n\r\n",
                                       policy=email.policy.default)
    out("  ├─ headers")
    for name in ("From", "Sender", "To", "Subject", "Message-ID", "Authentication-Results",
                 "X-MSS-CODECDA", "X-MSS-INS"):
        if headers.get(name) is not None:
            out(f"  │    {name}: {headers[name]}")
    signer = opened.signer
    layers = " → ".join(layer.kind for layer in opened.layers)
    out(f"  ├─ security  {layers}, decrypted with {recipient}'s key")
    if signer is not None:
        out("  │    signature " + style.ok("valid") +
            f", signed by {signer.certificate.subject.rfc4514_string()}")
        out(f"  │    chain: {' ← '.join(c.subject.rfc4514_string() for c in signer.chain)}")
    inner = email.message_from_bytes(opened.content, policy=email.policy.default)
    parts = list(inner.walk()) if inner.is_multipart() else [inner]
    texts = [p for p in parts if p.get_content_type() == "text/plain"]
    attachments = [p for p in parts if p.get_filename()]
    for part in texts[:1]:
        charset = part.get_content_charset() or "us-ascii"
        out(f"  ├─ text ({charset})")
        for line in str(part.get_content()).splitlines()[:30]:
            out(f"  │    {line}")
    for part in attachments:
        if (part.get_filename() or "").upper() == "IHE_XDM.ZIP":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                content = read_xdm(data)
                out(f"  ├─ IHE_XDM.ZIP: METADATA.XML and {len(content.entries)} CDA document(s),"
                    f" patient {content.entries[0].patient_id if content.entries else '?'}")
                for entry in content.entries:
                    if entry.cda is not None:
                        out(f"  │    {entry.uri}: {entry.format_code}, "
                            f"{len(entry.cda.observations)} structured observation(s)"
                            + "".join(f"; {o.label} {o.value} {o.unit or ''} "
                                      f"[{o.interpretation}]"
                                      for o in entry.cda.observations if o.interpretation
                                      and o.interpretation != "N"))
    out("  └─ attachments: " + (", ".join(
        f"{p.get_filename()} ({p.get_content_type()}, "
        f"{len(p.get_payload(decode=True) or b'')} bytes)" for p in attachments) or "none"))


async def _run(root: Path, style: Style, out: Callable[[str], None]) -> int:
    ports = dict(zip(("a_in", "a_out", "m_in", "m_out"), free_ports(4), strict=True))
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    config = load_config(root / "gateway.toml")
    runtime = build_runtime(config)
    gateway = Gateway(config, runtime, workers=2)
    mailboxes = {"apicrypt": Mailbox(), "mssante": Mailbox()}
    loop = asyncio.get_running_loop()
    servers = []
    for network, port in (("apicrypt", ports["a_out"]), ("mssante", ports["m_out"])):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(root / network / "next-hop-tls.pem",
                                root / network / "next-hop-tls.key")
        box = mailboxes[network]
        servers.append(await loop.create_server(
            lambda box=box, context=context: SMTP(box, tls_context=context,  # type: ignore[misc]
                                                  require_starttls=True, hostname="mx.demo"),
            "127.0.0.1", port))
    await gateway.start()
    out(style.title("Passerelle demo") + style.dim(
        f"  (PKI and config in a temporary folder; listeners apicrypt 127.0.0.1:{ports['a_in']},"
        f" mssante 127.0.0.1:{ports['m_in']})"))
    status = 0
    try:
        trips = [
            ("apicrypt", "mssante", JEAN, MARIE, alias_of(MARIE, "mssante"), ports["a_in"],
             "Résultats INR", _lab_entity(), "HPRIM lab result in ISO-8859-1"),
            ("mssante", "apicrypt", MARIE, JEAN, alias_of(JEAN, "apicrypt"), ports["m_in"],
             "Re: Résultats INR", _reply_entity(dt.datetime.now(dt.UTC)),
             "report from the hospital, IHE XDM / CDA"),
        ]
        for source, destination, sender, recipient, alias, port, subject, entity, what in trips:
            out("")
            out(style.title(f"▶ {source} → {destination}: {what}"))
            out(f"  {sender} writes to {alias}")
            user = user_identity(root, sender)
            gateway_cert = runtime.network(source).identity.certificate
            raw = seal(entity, user, [gateway_cert], [
                ("From", sender), ("To", alias), ("Subject", _encode(subject)),
                ("Message-ID", f"<demo-{source}@passerelle.localhost>"),
                ("Date", email.utils.format_datetime(dt.datetime.now(dt.UTC))),
                ("Disposition-Notification-To", sender),
                ("MIME-Version", "1.0")])
            reply = await _send(port, root / source / "ca.pem", sender, alias, raw)
            box = mailboxes[destination]
            if not reply.startswith("2") and not box.received:
                out("  " + style.bad(f"refused: {reply}"))
                status = 1
                continue
            await asyncio.wait_for(box.arrived.wait(), timeout=30)
            mail_from, rcpts, relayed = box.received[-1]
            out(f"  gateway answered the sender: {style.ok(reply.splitlines()[0])}")
            out(f"  {destination} mailbox received for {', '.join(rcpts)} from {mail_from}")
            show_relayed(style, out, root, recipient, destination, relayed,
                  runtime.network(destination).store)
    except (errors.GatewayError, TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
        out(style.bad(f"demo failed: {type(exc).__name__}: {exc}"))
        status = 1
    finally:
        await gateway.stop_accepting()
        await gateway.drain(5)
        await gateway.close_delivery()
        gateway.close()
        for server in servers:
            server.close()
    out("")
    out(style.title("Next steps"))
    out("  gateway pki init ./pki              # a development PKI and a ready config")
    out("  gateway check-config ./pki/gateway.toml")
    out("  gateway run --config ./pki/gateway.toml")
    return status


def _encode(text: str) -> str:
    import email.header

    return email.header.Header(text, "utf-8").encode()


def demo() -> int:
    style = Style(sys.stdout.isatty() and os.environ.get("NO_COLOR") is None)
    configure_logging("console", "warning")

    def out(line: str) -> None:
        print(line, flush=True)

    # Certificates and keys only (never a message) go to this folder, removed on exit.
    root = Path(tempfile.mkdtemp(prefix="passerelle-demo-"))
    try:
        return asyncio.run(_run(root / "pki", style, out))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
