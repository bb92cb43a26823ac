"""The SMTP listener of one network: aiosmtpd on the application's event loop, kept thin.

Rule kept here: the listener decides nothing about mail; it enforces the session's bounds and
asks injected policy callables (``check_sender``, ``route_recipient``, ``process``) for every
verdict, and every reply it sends is a named ``Reply`` of ``gateway.errors`` or a
``GatewayError.reply`` -- never a library default that leaks internals, never ``250`` before
``process`` (which relays downstream) answered ``250`` (DESIGN §2: before-queue proxy).

Bounds (DESIGN §2.5): STARTTLS before ``MAIL``; optional mutual TLS (a missing or untrusted
client certificate gets ``554 5.7.1`` to every command but QUIT, RFC 3207 §4.1); ``SIZE``;
recipients per message; sessions in all and per client IP (the extra connection is greeted
with ``421 4.7.0`` and closed); messages per minute per sender (``451 4.7.0`` at ``MAIL``);
command timeout; a time budget for ``process`` (``451`` when it runs out).

SMTP smuggling and bare line ends: aiosmtpd ≥ 1.4.5 ends DATA only on ``CRLF.CRLF``, so a
``LF.LF`` or ``CR.CR`` cannot end a message early; the bytes stay *inside* the content, where
this listener refuses any bare CR or LF (RFC 5321 §2.3.8; Postfix ``smtpd_forbid_bare_newline``)
and any NUL (RFC 5321 §4.5.2 / RFC 6152: not in 8BITMIME text) with ``550 5.5.2``/``550 5.6.0``.
A smuggled second message is therefore never seen as one, and the session stays in step.

aiosmtpd's own replies carry no enhanced status code and some are vague ("500 Error: strict
ASCII mode" for an 8-bit ``RCPT``); ``wire.library_reply`` translates those its own command
handlers write to named replies; the commands this module implements push ours directly.
Logs carry pseudonymised addresses only (``ListenerSettings.pseudonymise``).

Library internals (aiosmtpd, capped ``<2`` in pyproject.toml; tests/test_library_internals.py
fails first when one of them changes): overridden ``_getaddr`` (cached parse),
``_handle_client`` (session limits before the greeting), ``_timeout_cb`` (421 before the idle
close), ``smtp_DATA``; called ``_call_handler_hook``, ``_reset_timeout``,
``_set_post_data_state``; read ``_reader`` (and its ``_limit``, raised while a message streams
in), ``_writer``, ``_tls_protocol``, ``_original_transport``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP, Envelope, TLSSetupException, syntax

from gateway.errors import (
    BARE_NEWLINE,
    CLIENT_CERT_REFUSED,
    CLIENT_CLOSED,
    DATA_SYNTAX,
    DOWNSTREAM_DEFERRED,
    HEALTH_CHECK_NO_MAIL,
    IDLE_SESSION_DROPPED,
    LOCAL_ERROR,
    MESSAGE_TOO_BIG,
    NEED_RECIPIENT,
    NON_ASCII_COMMAND,
    NUL_NOT_ALLOWED,
    RATE_LIMITED,
    RECIPIENT_OK,
    SENDER_OK,
    SESSION_TOO_LONG,
    START_DATA,
    STARTTLS_REQUIRED,
    STARTTLS_TOO_LATE,
    TEXT_LINE_TOO_LONG,
    TIMEOUT_CLOSING,
    TLS_ALREADY_ACTIVE,
    TOO_MANY_IDLE_COMMANDS,
    TOO_MANY_RECIPIENTS,
    TOO_MANY_SESSIONS,
    GatewayError,
    Reply,
    traced,
)
from gateway.memo import Memo
from gateway.obs import keyed_pseudonym, new_trace_id
from gateway.transport.inbound import InboundMessage, ListenerSettings, message_id_of
from gateway.transport.limits import ListenerState
from gateway.transport.smtp_data import DataVerdict, read_data
from gateway.transport.wire import CRLF as _CRLF
from gateway.transport.wire import has_bare_cr_or_lf, library_reply
from gateway.transport.wire import render as _render

log = structlog.get_logger("gateway.smtp_in")

# How much of a message the session's reader may buffer at once (see _Session.smtp_DATA).
_DATA_BUFFER_BYTES = 64 * 1024
# Parsed MAIL/RCPT arguments (aiosmtpd's parser builds a class per call): few distinct values.
_ADDRESS_CACHE_SIZE = 4096
_ADDRESS_CACHE_MAX_ARG = 512
_addresses: Memo[tuple[str, int], tuple[str | None, str | None]] = Memo(_ADDRESS_CACHE_SIZE)


CheckSender = Callable[[str], object]  # raises GatewayError; its result is ignored
RouteRecipient = Callable[[str], str | Awaitable[str]]  # raises GatewayError
Process = Callable[[InboundMessage], Awaitable[Reply]]


class _Envelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.routed: list[str] = []


def _peer_ip(peer: object) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _peer_certificate(session: Any) -> bytes | None:
    info = getattr(session, "ssl", None) or {}
    ssl_object = info.get("ssl_object") if isinstance(info, dict) else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


class _Handler:
    """The aiosmtpd handler: thin calls into the policy, replies from named constants."""

    def __init__(self, settings: ListenerSettings, state: ListenerState,
                 check_sender: CheckSender, route_recipient: RouteRecipient,
                 process: Process) -> None:
        self.settings = settings
        self.state = state
        self.check_sender = check_sender
        self.route_recipient = route_recipient
        self.process = process
        self.log = log.bind(network=settings.network)

    # aiosmtpd >= 1.4 "new style" EHLO hook: we set host_name and add our extensions.
    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # No AUTH: the listener has no authenticator (aiosmtpd would offer LOGIN and PLAIN and
        # ask clients for credentials it can only refuse).
        kept = [line for line in responses[:-1] if not line.startswith("250-AUTH")]
        return [*kept, "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_PROXY(self, server: SMTP, session: Any, envelope: Any,
                           proxy_data: Any) -> bool:
        """PROXY protocol: log and limit by the real client, not by the balancer."""
        source = getattr(proxy_data, "src_addr", None)
        if not getattr(proxy_data, "valid", False):
            self.log.warning("proxy.invalid", peer=_peer_ip(session.peer))
            return False
        if source is None:
            # v2 LOCAL or v1 UNKNOWN: the balancer speaks for itself (HAProxy's check-send-proxy
            # health check). Served as the balancer (greeting, EHLO, QUIT), never with mail.
            self.log.debug("proxy.health_check", balancer=_peer_ip(session.peer),
                           version=getattr(proxy_data, "version", None))
            if isinstance(server, _Session):
                server.health_check = True
            return True
        real = str(source)
        self.log.info("proxy.client", peer=real, balancer=_peer_ip(session.peer))
        session.peer = (real, getattr(proxy_data, "src_port", 0))
        return isinstance(server, _Session) and server.behind_proxy(real)

    def handle_STARTTLS(self, server: SMTP, session: Any, envelope: Any) -> bool:
        der = _peer_certificate(session)
        if der is None:
            ok = not self.settings.require_client_cert
        elif self.settings.peer_cert_ok is None:
            ok = True  # the handshake verified it against the client CAs
        else:
            try:
                ok = bool(self.settings.peer_cert_ok(der))
            except Exception:  # a checker failure is a refusal, never a pass
                ok = False
        if not ok:
            self.log.warning("tls.client_refused", peer=_peer_ip(session.peer),
                             presented=der is not None)
            self.settings.tls_failed("client_certificate")
        return ok

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        try:
            checked = self.check_sender(address)
        except GatewayError as exc:
            self._refused("MAIL", exc.code, exc.reply, session, sender=address)
            return _render(exc.reply)
        key = checked if isinstance(checked, str) and checked else address.lower()
        if not self.state.rate.allow(key):
            self._refused("MAIL", "RateLimited", RATE_LIMITED, session, sender=address)
            return _render(RATE_LIMITED)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return _render(SENDER_OK)

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: _Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            self._refused("RCPT", "TooManyRecipients", TOO_MANY_RECIPIENTS, session)
            return _render(TOO_MANY_RECIPIENTS)
        try:
            routed = self.route_recipient(address)
            if inspect.isawaitable(routed):  # a policy that asks a directory first
                routed = await routed
        except GatewayError as exc:
            self._refused("RCPT", exc.code, exc.reply, session, recipient=address)
            return _render(exc.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if routed not in envelope.routed:
            envelope.routed.append(routed)
        return _render(RECIPIENT_OK)

    async def handle_DATA(self, server: _Session, session: Any, envelope: _Envelope) -> str:
        raw = envelope.content or b""
        content = raw if isinstance(raw, bytes) else bytes(raw, "utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        trace_id = new_trace_id()
        bound = self.log.bind(trace=trace_id, peer=_peer_ip(session.peer))
        if b"\0" in content:
            bound.warning("mail.refused", stage="DATA", error="NulCharacter",
                          reply=NUL_NOT_ALLOWED.code, status=NUL_NOT_ALLOWED.status)
            self.settings.refused("DATA", "NulCharacter", NUL_NOT_ALLOWED)
            return _render(traced(NUL_NOT_ALLOWED, trace_id))
        if has_bare_cr_or_lf(content):
            bound.warning("mail.refused", stage="DATA", error="BareNewline",
                          reply=BARE_NEWLINE.code, status=BARE_NEWLINE.status)
            self.settings.refused("DATA", "BareNewline", BARE_NEWLINE)
            return _render(traced(BARE_NEWLINE, trace_id))
        size = len(content)
        message = InboundMessage(
            network=self.settings.network, mail_from=mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos), routed_rcpts=tuple(envelope.routed),
            content=content, peer=_peer_ip(session.peer),
            tls_peer_cert=_peer_certificate(session), trace_id=trace_id)
        # The message is the only holder of the content from here (see InboundMessage).
        envelope.content = envelope.original_content = None
        del raw, content
        budget = self.settings.data_budget
        # aiosmtpd's idle timer is not reset while the handler runs: leave room for the
        # budget, the reply, and the client's next command.
        server._reset_timeout(budget + self.settings.command_timeout)
        started = time.perf_counter()
        # keyed hashes: `gateway trace` finds the message by an address or its Message-ID
        message_id = message_id_of(message.content)
        bound.info("message.received", size=size, recipients=len(message.rcpt_tos),
                   mail_from=self.settings.pseudo(mail_from),
                   rcpts=[self.settings.pseudo(r) for r in message.rcpt_tos],
                   routed=[self.settings.pseudo(r) for r in message.routed_rcpts],
                   message_id=self.settings.pseudo(message_id) if message_id else None)
        try:
            reply = await asyncio.wait_for(self.process(message), timeout=budget)
        except TimeoutError:
            bound.warning("message.budget_exceeded", budget_s=budget)
            reply = DOWNSTREAM_DEFERRED
        except GatewayError as exc:
            reply = exc.reply
        except Exception as exc:  # unexpected: 451, the type only in the log
            bound.error("message.process_failed", error=type(exc).__name__)
            reply = LOCAL_ERROR
        if not isinstance(reply, Reply):  # a broken ``process``: fail closed
            bound.error("message.bad_reply", error=type(reply).__name__)  # type: ignore[unreachable]
            reply = LOCAL_ERROR
        # the gateway's message.done says the same at info level
        bound.debug("message.answered", reply=reply.code, status=reply.status,
                   duration_ms=round((time.perf_counter() - started) * 1000, 1))
        server._messages += 1
        return _render(traced(reply, trace_id))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # e.g. an untrusted client certificate
            self.log.warning("tls.handshake_failed", error=type(error.__cause__).__name__)
            self.settings.tls_failed("handshake")
        else:  # a policy callable failed unexpectedly: 451, the type only in the log
            self.log.error("session.exception", error=type(error).__name__)
        return _render(LOCAL_ERROR)

    def _refused(self, stage: str, code: str, reply: Reply, session: Any, *,
                 sender: str | None = None, recipient: str | None = None) -> None:
        fields: dict[str, object] = {}
        if sender is not None:
            fields["mail_from"] = self.settings.pseudo(sender)
        if recipient is not None:
            fields["rcpt"] = self.settings.pseudo(recipient)
        self.log.info("mail.refused", stage=stage, error=code, reply=reply.code,
                      status=reply.status, peer=_peer_ip(session.peer), **fields)
        self.settings.refused(stage, code, reply)


class _Session(SMTP):
    """aiosmtpd's SMTP protocol with the listener's bounds and reply translation."""

    def __init__(self, handler: _Handler, state: ListenerState,
                 loop: asyncio.AbstractEventLoop) -> None:
        s = state.settings
        super().__init__(
            handler,
            hostname=s.hostname,
            ident="ESMTP",  # no software name or version in the banner
            tls_context=s.ssl_context,
            require_starttls=s.require_starttls,
            data_size_limit=s.max_message_bytes,
            enable_SMTPUTF8=False,
            decode_data=False,
            timeout=s.command_timeout,
            proxy_protocol_timeout=s.proxy_timeout if s.proxy_protocol else None,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            loop=loop,
        )
        self._state = state
        self._admitted = False
        self._refused_session = False
        self._ip = ""
        self._opened = 0.0
        self._messages = 0
        self._idle_commands = 0  # NOOP/RSET/HELP/VRFY since the last MAIL
        self._timers: list[asyncio.TimerHandle] = []
        self.health_check = False  # a PROXY LOCAL/UNKNOWN connection: the balancer's probe

    def _create_envelope(self) -> _Envelope:
        return _Envelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # The same result as aiosmtpd's (a pure function of the argument and the limit),
        # remembered: its parser costs ~0.15 ms a command. Bounded; long arguments not kept.
        key = (arg, self.local_part_limit)
        known = _addresses.get(key)
        if known is None:
            try:
                known = super()._getaddr(arg)
            except Exception:  # email's parser raises IndexError on "<a@": malformed (553)
                known = (None, None)
            if len(arg) <= _ADDRESS_CACHE_MAX_ARG:
                _addresses.put(key, known)
        return known

    def connection_made(self, transport: Any) -> None:
        if self.transport is None and self._original_transport is None:  # not the TLS upgrade
            self._ip = _peer_ip(transport.get_extra_info("peername"))
            self._opened = time.perf_counter()
            self._admitted = self._state.admit(self._ip)
            self._refused_session = not self._admitted
            if self._admitted:
                # behind a balancer the client is known from the PROXY header (behind_proxy)
                (log.debug if self._state.settings.proxy_protocol else log.info)(
                    "session.open", network=self._state.settings.network, peer=self._ip)
                self._start_bounds()
            else:
                log.warning("session.refused", network=self._state.settings.network,
                            peer=self._ip, sessions=self._state.sessions)
        super().connection_made(transport)
        if self._state.settings.proxy_protocol and self.session is not None:
            # STARTTLS makes a new session from the socket's peer (the balancer): keep the
            # client that the PROXY header named.
            self.session.peer = (self._ip, 0)  # type: ignore[assignment]

    def behind_proxy(self, real_ip: str) -> bool:
        """The PROXY header named the real client: count the session against its address."""
        self._state.release(self._ip)
        self._ip = real_ip
        self._admitted = self._state.admit(real_ip)
        if self._admitted:
            log.info("session.open", network=self._state.settings.network, peer=real_ip)
        else:
            log.warning("session.refused", network=self._state.settings.network,
                        peer=real_ip, sessions=self._state.sessions)
        return self._admitted

    # --- bounds on a session's life (a slot held by someone who sends no mail) ---

    def _start_bounds(self) -> None:
        s, loop = self._state.settings, asyncio.get_running_loop()
        self._state.open[self] = None
        self._timers.append(loop.call_later(s.session_seconds, self._close_with,
                                            SESSION_TOO_LONG, "session_too_long"))
        if s.require_starttls and s.ssl_context is not None:
            self._timers.append(loop.call_later(s.starttls_seconds, self._check_tls_started))

    def _check_tls_started(self) -> None:
        if self._tls_protocol is None:
            self._close_with(STARTTLS_TOO_LATE, "starttls_too_late")

    def _close_with(self, reply: Reply, why: str) -> None:
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return
        log.warning("session.closed_by_bound", network=self._state.settings.network,
                    peer=self._ip, bound=why)
        transport.write(str(reply).encode("ascii") + _CRLF)
        transport.close()

    def evictable(self) -> bool:
        """Idle and plain: no TLS yet, no transaction under way."""
        return (self._admitted and self._tls_protocol is None
                and not (self.envelope is not None and self.envelope.mail_from))

    def evict(self) -> None:
        """Make room for a new client: close now and give the slot back at once."""
        self._close_with(IDLE_SESSION_DROPPED, "dropped_for_room")
        self._release_slot()

    def _release_slot(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._state.open.pop(self, None)
        if self._admitted:
            self._admitted = False
            self._state.release(self._ip)

    async def _idle_command(self, command: str, arg: str | None) -> None:
        self._idle_commands += 1
        if self._idle_commands > self._state.settings.max_idle_commands:
            self._close_with(TOO_MANY_IDLE_COMMANDS, "idle_commands")
            return
        await getattr(super(), f"smtp_{command}")(arg)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str | None) -> None:
        await self._idle_command("NOOP", arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str | None) -> None:
        await self._idle_command("RSET", arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str | None) -> None:
        await self._idle_command("HELP", arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        await self._idle_command("VRFY", arg)

    def connection_lost(self, error: Exception | None) -> None:
        admitted = self._admitted
        self._release_slot()
        if admitted:
            # a balancer's health check every few seconds is not worth an info line
            (log.debug if self.health_check else log.info)(
                "session.close", network=self._state.settings.network, peer=self._ip,
                     messages=self._messages,
                     duration_ms=round((time.perf_counter() - self._opened) * 1000, 1))
        super().connection_lost(error)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, asyncio.IncompleteReadError):
            # The client closed its side mid-command. aiosmtpd cancels the session on EOF, but
            # asyncio.wait_for (3.11) can swallow that cancel when ``process`` ends at the same
            # moment: the loop would then answer the same EOF forever. End the session here.
            if self.transport is not None:
                self.transport.close()
            return str(CLIENT_CLOSED)
        return str(await super().handle_exception(error))

    async def _handle_client(self) -> None:
        if self._refused_session:
            await self.push(str(TOO_MANY_SESSIONS))
            if self.transport is not None:
                self.transport.close()
            return
        try:
            await super()._handle_client()
        except asyncio.CancelledError:
            # The client left (EOF) before a command, e.g. inside its PROXY header: aiosmtpd
            # would hold the connection, and its session slot, until the PROXY timeout.
            if self.transport is not None:
                self.transport.close()
            raise

    def _timeout_cb(self) -> None:
        # Say why before closing (RFC 5321 §4.5.3.2: 421 on timeout).
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(str(TIMEOUT_CLOSING).encode("ascii") + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            line, mapped = library_reply(status)
            if mapped is STARTTLS_REQUIRED:  # a client trying to send mail in clear
                log.warning("mail.refused", network=self._state.settings.network,
                            peer=self._ip, stage="before STARTTLS", error="StartTlsRequired",
                            reply=mapped.code, status=mapped.status)
                self._state.settings.refused("before STARTTLS", "StartTlsRequired", mapped)
            await super().push(line)
        else:
            await super().push(status)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.health_check:
            await self.push(str(HEALTH_CHECK_NO_MAIL))
            return
        # aiosmtpd answers a null sender with a syntax error; the envelope policy decides.
        if (arg is not None and self.session is not None and self.session.host_name
                and self.envelope is not None and not self.envelope.mail_from
                and re.fullmatch(r"(?i)FROM:\s*<>(\s.*)?", arg.strip())):
            status = await self._call_handler_hook("MAIL", "", [])
            await self.push(status)
            return
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from:
            self._idle_commands = 0  # a transaction: the client is sending mail

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        # aiosmtpd would answer 220 again and nest a second TLS layer (RFC 3207: STARTTLS is
        # not offered once TLS is up).
        if self._tls_protocol is not None:
            await self.push(str(TLS_ALREADY_ACTIVE))
            return
        await super().smtp_STARTTLS(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA with the content read by ``smtp_data.read_data`` (whole runs of
        lines instead of one await per line; same end, limits and replies)."""
        # The command timer also bounds the transfer of the content: give it its own bound.
        self._reset_timeout(self._state.settings.data_transfer_timeout)
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        if envelope is None or not envelope.rcpt_tos:
            await self.push(str(NEED_RECIPIENT))
            return
        if arg:
            await self.push(str(DATA_SYNTAX))
            return
        await self.push(str(START_DATA))
        # aiosmtpd sizes its reader for one command line, which would pause and resume the
        # socket every two lines of a message: while the content is read, it may hold more.
        reader: Any = self._reader
        reader._limit = _DATA_BUFFER_BYTES
        try:
            read = await read_data(self._reader, size_limit=self.data_size_limit,
                                   line_limit=self.line_length_limit)
        except asyncio.IncompleteReadError:  # the client left mid-content
            self._writer.close()
            return
        except asyncio.CancelledError:  # connection lost: aiosmtpd cancels the session
            self._writer.close()
            raise
        finally:
            reader._limit = self.line_length_limit
        if read.verdict is DataVerdict.TOO_LONG:
            await self.push(str(TEXT_LINE_TOO_LONG))
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        if read.verdict is DataVerdict.TOO_MUCH:
            await self.push(str(MESSAGE_TOO_BIG))
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        envelope.content = envelope.original_content = read.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        # MISSING: no handler answered (never with ours, whose handle_DATA always answers)
        await self.push(str(LOCAL_ERROR) if status is MISSING else status)


def protocol_factory(settings: ListenerSettings, *, check_sender: CheckSender,
                     route_recipient: RouteRecipient, process: Process,
                     loop: asyncio.AbstractEventLoop) -> Callable[[], SMTP]:
    """The protocol factory for ``loop.create_server`` (one state shared by its sessions)."""
    state = ListenerState(settings)
    handler = _Handler(settings, state, check_sender, route_recipient, process)
    return lambda: _Session(handler, state, loop)


async def start_listener(settings: ListenerSettings, *, check_sender: CheckSender,
                         route_recipient: RouteRecipient, process: Process,
                         reuse_port: bool = False) -> asyncio.AbstractServer:
    """Listen on ``settings.host:port`` on the running loop; close the server to stop.

    ``reuse_port``: several worker processes bind the same port (SO_REUSEPORT) and the kernel
    spreads connections among them.
    """
    # aiosmtpd logs every command line (clear addresses) at INFO: never below WARNING.
    library_log = logging.getLogger("mail.log")
    if library_log.getEffectiveLevel() < logging.WARNING:
        library_log.setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    factory = protocol_factory(settings, check_sender=check_sender,
                               route_recipient=route_recipient, process=process, loop=loop)
    return await loop.create_server(factory, host=settings.host, port=settings.port,
                                    reuse_port=reuse_port or None)


__all__ = [
    "BARE_NEWLINE", "CLIENT_CERT_REFUSED", "NON_ASCII_COMMAND", "NUL_NOT_ALLOWED",
    "STARTTLS_REQUIRED", "TOO_MANY_SESSIONS", "InboundMessage", "ListenerSettings",
    "keyed_pseudonym", "protocol_factory", "start_listener",
]
