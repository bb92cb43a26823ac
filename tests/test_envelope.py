"""CMS EnvelopedData / AuthEnvelopedData: interop with the openssl CLI both ways, refusals, fuzz.

Keys come from gateway.smime.certgen once per module; the PEMs openssl needs go to a temporary
directory (test-only: the gateway itself never writes a file).
"""

from __future__ import annotations

import base64
import datetime
import email
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import (
    GatewayError,
    MalformedError,
    NotEncrypted,
    NotForGateway,
    RecipientCertificateError,
    UnsupportedAlgorithm,
)
from gateway.memo import Memo
from gateway.smime import certgen
from gateway.smime.envelope import decrypt, encrypt
from gateway.smime.model import Identity

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
# Module-scoped fixtures (keys) are fine to share between hypothesis examples.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]

# A MIME entity with CRLF, a bare LF, 8-bit bytes and a NUL: it must come back byte for byte.
PAYLOAD = (
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
    def identity(self) -> Identity:
        return Identity(self.issued.certificate, self.issued.key)

    @property
    def certificate(self) -> x509.Certificate:
        return self.issued.certificate


@dataclass(frozen=True)
class Pki:
    directory: Path
    gateway: Party
    other: Party  # someone who is not the gateway
    third: Party
    ec: Party  # an EC (P-256) identity: opens key agreement (kari), not key transport
    ec384: Party


def _party(directory: Path, ca: certgen.Issued, name: str, key_kind: str = "rsa2048") -> Party:
    issued = certgen.make_leaf(ca, name, emails=[f"{name}@example.test"], key_kind=key_kind)
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
    directory = tmp_path_factory.mktemp("envelope-pki")
    ca = certgen.make_ca("Envelope test CA")
    return Pki(
        directory=directory,
        gateway=_party(directory, ca, "gateway"),
        other=_party(directory, ca, "other"),
        third=_party(directory, ca, "third"),
        ec=_party(directory, ca, "ecgw", key_kind="p256"),
        ec384=_party(directory, ca, "ec384", key_kind="p384"),
    )


@pytest.fixture(scope="module")
def payload_file(pki: Pki) -> Path:
    path = pki.directory / "payload.eml"
    path.write_bytes(PAYLOAD)
    return path


def _run(args: list[str], stdin: bytes | None = None) -> bytes:
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, *args], input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def openssl_encrypt(
    payload_file: Path, recipients: list[Party], *options: str, tool: str = "cms"
) -> bytes:
    """What ``openssl cms|smime -encrypt`` writes (DER unless options say otherwise)."""
    outform = [] if any(o == "-outform" for o in options) else ["-outform", "DER"]
    recips: list[str] = []
    if tool == "cms":
        for party in recipients:
            recips += ["-recip", str(party.cert_pem)]
    else:
        recips = [str(party.cert_pem) for party in recipients]
    return _run([tool, "-encrypt", "-binary", "-in", str(payload_file),
                 *outform, *options, *recips])


def pem_to_der(pem: bytes) -> bytes:
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))


def smime_to_der(smime: bytes) -> bytes:
    message = email.message_from_bytes(smime)
    assert message.get_content_type() in ("application/pkcs7-mime", "application/x-pkcs7-mime")
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    return body


# --- decrypt what openssl writes -------------------------------------------------------------

CONTENT_VARIANTS = [
    (["-aes128"], "enveloped", "aes128_cbc"),
    (["-aes192"], "enveloped", "aes192_cbc"),
    (["-aes256"], "enveloped", "aes256_cbc"),
    (["-aes-128-cbc"], "enveloped", "aes128_cbc"),
    (["-aes-128-gcm"], "auth-enveloped", "aes128_gcm"),
    (["-aes-192-gcm"], "auth-enveloped", "aes192_gcm"),
    (["-aes-256-gcm"], "auth-enveloped", "aes256_gcm"),
]


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize(("options", "kind", "algorithm"), CONTENT_VARIANTS)
def test_decrypts_openssl_content_algorithms(
    pki: Pki, payload_file: Path, options: list[str], kind: str, algorithm: str
) -> None:
    der = openssl_encrypt(payload_file, [pki.gateway], *options)
    content, layer = decrypt(der, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.kind == kind
    assert layer.detail == {
        "key_transport": "rsaes_pkcs1v15",
        "content_encryption": algorithm,
        "recipient": "issuer-serial",
        "recipients": "1",
    }


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize(
    ("options", "oaep_hash"),
    [
        (["-keyopt", "rsa_padding_mode:oaep"], "sha1"),
        (["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"], "sha256"),
        (["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha512",
          "-keyopt", "rsa_mgf1_md:sha256"], "sha512"),
    ],
)
@pytest.mark.parametrize("cipher", ["-aes256", "-aes-256-gcm"])
def test_decrypts_openssl_rsa_oaep(
    pki: Pki, payload_file: Path, options: list[str], oaep_hash: str, cipher: str
) -> None:
    # -keyopt applies to the -recip before it, so the recipient goes first here.
    der = _run(["cms", "-encrypt", "-binary", "-in", str(payload_file), "-outform", "DER",
                cipher, "-recip", str(pki.gateway.cert_pem), *options])
    content, layer = decrypt(der, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.detail["key_transport"] == "rsaes_oaep"
    assert layer.detail["oaep_hash"] == oaep_hash


@needs_openssl
@pytest.mark.interop
def test_decrypts_subject_key_identifier_recipient(pki: Pki, payload_file: Path) -> None:
    der = openssl_encrypt(payload_file, [pki.gateway], "-aes256", "-keyid")
    content, layer = decrypt(der, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.detail["recipient"] == "ski"
    assert layer.kind == "enveloped"


@needs_openssl
@pytest.mark.interop
def test_decrypts_pem_and_smime_output_once_unarmoured(pki: Pki, payload_file: Path) -> None:
    pem = openssl_encrypt(payload_file, [pki.gateway], "-aes256", "-outform", "PEM")
    assert pem.startswith(b"-----BEGIN CMS-----")
    assert decrypt(pem_to_der(pem), [pki.gateway.identity])[0] == PAYLOAD
    smime = openssl_encrypt(payload_file, [pki.gateway], "-aes256", "-outform", "SMIME")
    assert decrypt(smime_to_der(smime), [pki.gateway.identity])[0] == PAYLOAD


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize("cipher", ["-aes256", "-aes-128-gcm"])
@pytest.mark.parametrize("outform", ["DER", "SMIME"])
def test_decrypts_streamed_ber_indefinite_length(
    pki: Pki, payload_file: Path, cipher: str, outform: str
) -> None:
    out = openssl_encrypt(payload_file, [pki.gateway], cipher, "-stream", "-outform", outform)
    ber = out if outform == "DER" else smime_to_der(out)
    # Really BER: the outer SEQUENCE has an indefinite length and ends with end-of-contents.
    assert ber[0] == 0x30
    assert ber[1] == 0x80
    assert ber.endswith(b"\x00\x00")
    content, layer = decrypt(ber, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.kind == ("enveloped" if cipher == "-aes256" else "auth-enveloped")


@needs_openssl
@pytest.mark.interop
def test_decrypts_old_openssl_smime_tool(pki: Pki, payload_file: Path) -> None:
    der = openssl_encrypt(payload_file, [pki.gateway], "-aes256", tool="smime")
    content, layer = decrypt(der, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.detail["content_encryption"] == "aes256_cbc"


@needs_openssl
@pytest.mark.interop
def test_refuses_3des(pki: Pki, payload_file: Path) -> None:
    der = openssl_encrypt(payload_file, [pki.gateway], "-des3")
    with pytest.raises(UnsupportedAlgorithm) as caught:
        decrypt(der, [pki.gateway.identity])
    assert str(caught.value) == "3DES content encryption refused"
    assert caught.value.reply.code == 550


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize("keyid", [False, True])
def test_gateway_as_second_of_several_recipients(
    pki: Pki, payload_file: Path, keyid: bool
) -> None:
    options = ["-aes256", *(["-keyid"] if keyid else [])]
    der = openssl_encrypt(payload_file, [pki.other, pki.gateway, pki.third], *options)
    # The EC identity listed first can open nothing here and must not get in the way.
    content, layer = decrypt(der, [pki.ec.identity, pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.detail["recipients"] == "3"
    assert layer.detail["recipient"] == ("ski" if keyid else "issuer-serial")


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize("options", [["-aes256"], ["-aes256", "-keyid"], ["-aes-256-gcm"]])
def test_encrypted_for_someone_else(pki: Pki, payload_file: Path, options: list[str]) -> None:
    der = openssl_encrypt(payload_file, [pki.other, pki.third], *options)
    with pytest.raises(NotForGateway):
        decrypt(der, [pki.gateway.identity, pki.ec.identity])
    with pytest.raises(NotForGateway):
        decrypt(der, [])


@needs_openssl
@pytest.mark.interop
def test_tampered_gcm_tag_never_yields_plaintext(pki: Pki, payload_file: Path) -> None:
    der = openssl_encrypt(payload_file, [pki.gateway], "-aes-256-gcm")
    info = asn1_cms.ContentInfo.load(der)
    mac = info["content"]["mac"].native
    assert der.endswith(mac)  # the tag is the last field openssl writes
    tampered = der[:-1] + bytes([der[-1] ^ 0x01])
    # Key transport is PKCS#1 v1.5: the failure must look like any other key failure.
    with pytest.raises(NotForGateway) as caught:
        decrypt(tampered, [pki.gateway.identity])
    assert str(caught.value) == "the message key could not be recovered with the gateway's key"

    oaep = _run(["cms", "-encrypt", "-binary", "-in", str(payload_file), "-outform", "DER",
                 "-aes-256-gcm", "-recip", str(pki.gateway.cert_pem),
                 "-keyopt", "rsa_padding_mode:oaep"])
    tampered = oaep[:-1] + bytes([oaep[-1] ^ 0x80])
    with pytest.raises(MalformedError):
        decrypt(tampered, [pki.gateway.identity])


# --- what encrypt() writes, opened by openssl ------------------------------------------------


@needs_openssl
@pytest.mark.interop
def test_openssl_cms_decrypts_encrypt_output(pki: Pki) -> None:
    der = encrypt(PAYLOAD, [pki.other.certificate])
    path = pki.directory / "one.der"
    path.write_bytes(der)
    out = _run(["cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(path),
                "-recip", str(pki.other.cert_pem), "-inkey", str(pki.other.key_pem)])
    assert out == PAYLOAD
    out = _run(["smime", "-decrypt", "-binary", "-inform", "DER", "-in", str(path),
                "-recip", str(pki.other.cert_pem), "-inkey", str(pki.other.key_pem)])
    assert out == PAYLOAD


@needs_openssl
@pytest.mark.interop
def test_openssl_decrypts_encrypt_output_for_each_of_several_recipients(pki: Pki) -> None:
    parties = [pki.other, pki.third, pki.gateway]
    der = encrypt(PAYLOAD, [party.certificate for party in parties])
    path = pki.directory / "several.der"
    path.write_bytes(der)
    for party in parties:
        for tool in ("cms", "smime"):
            out = _run([tool, "-decrypt", "-binary", "-inform", "DER", "-in", str(path),
                        "-recip", str(party.cert_pem), "-inkey", str(party.key_pem)])
            assert out == PAYLOAD
    # openssl's own view of the structure: AES-256-CBC, RSA v1.5, issuer and serial.
    dump = _run(["cms", "-cmsout", "-print", "-inform", "DER", "-in", str(path)]).decode()
    assert dump.count("issuerAndSerialNumber") == 3
    assert "aes-256-cbc" in dump
    assert "rsaEncryption" in dump


def test_encrypt_is_der_enveloped_data(pki: Pki) -> None:
    der = encrypt(b"x", [pki.other.certificate])
    info = asn1_cms.ContentInfo.load(der, strict=True)
    assert info.dump(force=True) == der  # already DER
    assert info["content_type"].native == "enveloped_data"
    enveloped = info["content"]
    assert enveloped["version"].native == "v0"
    algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == "aes256_cbc"
    assert len(algorithm["parameters"].native) == 16
    (recipient,) = list(enveloped["recipient_infos"])
    assert recipient.name == "ktri"
    assert recipient.chosen["key_encryption_algorithm"]["algorithm"].native == "rsaes_pkcs1v15"
    assert recipient.chosen["rid"].chosen["serial_number"].native == (
        pki.other.certificate.serial_number
    )


def test_encrypt_uses_fresh_key_and_iv(pki: Pki) -> None:
    one = encrypt(PAYLOAD, [pki.gateway.certificate])
    two = encrypt(PAYLOAD, [pki.gateway.certificate])
    assert one != two
    assert decrypt(one, [pki.gateway.identity])[0] == decrypt(two, [pki.gateway.identity])[0]


def _ed25519_certificate() -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed25519")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )


def test_encrypt_refuses_unusable_recipient_certificates(pki: Pki) -> None:
    with pytest.raises(RecipientCertificateError):
        encrypt(PAYLOAD, [pki.gateway.certificate, _ed25519_certificate()])
    with pytest.raises(RecipientCertificateError):
        encrypt(PAYLOAD, [])
    ca = certgen.make_ca("Sign-only CA")
    for kind in ("rsa2048", "p256"):
        sign_only = certgen.make_leaf(ca, "signer", key_usage="sign", key_kind=kind)
        with pytest.raises(RecipientCertificateError):
            encrypt(PAYLOAD, [sign_only.certificate])


@settings(max_examples=50, deadline=None, suppress_health_check=FIXTURE_OK)
@given(content=st.binary(max_size=3000))
def test_round_trip(pki: Pki, content: bytes) -> None:
    der = encrypt(content, [pki.other.certificate, pki.gateway.certificate, pki.ec.certificate])
    assert decrypt(der, [pki.ec.identity])[0] == content
    opened, layer = decrypt(der, [pki.gateway.identity])
    assert opened == content
    assert layer.detail == {
        "key_transport": "rsaes_pkcs1v15",
        "content_encryption": "aes256_cbc",
        "recipient": "issuer-serial",
        "recipients": "3",
    }


# --- EC identities: RFC 5753 ephemeral-static ECDH (KeyAgreeRecipientInfo) -----------------


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize(
    ("options", "detail"),
    [
        (["-aes256"],
         {"kdf_hash": "sha1", "key_wrap": "aes256_wrap", "recipient": "issuer-serial"}),
        (["-aes128", "-keyopt", "ecdh_kdf_md:sha256"],
         {"kdf_hash": "sha256", "key_wrap": "aes128_wrap", "recipient": "issuer-serial"}),
        (["-aes-256-gcm", "-keyid", "-keyopt", "ecdh_kdf_md:sha384",
          "-keyopt", "ecdh_cofactor_mode:1"],
         {"kdf_hash": "sha384", "key_wrap": "aes256_wrap", "recipient": "ski"}),
        (["-aes256", "-wrap", "aes128-wrap", "-keyopt", "ecdh_kdf_md:sha512"],
         {"kdf_hash": "sha512", "key_wrap": "aes128_wrap", "recipient": "issuer-serial"}),
    ],
)
@pytest.mark.parametrize("curve", ["p256", "p384"])
def test_decrypts_openssl_key_agreement(
    pki: Pki, payload_file: Path, options: list[str], detail: dict[str, str], curve: str
) -> None:
    party = pki.ec if curve == "p256" else pki.ec384
    # The gateway is one of three recipients, one RSA and two EC.
    others = [pki.other, pki.ec384 if curve == "p256" else pki.ec]
    recips: list[str] = []
    for recipient in [*others, party]:
        recips += ["-recip", str(recipient.cert_pem)]
        if recipient is party:
            recips += [o for o in options if o.startswith("ecdh_") or o == "-keyopt"]
    plain = [o for o in options if o != "-keyopt" and not o.startswith("ecdh_")]
    der = _run(["cms", "-encrypt", "-binary", "-in", str(payload_file), "-outform", "DER",
                *plain, *recips])
    content, layer = decrypt(der, [pki.gateway.identity, party.identity])
    assert content == PAYLOAD
    assert layer.detail["key_transport"] == "ecdh"
    assert layer.detail["recipients"] == "3"
    assert {key: layer.detail[key] for key in detail} == detail


@needs_openssl
@pytest.mark.interop
def test_openssl_decrypts_encrypt_output_for_mixed_rsa_and_ec(pki: Pki) -> None:
    parties = [pki.other, pki.ec, pki.ec384]
    der = encrypt(PAYLOAD, [party.certificate for party in parties])
    assert asn1_cms.ContentInfo.load(der)["content"]["version"].native == "v2"
    path = pki.directory / "mixed.der"
    path.write_bytes(der)
    for party in parties:
        out = _run(["cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(path),
                    "-recip", str(party.cert_pem), "-inkey", str(party.key_pem)])
        assert out == PAYLOAD
        content, layer = decrypt(der, [party.identity])
        assert content == PAYLOAD
        assert layer.detail["key_transport"] == ("ecdh" if party is not pki.other
                                                 else "rsaes_pkcs1v15")


def test_key_agreement_for_another_key_or_tampered(pki: Pki) -> None:
    der = encrypt(PAYLOAD, [pki.ec.certificate])
    # Same certificate, another private key: the unwrap's integrity check fails.
    impostor = Identity(pki.ec.certificate, certgen.new_key("p256"))
    with pytest.raises(NotForGateway):
        decrypt(der, [impostor])
    # An RSA identity never matches a kari, an EC one never a ktri.
    with pytest.raises(NotForGateway):
        decrypt(der, [pki.gateway.identity])
    with pytest.raises(NotForGateway):
        decrypt(encrypt(PAYLOAD, [pki.gateway.certificate]), [pki.ec.identity])
    # The P-384 identity with the P-256 certificate's name: another curve.
    wrong_curve = Identity(pki.ec.certificate, pki.ec384.issued.key)
    with pytest.raises(GatewayError):
        decrypt(der, [wrong_curve])


# --- structures built by hand: authAttrs, refused algorithms, the v1.5 oracle ----------------


def _rewrite(der: bytes, change: Callable[[asn1_cms.EnvelopedData], None]) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    enveloped = info["content"]
    change(enveloped)
    rebuilt = asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped})
    result: bytes = rebuilt.dump(force=True)
    return result


@pytest.mark.parametrize(
    ("algorithm", "parameters", "reason"),
    [
        ("rc2", algos.Rc2Params({"rc2_parameter_version": 58, "iv": b"\x00" * 8}), "RC2"),
        ("des", core.OctetString(b"\x00" * 8), "DES"),
        ("aes256_ofb", core.OctetString(b"\x00" * 16), "aes256_ofb"),
        ("aes256_gcm", None, "aes256_gcm"),  # GCM outside AuthEnvelopedData
        ("1.2.3.4.5", None, "1.2.3.4.5"),
    ],
)
def test_refuses_other_content_algorithms(
    pki: Pki, algorithm: str, parameters: object, reason: str
) -> None:
    def change(enveloped: asn1_cms.EnvelopedData) -> None:
        spec = {"algorithm": algorithm}
        if parameters is not None:
            spec["parameters"] = parameters  # type: ignore[assignment]
        eci = enveloped["encrypted_content_info"]
        eci["content_encryption_algorithm"] = algos.EncryptionAlgorithm(spec)

    der = _rewrite(encrypt(PAYLOAD, [pki.gateway.certificate]), change)
    with pytest.raises(UnsupportedAlgorithm) as caught:
        decrypt(der, [pki.gateway.identity])
    assert reason in str(caught.value)


def _replace_ktri(enveloped: asn1_cms.EnvelopedData, field: str, value: object) -> None:
    """Swap one field of the first KeyTransRecipientInfo (a Choice does not see edits inside)."""
    ktri = enveloped["recipient_infos"][0].chosen
    fields = {name: ktri[name] for name in ("version", "rid", "key_encryption_algorithm",
                                            "encrypted_key")}
    fields[field] = value
    enveloped["recipient_infos"] = [asn1_cms.RecipientInfo(name="ktri", value=fields)]


def test_refuses_unknown_key_transport(pki: Pki) -> None:
    def change(enveloped: asn1_cms.EnvelopedData) -> None:
        _replace_ktri(enveloped, "key_encryption_algorithm", {"algorithm": "1.2.840.113549.1.1.99"})

    der = _rewrite(encrypt(PAYLOAD, [pki.gateway.certificate]), change)
    with pytest.raises(UnsupportedAlgorithm):
        decrypt(der, [pki.gateway.identity])


def _auth_enveloped(
    recipient: x509.Certificate, content: bytes, attrs: asn1_cms.CMSAttributes | None
) -> tuple[bytes, asn1_cms.AuthEnvelopedData]:
    """An AuthEnvelopedData with authAttrs, as RFC 5083 writes it (openssl writes none)."""
    cek = AESGCM.generate_key(bit_length=128)
    nonce = os.urandom(12)
    aad = b"" if attrs is None else attrs.untag().dump(force=True)
    sealed = AESGCM(cek).encrypt(nonce, content, aad or None)
    public_key = recipient.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    # GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen INTEGER DEFAULT 12 }
    params_der = b"\x30\x11" + core.OctetString(nonce).dump() + core.Integer(16).dump()
    fields: dict[str, object] = {
        "version": "v0",
        "recipient_infos": [asn1_cms.RecipientInfo(name="ktri", value={
            "version": "v0",
            "rid": asn1_cms.RecipientIdentifier(name="issuer_and_serial_number", value={
                "issuer": asn1_x509.Name.load(recipient.issuer.public_bytes()),
                "serial_number": recipient.serial_number,
            }),
            "key_encryption_algorithm": {
                "algorithm": "rsaes_oaep",
                "parameters": algos.RSAESOAEPParams({
                    "hash_algorithm": {"algorithm": "sha256"},
                    "mask_gen_algorithm": {
                        "algorithm": "mgf1", "parameters": {"algorithm": "sha256"},
                    },
                }),
            },
            "encrypted_key": public_key.encrypt(cek, asym_padding.OAEP(
                mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None,
            )),
        })],
        "auth_encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {
                "algorithm": "aes128_gcm", "parameters": core.Any.load(params_der),
            },
            "encrypted_content": sealed[:-16],
        },
        "mac": sealed[-16:],
    }
    if attrs is not None:
        fields["auth_attrs"] = attrs
    body = asn1_cms.AuthEnvelopedData(fields)
    info = asn1_cms.ContentInfo({"content_type": "authenticated_enveloped_data", "content": body})
    return info.dump(), body


def test_auth_attributes_are_authenticated(pki: Pki) -> None:
    attrs = asn1_cms.CMSAttributes([{"type": "content_type", "values": ["data"]}])
    der, body = _auth_enveloped(pki.gateway.certificate, PAYLOAD, attrs)
    content, layer = decrypt(der, [pki.gateway.identity])
    assert content == PAYLOAD
    assert layer.kind == "auth-enveloped"
    assert layer.detail["content_encryption"] == "aes128_gcm"
    assert layer.detail["key_transport"] == "rsaes_oaep"

    # Same ciphertext and tag, other authenticated attributes: refused (key transport is OAEP).
    other_attrs = [{"type": "content_type", "values": ["signed_data"]}]
    body["auth_attrs"] = asn1_cms.CMSAttributes(other_attrs)
    forged = asn1_cms.ContentInfo(
        {"content_type": "authenticated_enveloped_data", "content": body}
    ).dump(force=True)
    with pytest.raises(MalformedError):
        decrypt(forged, [pki.gateway.identity])


def test_auth_enveloped_without_attributes(pki: Pki) -> None:
    der, _ = _auth_enveloped(pki.gateway.certificate, b"", None)
    assert decrypt(der, [pki.gateway.identity])[0] == b""


def _cbc_padding_fails(cek: bytes, iv: bytes, ciphertext: bytes) -> bool:
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        unpadder.update(padded)
        unpadder.finalize()
    except ValueError:
        return True
    return False


def test_v15_key_failures_are_indistinguishable(pki: Pki) -> None:
    """Wrong key, bad PKCS#1 padding, wrong key length, bad CBC padding: no refusal of their
    own. Each goes on with garbage as the content (a random key, the unpadded bytes), which the
    pipeline then refuses with the one reply it gives after any CBC decryption."""
    der = encrypt(PAYLOAD, [pki.gateway.certificate])
    info = asn1_cms.ContentInfo.load(der)
    eci = info["content"]["encrypted_content_info"]
    iv = eci["content_encryption_algorithm"]["parameters"].native
    ciphertext = eci["encrypted_content"].native
    public_key = pki.gateway.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)

    wrong_cek = os.urandom(32)
    while not _cbc_padding_fails(wrong_cek, iv, ciphertext):
        wrong_cek = os.urandom(32)
    modulus = public_key.public_numbers().n
    not_pkcs1 = pow(int.from_bytes(os.urandom(255), "big"), 65537, modulus).to_bytes(256, "big")
    encrypted_keys = {
        "random bytes": os.urandom(256),
        "bad PKCS#1 padding": not_pkcs1,
        "16-byte key": public_key.encrypt(os.urandom(16), asym_padding.PKCS1v15()),
        "wrong key, bad CBC padding": public_key.encrypt(wrong_cek, asym_padding.PKCS1v15()),
        "empty": b"",
    }
    for encrypted_key in encrypted_keys.values():
        def change(enveloped: asn1_cms.EnvelopedData, key: bytes = encrypted_key) -> None:
            _replace_ktri(enveloped, "encrypted_key", key)

        content, layer = decrypt(_rewrite(der, change), [pki.gateway.identity])
        assert content != PAYLOAD and len(content) >= len(ciphertext) - 16
        assert layer.kind == "enveloped"


# --- malformed input -------------------------------------------------------------------------


def test_empty_garbage_and_wrong_types(pki: Pki) -> None:
    identities = [pki.gateway.identity]
    for bad in (b"", b"\x00", b"\x30\x80", b"hello world", os.urandom(300), b"\x30" * 5000):
        with pytest.raises(MalformedError):
            decrypt(bad, identities)
    # A certificate is a SEQUENCE too, but no ContentInfo.
    with pytest.raises(MalformedError):
        decrypt(pki.gateway.certificate.public_bytes(serialization.Encoding.DER), identities)
    # Trailing bytes after the ContentInfo.
    with pytest.raises(MalformedError):
        decrypt(encrypt(b"x", [pki.gateway.certificate]) + b"\x00", identities)


def test_other_content_types_are_not_encrypted(pki: Pki) -> None:
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(PAYLOAD)
        .add_signer(pki.gateway.certificate, pki.gateway.issued.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    with pytest.raises(NotEncrypted):
        decrypt(signed, [pki.gateway.identity])
    data = asn1_cms.ContentInfo({"content_type": "data", "content": core.OctetString(PAYLOAD)})
    with pytest.raises(NotEncrypted):
        decrypt(data.dump(), [pki.gateway.identity])


def test_detached_content_is_malformed(pki: Pki) -> None:
    def change(enveloped: asn1_cms.EnvelopedData) -> None:
        eci = enveloped["encrypted_content_info"]
        enveloped["encrypted_content_info"] = {
            "content_type": "data",
            "content_encryption_algorithm": eci["content_encryption_algorithm"],
        }

    der = _rewrite(encrypt(PAYLOAD, [pki.gateway.certificate]), change)
    with pytest.raises(MalformedError):
        decrypt(der, [pki.gateway.identity])


@needs_openssl
@pytest.mark.interop
def test_truncated_at_every_offset(pki: Pki, payload_file: Path) -> None:
    samples = [
        encrypt(PAYLOAD[:200], [pki.gateway.certificate]),
        openssl_encrypt(payload_file, [pki.gateway], "-aes-128-gcm", "-stream"),
    ]
    for sample in samples:
        for end in range(len(sample)):
            with pytest.raises(GatewayError) as caught:
                decrypt(sample[:end], [pki.gateway.identity])
            assert isinstance(caught.value, MalformedError | NotForGateway), end


@pytest.fixture(scope="module")
def sample_envelopes(pki: Pki, payload_file: Path) -> list[bytes]:
    """Ours (DER) and, when openssl is here, a streamed BER AuthEnvelopedData."""
    samples = [encrypt(PAYLOAD[:100], [pki.other.certificate, pki.gateway.certificate])]
    if OPENSSL is not None:
        samples.append(openssl_encrypt(payload_file, [pki.gateway], "-aes-256-gcm", "-stream"))
    return samples


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.binary(max_size=600))
def test_fuzz_any_bytes(pki: Pki, data: bytes) -> None:
    try:
        content, _ = decrypt(data, [pki.gateway.identity])
    except GatewayError:
        return
    assert isinstance(content, bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_mutated_envelopes(
    pki: Pki, sample_envelopes: list[bytes], which: int, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(sample_envelopes[which % len(sample_envelopes)])
    for position, value in edits:
        data[position % len(data)] = value
    try:
        content, _ = decrypt(bytes(data), [pki.gateway.identity])
    except GatewayError:
        return
    assert isinstance(content, bytes)


# --- performance paths: hand-written DER, cached name keys -------------------------------------


@pytest.mark.parametrize("size", [0, 100, 200, 70_000])
def test_encrypt_for_mixed_recipients_is_canonical_der(pki: Pki, size: int) -> None:
    """The hand-written envelope is DER (re-encoding changes nothing: lengths, SET OF order)."""
    content = os.urandom(size)
    recipients = [pki.other.certificate, pki.ec.certificate, pki.gateway.certificate,
                  pki.ec384.certificate]
    der = encrypt(content, recipients)
    info = asn1_cms.ContentInfo.load(der, strict=True)
    assert info.dump(force=True) == der
    enveloped = info["content"]
    assert enveloped["version"].native == "v2"  # kari present
    infos = list(enveloped["recipient_infos"])
    assert sorted(i.name for i in infos) == ["kari", "kari", "ktri", "ktri"]
    encodings = [i.dump() for i in infos]
    assert encodings == sorted(encodings)
    for party in (pki.other, pki.gateway, pki.ec, pki.ec384):
        assert decrypt(der, [party.identity])[0] == content
    rsa_only = asn1_cms.ContentInfo.load(encrypt(content, [pki.gateway.certificate]))
    assert rsa_only["content"]["version"].native == "v0"


def _with_issuer(der: bytes, issuer: asn1_x509.Name) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    (recipient,) = list(info["content"]["recipient_infos"])
    rid = recipient.chosen["rid"].chosen
    rebuilt = asn1_cms.IssuerAndSerialNumber({"issuer": issuer,
                                              "serial_number": rid["serial_number"].native})
    recipient.chosen["rid"] = asn1_cms.RecipientIdentifier(
        name="issuer_and_serial_number", value=rebuilt)
    return bytes(info.dump(force=True))


def test_issuer_encoded_differently_still_matches(pki: Pki) -> None:
    """RFC 5280 name matching, not byte equality: a PrintableString issuer names our CA too."""
    cert = pki.gateway.certificate
    issuer = asn1_x509.Name.load(cert.issuer.public_bytes())
    printable = asn1_x509.Name.build(issuer.native, use_printable=True)
    assert printable.dump() != issuer.dump()
    assert printable.hashable == issuer.hashable
    der = _with_issuer(encrypt(PAYLOAD, [cert]), printable)
    for _ in range(2):  # the second time from the cache
        assert decrypt(der, [pki.gateway.identity])[0] == PAYLOAD
    other_ca = asn1_x509.Name.build({"common_name": "Another CA"})
    with pytest.raises(NotForGateway):
        decrypt(_with_issuer(encrypt(PAYLOAD, [cert]), other_ca), [pki.gateway.identity])


def test_name_key_cache_is_exact_and_bounded(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.smime import enveloped_data as envelope

    monkeypatch.setattr(envelope, "_name_keys", Memo(4))
    names = [asn1_x509.Name.build({"common_name": f"CA {i}", "organization_name": "Org"})
             for i in range(10)]
    for name in names * 2:
        reloaded = asn1_x509.Name.load(name.dump())
        assert envelope.name_key(reloaded) == name.hashable
        assert len(envelope._name_keys) <= 4
    huge = asn1_x509.Name.build({"common_name": "x" * 60, "organization_name": "y" * 3000})
    assert envelope.name_key(huge) == huge.hashable
    assert huge.dump() not in envelope._name_keys  # oversized names are not kept
