"""Algorithms of RFC 8419 (EdDSA signatures) and RFC 8418 (X25519/X448 key agreement) in CMS,
built as the RFCs describe them (OpenSSL 3.0 here writes neither): Ed25519 verifies, Ed448 and
X25519 are refused with a reason that names them (docs/algorithms.md lists what is accepted on
input and written on output)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509.oid import NameOID

from gateway.errors import (
    BadSignature,
    MalformedError,
    NotForGateway,
    UnsupportedAlgorithm,
    WeakAlgorithm,
)
from gateway.smime import certgen, envelope, signature
from gateway.smime.model import Identity
from gateway.smime.trust import TrustStore

NOW = dt.datetime.now(dt.UTC)
ADDRESS = "bio@labo59.apicrypt.org"
CONTENT = b"Content-Type: text/plain\r\n\r\nINR 2,2\r\n"
PEM = serialization.Encoding.PEM


def leaf_for(root: certgen.Issued, public_key: object, usage: str) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Labo")]))
        .issuer_name(root.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(ADDRESS)]), False)
        .add_extension(x509.KeyUsage(
            digital_signature=usage == "sign", content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=usage == "agree",
            key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            True)
    )
    return builder.sign(root.key, hashes.SHA256())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def root() -> certgen.Issued:
    return certgen.make_ca("EdDSA test root")


def eddsa_signed_data(cert: x509.Certificate, key: object, oid: str) -> bytes:
    """SignedData as RFC 8419 §3 describes it (OpenSSL 3.0 cannot write EdDSA in CMS): SHA-512
    message digest in the signed attributes, the signature over their DER, no parameters."""
    attrs = cms.CMSAttributes([
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [hashlib.sha512(CONTENT).digest()]},
    ])
    signer = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier("issuer_and_serial_number", {
            "issuer": asn1_x509.Name.load(cert.issuer.public_bytes()),
            "serial_number": cert.serial_number}),
        "digest_algorithm": {"algorithm": "sha512"},
        "signed_attrs": attrs,
        "signature_algorithm": {"algorithm": oid},
        "signature": key.sign(attrs.dump()),  # type: ignore[attr-defined]
    })
    signed = cms.SignedData({
        "version": "v1", "digest_algorithms": [{"algorithm": "sha512"}],
        "encap_content_info": {"content_type": "data", "content": CONTENT},
        "certificates": [asn1_x509.Certificate.load(cert.public_bytes(
            serialization.Encoding.DER))],
        "signer_infos": [signer],
    })
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def test_ed25519_signature_verifies(root: certgen.Issued) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = leaf_for(root, key.public_key(), "sign")
    der = eddsa_signed_data(cert, key, "1.3.101.112")
    verified = signature.verify(der, TrustStore(anchors=(root.certificate,)), NOW)
    assert verified.signer.signature_algorithm == "ed25519"
    assert verified.signer.digest_algorithm == "sha512"
    assert verified.content == CONTENT
    flipped = der.replace(b"INR 2,2", b"INR 9,9")
    with pytest.raises(BadSignature):
        signature.verify(flipped, TrustStore(anchors=(root.certificate,)), NOW)


def test_ed448_is_refused_by_name(root: certgen.Issued) -> None:
    key = ed448.Ed448PrivateKey.generate()
    cert = leaf_for(root, key.public_key(), "sign")
    der = eddsa_signed_data(cert, key, "1.3.101.113")
    with pytest.raises(WeakAlgorithm, match="Ed448"):
        signature.verify(der, TrustStore(anchors=(root.certificate,)), NOW)


def test_x25519_key_agreement_is_refused_by_name(root: certgen.Issued) -> None:
    """An EnvelopedData whose key agreement uses an X25519 originator key (RFC 8418): the
    gateway's own EC envelope with the originator key's algorithm made id-X25519."""
    recipient = certgen.make_leaf(root, "Labo", emails=[ADDRESS], key_kind="p256")
    der = envelope.encrypt(CONTENT, [recipient.certificate])
    info = cms.ContentInfo.load(der)
    kari = info["content"]["recipient_infos"][0].chosen
    kari["originator"].chosen["algorithm"] = {"algorithm": "1.3.101.110"}
    patched = info.dump(force=True)
    identity = Identity(certificate=recipient.certificate,
                        private_key=recipient.key)
    with pytest.raises(UnsupportedAlgorithm, match=r"X25519 key agreement \(RFC 8418\)"):
        envelope.decrypt(patched, [identity])


@pytest.mark.parametrize("key_kind", ["rsa2048", "p256"])
def test_auth_enveloped_data_written_and_opened_by_openssl(root: certgen.Issued,
                                                          key_kind: str, tmp_path: Path) -> None:
    """AES-256-GCM AuthEnvelopedData (RFC 5083/5084) as the gateway writes it toward a network
    configured for it: OpenSSL opens it, and so does the gateway; a flipped bit is refused."""
    leaf = certgen.make_leaf(root, "Labo", emails=[ADDRESS], key_kind=key_kind)
    der = envelope.encrypt(CONTENT, [leaf.certificate], gcm=True)
    (tmp_path / "recip.pem").write_bytes(leaf.certificate.public_bytes(PEM))
    (tmp_path / "recip.key").write_bytes(leaf.key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "enc.der").write_bytes(der)
    run = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                          str(tmp_path / "enc.der"), "-recip", str(tmp_path / "recip.pem"),
                          "-inkey", str(tmp_path / "recip.key")],
                         capture_output=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == CONTENT
    identity = Identity(certificate=leaf.certificate, private_key=leaf.key)
    content, layer = envelope.decrypt(der, [identity])
    assert content == CONTENT and layer.kind == "auth-enveloped"
    assert layer.detail["content_encryption"] == "aes256_gcm"
    tampered = der[:-40] + bytes([der[-40] ^ 1]) + der[-39:]
    # the tag fails: after an RSA key transport the reason stays the opaque one (no
    # Bleichenbacher oracle), after ECDH it says the content did not authenticate
    with pytest.raises((MalformedError, NotForGateway)):
        envelope.decrypt(tampered, [identity])
