"""Hypothesis strategies for fuzzing: mutations of valid inputs, so that the fuzz gets past the
first byte of a parser, and grammar-made SMTP streams.

Rule kept here: every strategy starts from a seed that the parser accepts (or a valid piece of
one) and applies a bounded number of mutations -- bit flips, byte changes, truncations, cut or
repeated runs, splices with another seed, inserted tokens that parsers care about, and for DER
changes of the length octets of any element -- so shrinking ends on a small edit of a real
input, which is what a report needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hypothesis import settings
from hypothesis import strategies as st

from bench.fuzz import targets

# Profiles (registered in tests/fuzz/conftest.py): every fuzz test states the number of
# examples it runs in the default profile; HYPOTHESIS_PROFILE=long multiplies them.
DEFAULT_PROFILE = "fuzz"
LONG_PROFILE = "long"
REFERENCE_EXAMPLES = 100  # max_examples of the default profile


def fuzz_settings(examples: int) -> settings:
    """Settings of one fuzz test: ``examples`` in the default profile, scaled in the others."""
    name = os.environ.get("HYPOTHESIS_PROFILE", DEFAULT_PROFILE)
    if name not in (DEFAULT_PROFILE, LONG_PROFILE):
        name = DEFAULT_PROFILE
    profile = settings.get_profile(name)
    scale = profile.max_examples / REFERENCE_EXAMPLES
    return settings(profile, max_examples=max(1, round(examples * scale)))


# Tokens that parsers of mail, MIME, addresses and XML branch on.
TOKENS: tuple[bytes, ...] = (
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b";", b'"', b"=", b"\x00", b"(", b")", b":",
    b"@", b"<", b">", b",", b"\\", b"*", b"%", b"=?", b"?=", b"\t", b" ", b"\xc3", b"\xe9",
    b"\xff", b".", b"..", b"\r\n.\r\n", b"\r\n ", b"0" * 40, b"9" * 4400, b"A" * 1100,
    b"boundary=", b"charset=", b"name*0*=", b"''", b"&", b"&#0;", b"]]>", b"<!", b"<![CDATA[",
    b"Content-Type: ", b"multipart/mixed", b"message/rfc822", b"base64", b"PK\x03\x04",
    b"PK\x05\x06", b"\x30\x80", b"\x00\x00", b"\x81", b"\x84\xff\xff\xff\xff", b"xn--",
)
INTERESTING_BYTES = (0x00, 0x01, 0x0A, 0x0D, 0x20, 0x2D, 0x3A, 0x3B, 0x3D, 0x7F, 0x80, 0x81,
                     0x82, 0x84, 0xA0, 0xFF)


def der_lengths(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the length octets of every element found by a tolerant DER walk."""
    found: list[tuple[int, int]] = []
    spans = [(0, len(data))]
    while spans and len(found) < 4096:
        pos, end = spans.pop()
        while pos + 2 <= end:
            tag, first = data[pos], data[pos + 1]
            if tag & 0x1F == 0x1F:
                break
            if first < 0x80:
                size, length = 1, first
            elif first == 0x80:  # indefinite (BER): the content runs to an end-of-contents
                found.append((pos + 1, 1))
                if tag & 0x20:
                    spans.append((pos + 2, end))
                break
            else:
                count = first & 0x7F
                if count > 4 or pos + 2 + count > end:
                    break
                size, length = 1 + count, int.from_bytes(data[pos + 2:pos + 2 + count], "big")
            start = pos + 1 + size
            if start + length > end:
                break
            found.append((pos + 1, size))
            if tag & 0x20:
                spans.append((start, start + length))
            pos = start + length
    return found


def _length_octets(value: int) -> bytes:
    if value < 0x80:
        return bytes([value])
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


@st.composite
def _der_length_change(draw: st.DrawFn, data: bytearray) -> bytearray:
    lengths = der_lengths(bytes(data))
    if not lengths:
        return data
    offset, size = draw(st.sampled_from(lengths))
    current = int.from_bytes(data[offset + 1:offset + size], "big") if size > 1 else (
        data[offset] if data[offset] < 0x80 else 0)
    replacement = draw(st.one_of(
        st.sampled_from([b"\x80", b"\x00", b"\x7f", b"\x81\x00", b"\x81\x05", b"\x89", b"\xff",
                         b"\x84\xff\xff\xff\xff", b"\x85\x01\x00\x00\x00\x00", b"\x82\x00\x01"]),
        st.integers(-3, 3).map(lambda delta: _length_octets(max(0, current + delta))),
        st.just(b"\x82" + max(0, current).to_bytes(2, "big") if current < 0x10000 else b"\x80"),
    ))
    data[offset:offset + size] = replacement
    return data


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], *, max_mutations: int = 4,
            der: bool = False) -> bytes:
    """One seed with up to ``max_mutations`` edits (``der``: length-octet edits too)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    operations = ["flip", "byte", "truncate", "cut", "insert", "repeat", "splice", "token"]
    if der:
        operations += ["length", "length"]
    for _ in range(draw(st.integers(0, max_mutations))):
        operation = draw(st.sampled_from(operations))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        pos = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif operation == "byte":
            data[pos] = draw(st.sampled_from(INTERESTING_BYTES) | st.integers(0, 255))
        elif operation == "truncate":
            del data[pos:]
        elif operation == "cut":
            del data[pos:pos + draw(st.integers(1, 256))]
        elif operation == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "repeat":
            size = draw(st.integers(1, 128))
            data[pos:pos] = data[pos:pos + size] * draw(st.integers(1, 8))
        elif operation == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[:pos] + other[draw(st.integers(0, len(other))):]
        elif operation == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        else:
            data = draw(_der_length_change(data))
    return bytes(data)


def fuzz_bytes(seeds: Sequence[bytes], *, der: bool = False, max_size: int = 512) -> \
        st.SearchStrategy[bytes]:
    """Mostly mutated seeds, some plain random bytes."""
    return st.one_of(mutated(seeds, der=der), mutated(seeds, der=der, max_mutations=12),
                     st.binary(max_size=max_size))


def fuzz_text(seeds: Sequence[str], *, surrogates: bool = True) -> st.SearchStrategy[str]:
    """Mutated seed strings (edited as UTF-8 bytes, read back with replacement) and random
    text; ``surrogates``: also lone surrogates, as a ``surrogateescape`` reader hands over."""
    encoded = [s.encode("utf-8") for s in seeds]
    text = st.text(max_size=80) if surrogates else st.text(
        st.characters(blacklist_categories=["Cs"]), max_size=80)
    choices = [
        mutated(encoded, max_mutations=6).map(lambda b: b.decode("utf-8", "replace")),
        mutated(encoded, max_mutations=6).map(lambda b: b.decode("latin-1")),
        text,
    ]
    if surrogates:
        choices.append(
            mutated(encoded, max_mutations=3).map(lambda b: b.decode("utf-8", "surrogateescape")))
    return st.one_of(choices)


# --- SMTP streams -----------------------------------------------------------------------------

_LINE_ENDS = (b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"")


@st.composite
def smtp_line(draw: st.DrawFn) -> bytes:
    """One client line: a command of the grammar, maybe edited, with some line ending."""
    line = draw(st.one_of(
        st.sampled_from(targets.SMTP_COMMANDS),
        mutated(targets.SMTP_COMMANDS, max_mutations=2),
        st.binary(max_size=40),
        st.sampled_from([b"", b".", b"..", b" ", b"\x00", b"A" * 1200, b"QUIT"]),
    ))
    return line + draw(st.sampled_from(_LINE_ENDS))


@st.composite
def smtp_stream(draw: st.DrawFn) -> bytes:
    """A whole client stream: a seed session (mutated), or a sequence of grammar lines around
    a DATA section whose content may hold bare line ends, NUL, dots and over-long lines."""
    if draw(st.booleans()):
        return draw(mutated(targets.smtp_seeds(), max_mutations=6))
    head = b"".join(draw(st.lists(smtp_line(), max_size=8)))
    content = draw(st.one_of(
        st.just(b""),
        mutated([targets._MESSAGE], max_mutations=4),
        st.binary(max_size=200),
    ))
    end = draw(st.sampled_from([b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\r\n.\r", b""]))
    tail = b"".join(draw(st.lists(smtp_line(), max_size=4)))
    return head + content + end + tail
