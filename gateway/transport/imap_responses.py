"""Reading IMAP server responses: numbers, UID sets, FETCH literals, LIST and NAMESPACE data.

Rule kept here: server data is read strictly and bounded (a UID or size is at most 20 digits, a
UID set at most 10,000 UIDs); anything else is ``ImapError``, which ends the session (the
poller reconnects), never an exception of another type and never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


class ImapError(Exception):
    """The session cannot go on (connection lost, timeout, refusal): reconnect."""


class FolderUnusable(ImapError):
    """A folder the poller needs can be neither created nor found on the server."""

    def __init__(self, folder: str, text: str) -> None:
        super().__init__(f"folder {folder!r} cannot be created: {text}")
        self.folder = folder
        self.text = text


_COPYUID = re.compile(rb"COPYUID (\d+) ([\d:,]+) ([\d:,]+)")
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"BODY\[(?:HEADER)?\] \{(\d+)\}$")


# A UID or size is a 32-bit number (RFC 3501); a set in a response code is the UIDs of one MOVE.
_MAX_DIGITS = 20
_MAX_UID_SET = 10_000


def _number(digits: bytes) -> int:
    """A number of server data; ImapError if it is none (or absurdly long: ``int`` refuses
    over 4300 digits with a ValueError)."""
    if not digits.isdigit() or len(digits) > _MAX_DIGITS:
        raise ImapError("malformed number in a server response")
    return int(digits)


def _uid_set(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        first, last = _number(low), _number(high or low)
        first, last = min(first, last), max(first, last)  # "4:2" is "2:4" (RFC 3501 seq-range)
        if len(out) + last - first >= _MAX_UID_SET:
            raise ImapError("UID set too large in a server response")
        out.extend(range(first, last + 1))
    return out


def copyuid(lines: Iterable[object], source_uid: int) -> int | None:
    """The UID that ``source_uid`` got in the destination, from a ``COPYUID`` response code."""
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        match = _COPYUID.search(bytes(line))
        if match:
            mapping = dict(zip(_uid_set(match.group(2)), _uid_set(match.group(3)), strict=False))
            if source_uid in mapping:
                return mapping[source_uid]
    return None


def search_uids(lines: Sequence[object]) -> list[int]:
    """UIDs of a ``SEARCH`` response (aioimaplib strips the ``SEARCH`` keyword, or not)."""
    out: list[int] = []
    for line in lines[:-1]:  # the last line is the tagged completion text
        if not isinstance(line, bytes | bytearray):
            continue
        text = bytes(line).strip()
        if text.upper().startswith(b"SEARCH"):
            text = text[6:]
        parts = text.split()
        if parts and all(p.isdigit() for p in parts):
            out.extend(_number(p) for p in parts)
    return out


def fetch_of(line: object) -> int | None:
    """The UID a ``FETCH`` response line is about, if it is one."""
    if not isinstance(line, bytes) or b"FETCH" not in line:
        return None
    match = _FETCH_UID.search(line)
    return _number(match.group(1)) if match else None


def fetched_size(lines: Sequence[object], uid: int) -> int | None:
    for line in lines:
        if isinstance(line, bytes | bytearray):
            m_uid, m_size = _FETCH_UID.search(bytes(line)), _SIZE.search(bytes(line))
            if m_uid and m_size and _number(m_uid.group(1)) == uid:
                return _number(m_size.group(1))
    return None


def fetched_literal(lines: Sequence[object], uid: int) -> bytes | None:
    """The literal of ``BODY[]`` (or ``BODY[HEADER]``) of ``uid``; unsolicited FETCH lines of
    other messages (flag changes made by other sessions) may be mixed in and are skipped."""
    for i, line in enumerate(lines[:-1]):
        if not isinstance(line, bytes) or b"FETCH" not in line:
            continue
        m_uid, m_lit = _FETCH_UID.search(line), _LITERAL.search(line)
        if m_uid and m_lit and _number(m_uid.group(1)) == uid:
            literal = lines[i + 1]
            if isinstance(literal, bytes | bytearray) and len(literal) == _number(m_lit.group(1)):
                return bytes(literal)
    return None


def validity(lines: Iterable[object]) -> bytes | None:
    for line in lines:
        match = _UIDVALIDITY.search(line) if isinstance(line, bytes) else None
        if match:
            return match.group(1)
    return None


def listed_name(line: object) -> str | None:
    """The mailbox name of a ``LIST`` response line (``(flags) "/" name``)."""
    if not isinstance(line, bytes | bytearray) or not bytes(line).startswith(b"("):
        return None
    name = bytes(line).rsplit(b" ", 1)[-1].strip(b'"')
    return name.decode("utf-8", "replace")


# ``(flags) "." name`` / ``(flags) NIL name``: the hierarchy delimiter of a LIST line.
_LIST_DELIMITER = re.compile(rb'^\([^)]*\) (?:"(\\.|[^"\\])"|(NIL))', re.IGNORECASE)
# ``(("INBOX." ".")) NIL NIL``: the first personal namespace (RFC 2342), its prefix.
_PERSONAL = re.compile(rb'^(?:NAMESPACE )?\(\("((?:\\.|[^"\\]){0,200})" (?:"(?:\\.|[^"\\])"|NIL)',
                       re.IGNORECASE)


def _unescape(quoted: bytes) -> str:
    return re.sub(rb"\\(.)", rb"\1", quoted).decode("utf-8", "replace")


def list_delimiter(lines: Iterable[object]) -> str | None:
    """The hierarchy delimiter of a ``LIST "" ""`` response; None for a flat server (NIL) or
    no answer."""
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        match = _LIST_DELIMITER.match(bytes(line))
        if match:
            return None if match.group(2) else _unescape(match.group(1))
    return None


def personal_namespace(lines: Iterable[object]) -> str:
    """The prefix of the first personal namespace of a ``NAMESPACE`` response ("" if none)."""
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        match = _PERSONAL.match(bytes(line).strip())
        if match:
            return _unescape(match.group(1))
    return ""


def server_text(lines: Sequence[object]) -> str:
    """The server's own words of a refusal (its tagged completion line), printable, bounded:
    an operator needs them to fix a folder or a permission."""
    for line in reversed(lines):
        if isinstance(line, bytes | bytearray) and bytes(line).strip():
            text = bytes(line).decode("utf-8", "replace")
            return re.sub(r"[^\x20-\x7e]", "?", text).strip()[:200]
    return "no text"
