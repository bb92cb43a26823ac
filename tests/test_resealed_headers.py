"""What the re-sealed message's clear headers say about who wrote it, and what they leak.

Through the whole pipeline (``translate_file``) on the development PKI, opened by the
recipient with the OpenSSL CLI: display names are judged as a mail client shows them (RFC 2047
decoded, look-alike "@"), nothing of the source network (client address, real address,
certificate serial) is written in clear, and a receipt request is kept only for the signer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from gateway import errors
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from gateway.translate.offline import translate_file
from tests.messages import Pki, open_as_recipient, text_entity, user_message

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, object, object]:
    root = tmp_path_factory.mktemp("headers") / "pki"
    init_pki(root)
    config = load_config(root / "gateway.toml")
    return Pki(root), config, build_runtime(config)


def resealed_headers(world: tuple[Pki, object, object], from_line: str,
                     extra: str = "") -> bytes:
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"),
                       extra_headers=extra)
    raw = raw.replace(f"From: {JEAN}\r\n".encode(), f"From: {from_line}\r\n".encode(), 1)
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         at=dt.datetime.now(dt.UTC))
    return out.raw.partition(b"\r\n\r\n")[0]


def from_of(headers: bytes) -> bytes:
    return next(line for line in headers.split(b"\r\n") if line.startswith(b"From:"))


@pytest.mark.parametrize("name", [
    '"marie.curie@hopital-test.mssante.fr"',            # an address as the name
    "=?utf-8?q?marie.curie=40hopital-test.mssante.fr?=",  # the same, RFC 2047 encoded
    '"marie.curie＠hopital-test.mssante.fr"',            # full-width commercial at
    "=?utf-8?b?bWFyaWXvvKBob3BpdGFs?=",                  # full-width at, base64-encoded
])
def test_a_display_name_holding_an_address_is_dropped(world: tuple[Pki, object, object],
                                                      name: str) -> None:
    line = from_of(resealed_headers(world, f"{name} <{JEAN}>"))
    assert line == f"From: <{JEAN_ON_MSSANTE}>".encode()


def test_an_honest_display_name_is_kept(world: tuple[Pki, object, object]) -> None:
    line = from_of(resealed_headers(world, f"=?utf-8?q?Dr_Jean_Dupont?= <{JEAN}>"))
    assert b"Dr Jean Dupont" in line and JEAN_ON_MSSANTE.encode() in line


def test_nothing_of_the_source_network_in_clear(world: tuple[Pki, object, object]) -> None:
    headers = resealed_headers(world, JEAN)
    pki, _, _ = world
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(Path(pki.user_cert(JEAN)).read_bytes())
    assert JEAN.encode() not in headers  # the real address: only its alias is written
    assert format(cert.serial_number, "x").encode() not in headers
    assert b"127.0.0.1" not in headers and b"smime-serial" not in headers
    assert f"body.smime-identifier={JEAN_ON_MSSANTE}".encode() in headers


def test_a_receipt_request_is_kept_only_for_the_signer(
        world: tuple[Pki, object, object]) -> None:
    own = resealed_headers(world, JEAN, f"Disposition-Notification-To: {JEAN}\r\n")
    assert f"Disposition-Notification-To: <{JEAN_ON_MSSANTE}>".encode() in own
    other = resealed_headers(
        world, JEAN, "Disposition-Notification-To: secretariat@cabinet12.apicrypt.org\r\n")
    assert b"Disposition-Notification-To" not in other


def test_a_bcc_recipient_is_never_written_in_the_headers(
        world: tuple[Pki, object, object]) -> None:
    """To names Marie; the envelope also has the cardiology secretariat (a Bcc): the relayed
    headers name Marie only, mapped, and never the Bcc."""
    pki, config, runtime = world
    secretariat = "secretariat.cardio.mssante@passerelle.apicrypt.org"
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT, secretariat],
                         at=dt.datetime.now(dt.UTC))
    headers = out.raw.partition(b"\r\n\r\n")[0]
    assert b"To: <marie.curie@hopital-test.mssante.fr>" in headers
    assert b"secretariat" not in headers
    assert len(out.recipients) == 2  # both get the message


def test_only_bcc_recipients_get_undisclosed_recipients(
        world: tuple[Pki, object, object]) -> None:
    pki, config, runtime = world
    secretariat = "secretariat.cardio.mssante@passerelle.apicrypt.org"
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[secretariat], at=dt.datetime.now(dt.UTC))
    headers = out.raw.partition(b"\r\n\r\n")[0]
    assert b"To: undisclosed-recipients:;" in headers and b"secretariat" not in headers
    assert b"marie" not in headers  # not a recipient of this copy


def _inner(to: str, subject: str = "Résultat protégé") -> bytes:
    """An entity carrying protected headers inside the signature (RFC 9788 style)."""
    return (f"To: {to}\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "\r\nINR 2,2\r\n").encode()


def test_a_signed_message_sent_on_to_another_recipient_is_refused(
        world: tuple[Pki, object, object]) -> None:
    """Written (and signed) for Marie, replayed to the cardiology secretariat: refused. Under
    the one reply after a CBC decryption, the cause is in the reason."""
    pki, config, runtime = world
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, _inner(MARIE_ON_APICRYPT))
    secretariat = "secretariat.cardio.mssante@passerelle.apicrypt.org"
    with pytest.raises(errors.ContentRefused, match="SignerMismatch: an envelope recipient"):
        translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                       recipients=[secretariat], at=dt.datetime.now(dt.UTC))
    # to the recipient it was written for: relayed, and the protected Subject wins
    out = translate_file(config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         recipients=[MARIE_ON_APICRYPT], at=dt.datetime.now(dt.UTC))
    headers = out.raw.partition(b"\r\n\r\n")[0]
    assert b"Subject: =?utf-8?" in headers and b"Subject: R\xc3" not in headers
    assert "Résultat protégé".encode() in _decoded_subject(headers)


def _decoded_subject(headers: bytes) -> bytes:
    import email.header
    line = next(h for h in headers.split(b"\r\n") if h.startswith(b"Subject:"))
    return str(email.header.make_header(email.header.decode_header(
        line[9:].decode()))).encode()


def test_max_signing_age_refuses_an_old_signature(world: tuple[Pki, object, object]) -> None:
    pki, config, runtime = world
    strict = dataclasses.replace(config, gateway=dataclasses.replace(  # type: ignore[type-var]
        config.gateway, max_signing_age_days=30))  # type: ignore[attr-defined]
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
    with pytest.raises(errors.ContentRefused, match="SignatureTooOld: signed 4"):
        translate_file(strict, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                       at=later)
    assert translate_file(strict, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                          at=dt.datetime.now(dt.UTC) + dt.timedelta(days=29)).raw


def test_a_network_configured_for_gcm(world: tuple[Pki, object, object]) -> None:
    """``encrypt_gcm`` toward mssante: the relayed message is AuthEnvelopedData, opened by the
    recipient with OpenSSL. ``accept_cbc = false`` on apicrypt: an AES-CBC message from it is
    refused before anything is decrypted (5.7.5, named)."""
    pki, config, _ = world
    nets = dict(config.networks)  # type: ignore[attr-defined]
    nets["mssante"] = dataclasses.replace(nets["mssante"], encrypt_gcm=True)
    gcm_config = dataclasses.replace(config, networks=nets)  # type: ignore[type-var]
    runtime = build_runtime(gcm_config)  # type: ignore[arg-type]
    raw = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,2\n"))
    out = translate_file(gcm_config, runtime, raw, source="apicrypt",  # type: ignore[arg-type]
                         at=dt.datetime.now(dt.UTC))
    assert b"smime-type=authEnveloped-data" in out.raw.partition(b"\r\n\r\n")[0]
    opened = open_as_recipient(pki, "marie.curie@hopital-test.mssante.fr", out.raw)
    assert b"INR 2,2" in opened.content
    nets["apicrypt"] = dataclasses.replace(nets["apicrypt"], accept_cbc=False)
    strict = dataclasses.replace(config, networks=nets)  # type: ignore[type-var]
    with pytest.raises(errors.UnsupportedAlgorithm, match="AuthEnvelopedData"):
        translate_file(strict, build_runtime(strict), raw,  # type: ignore[arg-type]
                       source="apicrypt", at=dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("name", [
    "Marie Curie",                            # the certificate's common name, as is
    '"Dr CURIE, Marie"',                      # other order, case, a title (quoted)
    "=?utf-8?q?Marie_Cur=C3=ADe?=",           # an accent added, RFC 2047 encoded
    "Ｍａｒｉｅ Ｃｕｒｉｅ",                      # full-width letters
])
def test_a_display_name_naming_another_known_person_is_dropped(
        world: tuple[Pki, object, object], name: str) -> None:
    """Jean signs, but names himself as Marie Curie, a person of the address book (her name is
    in her certificate in the mssante directory): the relayed From is Jean's alias alone."""
    line = from_of(resealed_headers(world, f"{name} <{JEAN}>"))
    assert line == f"From: <{JEAN_ON_MSSANTE}>".encode()


def test_the_signer_may_use_their_own_known_name(world: tuple[Pki, object, object]) -> None:
    line = from_of(resealed_headers(world, f"Dr Jean DUPONT <{JEAN}>"))
    assert b"Dr Jean DUPONT" in line


def test_an_address_book_name_is_a_known_name(tmp_path: Path) -> None:
    """``name`` in an address-book entry counts as well (no certificate needed)."""
    root = tmp_path / "pki"
    init_pki(root)
    config_file = root / "gateway.toml"
    config_file.write_text(config_file.read_text("utf-8").replace(
        'mssante = "secretariat.cardio@chu-test.mssante.fr"',
        'mssante = "secretariat.cardio@chu-test.mssante.fr"\nname = "Cardiologie CHU Lille"'),
        "utf-8")
    config = load_config(config_file)
    world = (Pki(root), config, build_runtime(config))
    line = from_of(resealed_headers(world, f"Cardiologie du CHU de Lille <{JEAN}>"))
    assert line == f"From: <{JEAN_ON_MSSANTE}>".encode()
