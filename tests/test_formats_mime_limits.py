"""Bounded MIME parsing: hostile shapes are refused before ``email`` parses, quickly; what the
scan counts is what ``email`` builds (differential test against the real parser)."""

from __future__ import annotations

import contextlib
import email
from email import policy
from email.message import Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LimitExceeded, MalformedError, MessageTooBig
from gateway.formats.mime_limits import (
    PARSE_POLICY,
    MimeLimits,
    _single_leaf,
    check_limits,
    parse_message,
    scan_mime,
)

SIMPLE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hello\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nR\xe9sultat\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"JVBERi0xLjQK\r\n--XX--\r\nepilogue\r\n"
)


def _walk_stats(msg: Message) -> tuple[int, int]:
    """(entities below the top, deepest level) as email built them."""
    count = 0
    deepest = 0
    todo: list[tuple[Message, int]] = [(msg, 0)]
    while todo:
        m, d = todo.pop()
        deepest = max(deepest, d)
        if m.is_multipart():
            payload = m.get_payload()
            assert isinstance(payload, list)
            for child in payload:
                count += 1
                todo.append((child, d + 1))
    return count, deepest


def test_simple_message_passes_and_parses() -> None:
    stats = scan_mime(SIMPLE)
    assert (stats.parts, stats.depth) == (2, 1)
    msg = parse_message(SIMPLE)
    assert msg.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "application/pdf"]
    assert msg["To"] == "b@example.org"


def test_too_big() -> None:
    with pytest.raises(MessageTooBig):
        check_limits(SIMPLE, MimeLimits(max_bytes=100))
    with pytest.raises(LimitExceeded, match="part too big"):
        check_limits(SIMPLE, MimeLimits(max_part_bytes=5))


def test_ten_thousand_parts_refused() -> None:
    body = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(10_000))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"
    with pytest.raises(LimitExceeded, match="too many MIME parts"):
        check_limits(raw)
    # and 500 parts are fine, and email agrees on the count
    ok = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body[: 500 * 10] + b"--b--\r\n"
    assert scan_mime(ok).parts == 500
    assert _walk_stats(parse_message(ok)) == (500, 1)


def test_deep_nesting_refused() -> None:
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(2000)
    )
    with pytest.raises(LimitExceeded, match="too deep"):
        check_limits(raw)


def test_deep_message_rfc822_nesting_refused() -> None:
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 2000 + b"\r\nbody\r\n"
    with pytest.raises(LimitExceeded, match="too deep"):
        check_limits(raw)
    ok = b"Content-Type: message/rfc822\r\n\r\n" * 20 + b"\r\nbody\r\n"
    assert scan_mime(ok).depth == 20
    assert _walk_stats(parse_message(ok)) == (20, 20)


def test_forty_thousand_addresses_refused() -> None:
    to = b", ".join(b"user%d@example.org" % i for i in range(40_000))
    raw = b"From: a@example.org\r\nTo: " + to + b"\r\n\r\nbody\r\n"
    with pytest.raises(LimitExceeded):
        check_limits(raw)
    # folded over many short lines it is still refused (by the count, not the line length)
    folded = b",\r\n ".join(b"u%d@e.fr" % i for i in range(5000))
    with pytest.raises(LimitExceeded, match="addresses"):
        check_limits(b"Cc: " + folded + b"\r\n\r\nx")
    # commas without @ count too
    with pytest.raises(LimitExceeded, match="addresses"):
        check_limits(b"To: " + b",\r\n ".join([b"a"] * 3000) + b"\r\n\r\nx")


def test_one_megabyte_header_line_refused() -> None:
    raw = b"Subject: " + b"A" * 1_000_000 + b"\r\n\r\nbody"
    with pytest.raises(LimitExceeded, match="header line too long"):
        check_limits(raw)


def test_long_line_in_body_is_fine() -> None:
    raw = b"Subject: x\r\n\r\n" + b"A" * 1_000_000 + b"\r\n"
    check_limits(raw)


def test_unfolded_header_bound() -> None:
    raw = b"X-Long: a\r\n" + b"".join(b" " + b"b" * 8000 + b"\r\n" for _ in range(9)) + b"\r\nx"
    with pytest.raises(LimitExceeded, match="unfolding"):
        check_limits(raw)


def test_header_count_bound() -> None:
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(201)) + b"\r\nbody"
    with pytest.raises(LimitExceeded, match="header fields"):
        check_limits(raw)
    check_limits(b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\nbody")


def test_header_count_bound_applies_to_parts() -> None:
    part = b"".join(b"X-H%d: v\r\n" % i for i in range(201))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + part + b"\r\nx\r\n--b--\r\n"
    with pytest.raises(LimitExceeded, match="header fields"):
        check_limits(raw)


def test_content_type_parameter_bound() -> None:
    params = b";\r\n ".join(b"p%d=v" % i for i in range(3000))
    raw = b"Content-Type: multipart/mixed; " + params + b"; boundary=b\r\n\r\nx"
    with pytest.raises(LimitExceeded, match="parameters"):
        check_limits(raw)


def test_bare_cr_lines_cannot_hide_parts() -> None:
    body = b"".join(b"--b\r\rx\r" for _ in range(600))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\r" + body
    with pytest.raises(LimitExceeded, match="parts"):
        check_limits(raw)


def test_rfc2231_and_quoted_boundaries_are_seen() -> None:
    body = b"".join(b"--ab\r\n\r\nx\r\n" for _ in range(600))
    for ct in (b"boundary*0=a; boundary*1=b", b'boundary="ab"', b"boundary*=''ab"):
        raw = b"Content-Type: multipart/mixed; " + ct + b"\r\n\r\n" + body
        with pytest.raises(LimitExceeded, match="parts"):
            check_limits(raw)


def test_digest_children_are_messages() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
        b"Subject: inner\r\n\r\nbody\r\n--d--\r\n"
    )
    stats = scan_mime(raw)
    assert _walk_stats(parse_message(raw)) == (stats.parts, stats.depth) == (2, 2)


def test_delivery_status_blocks_counted() -> None:
    blocks = b"\r\n".join(
        b"Final-Recipient: rfc822; u%d@example.org\r\nAction: failed\r\n" % i for i in range(3)
    )
    raw = b"Content-Type: message/delivery-status\r\n\r\n" + blocks
    stats = scan_mime(raw)
    assert _walk_stats(parse_message(raw)) == (stats.parts, stats.depth)
    many = b"Content-Type: message/delivery-status\r\n\r\n" + b"\r\n" * 5000
    with pytest.raises(LimitExceeded):
        check_limits(many)
    nested = b"Content-Type: message/delivery-status\r\n\r\nContent-Type: message/rfc822\r\n\r\n"
    with pytest.raises(LimitExceeded, match="delivery-status"):
        check_limits(nested)


def test_boundary_of_outer_multipart_ends_inner_parts() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
        b"Content-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\na\r\n"
        b"--o\r\n\r\nb\r\n--o--\r\n"
    )
    stats = scan_mime(raw)
    assert _walk_stats(parse_message(raw)) == (stats.parts, stats.depth) == (3, 2)


def test_not_bytes() -> None:
    with pytest.raises(MalformedError):
        check_limits("text")  # type: ignore[arg-type]


# --- differential fuzzing against email itself ---------------------------------------------

_TOKENS = [
    b"",
    b"",
    b"x",
    b"Subject: s",
    b" folded",
    b"--a",
    b"--a--",
    b"--b",
    b"--b--",
    b"--a  ",
    b"Content-Type: multipart/mixed; boundary=a",
    b"Content-Type: multipart/mixed; boundary=b",
    b'Content-type: multipart/alternative; boundary="b"',
    b"Content-Type: multipart/digest; boundary=a",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b"Content-Type: text/plain",
    b"Content-Type: multipart/mixed",
    b"Content-Type: bogus",
    b"Content-Type:",
    b" multipart/mixed; boundary=a",
    b"From x",
    b"not a header line",
    b"To: a@b, c@d",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_TOKENS), max_size=40),
    st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=1, max_size=3),
)
def test_scan_counts_what_email_builds(lines: list[bytes], seps: list[bytes]) -> None:
    raw = b"".join(line + seps[i % len(seps)] for i, line in enumerate(lines))
    try:
        stats = scan_mime(raw)
    except GatewayError:
        return
    msg = email.message_from_bytes(raw, policy=policy.default)
    parts, depth = _walk_stats(msg)
    # The scan may over-count (conservative) but never under-count.
    assert stats.parts >= parts
    assert stats.depth >= depth


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_none_or_gateway_error(raw: bytes) -> None:
    with contextlib.suppress(GatewayError):
        check_limits(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_parse_message_never_raises_foreign_errors(raw: bytes) -> None:
    with contextlib.suppress(GatewayError):
        parse_message(b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n" + raw)


def test_close_delimiter_swallowed_after_separator_cannot_hide_parts() -> None:
    # email ignores "--a--" right after "--a": the multipart goes on, and so does the count.
    unit = b"--a\r\n--a--\r\n\r\nx\r\n"
    raw = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + unit * 600
    with pytest.raises(LimitExceeded, match="parts"):
        check_limits(raw)
    small = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + unit * 3
    stats = scan_mime(small)
    assert _walk_stats(parse_message(small)) == (stats.parts, stats.depth) == (3, 1)


# --- the single-leaf shortcut gives what email's parser gives -----------------------------------

_FIELDS = st.sampled_from([
    b"Content-Type: text/plain; charset=ISO-8859-1",
    b"Content-Type: text/plain; charset=\"utf-8\"; format=flowed",
    b"Content-Type: TEXT/Plain",
    b"Content-Type: application/pdf; name=\"cr.pdf\"",
    b"Content-Type: multipart/mixed; boundary=x",
    b"Content-Type: message/rfc822",
    b"Content-Type: text",
    b"Content-Type:",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: base64",
    b"Content-Disposition: attachment; filename=\"a b.txt\"",
    b"Subject: =?utf-8?q?r=C3=A9sultat?=",
    b"X-Odd:value:with:colons",
    b"X-Empty:",
    b" folded continuation",
    b"\tfolded tab",
    b"From nobody Mon Jan 1 00:00:00 2024",
    b"no colon here",
    b"Caf\xe9: 8bit",
    b"X-Bare: a\rb",
    b"X-LF: a\nb",
])


@settings(max_examples=600, deadline=None)
@given(fields=st.lists(_FIELDS, max_size=6),
       body=st.binary(max_size=200) | st.sampled_from([b"", b"text\r\n", b"a\nb\rc\r\n\r\n"]))
def test_single_leaf_shortcut_matches_the_email_parser(fields: list[bytes], body: bytes) -> None:
    raw = b"\r\n".join(fields) + b"\r\n\r\n" + body
    leaf = _single_leaf(raw)
    if leaf is None:
        return
    parsed = email.message_from_bytes(raw, policy=PARSE_POLICY)
    assert leaf._headers == parsed._headers  # type: ignore[attr-defined]
    assert leaf.get_payload() == parsed.get_payload()
    assert leaf.get_content_type() == parsed.get_content_type()
    assert leaf.get_params() == parsed.get_params()
    assert leaf.get_payload(decode=True) == parsed.get_payload(decode=True)
    assert leaf.is_multipart() is parsed.is_multipart() is False
    assert [type(d) for d in leaf.defects] == [type(d) for d in parsed.defects]
