"""The DATA reader against aiosmtpd's own DATA loop, on any byte stream and any chunking.

``reference`` is aiosmtpd 1.4's ``smtp_DATA`` loop, kept here as the model: the reader that
replaced it must give the same verdict, the same content and leave the same bytes (pipelined
commands) in the stream.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transport.smtp_data import DataVerdict, read_data

LINE_LIMIT = 24
TERMINATOR = b"\r\n.\r\n"
TAIL = b"QUIT\r\nNOOP\r\n"


async def reference(reader: asyncio.StreamReader, size_limit: int | None,
                    line_limit: int) -> tuple[DataVerdict, bytes]:
    """aiosmtpd.smtp.SMTP.smtp_DATA's loop (reader limit = line_length_limit)."""
    data: list[bytearray] = []
    num_bytes = 0
    fragments: list[bytes] = []
    state = DataVerdict.COMPLETE
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            if state is DataVerdict.COMPLETE:
                state = DataVerdict.TOO_LONG
            data *= 0
            line = await reader.read(e.consumed)
        if not fragments and line == b".\r\n":
            break
        num_bytes += len(line)
        if state is DataVerdict.COMPLETE and size_limit and num_bytes > size_limit:
            state = DataVerdict.TOO_MUCH
            data *= 0
        fragments.append(line)
        if line.endswith(b"\r\n"):
            if state is DataVerdict.COMPLETE:
                whole = b"".join(fragments)
                if len(whole) > line_limit:
                    state = DataVerdict.TOO_LONG
                    data *= 0
                else:
                    data.append(bytearray(whole))
            fragments *= 0
    for text in data:
        if text.startswith(b"."):
            del text[0]
    return state, b"".join(data) if state is DataVerdict.COMPLETE else b""


async def _run(stream: bytes, cuts: list[int], reader_limit: int, size_limit: int | None,
               use_reference: bool) -> tuple[DataVerdict, bytes, bytes]:
    reader = asyncio.StreamReader(limit=reader_limit)

    async def feed() -> None:
        pos = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if cut > pos:
                reader.feed_data(stream[pos:cut])
                pos = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    if use_reference:
        verdict, content = await reference(reader, size_limit, LINE_LIMIT)
    else:
        read = await read_data(reader, size_limit=size_limit, line_limit=LINE_LIMIT)
        verdict, content = read.verdict, read.content
    await feeder
    return verdict, content, await reader.read()


_PIECES = st.sampled_from([
    b"a", b"hello", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n.", b"\r.", b"\0",
    b"x" * 10, b"y" * 23, b"z" * 40, b".\r\n", b"\r\n\r\n", b"\r\r\n", b"\n.\n", b"\r.\r\n",
    b"\r\n..\r\n", b"\xe9", b" ",
])


@settings(max_examples=int(os.environ.get("DATA_EXAMPLES", "400")), deadline=None)
@given(body=st.lists(_PIECES, max_size=40).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
       size_limit=st.sampled_from([None, 30, 100, 10_000]),
       reader_limit=st.sampled_from([LINE_LIMIT + 1, 40, 64 * 1024]),
       lead=st.sampled_from([b"", b".\r\n", b"..\r\n", b"\r\n", b"\r"]))
def test_same_verdict_content_and_leftover_as_aiosmtpd(
        body: bytes, cuts: list[int], size_limit: int | None, reader_limit: int,
        lead: bytes) -> None:
    stream = lead + body + TERMINATOR + TAIL
    expected = asyncio.run(_run(stream, cuts, LINE_LIMIT, size_limit, use_reference=True))
    got = asyncio.run(_run(stream, cuts, reader_limit, size_limit, use_reference=False))
    assert got == expected


@pytest.mark.parametrize(("stream", "verdict", "content"), [
    (b".\r\n", DataVerdict.COMPLETE, b""),
    (b"a\r\n.\r\n", DataVerdict.COMPLETE, b"a\r\n"),
    (b"..a\r\n.\r\n", DataVerdict.COMPLETE, b".a\r\n"),
    (b"\r\n.\r\n", DataVerdict.COMPLETE, b"\r\n"),
    (b"a\n.\r\nb\r\n.\r\n", DataVerdict.COMPLETE, b"a\n.\r\nb\r\n"),  # bare LF: not an end
    (b"a\r\n.\nb\r\n.\r\n", DataVerdict.COMPLETE, b"a\r\n\nb\r\n"),  # dot taken
    (b"a\r.\r\n.\r\n", DataVerdict.COMPLETE, b"a\r.\r\n"),
    (b"x" * 30 + b"\r\nb\r\n.\r\n", DataVerdict.TOO_LONG, b""),
])
async def test_named_cases(stream: bytes, verdict: DataVerdict, content: bytes) -> None:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(stream + TAIL)
    reader.feed_eof()
    read = await read_data(reader, size_limit=None, line_limit=LINE_LIMIT)
    assert (read.verdict, read.content) == (verdict, content)
    assert await reader.read() == TAIL  # pipelined commands are left for the session


async def test_size_limit_keeps_reading_to_the_end_without_keeping_content() -> None:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(b"abcdefgh\r\n" * 50 + TERMINATOR[2:] + TAIL)
    reader.feed_eof()
    read = await read_data(reader, size_limit=100, line_limit=LINE_LIMIT)
    assert read.verdict is DataVerdict.TOO_MUCH
    assert read.content == b""
    assert read.received == 500
    assert await reader.read() == TAIL


async def test_stream_ending_before_the_terminator_raises() -> None:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(b"a\r\nb\r\n")
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_data(reader, size_limit=None, line_limit=LINE_LIMIT)
