"""Delivery to the next hop: one SMTP transaction over mandatory STARTTLS, its verdict a Reply.

Rule kept here: the verdict of the next hop becomes the reply to our own sender, and nothing is
ever sent in clear or half-sent. Hence:

* STARTTLS is mandatory: it is issued explicitly right after the greeting (so that the name
  to verify can differ from the host connected to), its failure ends the transaction, and the
  transport is checked to be encrypted again before ``MAIL``. A hop that does not offer it, or
  whose certificate does not verify, gets nothing; we answer 451.
* All or nothing: ``MAIL`` and every ``RCPT`` are sent first; if any recipient is refused the
  transaction is reset before ``DATA``. Our sender already had ``250`` for each ``RCPT`` and gets
  one reply for the whole message at ``DATA``, so a partial delivery could not be told apart
  from a full one: any ``5xx`` refusal is mirrored for the whole message (the sender bounces it,
  nothing is lost silently), otherwise any ``4xx`` gives ``451`` (the sender retries all).
* Downstream ``4xx``, timeouts, refused connections, TLS failures, disconnections: ``451 4.4.x``.
  Downstream ``5xx``: the same code and enhanced status, text ``Next hop refused: ...`` made
  ASCII, without addresses (the sender knows only the alias) and at most 200 characters.
* ``deliver`` never raises; the cause goes to the log (types and codes only, never content).
* ``DeliveryPool`` keeps the same rules over reused connections: a connection goes back to the
  pool only after a transaction that ended with a reply to every command; it is checked with
  ``RSET`` before its next transaction (a connection that does not answer ``250`` is closed and
  another one is used); any exception, timeout or cancellation closes it. Connections are
  retired after ``max_messages`` transactions or ``idle_seconds`` unused.

The message bytes go through ``SMTP.data`` unchanged except what SMTP itself imposes: line
endings become CRLF and leading dots are doubled. Content should already be CRLF (then
``smtp_client.Client`` sends it without re-scanning it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiosmtplib
import structlog

from gateway.errors import (
    LOCAL_ERROR,
    NEXT_HOP_DEFERRED,
    NEXT_HOP_NO_TLS,
    NEXT_HOP_TIMEOUT,
    NEXT_HOP_UNREACHABLE,
    OK,
    Reply,
    next_hop_refused,
    relayed,
)
from gateway.transport.smtp_client import Client

log = structlog.get_logger("gateway.smtp_out")

MAX_MIRRORED_TEXT = 200
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_ADDRESS = re.compile(r"<[^<>]*>|[^\s<>]+@[^\s<>]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


@dataclass(frozen=True)
class NextHop:
    """Where mail for one network goes: host, port, TLS context (verifies the hop), bounds."""

    host: str
    port: int
    ssl_context: ssl.SSLContext
    timeout_seconds: float = 60.0  # for the whole transaction, connection to final reply
    local_hostname: str | None = None  # our EHLO name
    tls_server_name: str | None = None  # the name to verify, if not ``host``


# A cause as a metric label: "2 RCPT refused, first 550" -> "RCPT refused" (bounded values)
_CAUSE_KIND = re.compile(r"^\d+ |, first \d+$| \d{3}$")
# "queued as 4XyZ12" (Postfix, Exim: "id=..."; Sendmail: "... Message accepted for delivery")
_QUEUE_ID = re.compile(r"(?i)\b(?:queued as|id=)\s*([A-Za-z0-9._-]{4,64})")


def _sanitise(text: str) -> str:
    """Their text, safe to put in our reply: ASCII, one line, no addresses, bounded."""
    text = _ADDRESS.sub("<address>", text)
    text = _UNPRINTABLE.sub(" ", text)
    text = " ".join(text.split())
    return text[:MAX_MIRRORED_TEXT].rstrip()


def _split_status(code: int, message: str) -> tuple[str | None, str]:
    match = _ENHANCED.match(message.strip())
    if match and match.group(1) == str(code)[0]:
        return match.group(0).strip(), message.strip()[match.end():]
    return None, message


def mirror(code: int, message: str) -> Reply:
    """Our reply for a refusal of the next hop: 5xx mirrored, anything else 451."""
    if 500 <= code <= 599:
        status, text = _split_status(code, message)
        return next_hop_refused(code, status, _sanitise(text))
    return NEXT_HOP_DEFERRED


def _accepted(message: str) -> Reply:
    """250 with the next hop's own words (its queue id), never content."""
    _, text = _split_status(250, message)
    said = _sanitise(text)[:100]
    return relayed(said)


def _body_options(smtp: aiosmtplib.SMTP, raw: bytes) -> list[str]:
    options = []
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(raw)}")
    if not raw.isascii() and smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    return options


async def _transaction(hop: NextHop, mail_from: str, rcpts: Sequence[str], raw: bytes,
                       smtp: aiosmtplib.SMTP) -> tuple[Reply, str]:
    """One transaction; returns the reply and a short cause for the log."""
    if not await _open(hop, smtp):
        return NEXT_HOP_NO_TLS, "not encrypted after STARTTLS"
    return await _mail(mail_from, rcpts, raw, smtp)


async def _open(hop: NextHop, smtp: aiosmtplib.SMTP) -> bool:
    """Connect, STARTTLS, EHLO again; False if the transport is not encrypted after all."""
    await smtp.connect()
    # Mandatory: ``starttls`` raises if the hop does not offer it or the handshake fails.
    await smtp.starttls(server_hostname=hop.tls_server_name or hop.host,
                        tls_context=hop.ssl_context)
    # Belt and braces: never let a MAIL go out on a connection that is not encrypted.
    if smtp.get_transport_info("sslcontext") is None:
        return False
    await smtp.ehlo()
    return True


async def _mail(mail_from: str, rcpts: Sequence[str], raw: bytes,
                smtp: aiosmtplib.SMTP) -> tuple[Reply, str]:
    """MAIL, every RCPT, DATA on an open encrypted connection: the reply and a cause."""
    try:
        await smtp.mail(mail_from, options=_body_options(smtp, raw))
    except aiosmtplib.SMTPSenderRefused as exc:
        return mirror(exc.code, exc.message), f"MAIL refused {exc.code}"
    refusals: list[tuple[int, str]] = []
    for rcpt in rcpts:
        try:
            await smtp.rcpt(rcpt)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refusals.append((exc.code, exc.message))
    if refusals:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.rset()
        permanent = [r for r in refusals if 500 <= r[0] <= 599]
        code, message = permanent[0] if permanent else refusals[0]
        return mirror(code, message), f"{len(refusals)} RCPT refused, first {code}"
    try:
        response = await smtp.data(raw)
    except aiosmtplib.SMTPDataError as exc:
        return mirror(exc.code, exc.message), f"DATA refused {exc.code}"
    return _accepted(response.message), "accepted"


def _failure(exc: BaseException) -> tuple[Reply, str]:
    """Map a failure of the connection or of the protocol to a 4xx (or a mirrored 5xx)."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return NEXT_HOP_NO_TLS, "TLS handshake failed"
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError | aiosmtplib.SMTPTimeoutError
                  | TimeoutError):
        return NEXT_HOP_TIMEOUT, "timeout"
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):  # greeting 4xx/5xx
        return (mirror(exc.code, exc.message) if exc.code >= 500 else NEXT_HOP_DEFERRED,
                f"greeting {exc.code}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return NEXT_HOP_UNREACHABLE, "connection failed"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return NEXT_HOP_TIMEOUT, "disconnected"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # EHLO or STARTTLS refused: a TLS problem from our point of view, always transient.
        return NEXT_HOP_NO_TLS, f"command refused {exc.code}"
    if isinstance(exc, aiosmtplib.SMTPException):  # STARTTLS not offered, among others
        return NEXT_HOP_NO_TLS, "STARTTLS unavailable"
    if isinstance(exc, OSError):
        return NEXT_HOP_UNREACHABLE, "connection failed"
    return LOCAL_ERROR, "unexpected error"


async def deliver(hop: NextHop, mail_from: str, rcpts: Sequence[str], raw: bytes, *,
                  trace: str = "") -> Reply:
    """Send ``raw`` to ``rcpts`` through ``hop``; the reply to give our own sender. Never raises.
    ``trace``: the message's trace id, on every ``deliver.*`` event.
    """
    if not rcpts:
        return LOCAL_ERROR
    started = time.perf_counter()
    smtp = Client(hostname=hop.host, port=hop.port, timeout=hop.timeout_seconds,
                  local_hostname=hop.local_hostname, start_tls=False,
                  tls_context=hop.ssl_context)
    try:
        async with asyncio.timeout(hop.timeout_seconds):
            reply, cause = await _transaction(hop, mail_from, rcpts, raw, smtp)
    except asyncio.CancelledError:
        smtp.close()
        raise
    except Exception as exc:  # the verdict is a reply; the cause goes to the log
        reply, cause = _failure(exc)
        log.info("deliver.failed", trace=trace, host=hop.host, port=hop.port,
                 error=type(exc).__name__, cause=cause, reply=reply.code)
    finally:
        if smtp.is_connected:
            try:
                async with asyncio.timeout(min(5.0, hop.timeout_seconds)):
                    await smtp.quit()
            except Exception:  # QUIT is a courtesy; the verdict is already known
                smtp.close()
    _log_result(trace, hop, reply, cause, len(rcpts), len(raw), started)
    return reply


def _log_result(trace: str, hop: NextHop, reply: Reply, cause: str, recipients: int, size: int,
                started: float, **extra: object) -> None:
    """``deliver.result`` at info: where the message went and what the next hop said (its
    words sanitised: no address) with its queue id, so both logs can be joined."""
    queued = _QUEUE_ID.search(reply.text)
    log.info("deliver.result", trace=trace, host=hop.host, port=hop.port, reply=reply.code,
             status=reply.status, said=reply.text, queue_id=queued.group(1) if queued else None,
             cause=cause, recipients=recipients, size=size,
             duration_ms=round((time.perf_counter() - started) * 1000, 1), **extra)


def _client(hop: NextHop) -> aiosmtplib.SMTP:
    return Client(hostname=hop.host, port=hop.port, timeout=hop.timeout_seconds,
                  local_hostname=hop.local_hostname, start_tls=False,
                  tls_context=hop.ssl_context)


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    transactions: int = 0
    idle_since: float = 0.0


class DeliveryPool:
    """``deliver`` over reused TLS connections to one next hop (same replies, same rules).

    Saves the TCP and TLS handshakes and two EHLOs per message. Not thread-safe: one pool per
    event loop. ``close`` ends the idle connections politely (QUIT).
    """

    def __init__(self, hop: NextHop, *, max_idle: int = 32, max_messages: int = 100,
                 idle_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.hop = hop
        self.on_failure = on_failure  # a delivery not accepted, with its cause (metrics)
        self.max_idle = max_idle
        self.max_messages = max_messages
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._idle: list[_Connection] = []  # most recently used last
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.opened = 0  # connections opened so far (tests, stats)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def deliver(self, mail_from: str, rcpts: Sequence[str], raw: bytes, *,
                      trace: str = "") -> Reply:
        """Send ``raw`` to ``rcpts``; the reply to give our own sender. Never raises."""
        if not rcpts:
            return LOCAL_ERROR
        hop = self.hop
        started = time.perf_counter()
        connection: _Connection | None = None
        reused = False
        try:
            async with asyncio.timeout(hop.timeout_seconds):
                connection, reused = await self._acquire()
                if connection is None:
                    reply, cause = NEXT_HOP_NO_TLS, "not encrypted after STARTTLS"
                else:
                    reply, cause = await _mail(mail_from, rcpts, raw, connection.smtp)
        except asyncio.CancelledError:
            if connection is not None:
                connection.smtp.close()
            raise
        except Exception as exc:  # the verdict is a reply; the cause goes to the log
            if connection is not None:  # unknown state: never reused
                connection.smtp.close()
                connection = None
            reply, cause = _failure(exc)
            log.info("deliver.failed", trace=trace, host=hop.host, port=hop.port,
                     error=type(exc).__name__, cause=cause, reply=reply.code, reused=reused)
        if connection is not None:
            connection.transactions += 1
            self._release(connection)
        _log_result(trace, hop, reply, cause, len(rcpts), len(raw), started, reused=reused)
        if reply.code != OK.code and self.on_failure is not None:
            self.on_failure(_CAUSE_KIND.sub("", cause))
        return reply

    async def _acquire(self) -> tuple[_Connection | None, bool]:
        """An idle connection that answered RSET, or a new one (None: not encrypted)."""
        while self._idle:
            connection = self._idle.pop()
            if (not connection.smtp.is_connected
                    or self.clock() - connection.idle_since > self.idle_seconds):
                self._retire(connection)
                continue
            try:
                await connection.smtp.rset(timeout=min(5.0, self.hop.timeout_seconds))
            except asyncio.CancelledError:
                connection.smtp.close()
                raise
            except Exception:  # closed by the hop meanwhile, or out of step: not reused
                connection.smtp.close()
                continue
            return connection, True
        smtp = _client(self.hop)
        self.opened += 1
        try:
            encrypted = await _open(self.hop, smtp)
        except BaseException:
            smtp.close()
            raise
        if not encrypted:
            self._quit_later(smtp)
            return None, False
        return _Connection(smtp), False

    def _release(self, connection: _Connection) -> None:
        if (self._closed or not connection.smtp.is_connected
                or connection.transactions >= self.max_messages
                or len(self._idle) >= self.max_idle):
            self._retire(connection)
            return
        connection.idle_since = self.clock()
        self._idle.append(connection)
        # Retire the ones idle too long (the oldest are first).
        now = self.clock()
        while self._idle and now - self._idle[0].idle_since > self.idle_seconds:
            self._retire(self._idle.pop(0))

    def _retire(self, connection: _Connection) -> None:
        self._quit_later(connection.smtp)

    def _quit_later(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_connected:
            smtp.close()
            return
        task = asyncio.get_running_loop().create_task(self._quit(smtp))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            async with asyncio.timeout(min(5.0, self.hop.timeout_seconds)):
                await smtp.quit()
        except Exception:  # QUIT is a courtesy
            smtp.close()

    async def close(self) -> None:
        """Stop pooling; QUIT the idle connections (those in use close after their message)."""
        self._closed = True
        while self._idle:
            self._retire(self._idle.pop())
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
