"""Payload cases: hostile documents inside genuinely signed and encrypted mail, through SMTP.

Rule kept here: the signature is valid (a real user's key), so the payload bounds are the last
line of defence. Archives (zip bombs by ratio, count or nesting, zip64, lying sizes, overlapping
entries, encryption, odd compression, unsafe names), XML (entity expansion, external entities
and DTDs, depth, size) and XDM metadata that lies are ``550 5.6.0``; odd but readable text
(charsets that are unknown, wrong, dangerous or absent, invalid sequences, control and bidi
characters) is decoded, never trusted as declared, and relayed in the destination's charset,
checked by opening what the next hop received with the recipient's key.

tests/test_hostile_payloads.py runs four archive/XML cases through the offline pipeline; here
the same classes go through the listener and the relay, with many more variants.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.formats.cda import Author, CdaDocument, Patient, build_n1_cda
from gateway.formats.charset import decode_text
from gateway.formats.hprim import parse_hprim
from gateway.formats.xdm import METADATA_PATH, build_xdm
from tests.hostile.case import Case, message_case
from tests.hostile.world import JEAN, MARIE, World
from tests.messages import open_as_recipient, text_of, with_xdm

CATEGORY = "payload"
CASES: list[Case] = []
DATA = Path(__file__).parent.parent / "data" / "formats"
WHEN = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
DOC = "IHE_XDM/SUBSET01/DOC0001.XML"


def case(name: str, outcome: str, build: Callable[[World], bytes], **kw: Any) -> None:
    CASES.append(message_case(CATEGORY, name, outcome, build, **kw))


# --- XDM archives from mssante ------------------------------------------------------------------

def _lab() -> tuple[str, Patient, Author]:
    text = decode_text((DATA / "hprim_lab_inr_latin1.hpr").read_bytes(), "iso-8859-1").text
    doc = parse_hprim(text)
    header = doc.header
    return text, Patient.from_hprim(header), Author.from_hprim(header)


def _n1(xml: bytes | None = None) -> tuple[CdaDocument, Patient, Author]:
    text, patient, author = _lab()
    n1 = build_n1_cda(patient=patient, author=author, content=text.encode(),
                      media_type="text/plain", title="Résultats", effective_time=WHEN)
    return (n1 if xml is None else dataclasses.replace(n1, xml=xml)), patient, author


def valid_xdm(xml: bytes | None = None) -> bytes:
    """A genuine IHE_XDM.ZIP (metadata hashes and sizes right), with ``xml`` as its CDA."""
    doc, patient, author = _n1(xml)
    return build_xdm([doc], patient, author, WHEN)


def from_mssante(archive: Callable[[], bytes]) -> Callable[[World], bytes]:
    return lambda w: w.message(with_xdm(archive()), "mssante")


def zip_of(entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED,
           flag_bits: int = 0, attr: int = 0o644 << 16) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as zf:
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 28, 9, 30, 0))
            info.compress_type = compression
            info.external_attr = attr
            zf.writestr(info, data)
    raw = buf.getvalue()
    if flag_bits:  # set general-purpose flags in every local and central header
        out = bytearray(raw)
        for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = out.find(sig)
            while pos >= 0:
                flags = struct.unpack_from("<H", out, pos + at)[0] | flag_bits
                struct.pack_into("<H", out, pos + at, flags)
                pos = out.find(sig, pos + 4)
        raw = bytes(out)
    return raw


def xdm_entries(xml: bytes | None = None) -> list[tuple[str, bytes]]:
    archive = zipfile.ZipFile(io.BytesIO(valid_xdm(xml)))
    return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _patched(archive: bytes, fix: Callable[[bytearray], None]) -> bytes:
    out = bytearray(archive)
    fix(out)
    return bytes(out)


def _central(out: bytearray) -> int:
    return out.find(b"PK\x01\x02")


def _lie_size(out: bytearray) -> None:
    """The document's central entry (the last) declares an uncompressed size of 10 octets."""
    struct.pack_into("<I", out, out.rfind(b"PK\x01\x02") + 24, 10)


def _overlap(out: bytearray) -> None:
    """The second central entry points at the first entry's local header."""
    second = out.find(b"PK\x01\x02", _central(out) + 4)
    struct.pack_into("<I", out, second + 42, 0)


def _zip64(out: bytearray) -> None:
    eocd = out.rfind(b"PK\x05\x06")
    out[eocd:eocd] = b"PK\x06\x07" + b"\x00" * 16


def _with_metadata(transform: Callable[[bytes], bytes]) -> Callable[[], bytes]:
    def build() -> bytes:
        return zip_of([(n, transform(d) if n == METADATA_PATH else d) for n, d in xdm_entries()])
    return build


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1)) * 10
                                                        if i > 1 else b"&lol;" * 10)
                             for i in range(1, 10))
                  + b']><ClinicalDocument xmlns="urn:hl7-org:v3">&lol9;</ClinicalDocument>')
QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "' + b"a" * 50_000 + b'">]>'
             b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + b"&a;" * 2_000
             + b"</ClinicalDocument>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<ClinicalDocument xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>')
XXE_PARAMETER = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM '
                 b'"http://127.0.0.1:9/evil.dtd"> %p;]><ClinicalDocument '
                 b'xmlns="urn:hl7-org:v3"/>')
EXTERNAL_DTD = (b'<?xml version="1.0"?><!DOCTYPE ClinicalDocument SYSTEM '
                b'"http://127.0.0.1:9/cda.dtd"><ClinicalDocument xmlns="urn:hl7-org:v3"/>')


def _xinclude() -> bytes:
    doc, _, _ = _n1()
    return doc.xml.replace(b"</ClinicalDocument>", b'<xi:include xmlns:xi="http://www.w3.org/'
                           b'2001/XInclude" href="file:///etc/passwd" parse="text"/>'
                           b"</ClinicalDocument>")


def _deep_xml(depth: int) -> bytes:
    return (b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3">'
            + b"<x>" * depth + b"</x>" * depth + b"</ClinicalDocument>")


def _apicrypt_text_of(w: World, relayed: list[bytes]) -> str:
    [raw] = relayed
    return text_of(open_as_recipient(w.pki, JEAN, raw).content)


def _hprim_relayed(w: World, relayed: list[bytes]) -> None:
    text = _apicrypt_text_of(w, relayed)
    assert "****FINFICHIER****" in text and "DURAND" in text


def _no_passwd(w: World, relayed: list[bytes]) -> None:
    assert "root:" not in _apicrypt_text_of(w, relayed)


case("valid XDM (control)", "250 2.0.0", from_mssante(valid_xdm), network="mssante",
     check=_hprim_relayed)
case("zip bomb by ratio", "550 5.6.0", from_mssante(
    lambda: zip_of([(DOC, b"\0" * 20_000_000)])), network="mssante")
case("zip bomb by ratio, with valid metadata", "550 5.6.0", from_mssante(
    lambda: valid_xdm(_n1()[0].xml + b"<!--" + b" " * 12_000_000 + b"-->")), network="mssante")
case("10,000 entries", "550 5.6.0", from_mssante(
    lambda: zip_of([(f"IHE_XDM/SUBSET01/F{i}.TXT", b"") for i in range(10_000)],
                   zipfile.ZIP_STORED)), network="mssante")
case("65 entries (one over the bound)", "550 5.6.0", from_mssante(
    lambda: zip_of([*xdm_entries(), *((f"IHE_XDM/SUBSET01/X{i}.TXT", b"x")
                                      for i in range(61))])), network="mssante")
case("zip inside the zip", "550 5.6.0", from_mssante(
    lambda: zip_of([(DOC, valid_xdm())])), network="mssante")
case("central directory lies about a size", "550 5.6.0", from_mssante(
    lambda: _patched(valid_xdm(), _lie_size)), network="mssante")
case("two entries sharing their data", "550 5.6.0", from_mssante(
    lambda: _patched(valid_xdm(), _overlap)), network="mssante")
case("zip64 locator", "550 5.6.0", from_mssante(
    lambda: _patched(valid_xdm(), _zip64)), network="mssante")
case("encrypted entries", "550 5.6.0", from_mssante(
    lambda: zip_of(xdm_entries(), flag_bits=0x1)), network="mssante")
case("bzip2 compression", "550 5.6.0", from_mssante(
    lambda: zip_of(xdm_entries(), zipfile.ZIP_BZIP2)), network="mssante")
case("duplicate entry names", "550 5.6.0", from_mssante(
    lambda: zip_of([*xdm_entries(), (DOC, b"<x/>")])), network="mssante")
case("entry name of 300 octets", "550 5.6.0", from_mssante(
    lambda: zip_of([*xdm_entries(), ("IHE_XDM/" + "n" * 300, b"x")])), network="mssante")

UNSAFE_NAMES = {
    "path traversal": "../../etc/cron.d/x",
    "absolute path": "/etc/passwd",
    "backslash traversal": "..\\..\\Windows\\x.dll",
    "drive letter": "C:/Windows/x.dll",
    "NUL in a name": "IHE_XDM/SUBSET01/DOC0001.XML\x00.txt",
}
def _with_entry(name: str) -> Callable[[], bytes]:
    return lambda: zip_of([*xdm_entries(), (name, b"x")])


for _name, _entry in UNSAFE_NAMES.items():
    case(f"{_name} in an entry name", "550 5.6.0", from_mssante(_with_entry(_entry)),
         network="mssante")

# The archive is read, never unpacked to disk, and not carried further: a symlink mode bit is
# only a number, and the rest of the submission is valid.
case("symlink mode on every entry", "250 2.0.0", from_mssante(
    lambda: zip_of(xdm_entries(), attr=0o120777 << 16)), network="mssante",
     check=_hprim_relayed)
case("not a zip", "550 5.6.0", from_mssante(lambda: b"this is not an archive " * 40),
     network="mssante")
case("zip cut in half", "550 5.6.0", from_mssante(
    lambda: valid_xdm()[: len(valid_xdm()) // 2]), network="mssante")
case("empty zip", "550 5.6.0", from_mssante(lambda: zip_of([])), network="mssante")
case("XDM without METADATA.XML", "550 5.6.0", from_mssante(
    lambda: zip_of([(n, d) for n, d in xdm_entries() if n != METADATA_PATH])),
     network="mssante")
case("billion laughs in METADATA.XML", "550 5.6.0", from_mssante(
    _with_metadata(lambda d: BILLION_LAUGHS)), network="mssante")
case("external entity in METADATA.XML", "550 5.6.0", from_mssante(
    _with_metadata(lambda d: XXE)), network="mssante")
def _slot_value(slot: bytes, new: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """METADATA.XML with the first value of ``slot`` replaced by ``new(value)``."""
    pattern = re.compile(rb'(<rim:Slot name="' + slot + rb'">\s*<rim:ValueList>\s*<rim:Value>)'
                         rb"([^<]*)")
    return lambda d: pattern.sub(lambda m: m.group(1) + new(m.group(2)), d, count=1)


case("metadata hash that lies", "550 5.6.0", from_mssante(_with_metadata(_slot_value(
    b"hash", lambda v: (b"0" if v[:1] != b"0" else b"1") + v[1:]))), network="mssante")
case("metadata size that lies", "550 5.6.0", from_mssante(_with_metadata(_slot_value(
    b"size", lambda v: b"%d" % (int(v) + 1)))), network="mssante")
case("metadata naming a missing document", "550 5.6.0", from_mssante(
    lambda: zip_of([(n, d) for n, d in xdm_entries() if n != DOC])), network="mssante")

CDA_XML = {
    "billion laughs": BILLION_LAUGHS,
    "quadratic blowup": QUADRATIC,
    "external entity": XXE,
    "external parameter entity": XXE_PARAMETER,
    "external DTD": EXTERNAL_DTD,
    "elements 100,000 deep": _deep_xml(100_000),
    "root that is not a ClinicalDocument": b'<?xml version="1.0"?><html><body/></html>',
    "invalid UTF-8": b'<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument '
                     b'xmlns="urn:hl7-org:v3">\xc0\xaf\xff</ClinicalDocument>',
    "not well-formed": b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3">',
}
def _with_cda(xml: bytes) -> Callable[[], bytes]:
    return lambda: valid_xdm(xml)


for _name, _xml in CDA_XML.items():
    case(f"CDA: {_name}", "550 5.6.0", from_mssante(_with_cda(_xml)), network="mssante")
case("CDA body that is not base64", "550 5.6.0", from_mssante(lambda: valid_xdm(
    _n1()[0].xml.replace(b'representation="B64">', b'representation="B64">!!not base64!!'))),
     network="mssante")
case("CDA with an XInclude of /etc/passwd", "250 2.0.0", from_mssante(
    lambda: valid_xdm(_xinclude())), network="mssante", check=_no_passwd)


# --- text and charsets from apicrypt -------------------------------------------------------------

def _text(body: bytes, params: bytes = b"", cte: bytes = b"8bit", *,
          encode: bool = True) -> bytes:
    if cte == b"base64" and encode:
        body = base64.encodebytes(body).replace(b"\n", b"\r\n")
    return (b"Content-Type: text/plain" + params + b"\r\nContent-Transfer-Encoding: " + cte
            + b"\r\n\r\n" + body)


def from_apicrypt(entity: Callable[[], bytes]) -> Callable[[World], bytes]:
    return lambda w: w.message(entity())


def _mssante_text(w: World, relayed: list[bytes]) -> str:
    [raw] = relayed
    content = open_as_recipient(w.pki, MARIE, raw).content
    assert b"charset=utf-7" not in content.lower()
    return text_of(content)


def _relayed_text(*expected: str, absent: tuple[str, ...] = ()) -> Callable[
        [World, list[bytes]], None]:
    def check(w: World, relayed: list[bytes]) -> None:
        text = _mssante_text(w, relayed)
        for piece in expected:
            assert piece in text, piece
        for piece in absent:
            assert piece not in text, piece
    return check


TEXT_CASES: dict[str, tuple[bytes, str, Callable[[World, list[bytes]], None] | None]] = {
    "UTF-7 (a charset that hides markup)": (_text(
        b"Bonjour +ADw-script+AD4-alert(1)+ADw-/script+AD4-\r\n", b"; charset=utf-7"),
        "250 2.0.0", _relayed_text("Bonjour")),
    "unknown charset": (_text("Résultat normal, pas d'anomalie détectée.\r\n".encode(
        "latin-1"), b"; charset=x-unknown-charset"), "250 2.0.0",
        _relayed_text("anomalie")),
    "UTF-8 declared, Latin-1 sent": (_text("Résultat élevé\r\n".encode("latin-1"),
                                           b"; charset=utf-8"), "250 2.0.0",
                                     _relayed_text("élevé")),
    "overlong UTF-8 sequences": (_text(b"chemin \xc0\xaf etc \xc0\xbcscript\xc0\xbe\r\n",
                                       b"; charset=utf-8"), "250 2.0.0",
                                 _relayed_text("chemin", absent=("<script",))),
    "UTF-8 encoded surrogates": (_text(b"texte \xed\xa0\x80\xed\xb0\x80 fin\r\n",
                                       b"; charset=utf-8"), "250 2.0.0",
                                 _relayed_text("texte")),
    "UTF-16 with a BOM": (_text("Compte rendu opératoire\r\n".encode("utf-16"),
                                b"; charset=utf-16", b"base64"), "250 2.0.0",
                          _relayed_text("opératoire")),
    "UTF-16 without a BOM (declared)": (_text("Compte rendu\r\n".encode("utf-16-le"),
                                              b"; charset=utf-16le", b"base64"), "250 2.0.0",
                                        _relayed_text("Compte rendu")),
    "ISO-2022-JP escapes": (_text("検査結果\r\n".encode("iso-2022-jp"),
                                  b"; charset=iso-2022-jp"), "250 2.0.0", None),
    "NUL characters in the text": (_text(b"avant\x00\x00apres\r\n", b"; charset=utf-8",
                                         b"base64"), "250 2.0.0",
                                   _relayed_text("avant", "apres")),
    "bidi overrides": (_text("facture \u202egpj.exe\u202c fin\r\n".encode(),
                             b"; charset=utf-8"), "250 2.0.0", _relayed_text("facture")),
    "200 kB of combining marks": (_text(("e" + "\u0301" * 100_000 + "\r\n").encode(),
                                        b"; charset=utf-8", b"base64"), "250 2.0.0", None),
    "lone CR line ends (MacRoman)": (_text("ligne 1\rligne 2\r".encode("mac-roman"),
                                           b"; charset=macintosh", b"base64"),
                                     "250 2.0.0", _relayed_text("ligne 1", "ligne 2")),
    # Decoded as mail clients do (email's lenient base64); what cannot be decoded at all goes
    # on as the characters the author's client signed.
    "invalid base64 in the text part": (_text(b"!!!! not base64 ####\r\n", b"; charset=utf-8",
                                              b"base64", encode=False), "250 2.0.0",
                                        _relayed_text("!!!! not base64 ####")),
    "invalid quoted-printable escapes": (_text(b"caf=E9 =ZZ =\r\nsuite\r\n",
                                               b"; charset=iso-8859-1",
                                               b"quoted-printable"), "250 2.0.0",
                                         _relayed_text("café")),
    # RFC 2045 §6.4: an unknown encoding is taken as it is (here: readable text)
    "unknown transfer encoding": (_text(b"texte\r\n", b"; charset=utf-8", b"x-gzip64"),
                                  "250 2.0.0", _relayed_text("texte")),
    "charset parameter with CRLF encoded (RFC 2231)": (_text(
        b"texte\r\n", b"; charset*=utf-8''utf-8%0D%0ABcc%3A%20x"), "250 2.0.0",
        _relayed_text("texte")),
}
def _constant(entity: bytes) -> Callable[[], bytes]:
    return lambda: entity


for _name, (_entity, _expected, _check) in TEXT_CASES.items():
    case(_name, _expected, from_apicrypt(_constant(_entity)), check=_check)


def _hprim(lines: int = 0, field: str = "DURAND") -> bytes:
    text = (DATA / "hprim_lab_inr_latin1.hpr").read_bytes().decode("latin-1")
    text = text.replace("DURAND", field, 1)
    if lines:
        res = "".join(f"RES|Analyse {i}|A{i}|N|{i},5|g/l|1|9|N|F\r\n" for i in range(lines))
        text = text.replace("****FIN****", res + "****FIN****", 1)
    return _text(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("latin-1"),
                 b"; charset=iso-8859-1")


case("HPRIM with 3,000 results", "250 2.0.0", from_apicrypt(lambda: _hprim(3_000)))
case("HPRIM name with XML markup", "250 2.0.0", from_apicrypt(
    lambda: _hprim(field="]]><script>&lt;</script><!--")))
case("PDF attachment named with a traversal", "250 2.0.0", from_apicrypt(lambda: (
    b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n--p\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nci-joint\r\n--p\r\n"
    b'Content-Type: application/pdf; name="../../../etc/passwd.pdf"\r\n'
    b'Content-Disposition: attachment; filename="../../../etc/passwd.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJSVFT0YK\r\n--p--\r\n")))
def _long_name(pieces: int) -> Callable[[World], bytes]:
    return from_apicrypt(lambda: (
        b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n--p\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nci-joint\r\n--p\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment;"
        + b"".join(b"\r\n filename*%d=%s;" % (i, b"n" * 120) for i in range(pieces))
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--p--\r\n"))


case("attachment name of 4,800 characters (40 RFC 2231 pieces)", "250 2.0.0", _long_name(40))
case("attachment name in 80 RFC 2231 pieces (over the parameter bound)", "550 5.6.0",
     _long_name(80))
