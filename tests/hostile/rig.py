"""The rig: one in-process gateway with a recording next hop per network, on loopback.

Rule kept here: the gateway, its listeners and the two next hops (aiosmtpd with STARTTLS, as in
tests/test_relay_e2e.py) run on one event loop in a background thread for the whole session;
cases are plain blocking clients on real sockets, so a case is bytes on the wire and replies
read back, nothing mocked. The rig judges each case the same way: the exact replies, the number
of messages the next hops received, a fresh connection still greeted, and every so often a
genuine message still relayed (the canary).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import errors
from gateway.app import Gateway
from gateway.config import load_config
from gateway.translate.context import build_runtime
from gateway.transport import tls
from tests.hostile.case import Case, Exchange, Outcome, reply
from tests.hostile.world import CRLF, RCPT, RELAYED_RCPT, SENDER, World

T = TypeVar("T")
REPLY_TIMEOUT = 20.0  # a reply slower than this is a hang (the data budget is 10 s)
OTHER = {"apicrypt": "mssante", "mssante": "apicrypt"}


@dataclass
class Sink:
    """The next hop of one network: records every message it accepts."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.mail_from is not None
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              bytes(envelope.original_content or b"")))
        return "250 2.0.0 queued"


class Wire:
    """A byte-level SMTP client on a blocking socket (TLS after STARTTLS)."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port),
                                                            timeout=REPLY_TIMEOUT)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes | None:
        while CRLF not in self.buffer:
            if self.eof:
                return None
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                    BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(CRLF)
        return line

    def reply(self) -> str | None:
        """The last line of one whole reply; None if the server closed the connection."""
        while True:
            line = self._line()
            if line is None:
                return None
            text = line.decode("latin-1")
            if len(text) < 4 or text[3] != "-":
                return text

    def command(self, line: bytes) -> str | None:
        self.send(line + CRLF)
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        # Bytes read before the handshake would be plaintext the server sent after 220:
        # STARTTLS response injection (CVE-2011-0411 class, server side).
        assert self.buffer == b"", "bytes after the STARTTLS reply"
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def expect(self, outcome: Outcome, what: str) -> str | None:
        line = self.reply()
        assert outcome.matches(line), f"{what}: expected {outcome}, got {line!r}"
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


UNIFORM = reply(f"{errors.CONTENT_REFUSED.code} {errors.CONTENT_REFUSED.status}")


def cause_in_log(logs: list[dict[str, Any]]) -> str | None:
    """The reply the precise cause stands for, from ``translate.refused``'s reason (written
    ``ErrorType: reason`` under the uniform reply); None if the log does not say."""
    for event in logs:
        if event.get("event") == "translate.refused" and event.get("error") == "ContentRefused":
            cause = getattr(errors, str(event.get("reason", "")).split(":", 1)[0], None)
            if isinstance(cause, type) and issubclass(cause, errors.GatewayError):
                return str(cause.reply)
    return None


class Rig:
    """The running gateway and next hops, and the checks every case gets."""

    CANARY_EVERY = 25  # cases between two canaries (and one at each change of category)

    def __init__(self, world: World) -> None:
        self.world = world
        self.sinks = {"apicrypt": Sink(), "mssante": Sink()}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hostile-gateway",
                                       daemon=True)
        self.gateway: Gateway | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._sessions: dict[str, Wire] = {}
        self._canaries: dict[str, bytes] = {}
        self._since_canary = 0
        self._last_category: str | None = None
        self.canaries_sent = 0
        self.probes = 0
        self.client_context = {
            net: tls.client_context(ca_files=[world.pki.ca_file(net)], check_hostname=False)
            for net in ("apicrypt", "mssante")}

    # --- lifecycle -------------------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        config = load_config(self.world.pki.config)
        # Every case comes from one address and a hundred of them are refused after
        # decryption: the hold-off of probing clients (tested in test_relay_e2e) is off here,
        # so each case gets its own reply.
        config = dataclasses.replace(config, gateway=dataclasses.replace(
            config.gateway, content_refusals_per_minute=0))
        self.gateway = Gateway(config, build_runtime(config))
        await self.gateway.start()
        loop = asyncio.get_running_loop()
        for net, port_key in (("apicrypt", "a_out"), ("mssante", "m_out")):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.world.root / net / "next-hop-tls.pem",
                                self.world.root / net / "next-hop-tls.key")
            self._servers.append(await loop.create_server(
                _sink_factory(self.sinks[net], ctx), "127.0.0.1", self.world.ports[port_key]))

    def stop(self) -> None:
        for wire in self._sessions.values():
            wire.close()
        self._sessions.clear()
        with contextlib.suppress(Exception):
            self.call(self._stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _stop(self) -> None:
        assert self.gateway is not None
        await self.gateway.stop_accepting()
        await self.gateway.close_delivery()
        for server in self._servers:
            server.close()
        self.gateway.close()

    # --- connections -----------------------------------------------------------------------

    def port(self, network: str) -> int:
        return self.world.ports["a_in" if network == "apicrypt" else "m_in"]

    def connect(self, network: str, *, starttls: bool = True) -> Wire:
        wire = Wire(self.port(network))
        wire.expect(reply("220"), "banner")
        if starttls:
            wire.send(b"EHLO client.test\r\n")
            wire.expect(reply("250"), "EHLO")
            wire.send(b"STARTTLS\r\n")
            wire.expect(reply("220"), "STARTTLS")
            wire.starttls(self.client_context[network])
            wire.send(b"EHLO client.test\r\n")
            wire.expect(reply("250"), "EHLO after STARTTLS")
        return wire

    def session(self, network: str) -> Wire:
        """A TLS session kept between content cases (RSET-free: every DATA ends one)."""
        if network not in self._sessions:
            self._sessions[network] = self.connect(network)
        return self._sessions[network]

    def drop(self, network: str) -> None:
        wire = self._sessions.pop(network, None)
        if wire is not None:
            wire.close()

    # --- what the next hops received -------------------------------------------------------

    def relayed(self) -> int:
        return sum(len(s.received) for s in self.sinks.values())

    def contents_since(self, counts: dict[str, int]) -> list[bytes]:
        return [m[2] for net, sink in self.sinks.items() for m in sink.received[counts[net]:]]

    def counts(self) -> dict[str, int]:
        return {net: len(sink.received) for net, sink in self.sinks.items()}

    # --- running a case --------------------------------------------------------------------

    def run(self, case: Case) -> None:
        before = self.counts()
        if case.content is not None:
            self._run_content(case)
        else:
            self._run_dialogue(case)
        grown = self.relayed() - sum(before.values())
        assert grown == case.relays, (
            f"the next hops received {grown} message(s), expected {case.relays}")
        if case.check is not None:
            case.check(self.world, self.contents_since(before))

    def _run_content(self, case: Case) -> None:
        assert case.content is not None
        content = case.content(self.world)
        net = case.network
        sender = case.sender or SENDER[net]
        rcpts = case.rcpts or (RCPT[net],)
        wire = self.session(net)
        try:
            wire.send(f"MAIL FROM:<{sender}>\r\n".encode())
            wire.expect(reply("250 2.1.0"), "MAIL")
            for rcpt in rcpts:
                wire.send(f"RCPT TO:<{rcpt}>\r\n".encode())
                wire.expect(reply("250 2.1.5"), "RCPT")
            wire.send(b"DATA\r\n")
            wire.expect(reply("354"), "DATA")
            with structlog.testing.capture_logs() as logs:
                wire.send(stuffed(content) + b".\r\n")
                line = wire.reply()
            if not case.outcome.matches(line) and UNIFORM.matches(line):
                # After a CBC decryption every refusal is the same reply on the wire (no
                # padding oracle): the precise cause the case expects is the log's.
                line = cause_in_log(logs) or line
            assert case.outcome.matches(line), (
                f"reply to the content: expected {case.outcome}, got {line!r}")
        except BaseException:
            self.drop(net)
            raise

    def _run_dialogue(self, case: Case) -> None:
        assert case.dialogue is not None
        dialogue = list(case.dialogue(self.world))
        expected = [o for step in dialogue for o in step.expect]
        assert case.outcome in expected, "the case's outcome is not among its replies"
        wire = self.connect(case.network, starttls=case.tls)
        try:
            for index, step in enumerate(dialogue):
                self._exchange(wire, step, case.network, index)
            if not case.closes:
                # still in step: a command after the hostile input gets its own reply
                wire.send(b"NOOP\r\n")
                wire.expect(reply("250"), "NOOP after the case")
                wire.send(b"QUIT\r\n")
                wire.expect(reply("221"), "QUIT")
        finally:
            wire.close()

    def _exchange(self, wire: Wire, step: Exchange, network: str, index: int) -> None:
        if step.send:
            try:
                wire.send(step.send)
            except (BrokenPipeError, ConnectionResetError):
                wire.eof = True  # the server hung up first: the expected replies say if fine
        for n, outcome in enumerate(step.expect):
            wire.expect(outcome, f"step {index} reply {n}")
        if step.upgrade:
            wire.starttls(self.client_context[network])

    # --- health checks ---------------------------------------------------------------------

    def probe(self, network: str) -> None:
        """A fresh connection is greeted and answers EHLO and NOOP (no TLS: cheap)."""
        wire = Wire(self.port(network))
        try:
            wire.expect(reply("220"), "probe banner")
            wire.send(b"EHLO probe.test\r\n")
            wire.expect(reply("250"), "probe EHLO")
            wire.send(b"NOOP\r\n")
            wire.expect(reply("250"), "probe NOOP")
            wire.send(b"QUIT\r\n")
            wire.expect(reply("221"), "probe QUIT")
        finally:
            wire.close()
        self.probes += 1

    def canary(self, network: str) -> None:
        """A genuine message from ``network`` on a fresh session is relayed, to the right
        recipient, and only once."""
        if network not in self._canaries:
            self._canaries[network] = self.world.canary(network)
        before = self.counts()
        destination = OTHER[network]
        wire = self.connect(network)
        try:
            wire.send(f"MAIL FROM:<{SENDER[network]}>\r\nRCPT TO:<{RCPT[network]}>\r\n"
                      "DATA\r\n".encode())
            wire.expect(reply("250 2.1.0"), "canary MAIL")
            wire.expect(reply("250 2.1.5"), "canary RCPT")
            wire.expect(reply("354"), "canary DATA")
            wire.send(stuffed(self._canaries[network]) + b".\r\n")
            wire.expect(reply("250 2.0.0"), "canary relayed")
            wire.send(b"QUIT\r\n")
        finally:
            wire.close()
        after = self.counts()
        assert after[destination] == before[destination] + 1, "canary not relayed once"
        assert after[network] == before[network], "canary relayed to its own network"
        _, rcpts, _ = self.sinks[destination].received[-1]
        assert rcpts == [RELAYED_RCPT[network]]
        self.canaries_sent += 1

    def after_case(self, case: Case, last_in_category: bool) -> None:
        """The listener still answers; a canary at each category end and every few cases."""
        self.probe(case.network)
        self._since_canary += 1
        if last_in_category or self._since_canary >= self.CANARY_EVERY:
            self.canary("apicrypt")
            self.canary("mssante")
            self._since_canary = 0

    def before_case(self, case: Case) -> None:
        # a new category after a run cut short by -k: check the previous chunk first
        if self._last_category not in (None, case.category) and self._since_canary:
            self.canary("apicrypt")
            self.canary("mssante")
            self._since_canary = 0
        self._last_category = case.category


def _sink_factory(sink: Sink, ctx: ssl.SSLContext) -> Callable[[], SMTP]:
    return lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink.test")


def stuffed(content: bytes) -> bytes:
    """DATA content as a client sends it: CRLF at the end, leading dots doubled."""
    if not content.endswith(CRLF):
        content += CRLF
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")
