"""A strict DER reader for the CMS shapes read on every message, faster than the general parser.

Rule kept here: it reads only plain DER it fully understands (one-byte tags, definite lengths in
their shortest form, elements that end exactly where their parent does) and raises
``Unsupported`` for anything else, before any result is used. Its callers then hand the input
to the general parser (asn1crypto), whose verdict stands. So this module never accepts, and
never refuses, anything on its own: it only answers faster for the common shape.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.memo import Memo

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
CONTEXT_0 = 0xA0  # [0] constructed
CONTEXT_1 = 0xA1  # [1] constructed
CONTEXT_0_PRIMITIVE = 0x80  # [0] IMPLICIT on a primitive type

_OID_CACHE: Memo[bytes, str] = Memo(512)


class Unsupported(Exception):  # a verdict, not an error: "use the general parser"
    """The input is not the plain DER this reader handles."""


class Element(NamedTuple):
    """One DER element of ``data``: its tag and where it, its content and it end."""

    tag: int
    start: int  # of the element (its tag byte)
    body: int  # start of its content
    end: int  # one past its last byte


# A NamedTuple's own constructor checks its arguments; elements are made on every message's hot
# path from four ints known good, so they are built as the tuple they are.
_element = tuple.__new__


def element(data: bytes, pos: int, end: int) -> Element:
    """The element at ``pos``, which must end at or before ``end``."""
    if pos + 2 > end:
        raise Unsupported
    tag = data[pos]
    if tag & 0x1F == 0x1F:  # multi-byte tag
        raise Unsupported
    first = data[pos + 1]
    if first < 0x80:
        start, length = pos + 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + 2 + count > end:  # indefinite (BER), or absurd
            raise Unsupported
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        if length < 0x80 or data[pos + 2] == 0:  # not the shortest form
            raise Unsupported
        start = pos + 2 + count
    if start + length > end:
        raise Unsupported
    return _element(Element, (tag, pos, start, start + length))


def children(data: bytes, start: int, end: int) -> list[Element]:
    """The elements that fill ``data[start:end]`` exactly."""
    out: list[Element] = []
    pos = start
    while pos < end:
        child = element(data, pos, end)
        out.append(child)
        pos = child.end
    return out


def only(data: bytes, start: int, end: int, tag: int) -> Element:
    """The single element of tag ``tag`` that fills ``data[start:end]``."""
    inner = element(data, start, end)
    if inner.tag != tag or inner.end != end:
        raise Unsupported
    return inner


def expect(child: Element, tag: int) -> Element:
    if child.tag != tag:
        raise Unsupported
    return child


def content(data: bytes, child: Element) -> bytes:
    return data[child.body : child.end]


def whole(data: bytes, child: Element) -> bytes:
    """The element's own encoding, tag and length included."""
    return data[child.start : child.end]


def oid(data: bytes, child: Element) -> str:
    """The dotted form of an OBJECT IDENTIFIER element."""
    raw = content(data, expect(child, OID))
    found = _OID_CACHE.get(raw)
    if found is not None:
        return found
    if not raw or raw[-1] & 0x80:
        raise Unsupported
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in raw:
        if fresh and byte == 0x80:  # a leading zero group: not the shortest form
            raise Unsupported
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    dotted = ".".join(str(arc) for arc in head + arcs[1:])
    _OID_CACHE.put(raw, dotted)
    return dotted


def integer(data: bytes, child: Element) -> int:
    raw = content(data, expect(child, INTEGER))
    if not raw:
        raise Unsupported
    return int.from_bytes(raw, "big", signed=True)
