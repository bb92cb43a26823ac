"""Reading the content of an SMTP DATA command (RFC 5321 §4.5.2) from a StreamReader.

Rule kept here: the same bytes, the same end and the same verdicts as aiosmtpd's own DATA loop
(which this replaces for speed), and never a byte read past the end of the content, so that
pipelined commands after ``<CRLF>.<CRLF>`` stay in the reader for the session.

aiosmtpd reads a line at a time; a 10 KB message is some 200 awaits. Here whole runs of lines
are taken at once: only a line that starts with a dot needs a look of its own (it is either the
end of the content or a dot-stuffed line). The rules are aiosmtpd's:

- a line ends with CRLF; a bare CR or LF is part of the line (the listener refuses those later);
- the content ends at the first line that is exactly ``.`` CRLF;
- a line longer than ``line_limit`` bytes (CRLF included) makes the verdict ``TOO_LONG``;
- more than ``size_limit`` bytes of lines (stuffing dots included) makes it ``TOO_MUCH``;
- the first of the two that happens decides; past it, nothing more is kept, but the content is
  still read to its end so the session stays in step with the client;
- a line starting with a dot loses that dot.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

_CRLF = b"\r\n"
_DOT_LINE = b"\r\n."  # the end of a run: the next line starts with a dot


class DataVerdict(enum.Enum):
    COMPLETE = "complete"
    TOO_LONG = "too long"  # a line over the line limit
    TOO_MUCH = "too much"  # content over the size limit


@dataclass
class DataRead:
    verdict: DataVerdict
    content: bytes  # empty unless COMPLETE
    received: int  # bytes of lines read (dots included), terminator excluded


class _Collector:
    """Keeps the lines while the verdict is COMPLETE; counts them either way."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.verdict = DataVerdict.COMPLETE
        self.pieces: list[bytes] = []
        self.received = 0

    def lines(self, run: bytes, *, stuffed: bool = False) -> None:
        """``run``: whole lines, each ending with CRLF. ``stuffed``: ``run`` is one line whose
        leading dot was taken (it still counts, as aiosmtpd counts it)."""
        before = self.received
        self.received += len(run) + stuffed
        if self.verdict is not DataVerdict.COMPLETE:
            return
        over = bool(self.size_limit) and self.received > (self.size_limit or 0)
        if over or max(map(len, run.split(_CRLF))) + 2 + stuffed > self.line_limit:
            self._stop(self._first_fault(run, stuffed, before))
            return
        self.pieces.append(run)

    def _first_fault(self, run: bytes, stuffed: bool, before: int) -> DataVerdict:
        """aiosmtpd's verdict, line by line: a line its reader cannot hold (longer than the
        limit without its CRLF) is too long at once; otherwise the size is checked before
        the length of the line."""
        count = before
        for line in run.split(_CRLF)[:-1]:
            length = len(line) + stuffed
            if length > self.line_limit:
                return DataVerdict.TOO_LONG
            count += length + 2
            if self.size_limit and count > self.size_limit:
                return DataVerdict.TOO_MUCH
            if length + 2 > self.line_limit:
                return DataVerdict.TOO_LONG
        return DataVerdict.TOO_MUCH  # not reached: lines() saw a fault

    def too_long(self, count: int) -> None:
        """``count`` bytes of a line longer than the reader's buffer."""
        self.received += count
        if self.verdict is DataVerdict.COMPLETE:
            self._stop(DataVerdict.TOO_LONG)

    def _stop(self, verdict: DataVerdict) -> None:
        self.verdict = verdict
        self.pieces.clear()  # nothing more of this message is kept

    def result(self) -> DataRead:
        content = b"".join(self.pieces) if self.verdict is DataVerdict.COMPLETE else b""
        self.pieces.clear()
        return DataRead(self.verdict, content, self.received)


async def _rest_of_line(reader: asyncio.StreamReader, sink: _Collector, *,
                        stuffed: bool = False, head: bytes = b"") -> bytes | None:
    """Read to the end of the current line: its bytes (``head`` first), or None if it was
    longer than the reader's buffer (then it is read to its end and counted as too long).

    Lines end at CRLF, but the reader is asked for LF: a one-byte separator cannot be split
    between what was already taken (a CR at the end of ``head``) and what is still buffered.
    """
    pieces = [head]
    kept = True  # False once the line outgrew the buffer: counted, not kept
    after_cr = head.endswith(b"\r")
    while True:
        try:
            piece = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            piece = await reader.read(exc.consumed)  # no LF in it: the line goes on
            if kept:
                kept = False
                sink.too_long(sum(map(len, pieces)) + stuffed)
                pieces.clear()
            sink.too_long(len(piece))
            after_cr = piece.endswith(b"\r")
            continue
        ends = piece.endswith(_CRLF) or (piece == b"\n" and after_cr)
        after_cr = False
        if not kept:
            sink.too_long(len(piece))
            if ends:
                return None
            continue
        pieces.append(piece)
        if ends:
            return b"".join(pieces)


async def read_data(reader: asyncio.StreamReader, *, size_limit: int | None,
                    line_limit: int) -> DataRead:
    """Read the content after a 354 reply, up to and including the ``.`` CRLF line.

    Raises ``asyncio.IncompleteReadError`` if the stream ends first. The reader's own limit
    bounds how much is buffered at once; it must be larger than ``line_limit``.
    """
    sink = _Collector(size_limit, line_limit)
    while True:  # at the start of a line
        first = await reader.readexactly(1)
        if first == b".":
            rest = await _rest_of_line(reader, sink, stuffed=True)
            if rest == _CRLF:
                return sink.result()
            if rest is not None:
                sink.lines(rest, stuffed=True)
            continue
        if first == b"\r":
            # This CR may be the first half of the CRLF before a dot line, which a search for
            # CRLF "." from here could no longer see: finish this line on its own.
            line = await _rest_of_line(reader, sink, head=first)
            if line is not None:
                sink.lines(line)
            continue
        try:
            run = first + await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as exc:
            # No dot line in the buffer: take what cannot hold one (asyncio leaves the last
            # two bytes), then finish the line it ends in.
            chunk = first + await reader.read(exc.consumed)
            cut = chunk.rfind(_CRLF) + 2  # whole lines first, in stream order
            if cut >= 2:
                sink.lines(chunk[:cut])
                chunk = chunk[cut:]
                if not chunk:
                    continue  # at a line start: it may be a dot line
            line = await _rest_of_line(reader, sink, head=chunk)
            if line is not None:
                sink.lines(line)
            continue
        sink.lines(run[:-1])  # whole lines; the dot starts the next one
        rest = await _rest_of_line(reader, sink, stuffed=True)
        if rest == _CRLF:
            return sink.result()
        if rest is not None:
            sink.lines(rest, stuffed=True)
