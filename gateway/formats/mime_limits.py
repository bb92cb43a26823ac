"""Bounded MIME parsing: a linear scan of the raw bytes before the ``email`` package sees them.

Rule kept here: ``email`` never parses a message that has not passed :func:`check_limits`, and
the check itself is a single linear pass (no regex backtracking, no recursion, no quadratic
slicing), so hostile input (10,000 parts, 2,000-deep nesting, 40,000 addresses, 1 MB header
lines) is refused in milliseconds. This module never raises anything but ``gateway.errors``
types: :class:`MessageTooBig` for the total size, :class:`LimitExceeded` for every other bound
and :class:`MalformedError` for what cannot be parsed at all. Reasons never quote content.

The ``email`` package has no limits of its own (LIBRARIES.md): it recurses once per nesting
level, its address parser is quadratic and its parameter parser is quadratic in the number of
``;``. The scanner mirrors the feedparser's structure decisions so that what it counts is what
``email`` would build: lines end at CRLF, CR or LF; a header block ends at an empty line or at
the first line that is not a header; a line ending any enclosing multipart ends every entity
inside it (outermost match wins, as the feedparser's stack of EOF matchers does); the content
type and boundary of each entity are read by ``email`` itself from that one, size-bounded
header; children of ``multipart/digest`` default to ``message/rfc822``; ``message/*`` bodies
are a nested message; ``message/delivery-status`` bodies are blocks of headers.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from typing import Any, ClassVar

from gateway.errors import LimitExceeded, MalformedError, MessageTooBig
from gateway.memo import Memo

__all__ = ["MimeLimits", "MimeStats", "check_limits", "parse_message", "scan_mime"]

MIB = 1024 * 1024


class _CachedHeaderPolicy(policy.EmailPolicy):
    """``policy.default``, remembering parsed header values: the email package re-parses a
    header on every access (``get_content_type`` alone parses Content-Type each time), and
    parsed headers are immutable ``str`` objects, so the same (name, value) can share one."""

    _cache: ClassVar[Memo[tuple[str, str], Any]] = Memo(4096)

    def header_fetch_parse(self, name: str, value: str) -> Any:
        key = (name, value)
        found = self._cache.get(key)
        if found is None:
            found = super().header_fetch_parse(name, value)
            if len(value) <= 1024:  # bounded: short values only
                self._cache.put(key, found)
        return found


PARSE_POLICY = _CachedHeaderPolicy()


@dataclass(frozen=True)
class MimeLimits:
    """Bounds on a MIME message. Every one of them is checked before ``email`` parses."""

    max_bytes: int = 25 * MIB
    #: header fields per entity (the top-level message and each part)
    max_headers: int = 200
    #: one physical header line, in bytes, line ending excluded
    max_header_line: int = 8192
    #: one header field after unfolding its continuation lines
    max_header_bytes: int = 64 * 1024
    #: entities below the top level (body parts, nested messages, delivery-status blocks)
    max_parts: int = 500
    #: nesting levels (each multipart and each message/* adds one)
    max_depth: int = 20
    #: the body of one leaf entity, in bytes (encoded, as on the wire)
    max_part_bytes: int = 25 * MIB
    #: addresses in one address header (To, Cc, ...), counted by ``@``; ``,`` counted x2
    max_addresses: int = 1000
    #: parameters (``;``) in Content-Type / Content-Disposition: email parses them in O(n^2)
    max_params: int = 64


DEFAULT_LIMITS = MimeLimits()


@dataclass(frozen=True)
class MimeStats:
    """What the scan counted: entities below the top level and the deepest nesting level."""

    parts: int
    depth: int


# The feedparser's header-line test (email.feedparser.headerRE), on bytes.
_HEADER_RE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_ADDRESS_HEADERS = frozenset(
    {
        b"to",
        b"cc",
        b"bcc",
        b"from",
        b"sender",
        b"reply-to",
        b"resent-to",
        b"resent-cc",
        b"resent-bcc",
        b"resent-from",
        b"resent-sender",
        b"disposition-notification-to",
        b"return-receipt-to",
        b"mail-followup-to",
        b"mail-reply-to",
    }
)
_PARAM_HEADERS = frozenset({b"content-type", b"content-disposition"})

# Scanner states.
_HEADERS = 0  # reading the header block of an entity
_BODY = 1  # reading a leaf body (or a multipart preamble / epilogue)
_DSN_BLOCK = 2  # reading a block of a message/delivery-status body


@dataclass
class _Frame:
    """An open multipart (boundary set) or message/* container on the nesting stack."""

    boundary: bytes | None  # None: a message/* container, or a boundary that can never match
    depth: int
    digest: bool = False  # multipart/digest: children default to message/rfc822
    dsn: bool = False  # message/delivery-status container


# Content-Type fields recur from message to message (the same clients write them): the answer
# for a short field is remembered, keyed by its exact lines. Bounded in count and key size.
_CONTENT_INFO_CACHE: Memo[tuple[bool, tuple[bytes, ...]], tuple[str, bytes | None]] = Memo(512)
_CONTENT_INFO_CACHE_KEY_BYTES = 512


def _content_info(ct_lines: list[bytes] | None, digest_parent: bool) -> tuple[str, bytes | None]:
    """The content type and boundary that ``email`` will see for an entity.

    ``email`` itself reads the (already size- and parameter-bounded) Content-Type header, so
    the scanner and the parser cannot disagree on quoting, RFC 2231 continuations or defaults.
    """
    if ct_lines is None or sum(map(len, ct_lines)) > _CONTENT_INFO_CACHE_KEY_BYTES:
        return _content_info_of(ct_lines, digest_parent)
    key = (digest_parent, tuple(ct_lines))
    found = _CONTENT_INFO_CACHE.get(key)
    if found is None:
        found = _content_info_of(ct_lines, digest_parent)  # raises on a malformed field
        _CONTENT_INFO_CACHE.put(key, found)
    return found


def _content_info_of(ct_lines: list[bytes] | None,
                     digest_parent: bool) -> tuple[str, bytes | None]:
    msg = EmailMessage(policy=policy.default)
    if digest_parent:
        msg.set_default_type("message/rfc822")
    if ct_lines is not None:
        source = [line.decode("ascii", "surrogateescape") + "\n" for line in ct_lines]
        try:
            name, value = policy.default.header_source_parse(source)
            msg.set_raw(name, value)
            ctype = msg.get_content_type()
            boundary = msg.get_boundary() if msg.get_content_maintype() == "multipart" else None
        except Exception as exc:  # email raises many types on odd headers; all mean malformed
            raise MalformedError("unparseable Content-Type header") from exc
    else:
        ctype = msg.get_content_type()
        boundary = None
    if boundary is None:
        return ctype, None
    try:
        return ctype, boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        # An RFC 2231 boundary decoded to non-ASCII text can never match a line of a message
        # read as ASCII with surrogateescape: email reads the body as one preamble, a leaf.
        return ctype, None


def _check_header(name: bytes, value_len: int, lines: list[bytes], limits: MimeLimits) -> None:
    if value_len > limits.max_header_bytes:
        raise LimitExceeded("header field too long after unfolding")
    lname = name.strip().lower()
    if lname in _ADDRESS_HEADERS:
        ats = sum(line.count(b"@") for line in lines)
        commas = sum(line.count(b",") for line in lines)
        if ats > limits.max_addresses or commas > 2 * limits.max_addresses:
            raise LimitExceeded("too many addresses in an address header")
    elif lname in _PARAM_HEADERS and sum(line.count(b";") for line in lines) > limits.max_params:
        raise LimitExceeded("too many parameters in a MIME header")


def check_limits(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> None:
    """Refuse ``raw`` if parsing it would exceed ``limits``; return None if it is within them."""
    scan_mime(raw, limits)


def scan_mime(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> MimeStats:
    """Scan ``raw`` as :func:`check_limits` does and return what was counted.

    One pass over the lines; work per line is O(line length) plus dictionary look-ups.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MalformedError("message is not bytes")
    if len(raw) > limits.max_bytes:
        raise MessageTooBig("message exceeds the size limit")
    data = bytes(raw)
    if b"\r" in data:
        # The feedparser ends lines at CRLF, CR and LF alike: so does the scanner.
        data = data.replace(b"\r\n", b"\n")
        if b"\r" in data:  # a bare CR: one more copy, only then
            data = data.replace(b"\r", b"\n")

    return _Scanner(data, limits).run()


class _Scanner:
    """One pass over a message's lines, one method per event (a header line, the end of a
    header block, a boundary, the end of input); the state is this object's, not shared
    through closures."""

    def __init__(self, data: bytes, limits: MimeLimits) -> None:
        self.data = data
        self.size = len(data)
        self.limits = limits
        self.stack: list[_Frame] = []
        # boundary -> index of the OUTERMOST open frame using it (outermost match wins)
        self.boundaries: dict[bytes, int] = {}
        self.parts = 0
        self.deepest = 0
        self.state = _HEADERS
        self.depth = 0  # depth of the entity being read
        self.digest_parent = False
        self.header_count = 0
        self.cur_name = b""
        self.cur_lines: list[bytes] = []
        self.cur_len = 0
        self.ct_lines: list[bytes] | None = None
        self.body_start = 0
        self.pos = 0
        self.swallow: int | None = None  # frame whose separator was the previous line

    def boundary_hit(self, line: bytes) -> tuple[int, bool] | None:
        """(frame index, is close delimiter) if ``line`` ends an enclosing multipart."""
        if not self.boundaries or not line.startswith(b"--"):
            return None
        rest = line[2:].rstrip(b" \t")
        best: int | None = None
        idx = self.boundaries.get(rest)
        if idx is not None:
            best = idx
        if rest.endswith(b"--"):
            idx = self.boundaries.get(rest[:-2])
            if idx is not None and (best is None or idx < best):
                best = idx
        if best is None:
            return None
        bnd = self.stack[best].boundary
        return best, rest != bnd

    def header_line(self, line: bytes) -> None:
        """A header line: a continuation of the current field, or the start of a new one."""
        if line[0] in b" \t":
            if self.cur_lines:
                self.cur_lines.append(line)
                self.cur_len += len(line)
                if self.cur_len > self.limits.max_header_bytes:
                    raise LimitExceeded("header field too long after unfolding")
        else:
            self.flush_header()
            colon = line.find(b":")
            self.cur_name = line[:colon] if colon > 0 else b""
            self.cur_lines = [line]
            self.cur_len = len(line)

    def flush_header(self) -> None:
        if not self.cur_lines:
            return
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            raise LimitExceeded("too many header fields in one entity")
        _check_header(self.cur_name, self.cur_len, self.cur_lines, self.limits)
        if self.state == _DSN_BLOCK and self.cur_name.lower() == b"content-type":
            value = b"".join(self.cur_lines).lower()
            if b"multipart" in value or b"message" in value:
                # Legitimate reports never nest structure here; email would recurse into it.
                raise LimitExceeded("nested structure inside a delivery-status block")
        if self.ct_lines is None and self.cur_name.lower() == b"content-type":
            self.ct_lines = self.cur_lines
        self.cur_lines = []

    def new_part(self, child_depth: int, digest: bool) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise LimitExceeded("too many MIME parts")
        if child_depth > self.limits.max_depth:
            raise LimitExceeded("MIME nesting too deep")
        self.deepest = max(self.deepest, child_depth)
        self.state = _HEADERS
        self.depth = child_depth
        self.digest_parent = digest
        self.header_count = 0
        self.cur_name = b""
        self.cur_lines = []
        self.cur_len = 0
        self.ct_lines = None
        self.body_start = self.pos

    def close_to(self, index: int, close: bool) -> None:
        """Pop every frame above ``index``; pop ``index`` too on a close delimiter."""
        keep = index if close else index + 1
        while len(self.stack) > keep:
            frame = self.stack.pop()
            boundary = frame.boundary
            if boundary is not None and self.boundaries.get(boundary) == len(self.stack):
                del self.boundaries[boundary]
        if close:
            self.state = _BODY  # the epilogue of the enclosing entity: plain lines
        else:
            self.new_part(self.stack[index].depth + 1, self.stack[index].digest)

    def end_of_headers(self) -> None:
        ctype, boundary = _content_info(self.ct_lines, self.digest_parent)
        self.body_start = self.pos
        if ctype == "message/delivery-status":
            if self.depth + 1 > self.limits.max_depth:
                raise LimitExceeded("MIME nesting too deep")
            self.stack.append(_Frame(None, self.depth, dsn=True))
            self.new_part(self.depth + 1, False)
            self.state = _DSN_BLOCK
        elif ctype.startswith("message/"):
            self.stack.append(_Frame(None, self.depth))
            self.new_part(self.depth + 1, False)
        elif ctype.startswith("multipart/") and boundary is not None:
            if self.depth + 1 > self.limits.max_depth:
                raise LimitExceeded("MIME nesting too deep")
            self.stack.append(_Frame(boundary, self.depth, digest=ctype == "multipart/digest"))
            self.boundaries.setdefault(boundary, len(self.stack) - 1)
            self.state = _BODY
        else:
            self.state = _BODY

    def finish_headers(self) -> None:
        """The input of an entity ended inside its headers: email still types the entity
        (a message/* gets an empty nested message, a digest child is a message/rfc822)."""
        while self.state == _HEADERS:
            self.flush_header()
            self.end_of_headers()
        if self.state == _DSN_BLOCK:
            self.flush_header()

    def check_body_size(self, end: int) -> None:
        if end - self.body_start > self.limits.max_part_bytes:
            raise LimitExceeded("MIME part too big")

    def run(self) -> MimeStats:
        while self.pos < self.size:
            nl = self.data.find(b"\n", self.pos)
            line_end = self.size if nl < 0 else nl
            next_pos = self.size if nl < 0 else nl + 1

            if self.state == _BODY:
                if not self.boundaries:
                    break  # no enclosing multipart: the rest of the message is this body
                # Only a line starting with "--" can end a body: jump to the next one.
                if self.data.startswith(b"--", self.pos):
                    hit_pos = self.pos
                else:
                    found = self.data.find(b"\n--", self.pos)
                    if found < 0:
                        break
                    hit_pos = found + 1
                nl = self.data.find(b"\n", hit_pos)
                line_end = self.size if nl < 0 else nl
                next_pos = self.size if nl < 0 else nl + 1
                hit = self.boundary_hit(self.data[hit_pos:line_end])
                if hit is not None:
                    if not hit[1]:
                        self.swallow = hit[0]
                    self.check_body_size(hit_pos)
                    self.close_to(hit[0], hit[1])
                    self.body_start = next_pos
                self.pos = next_pos
                continue

            line = self.data[self.pos:line_end]
            hit = self.boundary_hit(line)
            if hit is not None and hit[0] == self.swallow:
                # email swallows every delimiter (even a close) right after a separator of the
                # same multipart: the part starts after the run.
                self.pos = next_pos
                self.body_start = self.pos
                continue
            self.swallow = None
            if hit is not None:
                if not hit[1]:
                    self.swallow = hit[0]
                self.finish_headers()
                self.check_body_size(self.pos)
                self.close_to(hit[0], hit[1])
                self.pos = next_pos
                self.body_start = self.pos
                continue

            if self.state == _HEADERS:
                if len(line) > self.limits.max_header_line:
                    raise LimitExceeded("header line too long")
                if line == b"":
                    self.flush_header()
                    self.pos = next_pos
                    self.end_of_headers()
                    continue
                if _HEADER_RE.match(line) is None:
                    # Not a header: email ends the header block here and keeps the line as body.
                    self.flush_header()
                    self.end_of_headers()
                    self.body_start = self.pos
                    continue
                self.header_line(line)
                self.pos = next_pos
                continue

            # _DSN_BLOCK: blocks of headers, each ended by one empty line (email.feedparser)
            if line == b"":
                self.flush_header()
                self.pos = next_pos
                if self.pos < self.size:
                    # email starts a new block at the next line, even another empty one
                    frame = self.stack[-1]
                    self.new_part(frame.depth + 1, False)
                    self.state = _DSN_BLOCK
                continue
            if len(line) > self.limits.max_header_line:
                raise LimitExceeded("header line too long")
            if _HEADER_RE.match(line) is not None:
                self.header_line(line)
            self.pos = next_pos

        self.finish_headers()
        self.check_body_size(self.size)
        return MimeStats(parts=self.parts, depth=self.deepest)


_SIMPLE_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:[^\r\n]*")


def _single_leaf(raw: bytes) -> EmailMessage | None:
    """What ``email`` makes of ``raw`` when it is one leaf entity with plain header lines,
    built without its line-by-line feed parser; None for anything else (then it parses).

    Plain: CRLF line endings in the header block, no folded or odd lines, ASCII, and a type
    that is neither multipart nor message (those the parser splits or recurses into). The
    fields are stored as the parser stores them (``header_source_parse`` of each line), and
    the body as its payload, decoded as the parser decodes it.
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    block = raw[:end]
    if b"\n" in block.replace(b"\r\n", b"") or b"\r" in block.replace(b"\r\n", b""):
        return None
    lines = block.split(b"\r\n")
    if not all(_SIMPLE_FIELD.fullmatch(line) for line in lines) or not block.isascii():
        return None
    msg = EmailMessage(policy=PARSE_POLICY)  # PARSE_POLICY.message_factory
    for line in lines:
        msg.set_raw(*PARSE_POLICY.header_source_parse([line.decode("ascii") + "\r\n"]))
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    msg.set_payload(raw[end + 4 :].decode("ascii", "surrogateescape"))
    return msg


def parse_message(raw: bytes, limits: MimeLimits = DEFAULT_LIMITS) -> EmailMessage:
    """Check ``raw`` against ``limits``, then parse it with ``policy.default`` semantics."""
    check_limits(raw, limits)
    try:
        leaf = _single_leaf(bytes(raw))
    except Exception as exc:  # the parser's own verdict on odd fields, as below
        raise MalformedError("unparseable MIME message") from exc
    if leaf is not None:
        return leaf
    try:
        msg = email.message_from_bytes(bytes(raw), policy=PARSE_POLICY)
    except RecursionError as exc:  # cannot happen within max_depth, kept as a last guard
        raise LimitExceeded("MIME nesting too deep") from exc
    except Exception as exc:
        raise MalformedError("unparseable MIME message") from exc
    if not isinstance(msg, EmailMessage):  # pragma: no cover - policy.default builds these
        raise MalformedError("unparseable MIME message")
    for part in msg.walk():
        # A multipart whose boundary is missing, empty or never met is kept by ``email`` as
        # text, with a defect: re-emitted, it would be an empty multipart (the content lost).
        if part.get_content_maintype() == "multipart" and not part.is_multipart():
            raise MalformedError("multipart entity without a usable boundary")
    return msg
