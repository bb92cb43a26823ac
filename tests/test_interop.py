"""S/MIME interoperability: the gateway against OpenSSL, NSS and gpgsm, both ways.

Rule kept here: every claim of interoperability is made against an independent implementation
(tests/peers.py). The peers are first checked against each other, so a failure between the
gateway and a peer points at the gateway, not at the wrapper.

PKI (made once per module with gateway.smime.certgen): a root CA; the gateway's identity under
the root; each peer's user under an intermediate "peer network" CA that the peers embed in
their signatures. Content is a small MIME entity with CRLF line endings and ISO-8859-1 bytes:
it must come back byte for byte.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from gateway.errors import GatewayError, SignatureError
from gateway.smime import certgen
from gateway.smime.model import Identity
from tests.peers import (
    PEER_KINDS,
    OpenSSLPeer,
    Peer,
    SignatureNotGood,
    make_peer,
    tool_available,
    tool_for,
)

pytestmark = pytest.mark.interop

CONTENT = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nR\xe9sultat INR 3,2\r\n"
TAMPERED = CONTENT.replace(b"3,2", b"3,9")
GATEWAY_ADDRESS = "passerelle@gateway.example"
PEER_CIPHERS = {"openssl-cms": "aes256_cbc", "openssl-smime": "aes256_cbc",
                "nss": "aes128_cbc", "gpgsm": "aes256_cbc"}


@dataclass
class Pki:
    root: certgen.Issued
    peer_ca: certgen.Issued
    gateway: Identity
    other: Identity  # a second recipient next to the peer's user
    stranger: Identity  # a signer from a CA nobody trusts
    users: dict[str, Identity] = field(default_factory=dict)

    def user(self, kind: str) -> Identity:
        if kind not in self.users:
            leaf = certgen.make_leaf(self.peer_ca, f"Dr {kind}", emails=[address(kind)])
            self.users[kind] = Identity(leaf.certificate, leaf.key)
        return self.users[kind]


def address(kind: str) -> str:
    return f"{kind}@peer.example"


def _identity(issued: certgen.Issued) -> Identity:
    return Identity(issued.certificate, issued.key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = certgen.make_ca("Interop Root CA")
    peer_ca = certgen.make_ca("Interop Peer Network CA", issuer=root)
    stranger_ca = certgen.make_ca("Stranger CA")
    return Pki(
        root=root,
        peer_ca=peer_ca,
        gateway=_identity(certgen.make_leaf(root, "Passerelle", emails=[GATEWAY_ADDRESS])),
        other=_identity(certgen.make_leaf(peer_ca, "Dr Other", emails=["other@peer.example"])),
        stranger=_identity(certgen.make_leaf(stranger_ca, "Mallory",
                                             emails=["mallory@peer.example"])),
    )


class Peers:
    """One peer of each kind, made on first use, closed at module teardown."""

    def __init__(self, pki: Pki, base: Callable[[str], Path]) -> None:
        self.pki = pki
        self.base = base
        self.made: dict[str, Peer] = {}

    def __getitem__(self, kind: str) -> Peer:
        if not tool_available(tool_for(kind)):
            pytest.skip(f"{tool_for(kind)} tools not installed")
        if kind not in self.made:
            self.made[kind] = make_peer(kind, self.base(kind), self.pki.user(kind),
                                        [self.pki.root.certificate],
                                        [self.pki.peer_ca.certificate])
        return self.made[kind]

    def close(self) -> None:
        for peer in self.made.values():
            peer.close()


@pytest.fixture(scope="module")
def peers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    registry = Peers(pki, lambda kind: tmp_path_factory.mktemp(f"peer-{kind}"))
    yield registry
    registry.close()


@pytest.fixture(params=PEER_KINDS)
def peer(request: pytest.FixtureRequest, peers: Peers) -> Peer:
    return peers[request.param]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the peers against each other (proves the wrappers) --------------------------------------


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("verifier", PEER_KINDS)
@pytest.mark.parametrize("signer", PEER_KINDS)
def test_peer_signature_between_peers(
    peers: Peers, signer: str, verifier: str, detached: bool
) -> None:
    der = peers[signer].sign(CONTENT, detached)
    assert peers[verifier].verify(der, CONTENT if detached else None) == CONTENT


@pytest.mark.parametrize("recipient", PEER_KINDS)
@pytest.mark.parametrize("sender", PEER_KINDS)
def test_peer_encryption_between_peers(peers: Peers, sender: str, recipient: str) -> None:
    der = peers[sender].encrypt(CONTENT, [peers[recipient].identity.certificate])
    assert peers[recipient].decrypt(der) == CONTENT


@pytest.mark.parametrize("verifier", PEER_KINDS)
def test_peer_verify_refuses_tampered_content(peers: Peers, verifier: str) -> None:
    der = peers["openssl-cms"].sign(CONTENT, detached=True)
    with pytest.raises(SignatureNotGood):
        peers[verifier].verify(der, TAMPERED)


@pytest.mark.parametrize("verifier", PEER_KINDS)
def test_peer_verify_refuses_untrusted_signer(
    pki: Pki, peers: Peers, verifier: str, tmp_path: Path
) -> None:
    mallory = OpenSSLPeer(tmp_path, pki.stranger, [pki.root.certificate])
    der = mallory.sign(CONTENT, detached=False)
    with pytest.raises(SignatureNotGood):
        peers[verifier].verify(der, None)


# --- peer -> gateway -------------------------------------------------------------------------


def _store(pki: Pki) -> object:
    trust = pytest.importorskip("gateway.smime.trust")
    return trust.TrustStore(anchors=(pki.root.certificate,))


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_peer_signs_gateway_verifies(pki: Pki, peer: Peer, detached: bool) -> None:
    signature = pytest.importorskip("gateway.smime.signature")
    der = peer.sign(CONTENT, detached)
    verified = signature.verify(der, _store(pki), _now(),
                                detached_content=CONTENT if detached else None)
    assert verified.content == CONTENT
    assert verified.signer.certificate == peer.identity.certificate
    assert verified.signer.chain[-1] == pki.root.certificate
    assert pki.peer_ca.certificate in verified.signer.chain  # embedded by the peer
    assert verified.signer.digest_algorithm == "sha256"
    assert address(peer.name) in verified.signer.addresses
    assert verified.signer.signing_time is not None  # every peer adds signingTime


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_peer_signed_binary_content_kept_byte_for_byte(
    pki: Pki, peer: Peer, detached: bool
) -> None:
    # Bare LF, lone CR, NUL, trailing spaces, no final newline: no tool may canonicalise them.
    content = CONTENT + b"ligne LF\nCR seul\r fin \x00\xff  "
    signature = pytest.importorskip("gateway.smime.signature")
    der = peer.sign(content, detached)
    verified = signature.verify(der, _store(pki), _now(),
                                detached_content=content if detached else None)
    assert verified.content == content


def test_peer_detached_signature_over_other_content_refused(pki: Pki, peer: Peer) -> None:
    signature = pytest.importorskip("gateway.smime.signature")
    der = peer.sign(CONTENT, detached=True)
    with pytest.raises(SignatureError):
        signature.verify(der, _store(pki), _now(), detached_content=TAMPERED)


def test_peer_encrypts_gateway_decrypts(pki: Pki, peer: Peer) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    der = peer.encrypt(CONTENT, [pki.gateway.certificate])
    content, layer = envelope.decrypt(der, [pki.gateway])
    assert content == CONTENT
    assert layer.kind == "enveloped"
    # What each peer picks by default: NSS has no option and no S/MIME capabilities on file.
    assert layer.detail["content_encryption"] == PEER_CIPHERS[peer.name]
    assert layer.detail["key_transport"] == "rsaes_pkcs1v15"


def test_peer_encrypts_for_two_gateway_decrypts(pki: Pki, peer: Peer) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    der = peer.encrypt(CONTENT, [pki.other.certificate, pki.gateway.certificate])
    content, layer = envelope.decrypt(der, [pki.gateway])
    assert content == CONTENT
    assert layer.detail.get("recipients") == "2"


def test_peer_signs_then_encrypts_gateway_unwraps(pki: Pki, peer: Peer) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    signature = pytest.importorskip("gateway.smime.signature")
    inner = peer.sign(CONTENT, detached=False)
    outer = peer.encrypt(inner, [pki.gateway.certificate])
    opened, _ = envelope.decrypt(outer, [pki.gateway])
    assert opened == inner
    verified = signature.verify(opened, _store(pki), _now())
    assert verified.content == CONTENT
    assert verified.signer.certificate == peer.identity.certificate


@pytest.mark.parametrize(
    ("options", "kind"),  # options: cipher, key transport, recipient identifier
    [
        (("aes128", "pkcs1v15", "issuer_serial"), "enveloped"),
        (("aes192", "pkcs1v15", "issuer_serial"), "enveloped"),
        (("aes-256-gcm", "pkcs1v15", "issuer_serial"), "auth-enveloped"),
        (("aes256", "oaep", "issuer_serial"), "enveloped"),
        (("aes256", "pkcs1v15", "ski"), "enveloped"),
    ],
    ids=["aes128-cbc", "aes192-cbc", "aes256-gcm", "rsa-oaep", "ski"],
)
def test_openssl_encryption_variants_gateway_decrypts(
    pki: Pki, tmp_path: Path, options: tuple[str, str, str], kind: str
) -> None:
    cipher, key_transport, recipient_id = options
    envelope = pytest.importorskip("gateway.smime.envelope")
    sender = OpenSSLPeer(tmp_path, pki.user("openssl-cms"), [pki.root.certificate],
                         cipher=cipher, key_transport=key_transport, recipient_id=recipient_id)
    content, layer = envelope.decrypt(sender.encrypt(CONTENT, [pki.gateway.certificate]),
                                      [pki.gateway])
    assert content == CONTENT
    assert layer.kind == kind
    assert layer.detail["recipient"] == ("ski" if recipient_id == "ski" else "issuer-serial")
    assert layer.detail["key_transport"] == ("rsaes_oaep" if key_transport == "oaep"
                                             else "rsaes_pkcs1v15")
    assert layer.detail["content_encryption"] == cipher.replace("-", "")[:6] + (
        "_gcm" if "gcm" in cipher else "_cbc")


def test_openssl_3des_refused_by_gateway(pki: Pki, tmp_path: Path) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    sender = OpenSSLPeer(tmp_path, pki.user("openssl-smime"), [pki.root.certificate],
                         command="smime", cipher="des3")
    with pytest.raises(GatewayError) as info:
        envelope.decrypt(sender.encrypt(CONTENT, [pki.gateway.certificate]), [pki.gateway])
    assert info.value.reply.permanent


# --- gateway -> peer -------------------------------------------------------------------------


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_gateway_signs_peer_verifies(pki: Pki, peer: Peer, detached: bool) -> None:
    signature = pytest.importorskip("gateway.smime.signature")
    der = signature.sign(CONTENT, pki.gateway, detached=detached)
    assert peer.verify(der, CONTENT if detached else None) == CONTENT


def test_gateway_detached_signature_refused_by_peer_for_other_content(
    pki: Pki, peer: Peer
) -> None:
    signature = pytest.importorskip("gateway.smime.signature")
    der = signature.sign(CONTENT, pki.gateway, detached=True)
    with pytest.raises(SignatureNotGood):
        peer.verify(der, TAMPERED)


def _certs(*identities: Identity) -> list[x509.Certificate]:
    return [i.certificate for i in identities]


def test_gateway_encrypts_peer_decrypts(pki: Pki, peer: Peer) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    der = envelope.encrypt(CONTENT, _certs(peer.identity))
    assert peer.decrypt(der) == CONTENT


@pytest.mark.parametrize("peer_first", [True, False], ids=["peer-first", "peer-second"])
def test_gateway_encrypts_for_two_peer_decrypts(pki: Pki, peer: Peer, peer_first: bool) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    recipients = [peer.identity, pki.other] if peer_first else [pki.other, peer.identity]
    der = envelope.encrypt(CONTENT, _certs(*recipients))
    assert peer.decrypt(der) == CONTENT


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_gateway_signs_and_encrypts_peer_unwraps(pki: Pki, peer: Peer, detached: bool) -> None:
    envelope = pytest.importorskip("gateway.smime.envelope")
    signature = pytest.importorskip("gateway.smime.signature")
    inner = signature.sign(CONTENT, pki.gateway, detached=detached)
    outer = envelope.encrypt(inner, _certs(peer.identity, pki.gateway))
    opened = peer.decrypt(outer)
    assert opened == inner
    assert peer.verify(opened, CONTENT if detached else None) == CONTENT
