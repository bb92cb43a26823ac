"""The SMTP listener: bounds, envelope policy calls, replies, mutual TLS, a real client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog

from gateway import errors
from gateway.errors import Reply
from gateway.translate import routing
from gateway.transport import smtp_in, tls
from gateway.transport.smtp_in import InboundMessage, ListenerSettings, start_listener
from tests.conftest import untraced
from tests.test_smtp_out import TlsFiles, make_tls_files

SENDER = "jean.dupont@medical59.apicrypt.org"
RCPT = "marie.curie=hopital-test.mssante.fr@passerelle.apicrypt.org"
ROUTED = "marie.curie@hopital-test.mssante.fr"
BODY = (b"From: jean.dupont@medical59.apicrypt.org\r\nSubject: test\r\n\r\n"
        b"line 1\r\n.leading dot\r\n\xe9t\xe9 8-bit\r\n")

TABLE = routing.build_table(
    {"apicrypt": ["*.apicrypt.org"], "mssante": ["*.mssante.fr"]},
    {"apicrypt": "passerelle.apicrypt.org", "mssante": "passerelle.mssante.fr"},
)

# Every reply these sessions receive must come from gateway/errors.py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("reply_audit")


@pytest.fixture(scope="session")
def tls_in(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-in"))


@dataclass
class Recorder:
    """A ``process`` that records what it is given and answers a configurable reply."""

    reply: Reply = errors.OK
    raises: BaseException | None = None
    delay: float = 0.0
    messages: list[InboundMessage] = field(default_factory=list)

    async def __call__(self, message: InboundMessage) -> Reply:
        self.messages.append(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.raises is not None:
            raise self.raises
        return self.reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings_for(files: TlsFiles, **overrides: Any) -> ListenerSettings:
    base = ListenerSettings(
        network="apicrypt", host="127.0.0.1", port=0, hostname="gw.example",
        ssl_context=tls.server_context(files.cert, files.key, client_ca=files.ca),
        max_message_bytes=100_000, max_recipients=3, command_timeout=10, data_budget=5,
        max_sessions=10, max_sessions_per_ip=5, rate_limit_per_minute=100,
        pseudonym_key=b"k" * 32,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def listener(settings: ListenerSettings,
                   process: Callable[[InboundMessage], Awaitable[Reply]],
                   route: Callable[[str], str] | None = None) -> AsyncIterator[int]:
    server = await start_listener(
        settings,
        check_sender=functools.partial(routing.check_sender, TABLE, settings.network),
        route_recipient=route or functools.partial(routing.route_recipient, TABLE,
                                                   settings.network),
        process=process,
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def client_tls(files: TlsFiles, *, with_cert: bool = False,
               rogue: bool = False) -> ssl.SSLContext:
    if rogue:
        return tls.client_context(ca_files=[files.ca], client_cert=files.rogue_client_cert,
                                  client_key=files.rogue_client_key)
    if with_cert:
        return tls.client_context(ca_files=[files.ca], client_cert=files.client_cert,
                                  client_key=files.client_key)
    return tls.client_context(ca_files=[files.ca])


async def connect(port: int, files: TlsFiles, *, starttls: bool = True,
                  context: ssl.SSLContext | None = None) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10,
                           local_hostname="client.example")
    await smtp.connect()
    if starttls:
        await smtp.starttls(server_hostname="localhost",
                            tls_context=context or client_tls(files))
    return smtp


async def code_of(coro: Awaitable[Any]) -> tuple[int, str]:
    """The reply's code and text (without the trace id a reply to a message ends with)."""
    try:
        response = await coro
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, untraced(exc.message)
    return response.code, untraced(response.message)


# --- tests ------------------------------------------------------------------------------------


async def test_relays_and_passes_the_envelope(tls_in: TlsFiles) -> None:
    rec = Recorder()
    async with listener(settings_for(tls_in), rec) as port:
        smtp = await connect(port, tls_in, context=client_tls(tls_in, with_cert=True))
        await smtp.ehlo()
        assert smtp.supports_extension("size")
        assert smtp.esmtp_extensions["size"] == "100000"
        assert smtp.supports_extension("enhancedstatuscodes")
        assert not smtp.supports_extension("starttls")  # already in TLS
        assert await code_of(smtp.mail(SENDER)) == (250, "2.1.0 Sender OK")
        assert (await code_of(smtp.rcpt(RCPT.upper())))[0] == 250
        assert (await code_of(smtp.rcpt(RCPT)))[0] == 250  # same destination twice
        code, text = await code_of(smtp.data(BODY))
        await smtp.quit()
    assert (code, text) == (250, "2.0.0 OK: relayed")
    [message] = rec.messages
    assert message.network == "apicrypt"
    assert message.mail_from == SENDER
    assert message.rcpt_tos == (RCPT.upper(), RCPT)
    assert message.routed_rcpts == (ROUTED,)
    assert message.content == BODY
    assert message.peer == "127.0.0.1"
    assert message.tls_peer_cert is not None and len(message.trace_id) == 16


async def test_starttls_required_before_mail(tls_in: TlsFiles) -> None:
    rec = Recorder()
    async with listener(settings_for(tls_in), rec) as port:
        smtp = await connect(port, tls_in, starttls=False)
        await smtp.ehlo()
        assert smtp.supports_extension("starttls")
        code, text = await code_of(smtp.mail(SENDER))
        smtp.close()
    assert (code, text) == (530, "5.7.0 Must issue a STARTTLS command first")
    assert rec.messages == []


async def test_plain_smtp_when_starttls_is_not_required(tls_in: TlsFiles) -> None:
    """require_starttls = false (Postfix's before-queue proxy on loopback): plain MAIL works,
    STARTTLS is still offered, and the message is processed like any other."""
    rec = Recorder()
    async with listener(settings_for(tls_in, require_starttls=False), rec) as port:
        smtp = await connect(port, tls_in, starttls=False)
        await smtp.ehlo()
        assert smtp.supports_extension("starttls")
        assert (await code_of(smtp.mail(SENDER)))[0] == 250
        assert (await code_of(smtp.rcpt(RCPT)))[0] == 250
        code, _ = await code_of(smtp.data(BODY))
        await smtp.quit()
    assert code == 250
    [message] = rec.messages
    assert message.content == BODY and message.tls_peer_cert is None


async def test_too_many_recipients(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, max_recipients=2), Recorder()) as port:
        smtp = await connect(port, tls_in)
        await smtp.mail(SENDER)
        await smtp.rcpt(RCPT)
        await smtp.rcpt("x=hopital-test.mssante.fr@passerelle.apicrypt.org")
        code, text = await code_of(smtp.rcpt("y=hopital-test.mssante.fr@passerelle.apicrypt.org"))
        smtp.close()
    assert f"{code} {text}" == str(errors.TOO_MANY_RECIPIENTS)


@pytest.mark.parametrize("rcpt", [
    "someone@medical59.apicrypt.org", ROUTED, "user%relay@passerelle.apicrypt.org",
    "x=example.com@passerelle.apicrypt.org",
])
async def test_unroutable_recipient_is_refused(tls_in: TlsFiles, rcpt: str) -> None:
    async with listener(settings_for(tls_in), Recorder()) as port:
        smtp = await connect(port, tls_in)
        await smtp.mail(SENDER)
        code, text = await code_of(smtp.rcpt(rcpt))
        smtp.close()
    assert code in (550, 553)
    assert text.startswith(("5.7.1", "5.1.3"))


async def test_sender_from_the_wrong_network(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in), Recorder()) as port:
        smtp = await connect(port, tls_in)
        code, text = await code_of(smtp.mail(ROUTED))
        null_code, null_text = await code_of(smtp.execute_command(b"MAIL", b"FROM:<>"))
        smtp.close()
    assert f"{code} {text}" == str(errors.SENDER_NOT_ALLOWED)
    assert f"{null_code} {null_text}" == str(errors.NULL_SENDER_REFUSED)


async def _send(port: int, files: TlsFiles, body: bytes = BODY) -> tuple[int, str]:
    smtp = await connect(port, files)
    await smtp.mail(SENDER)
    await smtp.rcpt(RCPT)
    result = await code_of(smtp.data(body))
    smtp.close()
    return result


async def test_process_verdict_is_the_answer(tls_in: TlsFiles) -> None:
    rec = Recorder(reply=errors.DOWNSTREAM_DEFERRED)
    async with listener(settings_for(tls_in), rec) as port:
        assert await _send(port, tls_in) == (451, "4.4.0 Next hop unavailable, try again later")
        rec.reply = Reply(554, "5.7.1", "Next hop refused: policy")
        assert await _send(port, tls_in) == (554, "5.7.1 Next hop refused: policy")
        rec.reply, rec.raises = errors.OK, errors.SignatureError("bad")
        assert await _send(port, tls_in) == (550, "5.7.7 Signature could not be verified")
        rec.raises = None
        rec.reply = "250 not a Reply"  # type: ignore[assignment]
        assert (await _send(port, tls_in))[0] == 451


async def test_process_raising_is_451_without_internals(tls_in: TlsFiles) -> None:
    rec = Recorder(raises=RuntimeError("secret internals /etc/key.pem"))
    async with listener(settings_for(tls_in), rec) as port:
        code, text = await _send(port, tls_in)
    assert f"{code} {text}" == str(errors.LOCAL_ERROR)
    assert "secret" not in text and "RuntimeError" not in text


async def test_data_budget_exceeded_is_451(tls_in: TlsFiles) -> None:
    rec = Recorder(delay=30)
    async with listener(settings_for(tls_in, data_budget=0.3), rec) as port:
        code, text = await asyncio.wait_for(_send(port, tls_in), timeout=10)
    assert f"{code} {text}" == str(errors.DOWNSTREAM_DEFERRED)


async def test_message_too_big(tls_in: TlsFiles) -> None:
    rec = Recorder()
    async with listener(settings_for(tls_in, max_message_bytes=1000), rec) as port:
        smtp = await connect(port, tls_in)
        await smtp.ehlo()
        size = await code_of(smtp.execute_command(b"MAIL", f"FROM:<{SENDER}>".encode(),
                                                  b"SIZE=5000"))
        await smtp.mail(SENDER)
        await smtp.rcpt(RCPT)
        code, text = await code_of(smtp.data(b"Subject: x\r\n\r\n" + b"x" * 900 + b"\r\n"
                                             + b"y" * 900 + b"\r\n"))
        smtp.close()
    assert f"{size[0]} {size[1]}" == str(errors.MESSAGE_TOO_BIG)
    assert f"{code} {text}" == str(errors.MESSAGE_TOO_BIG)
    assert rec.messages == []


async def test_per_ip_session_limit(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, max_sessions_per_ip=1), Recorder()) as port:
        first = await connect(port, tls_in)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
            await connect(port, tls_in, starttls=False)
        assert (info.value.code, info.value.message) == (421, "4.7.0 Too many connections, "
                                                              "try again later")
        first.close()
        await asyncio.sleep(0.05)
        again = await connect(port, tls_in)  # the slot is free again
        assert (await code_of(again.noop()))[0] == 250
        again.close()


async def test_total_session_limit(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, max_sessions=2), Recorder()) as port:
        a = await connect(port, tls_in)  # in TLS: not idle plain sessions, nobody to drop
        b = await connect(port, tls_in)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as info:
            await connect(port, tls_in, starttls=False)
        assert info.value.code == 421
        a.close()
        b.close()


async def test_idle_plain_sessions_are_dropped_first_when_full(tls_in: TlsFiles) -> None:
    """Plain idle connections filled the listener (the attack: 240 of them, a NOOP every
    20 s): a new client gets in, and the oldest idle plain one is told why and closed."""
    async with listener(settings_for(tls_in, max_sessions=2), Recorder()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        other = await connect(port, tls_in, starttls=False)  # idle and plain too
        genuine = await connect(port, tls_in)  # full: the oldest idle plain one makes room
        assert (await code_of(genuine.mail(SENDER)))[0] == 250
        rest = await asyncio.wait_for(reader.read(), timeout=5)
        assert rest == str(errors.IDLE_SESSION_DROPPED).encode() + b"\r\n"
        genuine.close()
        other.close()
        writer.close()


async def test_no_starttls_in_time_is_closed(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, starttls_seconds=0.3), Recorder()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"EHLO client.example\r\n")
        rest = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert rest.endswith(str(errors.STARTTLS_TOO_LATE).encode() + b"\r\n")
    # in TLS in time: the same bound does not apply
    async with listener(settings_for(tls_in, starttls_seconds=0.3), Recorder()) as port:
        smtp = await connect(port, tls_in)
        await asyncio.sleep(0.6)
        assert (await code_of(smtp.noop()))[0] == 250
        smtp.close()


async def test_commands_without_a_message_are_bounded(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, max_idle_commands=3), Recorder()) as port:
        smtp = await connect(port, tls_in)
        for _ in range(3):
            assert (await code_of(smtp.noop()))[0] == 250
        code, text = await code_of(smtp.noop())
        assert f"{code} {text}" == str(errors.TOO_MANY_IDLE_COMMANDS)
        # a client that sends mail is not idle: MAIL resets the count
        smtp = await connect(port, tls_in)
        for _ in range(3):
            await smtp.noop()
            await smtp.rset()
            assert (await code_of(smtp.mail(SENDER)))[0] == 250
        smtp.close()


async def test_session_lifetime_is_bounded(tls_in: TlsFiles) -> None:
    """A NOOP now and then does not keep a session forever (one lived past 150 s)."""
    async with listener(settings_for(tls_in, session_seconds=0.5, max_idle_commands=100),
                        Recorder()) as port:
        smtp = await connect(port, tls_in)
        with pytest.raises(aiosmtplib.SMTPException):
            for _ in range(20):
                await smtp.noop()
                await asyncio.sleep(0.1)


async def test_rate_limit_per_sender(tls_in: TlsFiles) -> None:
    clock = Clock()
    settings = settings_for(tls_in, rate_limit_per_minute=2, clock=clock)
    async with listener(settings, Recorder()) as port:
        smtp = await connect(port, tls_in)
        for _ in range(2):
            assert (await code_of(smtp.mail(SENDER)))[0] == 250
            await smtp.rset()
        code, text = await code_of(smtp.mail(SENDER.upper()))
        assert f"{code} {text}" == str(errors.RATE_LIMITED)
        other = "paul@medical59.apicrypt.org"
        assert (await code_of(smtp.mail(other)))[0] == 250  # per sender
        await smtp.rset()
        clock.now += 61
        assert (await code_of(smtp.mail(SENDER)))[0] == 250  # the window moved
        smtp.close()


async def test_mutual_tls_required(tls_in: TlsFiles) -> None:
    seen: list[bytes] = []

    def peer_ok(der: bytes) -> bool:
        seen.append(der)
        return tls.peer_certificate_trusted(der, Store(tls_in))

    settings = settings_for(tls_in, require_client_cert=True, peer_cert_ok=peer_ok)
    rec = Recorder()
    async with listener(settings, rec) as port:
        # No client certificate: the session is refused at every command but QUIT.
        smtp = await connect(port, tls_in)
        code, text = await code_of(smtp.mail(SENDER))
        assert f"{code} {text}" == str(errors.CLIENT_CERT_REFUSED)
        smtp.close()
        # A certificate of another CA: the handshake itself fails.
        with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
            smtp = await connect(port, tls_in, context=client_tls(tls_in, rogue=True))
            await smtp.mail(SENDER)
        # A trusted certificate: accepted, and checked by the callback.
        assert await _send_with_cert(port, tls_in) == (250, "2.0.0 OK: relayed")
    assert len(seen) == 1 and len(rec.messages) == 1
    assert rec.messages[0].tls_peer_cert == seen[0]


async def test_peer_check_refusal(tls_in: TlsFiles) -> None:
    settings = settings_for(tls_in, require_client_cert=True, peer_cert_ok=lambda der: False)
    async with listener(settings, Recorder()) as port:
        smtp = await connect(port, tls_in, context=client_tls(tls_in, with_cert=True))
        code, _ = await code_of(smtp.mail(SENDER))
        smtp.close()
    assert code == 554


async def _send_with_cert(port: int, files: TlsFiles) -> tuple[int, str]:
    smtp = await connect(port, files, context=client_tls(files, with_cert=True))
    await smtp.mail(SENDER)
    await smtp.rcpt(RCPT)
    result = await code_of(smtp.data(BODY))
    smtp.close()
    return result


@dataclass
class Store:
    files: TlsFiles

    @property
    def anchors(self) -> tuple[Any, ...]:
        return self.files.anchors

    @property
    def intermediates(self) -> tuple[Any, ...]:
        return ()


def test_peer_certificate_trusted(tls_in: TlsFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    good = x509.load_pem_x509_certificate(tls_in.client_cert.read_bytes())
    rogue = x509.load_pem_x509_certificate(tls_in.rogue_client_cert.read_bytes())
    der = good.public_bytes(serialization.Encoding.DER)
    assert tls.peer_certificate_trusted(der, Store(tls_in))
    assert not tls.peer_certificate_trusted(rogue.public_bytes(serialization.Encoding.DER),
                                            Store(tls_in))
    assert not tls.peer_certificate_trusted(b"not a certificate", Store(tls_in))


def test_pseudonym_is_keyed_and_stable() -> None:
    a = smtp_in.keyed_pseudonym(b"a" * 32)
    b = smtp_in.keyed_pseudonym(b"b" * 32)
    assert a(SENDER) == a(SENDER.upper()) and len(a(SENDER)) == len("a:") + 16
    assert a(SENDER) != b(SENDER) and SENDER not in a(SENDER)


async def test_logs_carry_no_clear_address(tls_in: TlsFiles) -> None:
    import structlog.testing

    with structlog.testing.capture_logs() as logs:
        async with listener(settings_for(tls_in), Recorder()) as port:
            smtp = await connect(port, tls_in)
            await code_of(smtp.mail("stranger@example.com"))
            await smtp.mail(SENDER)
            await code_of(smtp.rcpt("victim@medical59.apicrypt.org"))
            smtp.close()
            await asyncio.sleep(0.05)
    text = repr(logs)
    assert "mail.refused" in text and "session.open" in text
    for clear in ("stranger", "victim", "jean.dupont"):
        assert clear not in text


async def test_swaks_sends_one_message(tls_in: TlsFiles, tmp_path: Path) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks not installed")
    rec = Recorder()
    data = tmp_path / "message.eml"
    # swaks ends the data with its own CRLF before the final dot: give it none.
    sent = BODY.replace(b"\xe9", b"e")
    data.write_bytes(sent.removesuffix(b"\r\n"))
    async with listener(settings_for(tls_in), rec) as port:
        proc = await asyncio.create_subprocess_exec(
            swaks, "--server", f"127.0.0.1:{port}", "--tls", "--from", SENDER, "--to", RCPT,
            "--helo", "client.example", "--data", f"@{data}", "--timeout", "10",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    transcript = out.decode("utf-8", "replace")
    assert proc.returncode == 0, transcript
    assert "<~  250 2.0.0 OK: relayed" in transcript
    [message] = rec.messages
    assert message.content == sent  # exactly, the leading dot un-stuffed
    assert message.routed_rcpts == (ROUTED,)


async def test_policy_crash_is_451_without_internals(tls_in: TlsFiles) -> None:
    def broken_route(address: str) -> str:
        raise KeyError("internal table /etc/secret")

    async with listener(settings_for(tls_in), Recorder(), route=broken_route) as port:
        smtp = await connect(port, tls_in)
        await smtp.mail(SENDER)
        code, text = await code_of(smtp.rcpt(RCPT))
        assert (await code_of(smtp.noop()))[0] == 250  # the session survives
        smtp.close()
    assert f"{code} {text}" == str(errors.LOCAL_ERROR)


async def test_idle_client_gets_421_and_is_closed(tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in, command_timeout=0.3), Recorder()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        banner = await reader.readline()
        assert banner == b"220 gw.example ESMTP\r\n"  # no software name or version
        rest = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert rest == str(errors.TIMEOUT_CLOSING).encode() + b"\r\n"


def test_peer_certificate_revoked_by_crl() -> None:
    from cryptography.hazmat.primitives import serialization

    from gateway.smime import certgen
    from gateway.smime.trust import TrustStore

    ca = certgen.make_ca("Client CA", key_kind="p256")
    client = certgen.make_leaf(ca, "client", key_usage="tls", key_kind="p256")
    der = client.certificate.public_bytes(serialization.Encoding.DER)
    assert tls.peer_certificate_trusted(der, TrustStore(anchors=(ca.certificate,)))
    crl = certgen.make_crl(ca, [client.certificate.serial_number])
    assert not tls.peer_certificate_trusted(
        der, TrustStore(anchors=(ca.certificate,), crls=(crl,)))


async def test_proxy_protocol_gives_the_real_client(tls_in: TlsFiles) -> None:
    """Behind HAProxy (send-proxy): logs, limits and the message carry the real client."""
    rec = Recorder()
    settings = settings_for(tls_in, proxy_protocol=True, max_sessions_per_ip=1)
    async with listener(settings, rec) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
        assert (await reader.readline()).startswith(b"220")
        # a second session from the *same real client* is over its per-IP limit, while the
        # balancer's own address (127.0.0.1) is not what is counted
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 25\r\n")
        assert (await r2.readline()) == b""  # refused: closed
        w2.close()
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        w3.write(b"PROXY TCP4 198.51.100.9 127.0.0.1 40002 25\r\n")
        assert (await r3.readline()).startswith(b"220")
        w3.close()
        # no PROXY header where one is required: the connection is closed, nothing relayed
        r4, w4 = await asyncio.open_connection("127.0.0.1", port)
        w4.write(b"EHLO client.example\r\n")
        assert (await r4.readline()) == b""
        w4.close()
        writer.close()
    assert rec.messages == []


async def test_proxy_protocol_message_peer(tls_in: TlsFiles) -> None:
    import smtplib

    rec = Recorder()
    settings = settings_for(tls_in, proxy_protocol=True)

    class ProxySMTP(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> Any:
            sock = super()._get_socket(host, port, timeout)
            sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
            return sock

    def send(port: int) -> tuple[int, bytes]:
        with ProxySMTP("localhost", port, timeout=10) as client:
            client.starttls(context=client_tls(tls_in, with_cert=True))
            client.ehlo("client.example")
            client.mail(SENDER)
            client.rcpt(RCPT)
            return client.data(BODY)

    async with listener(settings, rec) as port:
        code, _ = await asyncio.to_thread(send, port)
    assert code == 250
    assert [m.peer for m in rec.messages] == ["203.0.113.7"]


@pytest.mark.parametrize("header", [
    # HAProxy's check-send-proxy with send-proxy-v2: version 2, command LOCAL, no addresses
    b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00",
    b"PROXY UNKNOWN\r\n",  # PROXY v1 from a balancer that has no client to name
])
async def test_a_balancer_health_check_is_greeted_and_carries_no_mail(
        tls_in: TlsFiles, header: bytes) -> None:
    """PROXY v2 LOCAL / v1 UNKNOWN is the balancer's own connection: greeted, EHLO answered,
    QUIT closes cleanly; MAIL is refused (it names no client to judge or count), nothing is
    relayed, and the log says it at debug only."""
    rec = Recorder()
    settings = settings_for(tls_in, proxy_protocol=True)
    with structlog.testing.capture_logs() as logs:
        async with listener(settings, rec) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(header)
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO haproxy.example.org\r\n")
            lines = [await reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(await reader.readline())
            assert lines[-1].startswith(b"250 ")
            writer.write(b"MAIL FROM:<" + SENDER.encode() + b">\r\n")
            assert (await reader.readline())[:3] in (b"530", b"503")  # before or after TLS
            writer.write(b"QUIT\r\n")
            assert (await reader.readline()).startswith(b"221")
            assert await reader.read() == b""
            writer.close()
    assert rec.messages == []
    events = {e["event"]: e["log_level"] for e in logs}
    assert events.get("proxy.health_check") == "debug"
    assert "proxy.invalid" not in events
    assert all(level == "debug" for event, level in events.items()
               if event.startswith("session."))


async def test_a_reply_to_a_message_names_its_trace_and_the_log_keys_it(
        tls_in: TlsFiles) -> None:
    """The sending MTA's log keeps our reply text: its trace id leads to our events, and
    message.received carries keyed hashes of the envelope and of the Message-ID (no address
    in clear), so `gateway trace` can find the message from either."""
    rec = Recorder()
    settings = settings_for(tls_in)
    body = b"Message-ID: <trace-1@example.test>\r\nSubject: x\r\n\r\nbody\r\n"
    with structlog.testing.capture_logs() as logs:
        async with listener(settings, rec) as port:
            smtp = await connect(port, tls_in)
            await smtp.mail(SENDER)
            await smtp.rcpt(RCPT)
            response = await smtp.data(body)
            await smtp.quit()
    [received] = [e for e in logs if e["event"] == "message.received"]
    assert response.message.endswith(f" [trace {received['trace']}]")
    assert received["message_id"] == settings.pseudo("<trace-1@example.test>")
    assert received["mail_from"] == settings.pseudo(SENDER)
    assert received["rcpts"] == [settings.pseudo(RCPT)]
    assert SENDER not in str(logs) and RCPT not in str(logs) and "trace-1" not in str(logs)


async def test_mail_before_starttls_is_logged(tls_in: TlsFiles) -> None:
    rec = Recorder()
    with structlog.testing.capture_logs() as logs:
        async with listener(settings_for(tls_in), rec) as port:
            smtp = await connect(port, tls_in, starttls=False)
            await smtp.ehlo()
            assert (await code_of(smtp.mail(SENDER)))[0] == 530
            await smtp.quit()
    [refused] = [e for e in logs if e["event"] == "mail.refused"]
    assert refused["error"] == "StartTlsRequired" and refused["reply"] == 530
