"""MIME cases: the clear outer headers of a genuine message (From tricks, header injection,
encoded words, oversize and malformed header blocks, the wrong outer structure) and the inner
entity inside a genuine signature (bombs, broken boundaries, injected parameters).

Rule kept here: the clear outer header block is the sender's free text; what is verified is the
signature, and the From address must be the signer's. A trick in From is ``550 5.7.7``, a header
block the bounded parser refuses is ``550 5.6.0``, an outer structure that is not S/MIME is
``550 5.7.5``; carried headers (Subject, Message-ID...) may be odd but never inject a header in
what is relayed. Inside the signature, a bomb or an unparseable structure is ``550 5.6.0``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from tests.hostile.case import Case, message_case
from tests.hostile.world import (
    CRLF,
    JEAN,
    LABO,
    MARIE,
    MARIE_ON_APICRYPT,
    World,
    text_entity,
)
from tests.messages import open_as_recipient

CATEGORY = "mime"
CASES: list[Case] = []
TEXT = text_entity("Résultat INR 2,5\n", "iso-8859-1")


def case(name: str, outcome: str, build: Callable[[World], bytes], **kw: Any) -> None:
    CASES.append(message_case(CATEGORY, name, outcome, build, **kw))


def _body(w: World) -> bytes:
    """A genuine signed and encrypted body (its MIME headers included), made once."""
    return w.once("mime-body", lambda w: w.sealed(TEXT))


def _split(body: bytes) -> tuple[bytes, bytes]:
    head, _, payload = body.partition(b"\r\n\r\n")
    return head + CRLF, payload


def _with_head(head: bytes) -> Callable[[World], bytes]:
    """Hostile message headers on top of the genuine body."""
    return lambda w: head + _body(w)


def _std(extra: bytes = b"", *, sender: bytes = JEAN.encode(),
         subject: bytes = b"Resultats") -> bytes:
    return (b"From: " + sender + b"\r\nTo: " + MARIE_ON_APICRYPT.encode()
            + b"\r\nSubject: " + subject + b"\r\nMessage-ID: <mime@example.test>\r\n"
            b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n" + extra)


def relayed_head(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[0] + CRLF


def _no_field(*names: bytes) -> Callable[[World, list[bytes]], None]:
    """What was relayed has none of these header fields, clear or inside."""
    def check(w: World, relayed: list[bytes]) -> None:
        [raw] = relayed
        opened = open_as_recipient(w.pki, MARIE, raw)
        for block in (relayed_head(raw), CRLF + opened.headers + CRLF,
                      CRLF + opened.content.partition(b"\r\n\r\n")[0] + CRLF):
            for name in names:
                assert CRLF + name + b":" not in block, name
    return check


def _relayed_from(expected: bytes) -> Callable[[World, list[bytes]], None]:
    def check(w: World, relayed: list[bytes]) -> None:
        [raw] = relayed
        lines = [line for line in relayed_head(raw).split(CRLF) if line.startswith(b"From:")]
        assert lines == [b"From: " + expected], lines
    return check


def _text_kept(parts: int) -> Callable[[World, list[bytes]], None]:
    """The recipient reads as many text parts as the sender signed (nothing dropped)."""
    def check(w: World, relayed: list[bytes]) -> None:
        [raw] = relayed
        content = open_as_recipient(w.pki, MARIE, raw).content
        assert content.lower().count(b"content-type: text/plain") == parts
    return check


def _ascii_subject(w: World, relayed: list[bytes]) -> None:
    [raw] = relayed
    head = relayed_head(raw)
    assert head.isascii()
    assert b"Subject: =?utf-8?" in head


# --- From tricks (the signer is jean) ---------------------------------------------------------

FROM_CASES = {
    "From missing": (b"", "550 5.7.7"),
    "two From fields": (b"From: " + JEAN.encode() + b"\r\nFrom: " + LABO.encode(), "550 5.6.0"),
    "two addresses in From": (JEAN.encode() + b", " + LABO.encode(), "550 5.7.7"),
    # a group of one: its only address is the signer's; relayed with a plain From
    "group syntax in From": (b"Equipe: " + JEAN.encode() + b";", "250 2.0.0"),
    "encoded word hiding the address": (
        b"=?utf-8?b?" + base64.b64encode(JEAN.encode()) + b"?= <" + LABO.encode() + b">",
        "550 5.7.7"),
    "encoded word as the whole address": (
        b"=?utf-8?q?" + JEAN.encode().replace(b"@", b"=40") + b"?=", "550 5.7.7"),
    "another user in From": (LABO.encode(), "550 5.7.7"),
    "address in a comment": (LABO.encode() + b" (" + JEAN.encode() + b")", "550 5.7.7"),
    "From of 20 kB": (b'"' + b"xxx\r\n " * 6_000 + b'" <' + JEAN.encode() + b">", "550 5.7.7"),
    "source route in From": (b"<@evil.example:" + JEAN.encode() + b">", "550 5.7.7"),
    "upper-case From": (JEAN.upper().encode(), "250 2.0.0"),
    "quoted display name holding another address": (
        b'"' + LABO.encode() + b'" <' + JEAN.encode() + b">", "250 2.0.0"),
    # identity: names that read as another address once decoded or folded
    "display name: an address in an encoded word": (
        b"=?utf-8?q?" + LABO.encode().replace(b"@", b"=40") + b"?= <" + JEAN.encode() + b">",
        "250 2.0.0"),
    "display name: a full-width at sign": (
        '"labo.biolille＠labo59.apicrypt.org" <'.encode() + JEAN.encode() + b">",
        "250 2.0.0"),
}
for _name, (_from, _expected) in FROM_CASES.items():
    if _name == "From missing":
        _head = _std().replace(b"From: " + JEAN.encode() + CRLF, b"")
    elif _name == "two From fields":
        _head = _std().replace(b"From: " + JEAN.encode(), _from)
    else:
        _head = _std(sender=_from)
    _check = None
    if _name.startswith(("quoted display", "group", "display name:")):
        _check = _relayed_from(b"<jean.dupont.apicrypt@passerelle.mssante.fr>")
    case(_name, _expected, _with_head(_head), check=_check)


# --- carried headers: injection and encoded-word abuse ----------------------------------------

SUBJECTS = {
    "encoded CRLF and Bcc in Subject": b"=?utf-8?q?hello=0D=0ABcc:_victim@evil.example?=",
    "encoded CRLF in Subject (base64)": b"=?utf-8?b?" + base64.b64encode(
        b"a\r\nBcc: victim@evil.example\r\n\r\nbody") + b"?=",
    "unknown charset in an encoded word": b"=?x-evil?q?hello?=",
    "300 encoded words": b"\r\n ".join([b"=?utf-8?q?mot=C3=A9?="] * 300),
    "encoded word with a 900-octet charset": b"=?" + b"c" * 900 + b"?q?x?=",
    "Subject folded over 300 lines": b"\r\n ".join([b"segment"] * 300),
}
for _name, _subject in SUBJECTS.items():
    case(_name, "250 2.0.0", _with_head(_std(subject=_subject)), check=_no_field(b"Bcc"))

case("raw UTF-8 Subject", "250 2.0.0", _with_head(_std(subject="Résultats œ".encode())),
     check=_ascii_subject)
case("raw Latin-1 Subject", "250 2.0.0", _with_head(_std(subject="Résultats".encode("latin-1"))),
     check=_ascii_subject)
case("References with 2000 message ids", "250 2.0.0", _with_head(_std(
    b"References: " + b"\r\n ".join(b"<r%d@example.test>" % i for i in range(2000)) + CRLF)))
case("notification request to a foreign address", "250 2.0.0", _with_head(_std(
    b"Disposition-Notification-To: <victim@evil.example>\r\n")),
     check=_no_field(b"Disposition-Notification-To"))
case("notification request to a colleague of the signer", "250 2.0.0", _with_head(_std(
    b"Disposition-Notification-To: <" + LABO.encode() + b">\r\n")),
     check=_no_field(b"Disposition-Notification-To"))


# --- the outer header block -------------------------------------------------------------------

case("300 header fields", "550 5.6.0", _with_head(_std(b"X-F: v\r\n" * 300)))
case("header block of 300 kB", "550 5.6.0", _with_head(_std(
    (b"X-Pad: " + b"p" * 900 + CRLF) * 200 + (b"X-Fold: a" + b"\r\n b" * 100_000 + CRLF))))
case("a line without a colon", "550 5.6.0", _with_head(_std(b"this is not a header\r\n")))
case("8-bit field name", "550 5.6.0", _with_head(_std("Sübject: x\r\n".encode())))
case("header block starting with a continuation", "550 5.6.0",
     _with_head(b" continued\r\n" + _std()))
case("duplicate Content-Type", "550 5.6.0", lambda w: _std(
    b"Content-Type: text/plain\r\n") + _body(w))
case("100 parameters on Content-Type", "550 5.6.0", lambda w: _std() + _body(w).replace(
    b"smime-type=enveloped-data", b"smime-type=enveloped-data; "
    + b"; ".join(b"p%d=v" % i for i in range(100)), 1))
case("unterminated quoted parameter", "550 5.6.0", lambda w: _std() + _body(w).replace(
    b'; name="smime.p7m"', b'; name="smime.p7m', 1))
case("upper-case media type and parameters", "250 2.0.0", lambda w: _std() + _body(w).replace(
    b"application/pkcs7-mime; smime-type=enveloped-data",
    b"APPLICATION/PKCS7-MIME; SMIME-TYPE=ENVELOPED-DATA", 1))
case("no smime-type (decided by the content)", "250 2.0.0", lambda w: _std() + _body(w).replace(
    b" smime-type=enveloped-data;", b"", 1))
case("comment inside Content-Type", "250 2.0.0", lambda w: _std() + _body(w).replace(
    b"application/pkcs7-mime;", b"application/pkcs7-mime (chiffre);", 1))


def _outer(ctype: bytes, cte: bytes = b"base64") -> Callable[[World], bytes]:
    """The genuine CMS body under another outer Content-Type / transfer encoding."""
    def build(w: World) -> bytes:
        _, payload = _split(_body(w))
        return (_std(b"MIME-Version: 1.0\r\nContent-Type: " + ctype
                     + b"\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n") + payload)
    return build


case("S/MIME body labelled text/plain", "550 5.7.5", _outer(b"text/plain"))
case("no Content-Type at all", "550 5.7.5", lambda w: _std(b"\r\n") + _split(_body(w))[1])
case("S/MIME body as quoted-printable", "550 5.6.0", _outer(
    b"application/pkcs7-mime; smime-type=enveloped-data", b"quoted-printable"))
case("S/MIME body with an unknown transfer encoding", "550 5.6.0", _outer(
    b"application/pkcs7-mime; smime-type=enveloped-data", b"x-uuencode"))


def _wrapped(w: World) -> bytes:
    return _std(b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="o"\r\n\r\n') + (
        b"--o\r\n" + _body(w) + b"\r\n--o--\r\n")


case("S/MIME part inside an outer multipart/mixed", "550 5.7.5", _wrapped)
case("outer multipart without a boundary", "550 5.7.5", lambda w: _std(
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n") + _body(w))


# --- inside the signature: structure bombs and broken boundaries -----------------------------

def _inner(entity: Callable[[], bytes], network: str = "apicrypt") -> Callable[[World], bytes]:
    return lambda w: w.message(entity(), network)


def _parts(n: int, boundary: bytes = b"b") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n"
                    for _ in range(n))
    return (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n' + body
            + b"--" + boundary + b"--\r\n")


def _nested(depth: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                    for i in range(depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + b"Content-Type: text/plain\r\n\r\nx" + tail


def _rfc822(depth: int) -> bytes:
    leaf = b"Content-Type: text/plain\r\n\r\nx\r\n"
    return b"Content-Type: message/rfc822\r\n\r\n" * depth + leaf


case("10,000 parts", "550 5.6.0", _inner(lambda: _parts(10_000)))
case("501 parts (one over the bound)", "550 5.6.0", _inner(lambda: _parts(501)))
case("200 parts (under the bound)", "250 2.0.0", _inner(lambda: _parts(200)),
     check=_text_kept(200))
case("2,000-deep multipart nesting", "550 5.6.0", _inner(lambda: _nested(2_000)))
case("21-deep multipart nesting", "550 5.6.0", _inner(lambda: _nested(21)))
case("19-deep multipart nesting", "250 2.0.0", _inner(lambda: _nested(19)),
     check=_text_kept(1))
# a signed message/rfc822 must name the signer in its own From: this one has none
case("30 nested message/rfc822", "550 5.7.7", _inner(lambda: _rfc822(30)))
case("600-part digest (implicit message/rfc822)", "550 5.6.0", _inner(lambda: _parts(
    600).replace(b"multipart/mixed", b"multipart/digest", 1)))
case("40,000 addresses in an inner To", "550 5.6.0", _inner(lambda: (
    b"To: " + b", ".join(b"u%d@example.org" % i for i in range(40_000))
    + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n")))
case("1 MB inner header line", "550 5.6.0", _inner(lambda: (
    b"X-Long: " + b"a" * 1_000_000 + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n")))
case("250 inner header fields", "550 5.6.0", _inner(lambda: (
    b"X-F: v\r\n" * 250 + b"Content-Type: text/plain\r\n\r\nx\r\n")))
case("70 kB inner field once unfolded", "550 5.6.0", _inner(lambda: (
    b"X-Fold: a" + b"\r\n bcdefgh" * 9_000 + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n")))
# These three were relayed as an EMPTY multipart with 250 (the signed content lost) until
# mime_limits.parse_message refused a multipart the parser kept as text.
case("multipart without a boundary parameter", "550 5.6.0", _inner(
    lambda: b"Content-Type: multipart/mixed\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"))
case("boundary never found in the body", "550 5.6.0", _inner(lambda: _parts(3).replace(
    b'boundary="b"', b'boundary="absent"', 1)))
case("empty boundary parameter", "550 5.6.0", _inner(lambda: _parts(2).replace(
    b'boundary="b"', b'boundary=""', 1)))
case("no closing delimiter", "250 2.0.0", _inner(lambda: _parts(3)[: -len(b"--b--\r\n")]),
     check=_text_kept(3))
case("boundary of 200 octets (over RFC 2046's 70)", "250 2.0.0",
     _inner(lambda: _parts(2, b"q" * 200)), check=_text_kept(2))
case("inner boundary a prefix of the outer one", "250 2.0.0", _inner(lambda: (
    b'Content-Type: multipart/mixed; boundary="ab"\r\n\r\n--ab\r\n'
    b'Content-Type: multipart/mixed; boundary="a"\r\n\r\n--a\r\n'
    b"Content-Type: text/plain\r\n\r\nx\r\n--a--\r\n--ab--\r\n")), check=_text_kept(1))
def _with_part(headers: bytes, body: bytes = b"JVBERi0xLjQK") -> Callable[[World], bytes]:
    """A text, then a base64 part whose header fields are ``headers`` (CRLF-ended)."""
    return _inner(lambda: (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nvoir PJ\r\n--b\r\n"
        + headers + b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n--b--\r\n"))


case("encoded CRLF in a file name (RFC 2047)", "250 2.0.0", _with_part(
    b"Content-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="=?utf-8?q?a=0D=0ABcc:_x@evil.example?="\r\n'),
     check=_no_field(b"Bcc"))
case("encoded CRLF in a file name (RFC 2231)", "250 2.0.0", _with_part(
    b"Content-Type: application/pdf; name*=utf-8''b%0D%0ABcc%3A%20x%40evil.example\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''a%0D%0ABcc%3A%20x%40evil.example\r\n"),
     check=_no_field(b"Bcc"))
# email's parameter reader raised TypeError on these (a 451, the sender retrying for days)
case("unclosed comment, RFC 2231 name numbered and not", "550 5.6.0", _with_part(
    b"Content-Type: (;name*0;name*=\r\n"))
case("Content-ID with an encoded CRLF", "250 2.0.0", _with_part(
    b"Content-Type: image/png\r\nContent-ID: <=?utf-8?q?a=0D=0ABcc:_x?=@x>\r\n",
    b"iVBORw0KGgo="), check=_no_field(b"Bcc"))
case("nested delivery-status block with a multipart", "550 5.6.0", _inner(lambda: (
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
    b"--r\r\nContent-Type: text/plain\r\n\r\nbounce\r\n--r\r\n"
    b"Content-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; x.example\r\n\r\n"
    b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z--\r\n--r--\r\n')))
