"""The MIME side of S/MIME: read and write the entities that carry CMS, on raw bytes.

Rules kept here:

* Bytes in, bytes out. An entity is never re-serialised through the ``email`` package: that
  rewrites headers and line endings (breaking ``multipart/signed`` signatures) and has no bounds
  (LIBRARIES.md). The signed part of a ``multipart/signed`` is returned exactly as it was on the
  wire, only with bare LF made CRLF (RFC 8551 §3.1.1 canonical form).
* Bounded and linear: header block size and field count are capped before any work, scans use
  ``bytes.find`` and single passes, nothing recurses. Hostile input ends in a ``gateway.errors``
  type (``LimitExceeded`` for a bound, ``MalformedError`` otherwise), never in another exception.
* Reasons never quote input bytes (they may hold names or addresses).
* Headers written here cannot be injected: names and values with CR or LF are refused
  (CVE-2024-6923 class).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.errors import LimitExceeded, MalformedError
from gateway.memo import Memo

__all__ = [
    "Entity",
    "Kind",
    "classify",
    "crlf",
    "enveloped_entity",
    "parse_entity",
    "parse_params",
    "pkcs7_der",
    "prepend_headers",
    "signed_detached_entity",
    "signed_opaque_entity",
    "split_signed",
]

Kind = Literal[
    "enveloped", "auth-enveloped", "signed-opaque", "signed-detached", "certs-only", "other"
]

#: Default bounds for one header block (a whole message's headers included).
MAX_HEADER_BYTES = 256 * 1024
MAX_HEADERS = 256
#: Parameters in one Content-Type / Content-Disposition.
MAX_PARAMS = 64

_PKCS7_MIME = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_PKCS7_SIGNATURE = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_SMIME_TYPES: dict[str, Kind] = {
    "enveloped-data": "enveloped",
    "authenveloped-data": "auth-enveloped",
    "signed-data": "signed-opaque",
    "certs-only": "certs-only",
}
_OID_KINDS: dict[str, Kind] = {
    "1.2.840.113549.1.7.3": "enveloped",
    "1.2.840.113549.1.9.16.1.23": "auth-enveloped",
    "1.2.840.113549.1.7.2": "signed-opaque",
}

# RFC 2045 token characters (CHAR minus SPACE, CTLs and tspecials).
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN_STR = frozenset(chr(c) for c in _TOKEN)
# RFC 5322 field name: printable ASCII except ":".
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_FIELD_NAME_STR = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_EMPTY_LINE = re.compile(rb"\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_ANY_EOL = re.compile(rb"\r\n|\r|\n")
_VALUE_STOP = frozenset(' \t\r\n;"()')
_FOLD_CHUNK = re.compile(rb"[ \t]*[^ \t]+|[ \t]+")


def crlf(data: bytes) -> bytes:
    """``data`` with every bare LF made CRLF; existing CRLF (and bare CR) left alone."""
    if data.count(b"\n") == data.count(b"\r\n"):  # the common case: nothing to rewrite
        return data
    return _BARE_LF.sub(b"\r\n", data)


def canonical(data: bytes) -> bytes:
    """``data`` with every line ending (CRLF, bare CR, bare LF) made CRLF: RFC 8551 canonical."""
    crlfs = data.count(b"\r\n")
    if data.count(b"\n") == crlfs and data.count(b"\r") == crlfs:  # already canonical
        return data
    return _ANY_EOL.sub(b"\r\n", data)


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """A MIME entity: its header block as on the wire, the parsed fields, and the raw body.

    ``raw_headers`` runs up to and including the line ending of the last field (the empty line
    that ends the block is not part of it); ``body`` starts right after that empty line.
    """

    raw_headers: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def get_all(self, name: str) -> list[str]:
        """Every value of field ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def get(self, name: str) -> str | None:
        """The one value of field ``name`` (case-insensitive), None if absent.

        A field that occurs twice is ambiguous (two Content-Types, two Froms: which one did the
        signer mean?) and is refused; use :meth:`get_all` for fields that may repeat.
        """
        values = self.get_all(name)
        if len(values) > 1:
            raise MalformedError(f"duplicate {_safe_name(name)} header")
        return values[0] if values else None

    @property
    def content_type(self) -> tuple[str, dict[str, str]]:
        """``(type/subtype lower-cased, parameters)``; RFC 2045 default when absent."""
        value = self.get("Content-Type")
        if value is None:
            return "text/plain", {"charset": "us-ascii"}
        return parse_params(value, media_type=True)

    @property
    def content_disposition(self) -> tuple[str, dict[str, str]] | None:
        value = self.get("Content-Disposition")
        if value is None:
            return None
        return parse_params(value, media_type=False)

    @property
    def file_name(self) -> str | None:
        """``filename`` of Content-Disposition, else ``name`` of Content-Type."""
        disposition = self.content_disposition
        if disposition is not None and "filename" in disposition[1]:
            return disposition[1]["filename"]
        return self.content_type[1].get("name")


def _safe_name(name: str) -> str:
    """A header name fit for a reason: only token characters, bounded."""
    return name[:40] if _FIELD_NAME_STR.fullmatch(name[:40]) else "unnamed"


def parse_entity(
    raw: bytes,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_headers: int = MAX_HEADERS,
) -> Entity:
    """Split ``raw`` at its first empty line (CRLF or LF) and parse the fields above it.

    Without an empty line the whole input is the header block and the body is empty.
    """
    if raw.startswith((b"\n", b"\r\n")):
        block_end, body_start = 0, (1 if raw[:1] == b"\n" else 2)
    else:
        match = _EMPTY_LINE.search(raw, 0, max_header_bytes + 3)
        if match is not None:
            block_end, body_start = match.start() + 1, match.end()
        else:
            block_end = body_start = len(raw)
    if block_end > max_header_bytes:
        raise LimitExceeded(f"header block over {max_header_bytes} bytes")
    raw_headers = raw[:block_end]
    return Entity(raw_headers, _parse_fields(raw_headers, max_headers), raw[body_start:])


def _parse_fields(block: bytes, max_headers: int) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, list[bytes]]] = []
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the line ending of the last field
    for physical in lines:
        line = physical.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MalformedError("header block starts with a continuation line")
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")  # obsolete syntax: WSP before the colon (RFC 5322 §4.5)
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise MalformedError("header line without a valid field name")
        if len(fields) >= max_headers:
            raise LimitExceeded(f"more than {max_headers} header fields")
        fields.append((name.decode("ascii"), [value]))
    return tuple((name, b"".join(parts).strip(b" \t").decode("latin-1")) for name, parts in fields)


# The same Content-Type values come back message after message (the smime.p7m and signature
# parts, the text parts): their parse is remembered. Bounded; a caller gets its own dict.
_PARAMS_CACHE: Memo[tuple[str, bool], tuple[str, dict[str, str]]] = Memo(1024)
_PARAMS_CACHE_VALUE_CHARS = 200


def parse_params(value: str, *, media_type: bool) -> tuple[str, dict[str, str]]:
    """Parse ``type/subtype; a=b; c="d"`` (or ``disposition; a=b``) per RFC 2045.

    Parameter names are lower-cased; values keep their case (boundaries are case-sensitive).
    Quoted strings may hold ``;`` and backslash escapes; comments are skipped. A duplicate
    parameter is ambiguous and refused; RFC 2231 continuations are not decoded.
    """
    if len(value) > _PARAMS_CACHE_VALUE_CHARS:
        return _parse_params(value, media_type)
    key = (value, media_type)
    found = _PARAMS_CACHE.get(key)
    if found is None:
        found = _parse_params(value, media_type)  # raises on a malformed value: not cached
        _PARAMS_CACHE.put(key, found)
    return found[0], dict(found[1])


def _parse_params(value: str, media_type: bool) -> tuple[str, dict[str, str]]:
    scanner = _Scanner(value)
    scanner.skip_cfws()
    head = scanner.token()
    if media_type:
        scanner.skip_cfws()
        scanner.expect("/")
        scanner.skip_cfws()
        head = f"{head}/{scanner.token()}"
    params: dict[str, str] = {}
    while True:
        scanner.skip_cfws()
        if scanner.at_end():
            break
        scanner.expect(";")
        scanner.skip_cfws()
        if scanner.at_end() or scanner.peek() == ";":
            continue  # empty parameter (trailing or doubled ";"), common and harmless
        name = scanner.token().lower()
        scanner.skip_cfws()
        scanner.expect("=")
        scanner.skip_cfws()
        param = scanner.quoted() if scanner.peek() == '"' else scanner.bare_value()
        if name in params:
            raise MalformedError("duplicate MIME parameter")
        if len(params) >= MAX_PARAMS:
            raise LimitExceeded(f"more than {MAX_PARAMS} MIME parameters")
        params[name] = param
    return head.lower(), params


class _Scanner:
    """A cursor over one header value; every method advances linearly."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise MalformedError("malformed MIME parameter list")
        self.pos += 1

    def skip_cfws(self) -> None:
        text, depth = self.text, 0
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\" and depth:
                self.pos += 2
                continue
            if char == "(":
                depth += 1
            elif char == ")" and depth:
                depth -= 1
            elif not depth and char not in " \t\r\n":
                return
            self.pos += 1
        if depth:
            raise MalformedError("unterminated comment in MIME header")

    def token(self) -> str:
        start, text = self.pos, self.text
        while self.pos < len(text) and text[self.pos] in _TOKEN_STR:
            self.pos += 1
        if self.pos == start:
            raise MalformedError("malformed MIME parameter list")
        return text[start : self.pos]

    def quoted(self) -> str:
        text, out = self.text, list[str]()
        self.pos += 1  # opening quote
        while self.pos < len(text):
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\" and self.pos + 1 < len(text):
                self.pos += 1
                char = text[self.pos]
            out.append(char)
            self.pos += 1
        raise MalformedError("unterminated quoted string in MIME header")

    def bare_value(self) -> str:
        # Wider than an RFC 2045 token: unquoted boundaries like ----=_Part_1 are common.
        start, text = self.pos, self.text
        while self.pos < len(text) and text[self.pos] not in _VALUE_STOP and text[self.pos] >= " ":
            self.pos += 1
        if self.pos == start:
            raise MalformedError("malformed MIME parameter value")
        return text[start : self.pos]


def classify(entity: Entity) -> Kind:
    """What S/MIME structure ``entity`` is, from its headers (and the CMS type if need be).

    ``smime-type`` decides for ``application/(x-)pkcs7-mime``; without it the ContentInfo's
    content type is read from the DER. ``application/octet-stream`` named ``*.p7m`` / ``*.p7c``
    is treated as ``pkcs7-mime`` without ``smime-type`` (RFC 8551 §3.2.2).
    """
    media, params = entity.content_type
    if media == "multipart/signed":
        protocol = params.get("protocol", "").strip().lower()
        return "signed-detached" if protocol in _PKCS7_SIGNATURE else "other"
    if media in _PKCS7_MIME:
        smime_type = params.get("smime-type")
        if smime_type is not None:
            return _SMIME_TYPES.get(smime_type.strip().lower(), "other")
    elif media == "application/octet-stream":
        name = (entity.file_name or "").strip().lower()
        if not name.endswith((".p7m", ".p7c")):
            return "other"
    else:
        return "other"
    name = (entity.file_name or "").strip().lower()
    kind = _OID_KINDS.get(_content_info_oid(pkcs7_der(entity)) or "", "other")
    if kind == "signed-opaque" and name.endswith(".p7c"):
        return "certs-only"
    return kind


def _content_info_oid(der: bytes) -> str | None:
    """The contentType OID of a DER/BER ContentInfo, read from its first bytes; None if absent."""
    if der[:1] != b"\x30":
        return None
    pos = _skip_length(der, 1)
    if pos is None or der[pos : pos + 1] != b"\x06" or pos + 1 >= len(der):
        return None
    length = der[pos + 1]
    body = der[pos + 2 : pos + 2 + length]
    if length == 0 or length >= 0x80 or len(body) != length or body[-1] & 0x80:
        return None
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _skip_length(der: bytes, pos: int) -> int | None:
    """Position after the length octets at ``pos`` (indefinite length accepted)."""
    if pos >= len(der):
        return None
    first = der[pos]
    if first < 0x80 or first == 0x80:
        return pos + 1
    count = first & 0x7F
    return pos + 1 + count if count <= 4 and pos + 1 + count <= len(der) else None


def pkcs7_der(entity: Entity) -> bytes:
    """The CMS bytes of ``entity``: base64 decoded (whitespace ignored, nothing else), or as is."""
    encoding = (entity.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if encoding == "base64":
        # bytes.translate deletes whitespace in C, much faster than a regex on big bodies
        compact = entity.body.translate(None, b" \t\r\n")
        if len(compact) % 4 == 1:
            raise MalformedError("truncated base64 in S/MIME body")
        if len(compact) % 4:  # some writers drop the padding (a copy only for those)
            compact += b"=" * (-len(compact) % 4)
        try:
            # strict mode: the alphabet and the padding checked in C (b64decode's validate=True
            # runs a regex over the whole body first)
            der = binascii.a2b_base64(compact, strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedError("invalid base64 in S/MIME body") from None
    elif encoding in ("binary", "8bit", "7bit"):
        der = entity.body
    else:
        raise MalformedError("unsupported Content-Transfer-Encoding for S/MIME content")
    if not der:
        raise MalformedError("empty S/MIME body")
    return der


def split_signed(entity: Entity) -> tuple[bytes, bytes]:
    """``(signed first part exactly as on the wire with CRLF line endings, signature DER)``.

    RFC 2046: the line ending before a delimiter belongs to the delimiter, so the first part is
    the bytes after the first delimiter line up to (not including) that line ending.
    """
    media, params = entity.content_type
    if not media.startswith("multipart/"):
        raise MalformedError("not a multipart entity")
    boundary_text = params.get("boundary", "")
    if not boundary_text or len(boundary_text) > 200:
        raise MalformedError("multipart without a usable boundary")
    # A delimiter line: "--boundary" at a line start, "--" if it closes, transport padding, the
    # line ending (RFC 2046 §5.1.1). bytes.find jumps between candidates in C (a MULTILINE "^"
    # regex would be tried at every byte); the rest of the line is matched at each candidate.
    marker = b"--" + boundary_text.encode("latin-1")
    body = entity.body
    delimiters: list[tuple[int, int, bool]] = []  # (line start, next line start, is close)
    pos = 0
    while (start := body.find(marker, pos)) >= 0:
        pos = start + 1
        if start > 0 and body[start - 1] != 0x0A:  # not at a line start
            continue
        match = _DELIMITER_TAIL.match(body, start + len(marker))
        if match is None:
            continue
        close = match.group(1) is not None
        delimiters.append((start, min(match.end() + 1, len(body)), close))
        if close or len(delimiters) > 2:
            break
    closes = [close for _, _, close in delimiters]
    if closes != [False, False, True]:
        if len(closes) < 3 and not any(closes):
            raise MalformedError("multipart/signed without its closing delimiter")
        raise MalformedError("multipart/signed must have exactly two parts")
    first = body[delimiters[0][1] : _part_end(body, delimiters[1][0])]
    second = body[delimiters[1][1] : _part_end(body, delimiters[2][0])]
    signature = parse_entity(second)
    sig_media = signature.content_type[0]
    if sig_media not in _PKCS7_SIGNATURE and sig_media != "application/octet-stream":
        raise MalformedError("second part of multipart/signed is not a PKCS #7 signature")
    return crlf(first), pkcs7_der(signature)


# What may follow "--boundary" on a delimiter line: the close mark, padding, CR, end of line.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*\r?(?=\n|\Z)")


def _part_end(body: bytes, delimiter: int) -> int:
    """End of the part before the delimiter line at ``delimiter`` (its CRLF or LF excluded)."""
    if delimiter >= 2 and body[delimiter - 2 : delimiter] == b"\r\n":
        return delimiter - 2
    return delimiter - 1 if delimiter >= 1 else 0


# --- writing ---------------------------------------------------------------------------------


def _base64_lines(data: bytes) -> bytes:
    # encodebytes writes 76-character lines in C; only the line ending needs changing
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _pkcs7_mime(der: bytes, smime_type: str) -> bytes:
    return (
        b"Content-Type: application/pkcs7-mime; smime-type="
        + smime_type.encode("ascii")
        + b'; name="smime.p7m"\r\n'
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n" + _base64_lines(der)
    )


def enveloped_entity(der: bytes, *, auth: bool = False) -> bytes:
    """An ``application/pkcs7-mime`` entity for an EnvelopedData (or AuthEnvelopedData)."""
    return _pkcs7_mime(der, "authEnveloped-data" if auth else "enveloped-data")


def signed_opaque_entity(der: bytes) -> bytes:
    """An ``application/pkcs7-mime; smime-type=signed-data`` entity for an opaque SignedData."""
    return _pkcs7_mime(der, "signed-data")


def signed_detached_entity(content: bytes, signature_der: bytes) -> bytes:
    """A ``multipart/signed`` entity: ``content`` (canonical CRLF) and its detached signature.

    ``content`` is placed byte for byte, so :func:`split_signed` gives it back exactly.
    """
    if canonical(content) != content:
        raise MalformedError("signed content must have CRLF line endings only")
    boundary = b"----=_smime_" + secrets.token_hex(16).encode("ascii")
    while boundary in content:  # practically never; a boundary must not occur in a part
        boundary = b"----=_smime_" + secrets.token_hex(16).encode("ascii")
    return (
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b'micalg=sha-256;\r\n boundary="' + boundary + b'"\r\n'
        b"\r\n"
        b"This is an S/MIME signed message\r\n"
        b"\r\n--" + boundary + b"\r\n" + content + b"\r\n--" + boundary + b"\r\n"
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
        b"\r\n" + _base64_lines(signature_der) + b"\r\n--" + boundary + b"--\r\n"
    )


def prepend_headers(entity_bytes: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """Message header fields (From, To, Subject, ...) put on top of an entity's own fields.

    Names must be RFC 5322 field names, values printable ASCII on one line (encode non-ASCII
    with RFC 2047 first): CR or LF anywhere would let a value inject fields or a body. A field
    the entity already has (its Content-Type...) is refused rather than duplicated.
    """
    existing = {name.lower() for name, _ in parse_entity(entity_bytes).headers}
    lines: list[bytes] = []
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise MalformedError("CR or LF in a header field to write")
        if not _FIELD_NAME_STR.fullmatch(name):
            raise MalformedError("invalid header field name to write")
        if not value.isascii() or _CONTROL_STR.search(value):
            raise MalformedError("header value must be printable ASCII (RFC 2047 encode it)")
        if name.lower() in existing:
            raise MalformedError(f"{_safe_name(name)} header already present in the entity")
        existing.add(name.lower())
        lines.append(_fold(f"{name}: {value}".encode("ascii")))
    return b"".join(lines) + entity_bytes


_CONTROL_STR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB


def _fold(field: bytes, width: int = 78) -> bytes:
    """One field as CRLF lines, folded before whitespace when longer than ``width``.

    Each continuation line starts with whitespace and holds a word: a whitespace-only line
    would read as the empty line that ends the header block.
    """
    chunks = _FOLD_CHUNK.findall(field)
    lines: list[bytes] = []
    line = b""
    for chunk in chunks:
        if line and len(line) + len(chunk) > width and chunk.strip(b" \t"):
            lines.append(line)
            line = chunk
        else:
            line += chunk
    lines.append(line)
    return b"".join(item + b"\r\n" for item in lines)
