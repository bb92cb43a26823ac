"""gateway.smime.unwrap: seal/unwrap round trips, messages made by the openssl CLI (signed then
encrypted, encrypted only, signed only, triple wrap), nested-layer bombs, From/signer checks.

Keys come from gateway.smime.certgen once per module; the PEMs openssl needs go to a temporary
directory (test-only).
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import (
    BadSignature,
    GatewayError,
    LimitExceeded,
    MalformedError,
    NotEncrypted,
    NotForGateway,
    NotSigned,
    SignerMismatch,
    UntrustedSigner,
)
from gateway.smime import certgen, envelope, signature
from gateway.smime.mime import (
    classify,
    enveloped_entity,
    parse_entity,
    prepend_headers,
    signed_detached_entity,
    signed_opaque_entity,
)
from gateway.smime.model import Identity, Layer, Unwrapped
from gateway.smime.trust import TrustStore
from gateway.smime.unwrap import check_from, mailboxes, seal, unwrap

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
NOW = dt.datetime.now(dt.UTC)

ALICE = "alice.martin@medical59.apicrypt.example"
RELAY = "relay@medical59.apicrypt.example"
GATEWAY = "gateway@passerelle.example"
BOB = "bob@elsewhere.example"

CONTENT = (
    b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"R\xe9sultat d'analyse\r\n"
    b"\r\n"
    b"--pas une limite\r\n"
    b"fin\r\n"
)


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
    ca_pem: Path
    store: TrustStore
    alice: Party
    relay: Party
    gateway: Party
    bob: Party
    stranger: Party  # chains to a CA the store does not trust


def _party(folder: Path, name: str, issued: certgen.Issued) -> Party:
    cert_pem, key_pem = folder / f"{name}.pem", folder / f"{name}.key"
    cert_pem.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Party(issued, cert_pem, key_pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("unwrap-pki")
    ca = certgen.make_ca("Apicrypt test CA")
    other_ca = certgen.make_ca("Unrelated CA")
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(
        directory=folder,
        ca_pem=ca_pem,
        store=TrustStore((ca.certificate,)),
        alice=_party(folder, "alice", certgen.make_leaf(ca, "Alice Martin", emails=[ALICE])),
        relay=_party(folder, "relay", certgen.make_leaf(ca, "Relay", emails=[RELAY])),
        gateway=_party(folder, "gateway", certgen.make_leaf(ca, "Gateway", emails=[GATEWAY])),
        bob=_party(folder, "bob", certgen.make_leaf(ca, "Bob", emails=[BOB])),
        stranger=_party(
            folder, "stranger", certgen.make_leaf(other_ca, "Alice Martin", emails=[ALICE])
        ),
    )


def headers(sender: str = ALICE) -> list[tuple[str, str]]:
    return [
        ("From", sender),
        ("To", GATEWAY),
        ("Subject", "Compte rendu"),
        ("Message-ID", "<1@medical59.apicrypt.example>"),
        ("Date", "Mon, 01 Jan 2024 10:00:00 +0100"),
        ("MIME-Version", "1.0"),
    ]


def octet_entity(data: bytes) -> bytes:
    """Arbitrary bytes as a base64 application/octet-stream entity: exact through any layer."""
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )


def open_for(pki: Pki, raw: bytes, **kwargs: Any) -> Unwrapped:
    return unwrap(raw, [pki.gateway.identity], pki.store, NOW, **kwargs)


def openssl(*args: str | Path, stdin: bytes = b"") -> bytes:
    done = subprocess.run(
        [str(OPENSSL), *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def ossl_sign(party: Party, content: bytes, *extra: str) -> bytes:
    return openssl(
        "smime",
        "-sign",
        "-signer",
        party.cert_pem,
        "-inkey",
        party.key_pem,
        "-md",
        "sha256",
        *extra,
        stdin=content,
    )


def ossl_encrypt(content: bytes, *recipients: Party, extra: tuple[str, ...] = ()) -> bytes:
    return openssl(
        "smime", "-encrypt", "-aes256", *extra, *(p.cert_pem for p in recipients), stdin=content
    )


def mail_headers(sender: str = ALICE) -> tuple[str, ...]:
    return ("-from", sender, "-to", GATEWAY, "-subject", "Compte rendu")


# --- seal / unwrap ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.binary(max_size=3000))
def test_seal_unwrap_round_trip(pki: Pki, data: bytes) -> None:
    entity = octet_entity(data)
    sealed = seal(entity, pki.alice.identity, [pki.gateway.cert], headers())
    assert b"\n" not in sealed.replace(b"\r\n", b"")
    result = open_for(pki, sealed)
    assert result.content == entity
    assert base64.b64decode(parse_entity(result.content).body) == data
    assert [layer.kind for layer in result.layers] == ["enveloped", "signed-detached"]
    assert result.signer is not None
    assert result.signer.certificate == pki.alice.cert
    assert ALICE in result.signer.addresses
    assert result.layers[0].detail["content_encryption"] == "aes256_cbc"
    assert result.layers[1].detail["digest_algorithm"] == "sha256"


def test_seal_structure_and_chain(pki: Pki) -> None:
    sealed = seal(
        CONTENT.replace(b"\r\n", b"\n"),
        pki.alice.identity,
        [pki.gateway.cert, pki.bob.cert],
        headers(),
    )
    top = parse_entity(sealed)
    assert [name for name, _ in top.headers][:6] == [name for name, _ in headers()]
    assert classify(top) == "enveloped"
    # both recipients open it; LF content was made canonical before signing
    for reader in (pki.gateway, pki.bob):
        result = unwrap(sealed, [reader.identity], pki.store, NOW)
        assert result.content == CONTENT
    with pytest.raises(MalformedError):  # header injection through seal's headers
        seal(
            CONTENT,
            pki.alice.identity,
            [pki.gateway.cert],
            [("Subject", "x\r\nBcc: victim@example.org")],
        )


@needs_openssl
@pytest.mark.interop
def test_sealed_message_read_by_openssl(pki: Pki) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers())
    inner = openssl(
        "smime",
        "-decrypt",
        "-recip",
        pki.gateway.cert_pem,
        "-inkey",
        pki.gateway.key_pem,
        stdin=sealed,
    )
    verified = openssl("smime", "-verify", "-CAfile", pki.ca_pem, stdin=inner)
    assert verified.replace(b"\r\n", b"\n") == CONTENT.replace(b"\r\n", b"\n")


# --- messages made by openssl ----------------------------------------------------------------


@needs_openssl
@pytest.mark.interop
@pytest.mark.parametrize("opaque", [False, True])
def test_openssl_signed_then_encrypted(pki: Pki, opaque: bool) -> None:
    signed = ossl_sign(pki.alice, CONTENT, *(("-nodetach",) if opaque else ()))
    message = ossl_encrypt(signed, pki.gateway, extra=mail_headers())
    result = open_for(pki, message)
    kind = "signed-opaque" if opaque else "signed-detached"
    assert [layer.kind for layer in result.layers] == ["enveloped", kind]
    assert result.content == CONTENT
    assert result.signer is not None and result.signer.certificate == pki.alice.cert


@needs_openssl
@pytest.mark.interop
def test_openssl_lf_message(pki: Pki) -> None:
    """A message stored with LF line endings (mailbox, some MTAs) unwraps the same."""
    signed = ossl_sign(pki.alice, CONTENT)
    message = ossl_encrypt(signed, pki.gateway, extra=mail_headers()).replace(b"\r\n", b"\n")
    assert open_for(pki, message).content == CONTENT


@needs_openssl
@pytest.mark.interop
def test_openssl_encrypted_only(pki: Pki) -> None:
    message = ossl_encrypt(CONTENT, pki.gateway, extra=mail_headers())
    with pytest.raises(NotSigned):
        open_for(pki, message)
    result = open_for(pki, message, require_signed=False)
    assert [layer.kind for layer in result.layers] == ["enveloped"]
    assert result.content == CONTENT
    assert result.signer is None


@needs_openssl
@pytest.mark.interop
def test_openssl_signed_only(pki: Pki) -> None:
    message = ossl_sign(pki.alice, CONTENT, *mail_headers())
    with pytest.raises(NotEncrypted):
        open_for(pki, message)
    result = open_for(pki, message, require_encrypted=False)
    assert [layer.kind for layer in result.layers] == ["signed-detached"]
    assert result.content == CONTENT


@needs_openssl
@pytest.mark.interop
def test_openssl_triple_wrap(pki: Pki) -> None:
    """Signed by the author, encrypted, signed again by a relay (RFC 2634 triple wrap)."""
    inner = ossl_sign(pki.alice, CONTENT)
    encrypted = ossl_encrypt(inner, pki.gateway)
    message = ossl_sign(pki.relay, encrypted, *mail_headers())
    result = open_for(pki, message)
    assert [layer.kind for layer in result.layers] == [
        "signed-detached",
        "enveloped",
        "signed-detached",
    ]
    assert result.layers[0].signer is not None
    assert result.layers[0].signer.certificate == pki.relay.cert
    assert result.signer is not None and result.signer.certificate == pki.alice.cert
    assert result.content == CONTENT
    # The From must be the author's (innermost signer), not the relay's.
    with pytest.raises(SignerMismatch):
        open_for(pki, ossl_sign(pki.relay, encrypted, *mail_headers(RELAY)))


@needs_openssl
@pytest.mark.interop
def test_signed_outside_encryption_only(pki: Pki) -> None:
    """encrypt-then-sign: the signature covers the ciphertext, not what the author wrote."""
    encrypted = ossl_encrypt(CONTENT, pki.gateway)
    message = ossl_sign(pki.alice, encrypted, *mail_headers())
    with pytest.raises(NotSigned):
        open_for(pki, message)


@needs_openssl
@pytest.mark.interop
def test_openssl_for_someone_else(pki: Pki) -> None:
    signed = ossl_sign(pki.alice, CONTENT)
    message = ossl_encrypt(signed, pki.bob, extra=mail_headers())
    with pytest.raises(NotForGateway):
        open_for(pki, message)


# --- From and signer -------------------------------------------------------------------------


def test_from_not_signer(pki: Pki) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers(BOB))
    with pytest.raises(SignerMismatch):
        open_for(pki, sealed)
    # not checked when no signature is required
    assert open_for(pki, sealed, require_signed=False).content == CONTENT


@pytest.mark.parametrize(
    "sender",
    [
        f"{ALICE}, {BOB}",
        f"Alice <{ALICE}>, Bob <{BOB}>",
        f"{ALICE}, {ALICE}",
        f"friends: {ALICE}, {BOB};",
        "undisclosed-recipients:;",
        "Alice Martin",
        "",
        f"Alice <{ALICE}",
    ],
)
def test_from_not_exactly_one_address(pki: Pki, sender: str) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers(sender))
    with pytest.raises(SignerMismatch):
        open_for(pki, sealed)


@pytest.mark.parametrize(
    "sender",
    [
        ALICE,
        ALICE.upper(),
        f'"Martin, Alice" <{ALICE}>',
        f"Alice Martin <{ALICE.title()}>",
        f"{ALICE} (Alice, cabinet)",
        f'"Bob <{BOB}>" <{ALICE}>',  # an address in a display name is not the address
    ],
)
def test_from_matches_signer(pki: Pki, sender: str) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers(sender))
    assert open_for(pki, sealed).signer is not None


def test_missing_or_duplicate_from(pki: Pki) -> None:
    no_from = [h for h in headers() if h[0] != "From"]
    with pytest.raises(SignerMismatch):
        open_for(pki, seal(CONTENT, pki.alice.identity, [pki.gateway.cert], no_from))
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers())
    with pytest.raises(MalformedError):
        open_for(pki, f"From: {BOB}\r\n".encode() + sealed)


def test_inner_from_must_agree(pki: Pki) -> None:
    inner = f"From: {BOB}\r\n".encode() + CONTENT
    sealed = seal(inner, pki.alice.identity, [pki.gateway.cert], headers())
    with pytest.raises(SignerMismatch):
        open_for(pki, sealed)
    inner = f"From: Alice <{ALICE.upper()}>\r\n".encode() + CONTENT
    sealed = seal(inner, pki.alice.identity, [pki.gateway.cert], headers())
    assert open_for(pki, sealed).content == inner


def test_a_signed_message_rfc822_must_be_from_the_signer(pki: Pki) -> None:
    """Alice signs a whole message/rfc822 that says it is from Bob: a client shows Bob as its
    author. Refused (before the fix it was relayed as Alice's, Bob's text inside)."""
    wrapped = (b"Content-Type: message/rfc822\r\n\r\n"
               + f"From: {BOB}\r\nSubject: r\u00e9sultat\r\n".encode() + CONTENT)
    sealed = seal(wrapped, pki.alice.identity, [pki.gateway.cert], headers())
    with pytest.raises(SignerMismatch, match="message/rfc822"):
        open_for(pki, sealed)
    honest = (b"Content-Type: message/rfc822\r\n\r\n"
              + f"From: Alice <{ALICE}>\r\nSubject: x\r\n".encode() + CONTENT)
    sealed = seal(honest, pki.alice.identity, [pki.gateway.cert], headers())
    assert open_for(pki, sealed).content == honest


def test_check_from_directly(pki: Pki) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers())
    result = open_for(pki, sealed)
    check_from(result, f"<{ALICE}>")
    with pytest.raises(SignerMismatch):
        check_from(result, RELAY)
    with pytest.raises(NotSigned):
        check_from(Unwrapped(CONTENT, ()), ALICE)


def test_mailboxes() -> None:
    assert mailboxes("a@b.c") == ["a@b.c"]
    assert mailboxes('"x, y" <a@b.c>, (c, d) e@f.g') == ["a@b.c", "e@f.g"]
    assert mailboxes("g: a@b.c, d@e.f; h@i.j") == ["a@b.c", "d@e.f", "h@i.j"]
    assert mailboxes("a@b.c (comment (nested, ok))") == ["a@b.c"]
    assert mailboxes(" , ,") == []
    assert mailboxes('"unterminated') == []


# --- refusals --------------------------------------------------------------------------------


def test_untrusted_signer(pki: Pki) -> None:
    sealed = seal(CONTENT, pki.stranger.identity, [pki.gateway.cert], headers())
    with pytest.raises(UntrustedSigner):
        open_for(pki, sealed)


def test_tampered_signed_content(pki: Pki) -> None:
    signed = signed_detached_entity(CONTENT, signature.sign(CONTENT, pki.alice.identity))
    message = prepend_headers(signed, headers())
    assert open_for(pki, message, require_encrypted=False).content == CONTENT
    tampered = message.replace(b"fin\r\n", b"fIn\r\n")
    with pytest.raises(BadSignature):
        open_for(pki, tampered, require_encrypted=False)


def test_plain_message(pki: Pki) -> None:
    message = prepend_headers(CONTENT, headers()[:-1])
    with pytest.raises(NotEncrypted):
        open_for(pki, message)
    result = open_for(pki, message, require_encrypted=False, require_signed=False)
    assert result.layers == () and result.content == message


def test_unsupported_smime_type(pki: Pki) -> None:
    message = prepend_headers(
        b"Content-Type: application/pkcs7-mime; smime-type=compressed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMAA=\r\n",
        headers(),
    )
    with pytest.raises(MalformedError):
        open_for(pki, message)


# --- bombs -----------------------------------------------------------------------------------


def binary_layer(content_type: str, der: bytes) -> bytes:
    """A pkcs7-mime entity in binary transfer encoding: nesting without base64 growth."""
    return (
        f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: binary\r\n\r\n".encode() + der
    )


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls: list[int] = []
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_bomb_of_nested_envelopes(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    entity = CONTENT
    for _ in range(50):
        der = envelope.encrypt(entity, [pki.gateway.cert])
        entity = binary_layer("application/pkcs7-mime; smime-type=enveloped-data", der)
    message = prepend_headers(entity, headers())
    decrypts = counting(monkeypatch, envelope, "decrypt")
    with pytest.raises(LimitExceeded):
        open_for(pki, message)
    assert len(decrypts) == 6  # the default max_depth, then refused before the 7th
    decrypts.clear()
    with pytest.raises(LimitExceeded):
        open_for(pki, message, max_depth=2)
    assert len(decrypts) == 2


def test_bomb_of_mixed_layers(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alternating opaque signatures, detached signatures and envelopes, 50 deep."""
    entity = CONTENT
    for depth in range(50):
        if depth % 3 == 0:
            sig = signature.sign(entity, pki.alice.identity, detached=False)
            entity = signed_opaque_entity(sig)
        elif depth % 3 == 1:
            entity = signed_detached_entity(entity, signature.sign(entity, pki.alice.identity))
        else:
            entity = enveloped_entity(envelope.encrypt(entity, [pki.gateway.cert]))
        if len(entity) > 2_000_000:
            break
    message = prepend_headers(entity, headers())
    verifies = counting(monkeypatch, signature, "verify")
    decrypts = counting(monkeypatch, envelope, "decrypt")
    with pytest.raises(LimitExceeded):
        open_for(pki, message)
    assert len(verifies) + len(decrypts) == 6


def test_exactly_max_depth_is_fine(pki: Pki) -> None:
    entity = CONTENT
    entity = signed_detached_entity(entity, signature.sign(entity, pki.alice.identity))
    for _ in range(5):
        entity = binary_layer(
            "application/pkcs7-mime; smime-type=enveloped-data",
            envelope.encrypt(entity, [pki.gateway.cert]),
        )
    result = open_for(pki, prepend_headers(entity, headers()))
    assert len(result.layers) == 6
    assert result.content == CONTENT


def test_trace_receives_layers_even_on_failure(pki: Pki) -> None:
    sealed = seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers(BOB))
    trace: list[Layer] = []
    with pytest.raises(SignerMismatch):
        unwrap(sealed, [pki.gateway.identity], pki.store, NOW, trace=trace)
    assert [layer.kind for layer in trace] == ["enveloped", "signed-detached"]
    trace = []
    result = unwrap(
        seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers()),
        [pki.gateway.identity],
        pki.store,
        NOW,
        trace=trace,
    )
    assert tuple(trace) == result.layers


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_fuzz_mutated_sealed_message(pki: Pki, data: st.DataObject) -> None:
    """Flips, cuts and insertions anywhere in a sealed message: only GatewayError comes out."""
    raw = bytearray(seal(CONTENT, pki.alice.identity, [pki.gateway.cert], headers()))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 200))]
        else:
            raw[pos:pos] = data.draw(st.sampled_from([b"\r\n", b"\n", b"=", b"--", b";", b"A"]))
        if not raw:
            break
    try:
        result = open_for(pki, bytes(raw))
    except GatewayError:
        return
    # What survives a mutation must still be exactly what Alice signed.
    assert result.content == CONTENT
    assert result.signer is not None and result.signer.certificate == pki.alice.cert
