"""The delivery client sends the bytes aiosmtplib's own DATA would send, and gets its errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.smtp_client import Client, wire_content


def aiosmtplib_wire(message: bytes) -> bytes:
    """What SMTPProtocol.execute_data_command writes after DATA."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


_PIECES = st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"\r\n.", b"x" * 80,
                           b"\r\n.\r\n", b"\xe9", b" "])


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=30).map(b"".join))
def test_same_bytes_as_aiosmtplib_whenever_it_answers(message: bytes) -> None:
    wire = wire_content(message)
    if wire is not None:
        assert wire == aiosmtplib_wire(message)
    else:  # only non-canonical input is left to aiosmtplib
        crlf = message.count(b"\r\n")
        assert (message.count(b"\n") != crlf or message.count(b"\r") != crlf
                or not message.endswith(b"\r\n"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"line", b".dot", b"..two", b"", b"."]), max_size=20))
def test_canonical_messages_take_the_fast_path(lines: list[bytes]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    if not message:
        return
    assert wire_content(message) == aiosmtplib_wire(message)


class _Sink:
    def __init__(self, answer: str = "250 2.0.0 ok") -> None:
        self.answer = answer
        self.received: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(bytes(envelope.original_content or b""))
        return self.answer


@contextlib.asynccontextmanager
async def _sink(answer: str = "250 2.0.0 ok") -> AsyncIterator[tuple[_Sink, int]]:
    sink = _Sink(answer)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield sink, port
    finally:
        server.close()


@pytest.mark.parametrize("message", [
    b"Subject: x\r\n\r\nbody\r\n.leading dot\r\n..two\r\n",
    b".first line dot\r\n",
    b"bare\nLF and bare\rCR\r\n",  # not canonical: aiosmtplib's path
])
async def test_the_next_hop_receives_what_aiosmtplib_would_deliver(message: bytes) -> None:
    async with _sink() as (sink, port):
        for cls in (aiosmtplib.SMTP, Client):
            smtp = cls(hostname="127.0.0.1", port=port, start_tls=False)
            await smtp.connect()
            await smtp.sendmail("a@example.org", ["b@example.org"], message)
            await smtp.quit()
        assert len(sink.received) == 2
        assert sink.received[0] == sink.received[1]


async def test_a_refusal_at_data_raises_as_in_aiosmtplib() -> None:
    async with _sink("550 5.7.1 refused") as (_, port):
        smtp = Client(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await smtp.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
        assert info.value.code == 550
        # the connection is still usable, as after aiosmtplib's own DATA
        await smtp.rset()
        await smtp.quit()
