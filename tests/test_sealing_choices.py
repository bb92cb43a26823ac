"""How the re-sealed message is cut and sealed: a sealed copy per Bcc recipient, and
AuthEnvelopedData (AES-GCM) toward readers whose certificate advertises it.

Through the whole pipeline (``translate_file``) on the development PKI; every copy is opened
by its recipient with the OpenSSL CLI (an independent CMS reader). The SMIMECapabilities
extension is the one RFC 4262 defines, written here with asn1crypto's own definition.
"""

from __future__ import annotations

import datetime as dt
import email
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.smime.certgen import Issued, make_leaf
from gateway.smime.envelope import advertises_gcm
from gateway.translate.context import build_runtime
from gateway.translate.offline import translate_file
from tests.messages import Pki, open_as_recipient, text_entity, user_message

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
SECRETARIAT = "secretariat.cardio@chu-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
SECRETARIAT_ON_APICRYPT = "secretariat.cardio.mssante@passerelle.apicrypt.org"


def _capabilities(*oids: str) -> bytes:
    return bytes(asn1_cms.SMIMECapabilites([{"capability_id": oid} for oid in oids]).dump())


AES256_GCM, AES256_CBC = "2.16.840.1.101.3.4.1.46", "2.16.840.1.101.3.4.1.42"


def _issuer(folder: Path) -> Issued:
    cert = x509.load_pem_x509_certificate((folder / "intermediate.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "intermediate.key").read_bytes(), None)
    return Issued(cert, key)  # type: ignore[arg-type]


def _reissue(pki: Pki, address: str, capabilities: bytes) -> None:
    """Give ``address`` a new certificate carrying ``capabilities``, in the directory and in
    the recipient's own key folder (so that OpenSSL opens with the new key)."""
    folder = pki.root / "mssante"
    user = make_leaf(_issuer(folder), address, emails=[address], capabilities=capabilities)
    pem = user.certificate.public_bytes(serialization.Encoding.PEM)
    (folder / "users" / f"{address}.pem").write_bytes(pem)
    pki.user_cert(address).write_bytes(pem)
    pki.user_key(address).write_bytes(user.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, object, object]:
    root = tmp_path_factory.mktemp("sealing") / "pki"
    init_pki(root)
    pki = Pki(root)
    _reissue(pki, MARIE, _capabilities(AES256_GCM, AES256_CBC))  # a GCM reader
    config = load_config(root / "gateway.toml")
    return pki, config, build_runtime(config)


def _der(raw: bytes) -> bytes:
    payload = email.message_from_bytes(raw).get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _recipient_infos(raw: bytes) -> int:
    return len(asn1_cms.ContentInfo.load(_der(raw))["content"]["recipient_infos"])


def test_each_bcc_recipient_gets_a_copy_sealed_for_them_alone(
        world: tuple[Pki, object, object]) -> None:
    """To names Marie; the secretariat is a Bcc. Two copies: Marie's envelope holds one
    RecipientInfo (hers), so nothing in it names the secretariat's certificate; the
    secretariat's copy opens with its key and shows the same To."""
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT],
                         at=dt.datetime.now(dt.UTC))
    assert [c.recipients for c in out.copies] == [(MARIE,), (SECRETARIAT,)]
    assert [_recipient_infos(c.raw) for c in out.copies] == [1, 1]
    marie_copy, bcc_copy = out.copies
    assert b"INR 2,2" in open_as_recipient(pki, MARIE, marie_copy.raw).content
    opened = open_as_recipient(pki, SECRETARIAT, bcc_copy.raw)
    assert b"INR 2,2" in opened.content
    assert f"To: <{MARIE}>".encode() in opened.headers
    assert b"secretariat" not in opened.headers
    with pytest.raises(RuntimeError):  # the Bcc's key does not open the To recipients' copy
        open_as_recipient(pki, SECRETARIAT, marie_copy.raw)


def test_recipients_named_in_to_and_cc_share_one_copy(
        world: tuple[Pki, object, object]) -> None:
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"),
                       extra_headers=f"Cc: {SECRETARIAT_ON_APICRYPT}\r\n")
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT],
                         at=dt.datetime.now(dt.UTC))
    assert [c.recipients for c in out.copies] == [(MARIE, SECRETARIAT)]
    assert _recipient_infos(out.raw) == 2


def test_a_reader_advertising_gcm_gets_auth_enveloped_data(
        world: tuple[Pki, object, object]) -> None:
    """Marie's certificate lists id-aes256-GCM in SMIMECapabilities: her copy is
    AuthEnvelopedData, which OpenSSL opens; the secretariat's (no capability) stays CBC."""
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT],
                         at=dt.datetime.now(dt.UTC))
    marie_copy, bcc_copy = out.copies
    assert b"smime-type=authEnveloped-data" in marie_copy.raw.partition(b"\r\n\r\n")[0]
    assert asn1_cms.ContentInfo.load(_der(marie_copy.raw))["content_type"].native \
        == "authenticated_enveloped_data"
    assert b"INR 2,2" in open_as_recipient(pki, MARIE, marie_copy.raw).content
    assert b"smime-type=enveloped-data" in bcc_copy.raw.partition(b"\r\n\r\n")[0]


def test_one_reader_without_gcm_keeps_a_shared_copy_in_cbc(
        world: tuple[Pki, object, object]) -> None:
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"),
                       extra_headers=f"Cc: {SECRETARIAT_ON_APICRYPT}\r\n")
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT, SECRETARIAT_ON_APICRYPT],
                         at=dt.datetime.now(dt.UTC))
    assert b"smime-type=enveloped-data" in out.raw.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(("capabilities", "expected"), [
    (_capabilities(AES256_GCM), True),
    (_capabilities("2.16.840.1.101.3.4.1.6"), True),  # AES-128-GCM
    (_capabilities(AES256_CBC, "1.2.840.113549.3.7"), False),  # CBC and 3DES only
    (b"\x30\x03\x06\x01", False),  # truncated: advertises nothing
    (None, False),
])
def test_advertises_gcm_reads_the_capabilities_extension(
        world: tuple[Pki, object, object], capabilities: bytes | None, expected: bool) -> None:
    pki, _, _ = world
    cert = make_leaf(_issuer(pki.root / "mssante"), "x", emails=["x@hopital-test.mssante.fr"],
                     capabilities=capabilities).certificate
    assert advertises_gcm(cert) is expected
