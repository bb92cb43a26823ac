"""Delivery status notifications (RFC 3464) for mail the gateway took from a mailbox and refused.

Rule kept here: a DSN says *that* and *why* a message was not relayed, never *what* it said.
It carries a human-readable part written by us, the ``message/delivery-status`` fields
(reporting MTA, recipients, action, status, diagnostic: our own named reply), and the
original's outer header fields from an allow-list (``text/rfc822-headers``, RFC 3462 / 6522);
no byte of the original body, no Content-* field of it. Pure: bytes and values in, bytes out;
time and identifiers are parameters. Sealing (sign, encrypt) and sending are the caller's job.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import Reply
from gateway.smime.mime import parse_entity

__all__ = ["DSN_SUBJECT", "ORIGINAL_FIELDS", "Dsn", "build_dsn"]

# The original's fields copied into the report: the Message-ID alone. Everything else of the
# original (From, Subject, To...) is the sender's free text, and a report to an address it
# merely claimed would carry that text to someone else: the Message-ID is enough for the
# sender's software to find its message.
ORIGINAL_FIELDS = ("Message-ID",)
MAX_ORIGINAL_HEADERS = 16 * 1024  # bytes of copied header fields
MAX_FIELD = 900  # characters per copied field value (a line stays under 998)
MAX_RECIPIENTS = 100
DSN_SUBJECT = "Non remis / Undelivered Mail Returned to Sender"
_ADDRESS = re.compile(r"[\x21-\x7e]{1,64}@[A-Za-z0-9.-]{1,253}")
_TOKEN = re.compile(r"[A-Za-z0-9.-]{1,253}")
_REPLY_TEXT = re.compile(r"[\x20-\x7e]{0,400}")


@dataclass(frozen=True)
class Dsn:
    """What ``build_dsn`` returns: the MIME entity to seal, and the message header fields."""

    entity: bytes  # multipart/report; report-type=delivery-status, CRLF
    headers: tuple[tuple[str, str], ...]  # From, To, Subject, Date, Message-ID, ...


def _ascii_value(value: str) -> str:
    """A header value as 7-bit text on one line: raw 8-bit becomes RFC 2047 UTF-8 words."""
    value = " ".join(value.split())[:MAX_FIELD]
    if value.isascii():
        return value
    octets = value.encode("latin-1", "replace")  # parse_entity decodes octets as latin-1
    try:
        text = octets.decode("utf-8")
    except UnicodeDecodeError:
        text = octets.decode("cp1252", "replace")
    return email.header.Header(text, "utf-8", maxlinelen=998).encode()


def original_headers(raw: bytes) -> bytes:
    """The allow-listed outer header fields of ``raw`` as a CRLF header block (bounded)."""
    entity = parse_entity(raw)
    out: list[bytes] = []
    size = 0
    for name, value in entity.headers:
        canonical = next((f for f in ORIGINAL_FIELDS if f.lower() == name.lower()), None)
        if canonical is None:
            continue
        line = f"{canonical}: {_ascii_value(value)}\r\n".encode("ascii", "replace")
        if size + len(line) > MAX_ORIGINAL_HEADERS:
            break
        out.append(line)
        size += len(line)
    return b"".join(out)


def _clean_address(address: str) -> str | None:
    address = address.strip()
    return address if _ADDRESS.fullmatch(address) else None


def _status_fields(reply: Reply) -> tuple[str, str]:
    status = reply.status if re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", reply.status) else "5.0.0"
    text = reply.text if _REPLY_TEXT.fullmatch(reply.text) else "refused"
    return status, f"smtp; {reply.code} {status} {text}"


def build_dsn(
    original: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    reply: Reply,
    reporting_mta: str,
    from_address: str,
    at: dt.datetime,
    message_id: str,
    boundary: str,
    arrival: dt.datetime | None = None,
    trace_id: str | None = None,
) -> Dsn:
    """A failure DSN to ``sender`` about ``original`` (whose header block only is read).

    ``recipients``: the original's recipients as the sender wrote them (one per-recipient
    block each; at least one block is always written). ``reply``: why it failed (5xx).
    ``message_id`` without angle brackets; ``boundary`` chosen by the caller (random there).
    """
    mta = reporting_mta if _TOKEN.fullmatch(reporting_mta) else "localhost"
    if not re.fullmatch(r"[A-Za-z0-9'()+_,./:=?-]{1,70}", boundary):
        raise ValueError("bad MIME boundary")
    status, diagnostic = _status_fields(reply)
    date = email.utils.format_datetime(at)
    arrived = email.utils.format_datetime(arrival or at)
    headers_part = original_headers(original)
    finals = [a for a in (_clean_address(r) for r in recipients[:MAX_RECIPIENTS]) if a]

    human = (
        "Ce message est généré automatiquement par la passerelle de messagerie sécurisée.\r\n"
        "Votre message n'a pas pu être transmis à ses destinataires ; il a été retiré de la\r\n"
        "boîte de la passerelle et ne sera pas réessayé.\r\n"
        f"Raison : {reply.code} {status} {diagnostic.split(' ', 3)[-1]}\r\n"
        "\r\n"
        "This is an automatically generated message from the secure messaging gateway.\r\n"
        "Your message could not be delivered to its recipients; it was removed from the\r\n"
        "gateway's mailbox and will not be retried.\r\n"
        f"Reason: {reply.code} {status} {diagnostic.split(' ', 3)[-1]}\r\n"
    )
    per_message = [f"Reporting-MTA: dns; {mta}"]
    if trace_id and _TOKEN.fullmatch(trace_id):
        per_message.append(f"X-Passerelle-Trace: {trace_id}")
    per_message.append(f"Arrival-Date: {arrived}")
    blocks = ["\r\n".join(per_message)]
    for address in finals or ["unknown@invalid"]:
        blocks.append("\r\n".join([
            f"Final-Recipient: rfc822; {address}",
            "Action: failed",
            f"Status: {status}",
            f"Diagnostic-Code: {diagnostic}",
            f"Last-Attempt-Date: {date}",
        ]))
    status_part = "\r\n\r\n".join(blocks) + "\r\n"

    b = boundary.encode("ascii")
    entity = b"".join([
        b'Content-Type: multipart/report; report-type=delivery-status;\r\n'
        b' boundary="' + b + b'"\r\n',
        b"Content-Transfer-Encoding: 7bit\r\n\r\n",
        b"This is a MIME-encapsulated delivery status notification.\r\n",
        b"--" + b + b"\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Transfer-Encoding: 8bit\r\n\r\n",
        human.encode("utf-8"),
        b"\r\n--" + b + b"\r\n",
        b"Content-Type: message/delivery-status\r\n\r\n",
        status_part.encode("ascii"),
        b"\r\n--" + b + b"\r\n",
        b"Content-Type: text/rfc822-headers\r\n\r\n",
        headers_part,
        b"\r\n--" + b + b"--\r\n",
    ])
    original_id = parse_entity(original).get_all("Message-ID")
    headers: list[tuple[str, str]] = [
        ("From", f"Passerelle (Mail Delivery System) <{from_address}>"),
        ("To", f"<{sender}>"),
        ("Subject", DSN_SUBJECT),
        ("Date", date),
        ("Message-ID", f"<{message_id}>"),
        ("Auto-Submitted", "auto-replied"),  # RFC 3834: no automatic answer to this one
    ]
    if original_id and _ascii_value(original_id[0]).isascii():
        reference = _ascii_value(original_id[0])
        headers += [("In-Reply-To", reference), ("References", reference)]
    headers.append(("MIME-Version", "1.0"))
    return Dsn(entity, tuple(headers))
