"""CMS SignedData: verify what openssl signs, openssl accepts what we sign, typed refusals, fuzz.

Keys come from gateway.smime.certgen once per module; the PEMs openssl needs go to a temporary
directory (test-only: the gateway itself never writes a file).
"""

from __future__ import annotations

import datetime as dt
import email
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import (
    BadSignature,
    CertificateUsageError,
    ExpiredSigner,
    GatewayError,
    MalformedError,
    RevokedSigner,
    SignerCountError,
    UntrustedSigner,
    WeakAlgorithm,
)
from gateway.memo import Memo
from gateway.smime import certgen
from gateway.smime.model import Identity
from gateway.smime.signature import sign, verify
from gateway.smime.trust import TrustStore

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
NOW = dt.datetime.now(dt.UTC)

# A MIME entity with CRLF, a bare LF, 8-bit bytes and a NUL: hashed byte for byte.
CONTENT = (
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    b"R\xe9sultat d'analyse\r\nligne LF seule\nfin\x00\r\n"
) * 20


@dataclass(frozen=True)
class Party:
    issued: certgen.Issued
    cert_pem: Path
    key_pem: Path

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.certificate

    @property
    def identity(self) -> Identity:
        return Identity(self.issued.certificate, self.issued.key)


@dataclass(frozen=True)
class Pki:
    directory: Path
    content: Path
    root: Party
    inter: Party
    alice: Party
    ec: Party
    other_root: Party
    expired: Party
    server_auth: Party
    encrypt_only: Party
    subject_only: Party
    no_eku: Party

    @property
    def store(self) -> TrustStore:
        return TrustStore((self.root.cert,))


def _party(directory: Path, issued: certgen.Issued, name: str) -> Party:
    cert_pem = directory / f"{name}.pem"
    key_pem = directory / f"{name}.key"
    cert_pem.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return Party(issued, cert_pem, key_pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("signature-pki")
    content = d / "content.eml"
    content.write_bytes(CONTENT)
    old = NOW - dt.timedelta(days=400)
    root = certgen.make_ca("Sig Root", not_before=old - dt.timedelta(days=10))
    inter = certgen.make_ca("Sig Inter", issuer=root, not_before=old - dt.timedelta(days=5))

    def leaf(name: str, **kwargs: object) -> Party:
        issued = certgen.make_leaf(inter, name, emails=[f"{name}@example.test"], **kwargs)  # type: ignore[arg-type]
        return _party(d, issued, name)

    return Pki(
        directory=d,
        content=content,
        root=_party(d, root, "root"),
        inter=_party(d, inter, "inter"),
        alice=leaf("alice"),
        ec=leaf("ecc", key_kind="p256"),
        other_root=_party(d, certgen.make_ca("Other Root"), "other_root"),
        expired=leaf("expired", not_before=old, days=30),
        server_auth=leaf("server", eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        encrypt_only=leaf("encrypter", key_usage="encrypt"),
        subject_only=leaf("dn", san=False, email_in_subject=True),
        no_eku=leaf("noeku", eku=None),
    )


def openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *map(str, args)], input=stdin, capture_output=True,
                          check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def openssl_sign(pki: Pki, signer: Party, *options: str, tool: str = "cms",
                 certfile: bool = True, opaque: bool = False) -> bytes:
    """``openssl cms|smime -sign`` over CONTENT, DER out; ``options`` go after the key."""
    args: list[str | Path] = [tool, "-sign", "-binary", "-in", pki.content,
                              "-signer", signer.cert_pem, "-inkey", signer.key_pem, *options]
    if certfile:
        args += ["-certfile", pki.inter.cert_pem]
    if opaque:
        args.append("-nodetach")
    return openssl(*args, "-outform", "DER")


def openssl_verify(pki: Pki, der: bytes, *, detached: bool) -> bytes:
    path = pki.directory / "to-verify.der"
    path.write_bytes(der)
    args: list[str | Path] = ["cms", "-verify", "-inform", "DER", "-in", path, "-binary",
                              "-CAfile", pki.root.cert_pem, "-purpose", "smimesign"]
    if detached:
        args += ["-content", pki.content]
    return openssl(*args)


# --- what openssl signs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "opaque", "digest", "family"),
    [
        ((), False, "sha256", "rsassa_pkcs1v15"),
        ((), True, "sha256", "rsassa_pkcs1v15"),
        (("-md", "sha256"), False, "sha256", "rsassa_pkcs1v15"),
        (("-md", "sha384"), False, "sha384", "rsassa_pkcs1v15"),
        (("-md", "sha512"), True, "sha512", "rsassa_pkcs1v15"),
        (("-keyopt", "rsa_padding_mode:pss"), False, "sha256", "rsassa_pss"),
        (("-md", "sha512", "-keyopt", "rsa_padding_mode:pss", "-keyopt", "rsa_pss_saltlen:max"),
         True, "sha512", "rsassa_pss"),
        (("-noattr",), False, "sha256", "rsassa_pkcs1v15"),
        (("-noattr",), True, "sha256", "rsassa_pkcs1v15"),
        (("-stream",), True, "sha256", "rsassa_pkcs1v15"),
        (("-keyid",), False, "sha256", "rsassa_pkcs1v15"),
    ],
    ids=["detached", "opaque", "sha256", "sha384", "sha512-opaque", "pss", "pss-sha512-saltmax",
         "noattr", "noattr-opaque", "stream-opaque", "keyid"],
)
def test_verifies_openssl_cms(
    pki: Pki, options: tuple[str, ...], opaque: bool, digest: str, family: str
) -> None:
    der = openssl_sign(pki, pki.alice, *options, opaque=opaque)
    verified = verify(der, pki.store, NOW, detached_content=None if opaque else CONTENT)
    assert verified.content == CONTENT
    signer = verified.signer
    assert signer.certificate == pki.alice.cert
    assert signer.chain == (pki.alice.cert, pki.inter.cert, pki.root.cert)
    assert signer.addresses == {"alice@example.test"}
    assert signer.digest_algorithm == digest
    assert signer.signature_algorithm == family
    assert (signer.signing_time is None) == ("-noattr" in options)


@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
@pytest.mark.parametrize("md", ["sha256", "sha384"])
def test_verifies_openssl_ec_signer(pki: Pki, opaque: bool, md: str) -> None:
    der = openssl_sign(pki, pki.ec, "-md", md, opaque=opaque)
    verified = verify(der, pki.store, NOW, detached_content=None if opaque else CONTENT)
    assert verified.signer.signature_algorithm == "ecdsa"
    assert verified.signer.digest_algorithm == md
    assert verified.signer.addresses == {"ecc@example.test"}


def test_verifies_openssl_stream_detached(pki: Pki) -> None:
    # openssl writes a detached streamed signature only in its S/MIME output.
    out = openssl("cms", "-sign", "-binary", "-stream", "-in", pki.content,
                  "-signer", pki.alice.cert_pem, "-inkey", pki.alice.key_pem, "-outform", "SMIME")
    message = email.message_from_bytes(out)
    parts = message.get_payload()
    assert isinstance(parts, list)
    p7s = parts[1].get_payload(decode=True)  # type: ignore[union-attr]
    assert isinstance(p7s, bytes)
    assert verify(p7s, TrustStore((pki.inter.cert,)), NOW, detached_content=CONTENT).content \
        == CONTENT


def test_verifies_openssl_smime_sign(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, tool="smime")
    assert verify(der, pki.store, NOW, detached_content=CONTENT).content == CONTENT


def test_intermediate_only_in_the_store(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, certfile=False)
    with pytest.raises(UntrustedSigner):
        verify(der, pki.store, NOW, detached_content=CONTENT)
    store = TrustStore((pki.root.cert,), intermediates=(pki.inter.cert,))
    verified = verify(der, store, NOW, detached_content=CONTENT)
    assert verified.signer.chain == (pki.alice.cert, pki.inter.cert, pki.root.cert)


def test_sha1_digest_is_weak(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, "-md", "sha1")
    with pytest.raises(WeakAlgorithm):
        verify(der, pki.store, NOW, detached_content=CONTENT)


def test_subject_dn_address_and_no_eku_verify(pki: Pki) -> None:
    dn = verify(openssl_sign(pki, pki.subject_only), pki.store, NOW, detached_content=CONTENT)
    assert dn.signer.addresses == {"dn@example.test"}
    no_eku = verify(openssl_sign(pki, pki.no_eku), pki.store, NOW, detached_content=CONTENT)
    assert no_eku.signer.addresses == {"noeku@example.test"}


# --- what we sign ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "ec"])
@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_openssl_accepts_what_we_sign(pki: Pki, who: str, detached: bool) -> None:
    party: Party = getattr(pki, who)
    der = sign(CONTENT, party.identity, detached=detached, extra_certs=[pki.inter.cert])
    assert openssl_verify(pki, der, detached=detached) == CONTENT
    verified = verify(der, pki.store, NOW, detached_content=CONTENT if detached else None)
    assert verified.content == CONTENT
    assert verified.signer.digest_algorithm == "sha256"
    assert verified.signer.signing_time is not None
    assert verified.signer.signature_algorithm == ("ecdsa" if who == "ec" else "rsassa_pkcs1v15")


def test_what_we_sign_has_the_expected_shape(pki: Pki) -> None:
    der = sign(CONTENT, pki.alice.identity, extra_certs=[pki.inter.cert])
    signed_data = asn1_cms.ContentInfo.load(der)["content"]
    assert signed_data["encap_content_info"]["content"].native is None  # detached
    certs = {c.chosen.dump() for c in signed_data["certificates"]}
    assert certs == {pki.alice.cert.public_bytes(serialization.Encoding.DER),
                     pki.inter.cert.public_bytes(serialization.Encoding.DER)}
    (signer_info,) = signed_data["signer_infos"]
    kinds = {a["type"].native for a in signer_info["signed_attrs"]}
    assert {"content_type", "signing_time", "message_digest", "smime_capabilities"} <= kinds
    opaque = sign(CONTENT, pki.alice.identity, detached=False)
    encap = asn1_cms.ContentInfo.load(opaque)["content"]["encap_content_info"]
    assert encap["content"].native == CONTENT  # bare LF kept: no CRLF rewriting


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(content=st.binary(max_size=2000), detached=st.booleans())
def test_sign_verify_round_trip(pki: Pki, content: bytes, detached: bool) -> None:
    der = sign(content, pki.ec.identity, detached=detached, extra_certs=[pki.inter.cert])
    verified = verify(der, pki.store, NOW, detached_content=content if detached else None)
    assert verified.content == content
    assert verified.signer.certificate == pki.ec.cert


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


def test_undecodable_extra_signed_attribute_is_tolerated(pki: Pki) -> None:
    # Outlook adds encrypKeyPref as [0] IMPLICIT IssuerAndSerialNumber, which asn1crypto's
    # definition does not accept: it is signed like the rest and must not break verification.
    der = sign(CONTENT, pki.alice.identity, extra_certs=[pki.inter.cert])
    info = asn1_cms.ContentInfo.load(der)
    signer_info = info["content"]["signer_infos"][0]
    sid = signer_info["sid"].chosen
    oid = core.ObjectIdentifier("1.2.840.113549.1.9.16.2.11").dump()
    odd = _tlv(0x30, oid + _tlv(0x31, _tlv(0xA0, sid["issuer"].dump()
                                               + sid["serial_number"].dump())))
    members = sorted([a.dump() for a in signer_info["signed_attrs"]] + [odd])
    attrs_set = _tlv(0x31, b"".join(members))
    key = pki.alice.issued.key
    assert isinstance(key, rsa.RSAPrivateKey)
    signer_info["signed_attrs"] = asn1_cms.CMSAttributes.load(attrs_set)
    signer_info["signature"] = key.sign(attrs_set, padding.PKCS1v15(), hashes.SHA256())
    mutated = info.dump()
    assert verify(mutated, pki.store, NOW, detached_content=CONTENT).content == CONTENT
    with pytest.raises(BadSignature):
        verify(mutated, pki.store, NOW, detached_content=CONTENT + b"x")


# --- refusals --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detached_sig(pki: Pki) -> bytes:
    return sign(CONTENT, pki.alice.identity, extra_certs=[pki.inter.cert])


@pytest.fixture(scope="module")
def opaque_sig(pki: Pki) -> bytes:
    return sign(CONTENT, pki.alice.identity, detached=False, extra_certs=[pki.inter.cert])


def test_tampered_content(pki: Pki, detached_sig: bytes, opaque_sig: bytes) -> None:
    with pytest.raises(BadSignature):
        verify(detached_sig, pki.store, NOW, detached_content=CONTENT + b"\r\n")
    with pytest.raises(BadSignature):
        verify(detached_sig, pki.store, NOW, detached_content=CONTENT.replace(b"\r\n", b"\n"))
    flipped = opaque_sig.replace(b"R\xe9sultat", b"R\xe9SULTAT", 1)
    assert flipped != opaque_sig
    with pytest.raises(BadSignature):
        verify(flipped, pki.store, NOW)


def test_tampered_content_without_signed_attributes(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, "-noattr")
    with pytest.raises(BadSignature):
        verify(der, pki.store, NOW, detached_content=CONTENT[:-1])


def _mutate_signer_info(der: bytes, change: str) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    signer_info = info["content"]["signer_infos"][0]
    if change == "signing_time":
        attrs = signer_info["signed_attrs"]
        for attribute in attrs:
            if attribute["type"].native == "signing_time":
                attribute["values"] = [
                    asn1_cms.Time({"utc_time": dt.datetime(2001, 1, 1, tzinfo=dt.UTC)})]
        signer_info["signed_attrs"] = asn1_cms.CMSAttributes(list(attrs))
    elif change == "signature":
        value = bytearray(signer_info["signature"].native)
        value[10] ^= 1
        signer_info["signature"] = bytes(value)
    elif change == "content_type":
        attrs = signer_info["signed_attrs"]
        for attribute in attrs:
            if attribute["type"].native == "content_type":
                attribute["values"] = ["signed_data"]
        signer_info["signed_attrs"] = asn1_cms.CMSAttributes(list(attrs))
    elif change == "no_digest":
        kept = [a for a in signer_info["signed_attrs"] if a["type"].native != "message_digest"]
        signer_info["signed_attrs"] = asn1_cms.CMSAttributes(kept)
    mutated: bytes = info.dump(force=True)
    return mutated


@pytest.mark.parametrize("change", ["signing_time", "signature", "content_type", "no_digest"])
def test_tampered_signer_info(pki: Pki, detached_sig: bytes, change: str) -> None:
    with pytest.raises(BadSignature):
        verify(_mutate_signer_info(detached_sig, change), pki.store, NOW,
               detached_content=CONTENT)


def test_wrong_anchor(pki: Pki, detached_sig: bytes) -> None:
    with pytest.raises(UntrustedSigner):
        verify(detached_sig, TrustStore((pki.other_root.cert,)), NOW, detached_content=CONTENT)


def test_signer_certificate_missing(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, "-nocerts", certfile=False)
    with pytest.raises(UntrustedSigner):
        verify(der, pki.store, NOW, detached_content=CONTENT)


def test_revoked_signer(pki: Pki, detached_sig: bytes) -> None:
    crl = certgen.make_crl(pki.inter.issued, [pki.alice.cert.serial_number])
    store = TrustStore((pki.root.cert,), crls=(crl,))
    with pytest.raises(RevokedSigner):
        verify(detached_sig, store, NOW, detached_content=CONTENT)


def test_expired_and_not_yet_valid_signer(pki: Pki) -> None:
    der = sign(CONTENT, pki.expired.identity, extra_certs=[pki.inter.cert])
    cert = pki.expired.cert
    inside = cert.not_valid_before_utc + dt.timedelta(days=2)
    assert verify(der, pki.store, inside, detached_content=CONTENT).content == CONTENT
    for outside in (NOW, cert.not_valid_before_utc - dt.timedelta(hours=1)):
        with pytest.raises(ExpiredSigner):
            verify(der, pki.store, outside, detached_content=CONTENT)


@pytest.mark.parametrize("who", ["server_auth", "encrypt_only"])
def test_certificate_usage(pki: Pki, who: str) -> None:
    party: Party = getattr(pki, who)
    der = sign(CONTENT, party.identity, extra_certs=[pki.inter.cert])
    with pytest.raises(CertificateUsageError):
        verify(der, pki.store, NOW, detached_content=CONTENT)


def test_two_signer_infos(pki: Pki) -> None:
    der = openssl_sign(pki, pki.alice, "-signer", str(pki.ec.cert_pem),
                       "-inkey", str(pki.ec.key_pem))
    with pytest.raises(SignerCountError):
        verify(der, pki.store, NOW, detached_content=CONTENT)


def test_no_signer_infos(pki: Pki, detached_sig: bytes) -> None:
    info = asn1_cms.ContentInfo.load(detached_sig)
    info["content"]["signer_infos"] = []
    with pytest.raises(SignerCountError):
        verify(info.dump(force=True), pki.store, NOW, detached_content=CONTENT)


def test_econtent_confusion(pki: Pki, opaque_sig: bytes, detached_sig: bytes) -> None:
    with pytest.raises(MalformedError, match="eContent confusion"):
        verify(opaque_sig, pki.store, NOW, detached_content=CONTENT)
    with pytest.raises(MalformedError):
        verify(detached_sig, pki.store, NOW)  # detached, content not given


def test_other_cms_types_are_malformed(pki: Pki) -> None:
    data = asn1_cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(MalformedError):
        verify(data, pki.store, NOW)


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 100, -1, -50])
def test_truncated(pki: Pki, detached_sig: bytes, cut: int) -> None:
    with pytest.raises(MalformedError):
        verify(detached_sig[:cut], pki.store, NOW, detached_content=CONTENT)


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"garbage", b"\x30\x80", b"\x30\x03\x06\x01\x00",
                                     b"MAsGCSqGSIb3DQEHAg=="])
def test_garbage(pki: Pki, garbage: bytes) -> None:
    with pytest.raises(MalformedError):
        verify(garbage, pki.store, NOW, detached_content=CONTENT)


def test_trailing_bytes_are_malformed(pki: Pki, detached_sig: bytes) -> None:
    with pytest.raises(MalformedError):
        verify(detached_sig + b"\x00", pki.store, NOW, detached_content=CONTENT)


def test_absent_signed_data_content(pki: Pki) -> None:
    # Johnny's crash case: a ContentInfo that says SignedData and carries nothing.
    with pytest.raises(MalformedError):
        verify(bytes.fromhex("300b06092a864886f70d010702"), pki.store, NOW,
               detached_content=CONTENT)


# --- fuzz ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes(pki: Pki, data: bytes) -> None:
    with pytest.raises(GatewayError):
        verify(data, pki.store, NOW, detached_content=CONTENT)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    which=st.sampled_from(["detached", "opaque"]),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from(["flip", "drop", "insert", "cut"]),
                  st.integers(min_value=0, max_value=255)),
        min_size=1, max_size=4,
    ),
)
def test_fuzz_mutated_signatures(
    pki: Pki, detached_sig: bytes, opaque_sig: bytes, which: str,
    edits: list[tuple[int, str, int]],
) -> None:
    data = bytearray(detached_sig if which == "detached" else opaque_sig)
    for position, kind, value in edits:
        if not data:
            break
        i = position % len(data)
        if kind == "flip":
            data[i] ^= value or 1
        elif kind == "drop":
            del data[i]
        elif kind == "insert":
            data.insert(i, value)
        else:
            del data[i:]
    try:
        verified = verify(bytes(data), pki.store, NOW,
                          detached_content=CONTENT if which == "detached" else None)
    except GatewayError:
        return
    # A mutation that still verifies can only have touched unsigned bytes.
    assert verified.content == CONTENT
    assert verified.signer.certificate == pki.alice.cert


# --- the certificate cache and the signer lookup -----------------------------------------------


def _with_sid_issuer(der: bytes, issuer: object) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    signer_info = info["content"]["signer_infos"][0]
    sid = signer_info["sid"].chosen
    signer_info["sid"] = asn1_cms.SignerIdentifier(
        name="issuer_and_serial_number",
        value={"issuer": issuer, "serial_number": sid["serial_number"].native})
    return bytes(info.dump(force=True))


def test_signer_found_when_the_issuer_is_encoded_differently(pki: Pki) -> None:
    """The sid's issuer in PrintableString still names the UTF8String issuer (RFC 5280)."""
    from asn1crypto import x509 as asn1_x509

    der = sign(CONTENT, pki.alice.identity, extra_certs=[pki.inter.cert])
    issuer = asn1_x509.Name.load(pki.alice.cert.issuer.public_bytes())
    printable = asn1_x509.Name.build(issuer.native, use_printable=True)
    assert printable.dump() != issuer.dump() and printable == issuer
    verified = verify(_with_sid_issuer(der, printable), pki.store, NOW, detached_content=CONTENT)
    assert verified.signer.certificate == pki.alice.cert
    with pytest.raises(UntrustedSigner):
        verify(_with_sid_issuer(der, asn1_x509.Name.build({"common_name": "Sig Inter 2"})),
               pki.store, NOW, detached_content=CONTENT)


def test_certificate_cache_is_exact_and_bounded(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.smime import signature

    monkeypatch.setattr(signature, "_certificates", Memo(2))
    signers = [pki.alice, pki.ec, pki.subject_only, pki.no_eku]
    for party in signers * 2:
        der = sign(CONTENT, party.identity, extra_certs=[pki.inter.cert])
        verified = verify(der, pki.store, NOW, detached_content=CONTENT)
        assert verified.signer.certificate == party.cert
        assert verified.signer.chain == (party.cert, pki.inter.cert, pki.root.cert)
        assert len(signature._certificates) <= 2
    monkeypatch.setattr(signature, "_CERT_CACHE_MAX_BYTES", 100)
    monkeypatch.setattr(signature, "_certificates", Memo(2))
    der = sign(CONTENT, pki.alice.identity, extra_certs=[pki.inter.cert])
    assert verify(der, pki.store, NOW, detached_content=CONTENT).signer.certificate \
        == pki.alice.cert
    assert len(signature._certificates) == 0  # larger than the bound: not kept
