"""gateway.smime.mime: bounded entity parsing, classification, exact multipart/signed splitting,
writers (read back by openssl), header-injection refusal, and fuzzing on arbitrary bytes.

Keys come from gateway.smime.certgen once per module; the PEMs openssl needs go to a temporary
directory (test-only).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LimitExceeded, MalformedError
from gateway.smime import certgen
from gateway.smime.mime import (
    Entity,
    canonical,
    classify,
    crlf,
    enveloped_entity,
    parse_entity,
    parse_params,
    pkcs7_der,
    prepend_headers,
    signed_detached_entity,
    signed_opaque_entity,
    split_signed,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
FIXTURE_OK = [HealthCheck.function_scoped_fixture]

CONTENT = (
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"R\xe9sultat:  normal \r\n"
    b"\r\n"
    b"--not-a-boundary\r\n"
    b"fin\r\n"
)

# Minimal ContentInfo prefixes (SEQUENCE, OID, ...) for classification by DER content type.
OID_ENVELOPED = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x03"
OID_SIGNED = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
OID_AUTH_ENVELOPED = b"\x06\x0b\x2a\x86\x48\x86\xf7\x0d\x01\x09\x10\x01\x17"
OID_DATA = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"


def content_info(oid: bytes) -> bytes:
    inner = oid + b"\xa0\x80\x05\x00\x00\x00"
    return b"\x30\x80" + inner + b"\x00\x00"


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path
    ca: Path


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[certgen.Issued, Pem]:
    ca = certgen.make_ca("Test CA")
    leaf = certgen.make_leaf(ca, "Jean Dupont", emails=["jean.dupont@example.org"])
    folder = tmp_path_factory.mktemp("mime-pki")
    pem = Pem(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    pem.cert.write_bytes(leaf.certificate.public_bytes(serialization.Encoding.PEM))
    pem.ca.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return leaf, pem


def run(*args: str | Path, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def message_digest(signature_der: bytes) -> bytes:
    info = asn1_cms.ContentInfo.load(signature_der)
    attrs = info["content"]["signer_infos"][0]["signed_attrs"]
    for attr in attrs:
        if attr["type"].native == "message_digest":
            return bytes(attr["values"][0].native)
    raise AssertionError("no message-digest attribute")


# --- parse_entity ----------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_parse_entity_both_line_endings(eol: bytes) -> None:
    raw = eol.join(
        [
            b"Content-Type: multipart/mixed;",
            b'\tboundary="abc"',
            b"Subject : folded",
            b"  twice",
            b"",
            b"body line 1",
            b"",
            b"body line 3",
        ]
    )
    entity = parse_entity(raw)
    assert entity.headers == (
        ("Content-Type", 'multipart/mixed;\tboundary="abc"'),
        ("Subject", "folded  twice"),
    )
    assert entity.raw_headers + eol + entity.body == raw
    assert entity.raw_headers.endswith(b"twice" + eol)
    assert entity.body == eol.join([b"body line 1", b"", b"body line 3"])
    assert entity.get("content-TYPE") == 'multipart/mixed;\tboundary="abc"'
    assert entity.content_type == ("multipart/mixed", {"boundary": "abc"})


def test_parse_entity_mixed_endings_and_edges() -> None:
    entity = parse_entity(b"A: 1\r\nB: 2\n\nbody\r\n")
    assert [n for n, _ in entity.headers] == ["A", "B"]
    assert entity.body == b"body\r\n"
    assert parse_entity(b"\r\nonly body").headers == ()
    assert parse_entity(b"\r\nonly body").body == b"only body"
    assert parse_entity(b"\nx").body == b"x"
    no_body = parse_entity(b"A: 1\r\nB: 2\r\n")
    assert no_body.body == b"" and len(no_body.headers) == 2
    assert parse_entity(b"").headers == ()
    # 8-bit bytes in a value are kept, decoded as latin-1
    assert parse_entity(b"Subject: R\xe9sultat\r\n\r\n").get("subject") == "R\xe9sultat"


def test_parse_entity_malformed() -> None:
    with pytest.raises(MalformedError):
        parse_entity(b"no colon here\r\n\r\nbody")
    with pytest.raises(MalformedError):
        parse_entity(b" continuation: first\r\n\r\n")
    with pytest.raises(MalformedError):
        parse_entity(b"From jean@example.org Mon Jan  1 00:00:00 2024\r\n\r\n")  # mbox line
    with pytest.raises(MalformedError):
        parse_entity(b": empty name\r\n\r\n")


def test_parse_entity_bounds() -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(11)) + b"\r\nbody"
    assert len(parse_entity(many, max_headers=11).headers) == 11
    with pytest.raises(LimitExceeded):
        parse_entity(many, max_headers=10)
    big = b"X-Big: " + b"a" * 2000 + b"\r\n\r\nbody"
    assert parse_entity(big, max_header_bytes=2009).body == b"body"
    with pytest.raises(LimitExceeded):
        parse_entity(big, max_header_bytes=2008)
    # No empty line at all and longer than the bound: refused without scanning further.
    with pytest.raises(LimitExceeded):
        parse_entity(b"X: " + b"a" * 10_000, max_header_bytes=1000)
    # The default bound holds against a megabyte of header.
    with pytest.raises(LimitExceeded):
        parse_entity(b"X: " + b"a" * 1_000_000 + b"\r\n\r\n")


def test_get_refuses_duplicates() -> None:
    entity = parse_entity(b"Content-Type: text/plain\r\ncontent-type: text/html\r\n\r\n")
    with pytest.raises(MalformedError):
        entity.get("Content-Type")
    with pytest.raises(MalformedError):
        _ = entity.content_type
    entity = parse_entity(b"Received: a\r\nReceived: b\r\n\r\n")
    assert entity.get_all("received") == ["a", "b"]
    assert entity.get("X-Absent") is None


# --- parameters ------------------------------------------------------------------------------


def test_params_quoted_and_case() -> None:
    media, params = parse_params(
        "Application/PKCS7-MIME ; SMIME-Type = enveloped-data ;"
        ' Name="a;b \\"c\\".p7m" (a comment; with = signs) ; boundary=----=_Part_1.2;',
        media_type=True,
    )
    assert media == "application/pkcs7-mime"
    assert params == {
        "smime-type": "enveloped-data",
        "name": 'a;b "c".p7m',
        "boundary": "----=_Part_1.2",
    }
    assert parse_params("attachment; filename=smime.p7m", media_type=False) == (
        "attachment",
        {"filename": "smime.p7m"},
    )
    assert parse_params("text/plain;;charset=utf-8", media_type=True)[1] == {"charset": "utf-8"}


@pytest.mark.parametrize(
    "value",
    [
        "text",  # no subtype
        "text/",
        "/plain",
        'text/plain; name="unterminated',
        "text/plain; charset",
        "text/plain; charset=",
        "text/plain; a=1; A=2",  # duplicate, case-insensitively
        "text/plain (unterminated comment",
        "text/plain garbage",
    ],
)
def test_params_malformed(value: str) -> None:
    with pytest.raises(MalformedError):
        parse_params(value, media_type=True)


def test_params_bounded() -> None:
    value = "text/plain" + "".join(f"; p{i}=v" for i in range(65))
    with pytest.raises(LimitExceeded):
        parse_params(value, media_type=True)
    assert len(parse_params("text/plain" + "; p=v" * 0, media_type=True)[1]) == 0


def test_content_type_default() -> None:
    assert parse_entity(b"Subject: x\r\n\r\n").content_type == (
        "text/plain",
        {"charset": "us-ascii"},
    )


# --- classify / pkcs7_der --------------------------------------------------------------------


def entity(content_type: str, body: bytes = b"", extra: str = "") -> Entity:
    raw = f"Content-Type: {content_type}\r\n{extra}\r\n".encode("latin-1") + body
    return parse_entity(raw)


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m", "enveloped"),
        ('application/x-pkcs7-mime; smime-type="enveloped-data"', "enveloped"),
        ("application/pkcs7-mime; smime-type=authEnveloped-data", "auth-enveloped"),
        ("application/pkcs7-mime; smime-type=signed-data", "signed-opaque"),
        ("application/x-pkcs7-mime; smime-type=Signed-Data", "signed-opaque"),
        ("application/pkcs7-mime; smime-type=certs-only", "certs-only"),
        ("application/pkcs7-mime; smime-type=compressed-data", "other"),
        ('multipart/signed; protocol="application/pkcs7-signature"; boundary=b', "signed-detached"),
        ("multipart/signed; protocol=application/x-pkcs7-signature; boundary=b", "signed-detached"),
        ('multipart/signed; protocol="application/pgp-signature"; boundary=b', "other"),
        ("multipart/signed; boundary=b", "other"),
        ("text/plain", "other"),
        ("application/pkcs7-signature", "other"),
        ("multipart/mixed; boundary=b", "other"),
    ],
)
def test_classify_by_headers(content_type: str, kind: str) -> None:
    assert classify(entity(content_type)) == kind


@pytest.mark.parametrize(
    ("oid", "kind"),
    [
        (OID_ENVELOPED, "enveloped"),
        (OID_AUTH_ENVELOPED, "auth-enveloped"),
        (OID_SIGNED, "signed-opaque"),
        (OID_DATA, "other"),
    ],
)
@pytest.mark.parametrize(
    "content_type",
    [
        "application/pkcs7-mime; name=smime.p7m",
        "application/x-pkcs7-mime",
        'application/octet-stream; name="SMIME.P7M"',
    ],
)
def test_classify_without_smime_type_reads_der(oid: bytes, kind: str, content_type: str) -> None:
    body = base64.encodebytes(content_info(oid))
    assert classify(entity(content_type, body, "Content-Transfer-Encoding: base64\r\n")) == kind
    # binary transfer encoding too
    assert classify(entity(content_type, content_info(oid))) == kind


def test_classify_file_names() -> None:
    signed = base64.encodebytes(content_info(OID_SIGNED))
    cte = "Content-Transfer-Encoding: base64\r\n"
    assert classify(entity("application/octet-stream", signed, cte)) == "other"
    assert classify(entity("application/octet-stream; name=a.pdf", signed, cte)) == "other"
    octet = entity(
        "application/octet-stream",
        signed,
        cte + 'Content-Disposition: attachment; filename="smime.p7m"\r\n',
    )
    assert classify(octet) == "signed-opaque"
    assert classify(entity("application/pkcs7-mime; name=certs.p7c", signed, cte)) == "certs-only"
    with pytest.raises(MalformedError):  # no smime-type, and the body is not CMS-decodable
        classify(entity("application/pkcs7-mime", b"!!!", cte))
    assert classify(entity("application/pkcs7-mime", b"not DER")) == "other"


def test_pkcs7_der() -> None:
    der = bytes(range(256)) * 3
    wrapped = base64.encodebytes(der).replace(b"\n", b"\r\n")
    assert pkcs7_der(entity("x/y", wrapped, "Content-Transfer-Encoding: BASE64\r\n")) == der
    spaced = b" \t" + base64.b64encode(der).rstrip(b"=") + b"\n\n"  # lost padding is repaired
    assert pkcs7_der(entity("x/y", spaced, "Content-Transfer-Encoding: base64\r\n")) == der
    assert pkcs7_der(entity("x/y", der, "Content-Transfer-Encoding: binary\r\n")) == der
    assert pkcs7_der(entity("x/y", der)) == der
    for bad_body in (b"QUJD*RA==", b"QUJDRA==QUJD", b"QUJDR", b"", b"  \r\n"):
        with pytest.raises(MalformedError):
            pkcs7_der(entity("x/y", bad_body, "Content-Transfer-Encoding: base64\r\n"))
    with pytest.raises(MalformedError):
        pkcs7_der(entity("x/y", b"QUJD", "Content-Transfer-Encoding: quoted-printable\r\n"))


# --- split_signed ----------------------------------------------------------------------------


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize("tool", ["smime", "cms"])
@pytest.mark.parametrize("source_eol", [b"\r\n", b"\n"])
def test_split_signed_is_what_openssl_signed(
    signer: tuple[certgen.Issued, Pem], tmp_path: Path, tool: str, source_eol: bytes
) -> None:
    """openssl canonicalises to CRLF and signs that; split_signed must give back those bytes."""
    _, pem = signer
    content = CONTENT.replace(b"\r\n", source_eol)
    (tmp_path / "in.txt").write_bytes(content)
    signed_message = run(
        OPENSSL,
        tool,
        "-sign",
        "-in",
        tmp_path / "in.txt",
        "-signer",
        pem.cert,
        "-inkey",
        pem.key,
        "-md",
        "sha256",
    )
    # openssl writes LF around the parts; an MTA may also turn everything into CRLF or LF.
    for wire in (signed_message, crlf(signed_message), signed_message.replace(b"\r\n", b"\n")):
        top = parse_entity(wire)
        assert classify(top) == "signed-detached"
        first, signature_der = split_signed(top)
        assert first == CONTENT
        assert message_digest(signature_der) == hashlib.sha256(first).digest()


@needs_openssl
@pytest.mark.interop
def test_split_signed_binary_keeps_content(
    signer: tuple[certgen.Issued, Pem], tmp_path: Path
) -> None:
    """With -binary openssl signs the bytes as given: CRLF content comes back unchanged."""
    _, pem = signer
    (tmp_path / "in.txt").write_bytes(CONTENT)
    out = run(
        OPENSSL,
        "cms",
        "-sign",
        "-binary",
        "-in",
        tmp_path / "in.txt",
        "-signer",
        pem.cert,
        "-inkey",
        pem.key,
    )
    first, signature_der = split_signed(parse_entity(out))
    assert first == CONTENT
    assert message_digest(signature_der) == hashlib.sha256(first).digest()


def multipart(body: bytes, boundary: str = "BB") -> Entity:
    return entity(
        f'multipart/signed; protocol="application/pkcs7-signature"; boundary="{boundary}"', body
    )


SIG_PART = (
    b"Content-Type: application/pkcs7-signature\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nMAA=\r\n"
)


def test_split_signed_structure() -> None:
    body = (
        b"preamble\r\n--BB\r\n"
        b"Content-Type: text/plain\r\n\r\nline\r\n--BBX not a delimiter\r\n --BB\r\n\r\n"
        b"--BB  \r\n" + SIG_PART + b"--BB--\r\nepilogue\r\n--BB\r\n"
    )
    first, sig = split_signed(multipart(body))
    assert first == b"Content-Type: text/plain\r\n\r\nline\r\n--BBX not a delimiter\r\n --BB\r\n"
    assert sig == b"0\x00"
    # The delimiter's line ending only: a part ending without CRLF keeps its last byte.
    first, _ = split_signed(multipart(b"--BB\r\nA: b\r\n\r\nx\r\n--BB\r\n" + SIG_PART + b"--BB--"))
    assert first == b"A: b\r\n\r\nx"
    # A bare LF in the part becomes CRLF; bare CR is kept.
    first, _ = split_signed(multipart(b"--BB\nA: b\n\nx\ry\n\n--BB\n" + SIG_PART + b"--BB--\n"))
    assert first == b"A: b\r\n\r\nx\ry\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"--BB\r\nA: b\r\n\r\nx\r\n--BB\r\n" + SIG_PART,  # no close delimiter
        b"--BB\r\nA: b\r\n\r\nx\r\n--BB--\r\n",  # one part
        b"--BB\r\nA: b\r\n\r\nx\r\n--BB\r\n" + SIG_PART + b"--BB\r\n" + SIG_PART + b"--BB--",
        b"no delimiter at all",
        b"--BB\r\nA: b\r\n\r\nx\r\n--BB\r\nContent-Type: text/plain\r\n\r\nMAA=\r\n--BB--",
        b"--BB\r\nA: b\r\n\r\nx\r\n--BB\r\n"
        b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"M@A=\r\n--BB--",
    ],
)
def test_split_signed_malformed(body: bytes) -> None:
    with pytest.raises(MalformedError):
        split_signed(multipart(body))


def test_split_signed_needs_boundary() -> None:
    with pytest.raises(MalformedError):
        split_signed(entity('multipart/signed; protocol="application/pkcs7-signature"', b"x"))
    with pytest.raises(MalformedError):
        split_signed(entity("text/plain", b"x"))


# --- writers ---------------------------------------------------------------------------------


def assert_crlf_lines(data: bytes, width: int = 998) -> None:
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= width for line in data.split(b"\r\n"))


def test_enveloped_and_opaque_writers() -> None:
    der = content_info(OID_ENVELOPED) + bytes(range(256)) * 4
    for auth, kind in ((False, "enveloped"), (True, "auth-enveloped")):
        out = enveloped_entity(der, auth=auth)
        assert_crlf_lines(out)
        parsed = parse_entity(out)
        assert classify(parsed) == kind
        assert parsed.file_name == "smime.p7m"
        assert pkcs7_der(parsed) == der
        lines = parsed.body.split(b"\r\n")
        assert max(len(line) for line in lines) == 76
        assert parsed.get("Content-Transfer-Encoding") == "base64"
    opaque = parse_entity(signed_opaque_entity(der))
    assert classify(opaque) == "signed-opaque"
    assert pkcs7_der(opaque) == der


@settings(max_examples=200, deadline=None)
@given(
    content=st.binary(max_size=600).map(canonical),
    signature_der=st.binary(min_size=1, max_size=300),
)
def test_signed_detached_round_trip(content: bytes, signature_der: bytes) -> None:
    out = signed_detached_entity(content, signature_der)
    assert_crlf_lines(out, width=10_000)
    top = parse_entity(out)
    assert classify(top) == "signed-detached"
    assert top.content_type[1]["micalg"] == "sha-256"
    assert top.content_type[1]["boundary"].encode() not in content
    assert split_signed(top) == (content, signature_der)


def test_signed_detached_refuses_non_canonical() -> None:
    for content in (b"A: b\n\nx", b"A: b\r\n\r\nx\ry"):
        with pytest.raises(MalformedError):
            signed_detached_entity(content, b"0")


@needs_openssl
@pytest.mark.interop
def test_writers_read_by_openssl(signer: tuple[certgen.Issued, Pem], tmp_path: Path) -> None:
    """What we write, openssl reads: a detached signature verifies, an envelope decrypts."""
    from gateway.smime.envelope import encrypt
    from gateway.smime.model import Identity
    from gateway.smime.signature import sign

    leaf, pem = signer
    identity = Identity(leaf.certificate, leaf.key)
    signed = signed_detached_entity(CONTENT, sign(CONTENT, identity, detached=True))
    message = prepend_headers(signed, [("MIME-Version", "1.0"), ("Subject", "test")])
    (tmp_path / "signed.eml").write_bytes(message)
    verified = run(
        OPENSSL,
        "smime",
        "-verify",
        "-in",
        tmp_path / "signed.eml",
        "-CAfile",
        pem.ca,
        "-purpose",
        "any",
    )
    assert verified == CONTENT

    enveloped = prepend_headers(
        enveloped_entity(encrypt(CONTENT, [leaf.certificate])), [("MIME-Version", "1.0")]
    )
    (tmp_path / "enc.eml").write_bytes(enveloped)
    decrypted = run(
        OPENSSL,
        "smime",
        "-decrypt",
        "-binary",
        "-in",
        tmp_path / "enc.eml",
        "-recip",
        pem.cert,
        "-inkey",
        pem.key,
    )
    assert decrypted == CONTENT


# --- prepend_headers -------------------------------------------------------------------------


def test_prepend_headers() -> None:
    base = enveloped_entity(content_info(OID_ENVELOPED))
    subject = "Compte rendu " + "x " * 60
    out = prepend_headers(
        base,
        [
            ("From", "Jean Dupont <jean.dupont@example.org>"),
            ("Subject", subject.strip()),
            ("MIME-Version", "1.0"),
        ],
    )
    assert out.endswith(base)
    assert_crlf_lines(out[: -len(base)], width=78)
    parsed = parse_entity(out)
    assert parsed.get("subject") == subject.strip()
    assert parsed.get("from") == "Jean Dupont <jean.dupont@example.org>"
    assert classify(parsed) == "enveloped"
    # A value that ends in spaces never leaves a whitespace-only line (an early end of headers).
    out = prepend_headers(base, [("X-Pad", "a" + " " * 200)])
    assert parse_entity(out).get("content-type") is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", "hello\r\nBcc: victim@example.org"),
        ("Subject", "hello\nX-Evil: 1"),
        ("Subject", "hello\r"),
        ("Subject", "hello\r\n\r\nbody"),
        ("Sub\r\nject", "x"),
        ("X-Evil\n", "x"),
        ("Bad Name", "x"),
        ("Bad:Name", "x"),
        ("", "x"),
        ("Subject", "caf\u00e9"),  # must be RFC 2047 encoded by the caller
        ("Subject", "nul\x00byte"),
        ("Content-Type", "text/plain"),  # already in the entity
    ],
)
def test_prepend_headers_refuses_injection(name: str, value: str) -> None:
    with pytest.raises(MalformedError):
        prepend_headers(enveloped_entity(b"0\x00"), [(name, value)])


def test_prepend_headers_refuses_duplicates_among_new() -> None:
    with pytest.raises(MalformedError):
        prepend_headers(b"\r\nbody", [("From", "a@b.c"), ("from", "d@e.f")])


# --- fuzz ------------------------------------------------------------------------------------


def exercise(raw: bytes) -> None:
    """Every reader on ``raw``: only GatewayError subclasses may come out."""
    try:
        parsed = parse_entity(raw, max_header_bytes=4096, max_headers=50)
    except GatewayError:
        return
    for call in (
        lambda: parsed.content_type,
        lambda: parsed.file_name,
        lambda: classify(parsed),
        lambda: split_signed(parsed),
        lambda: pkcs7_der(parsed),
    ):
        with contextlib.suppress(GatewayError):
            call()


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    exercise(raw)


_FRAGMENTS = [
    b"Content-Type: ",
    b"multipart/signed",
    b"application/pkcs7-mime",
    b"application/x-pkcs7-mime",
    b"application/octet-stream",
    b'; protocol="application/pkcs7-signature"',
    b"; boundary=",
    b"; smime-type=",
    b"; name=smime.p7m",
    b'"',
    b"BB",
    b"--BB",
    b"--BB--",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b";",
    b"(",
    b")",
    b"\\",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: binary",
    b"Content-Disposition: attachment; filename=x.p7c",
    b"MAA=",
    b"MIAGCSqGSIb3DQEHA6CAMAA=",
    b"0\x80\x06\x09*\x86H\x86\xf7\r\x01\x07\x02",
    b"\x06\x81",
    b"=",
]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map(b"".join))
def test_fuzz_structured(raw: bytes) -> None:
    exercise(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.data())
def test_fuzz_mutated_signed_message(data: st.DataObject) -> None:
    """Byte flips, cuts and insertions in a valid multipart/signed."""
    raw = bytearray(
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' boundary="BB"\r\n\r\n'
        + b"--BB\r\n"
        + CONTENT
        + b"\r\n--BB\r\n"
        + SIG_PART
        + b"--BB--\r\n"
    )
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 20))]
        else:
            raw[pos:pos] = data.draw(st.sampled_from(_FRAGMENTS))
        if not raw:
            break
    exercise(bytes(raw))


def test_scan_is_linear() -> None:
    """Hostile shapes stay cheap: a megabyte of near-delimiters, of ";" and of folded lines.

    No timing assertion: the work is bounded by construction; this shows it does not raise
    anything unexpected and terminates on inputs that would be quadratic for a naive scanner.
    """
    near = b"--BB" * 250_000
    with pytest.raises(MalformedError):
        split_signed(multipart(near))
    with pytest.raises(MalformedError):
        split_signed(multipart(b"\n--BB " + b" " * 1_000_000 + b"x"))
    with pytest.raises((MalformedError, LimitExceeded)):
        parse_params("text/plain" + ";" * 100_000 + "a=(" * 1000, media_type=True)
    folded = b"X: a" + b"\r\n b" * 60_000 + b"\r\n\r\n"
    assert len(parse_entity(folded).headers) == 1
    assert parse_entity(folded).headers[0][1] == "a" + " b" * 60_000


_LINE_BITS = st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" "])).map(b"".join)


@settings(max_examples=500)
@given(st.binary(max_size=64) | _LINE_BITS)
def test_line_ending_shortcuts_agree_with_the_regexes(data: bytes) -> None:
    """crlf/canonical skip the rewrite when the counts show nothing to do: same result."""
    import re

    from gateway.smime.mime import canonical, crlf

    assert crlf(data) == re.sub(rb"(?<!\r)\n", b"\r\n", data)
    assert canonical(data) == re.sub(rb"\r\n|\r|\n", b"\r\n", data)
