"""SMTP smuggling and malformed input on a raw TLS connection.

Each case: a precise reply, ``process`` called at most once and never with a smuggled second
message, and the session still in step (a normal message right after is relayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import pytest

from gateway import errors
from gateway.transport import tls
from tests.conftest import untraced
from tests.test_smtp_in import (
    RCPT,
    ROUTED,
    SENDER,
    Recorder,
    listener,
    settings_for,
)
from tests.test_smtp_out import TlsFiles, make_tls_files

SMUGGLED_SENDER = "evil@medical59.apicrypt.org"
SMUGGLED_RCPT = "victim=hopital-test.mssante.fr@passerelle.apicrypt.org"
SMUGGLED = (f"MAIL FROM:<{SMUGGLED_SENDER}>\r\nRCPT TO:<{SMUGGLED_RCPT}>\r\nDATA\r\n"
            "From: evil@medical59.apicrypt.org\r\nSubject: smuggled\r\n\r\nspoofed\r\n").encode()
HEADER = b"From: jean.dupont@medical59.apicrypt.org\r\nSubject: first\r\n\r\nhello\r\n"

# Every reply these sessions receive must come from gateway/errors.py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("reply_audit")


@pytest.fixture(scope="module")
def tls_sm(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-smuggling"))


class Raw:
    """A byte-level SMTP client over STARTTLS (asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        assert (await raw.reply()).startswith("220")
        assert (await raw.command(b"EHLO client.example")).startswith("250")
        assert (await raw.command(b"STARTTLS")).startswith("220")
        await writer.start_tls(context, server_hostname="localhost")
        assert (await raw.command(b"EHLO client.example")).startswith("250")
        return raw

    async def reply(self) -> str:
        """One whole (possibly multi-line) reply; its last line."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout=10)
            if not line:
                raise ConnectionError("closed")
            text = line.decode("ascii").rstrip("\r\n")
            if len(text) < 4 or text[3] != "-":
                return untraced(text)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: bytes) -> str:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def envelope(self, sender: str = SENDER, rcpt: str = RCPT) -> None:
        assert (await self.command(f"MAIL FROM:<{sender}>".encode())).startswith("250")
        assert (await self.command(f"RCPT TO:<{rcpt}>".encode())).startswith("250")
        assert (await self.command(b"DATA")).startswith("354")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def _next_message_is_relayed(raw: Raw, rec: Recorder) -> None:
    before = len(rec.messages)
    await raw.envelope()
    await raw.send(b"Subject: next\r\n\r\nafter\r\n.\r\n")
    assert await raw.reply() == str(errors.OK)
    assert len(rec.messages) == before + 1
    assert rec.messages[-1].content == b"Subject: next\r\n\r\nafter\r\n"
    assert rec.messages[-1].routed_rcpts == (ROUTED,)


@pytest.mark.parametrize(("name", "payload", "expected"), [
    ("LF.CRLF", HEADER + b"\n.\r\n" + SMUGGLED, errors.BARE_NEWLINE),
    ("CRLF.LF", HEADER + b"\r\n.\n" + SMUGGLED, errors.BARE_NEWLINE),
    ("LF.LF", HEADER + b"\n.\n" + SMUGGLED, errors.BARE_NEWLINE),
    ("CR.CRLF", HEADER + b"\r.\r\n" + SMUGGLED, errors.BARE_NEWLINE),
    ("CR.CR", HEADER + b"\r.\r" + SMUGGLED, errors.BARE_NEWLINE),
    ("NUL.CRLF", HEADER + b"\x00.\r\n" + SMUGGLED, errors.NUL_NOT_ALLOWED),
    ("bare LF in header", b"From: a@b.example\nBcc: x@y.example\r\nSubject: s\r\n\r\nx\r\n",
     errors.BARE_NEWLINE),
    ("bare CR in header", b"Subject: a\rInjected: yes\r\n\r\nx\r\n", errors.BARE_NEWLINE),
    ("overlong text line", HEADER + b"x" * 1200 + b"\r\n", errors.TEXT_LINE_TOO_LONG),
])
async def test_smuggling_and_bad_content(tls_sm: TlsFiles, name: str, payload: bytes,
                                         expected: errors.Reply) -> None:
    rec = Recorder()
    async with listener(settings_for(tls_sm), rec) as port:
        raw = await Raw.open(port, tls.client_context(ca_files=[tls_sm.ca]))
        await raw.envelope()
        # One write: the message, its smuggled tail and the real end, as an attacker would.
        await raw.send(payload + b"\r\n.\r\n")
        assert await raw.reply() == str(expected), name
        assert rec.messages == []
        await _next_message_is_relayed(raw, rec)
        assert await raw.command(b"QUIT") == "221 Bye"
        await raw.close()
    assert len(rec.messages) == 1
    assert all(m.mail_from == SENDER for m in rec.messages)
    assert all(SMUGGLED_SENDER.encode() not in m.content for m in rec.messages)


async def test_pipelined_smuggled_second_message(tls_sm: TlsFiles) -> None:
    """A whole pipelined transaction whose content hides a second one behind LF.LF."""
    rec = Recorder()
    async with listener(settings_for(tls_sm), rec) as port:
        raw = await Raw.open(port, tls.client_context(ca_files=[tls_sm.ca]))
        await raw.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
                       + HEADER + b"\n.\n" + SMUGGLED + b"\r\n.\r\n"
                       + b"NOOP\r\n")
        replies = [await raw.reply() for _ in range(5)]
        assert replies[0].startswith("250") and replies[1].startswith("250")
        assert replies[2].startswith("354")
        assert replies[3] == str(errors.BARE_NEWLINE)
        assert replies[4].startswith("250")  # NOOP: still in step
        await _next_message_is_relayed(raw, rec)
        await raw.close()
    assert [m.mail_from for m in rec.messages] == [SENDER]


async def test_well_formed_pipelining_is_two_messages(tls_sm: TlsFiles) -> None:
    """Control: two honest pipelined messages are two messages (CRLF.CRLF ends DATA)."""
    rec = Recorder()
    async with listener(settings_for(tls_sm), rec) as port:
        raw = await Raw.open(port, tls.client_context(ca_files=[tls_sm.ca]))
        one = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
        await raw.send(one + b"Subject: 1\r\n\r\na\r\n.\r\n"
                       + one + b"Subject: 2\r\n\r\nb\r\n.\r\n")
        replies = [await raw.reply() for _ in range(8)]
        await raw.close()
    assert replies[3] == replies[7] == str(errors.OK)
    assert [m.content for m in rec.messages] == [b"Subject: 1\r\n\r\na\r\n",
                                                 b"Subject: 2\r\n\r\nb\r\n"]


@pytest.mark.parametrize(("line", "expected"), [
    (b"RCPT TO:<marie\xe9=hopital-test.mssante.fr@passerelle.apicrypt.org>",
     errors.NON_ASCII_COMMAND),
    (b"RCPT TO:<" + b"a" * 600 + b"@passerelle.apicrypt.org>", errors.COMMAND_TOO_LONG),
    (b"RCPT TO:<" + b"a" * 2000 + b"@passerelle.apicrypt.org>", errors.COMMAND_TOO_LONG),
    (b"RCPT TO:<@relay.example:" + RCPT.encode() + b">", None),  # route dropped: accepted
    (b"RCPT TO:<victim%hopital-test.mssante.fr@passerelle.apicrypt.org>", "553 5.1.3"),
    (b'RCPT TO:<"victim@hopital-test.mssante.fr"@passerelle.apicrypt.org>', "553 5.1.3"),
    (b"RCPT TO:<user@[127.0.0.1]>", "553 5.1.3"),
])
async def test_bad_commands(tls_sm: TlsFiles, line: bytes,
                            expected: errors.Reply | str | None) -> None:
    rec = Recorder()
    async with listener(settings_for(tls_sm), rec) as port:
        raw = await Raw.open(port, tls.client_context(ca_files=[tls_sm.ca]))
        assert (await raw.command(f"MAIL FROM:<{SENDER}>".encode())).startswith("250")
        answer = await raw.command(line)
        if expected is None:
            assert answer.startswith("250")
        elif isinstance(expected, str):
            assert answer.startswith(expected)
        else:
            assert answer == str(expected)
        assert (await raw.command(b"RSET")).startswith("250")
        await _next_message_is_relayed(raw, rec)
        await raw.close()
    assert len(rec.messages) == 1


async def test_plaintext_injection_before_tls_is_discarded(tls_sm: TlsFiles) -> None:
    """STARTTLS command injection (CVE-2011-0411 class): pipelined clear commands vanish."""
    rec = Recorder()
    async with listener(settings_for(tls_sm), rec) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = Raw(reader, writer)
        await raw.reply()
        await raw.command(b"EHLO client.example")
        await raw.send(b"STARTTLS\r\nMAIL FROM:<" + SMUGGLED_SENDER.encode() + b">\r\n")
        assert (await raw.reply()).startswith("220")
        await writer.start_tls(tls.client_context(ca_files=[tls_sm.ca]),
                               server_hostname="localhost")
        await raw.command(b"EHLO client.example")
        # Had the clear MAIL survived, this would be "503 nested MAIL".
        assert (await raw.command(f"MAIL FROM:<{SENDER}>".encode())).startswith("250")
        await raw.close()
