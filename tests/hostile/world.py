"""The session's PKI and the tools that turn a hostile entity into a genuinely sealed message.

Rule kept here: the PKI is written once per session by ``gateway.devpki.init_pki`` into a
temporary folder (keys are never committed); extra identities for certificate cases are issued
by ``gateway.smime.certgen`` from the development CAs on first use and cached. Messages are
signed and encrypted by the OpenSSL CLI, an implementation independent of the gateway, as a
user's client would send them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import parse_certificates, parse_private_key
from gateway.smime.certgen import Issued
from tests.messages import Pki, openssl

T = TypeVar("T")

JEAN = "jean.dupont@medical59.apicrypt.org"
LABO = "labo.biolille@labo59.apicrypt.org"
REVOQUE_A = "revoque@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
SECRETARIAT = "secretariat.cardio@chu-test.mssante.fr"
REVOQUE_M = "revoque@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
SECRETARIAT_ON_APICRYPT = "secretariat.cardio.mssante@passerelle.apicrypt.org"
REVOQUE_M_ON_APICRYPT = "revoque.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"
LABO_ON_MSSANTE = "labo.biolille.apicrypt@passerelle.mssante.fr"

SENDER = {"apicrypt": JEAN, "mssante": MARIE}
RCPT = {"apicrypt": MARIE_ON_APICRYPT, "mssante": JEAN_ON_MSSANTE}
# Where a message entering from a network is relayed to (its envelope on the next hop).
RELAYED_RCPT = {"apicrypt": MARIE, "mssante": JEAN}
USERS = (JEAN, LABO, REVOQUE_A, MARIE, SECRETARIAT, REVOQUE_M)
CRLF = b"\r\n"


def crlf(data: bytes) -> bytes:
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def text_entity(text: str, charset: str = "utf-8", cte: str = "8bit") -> bytes:
    body = crlf(text.encode(charset))
    return (f"Content-Type: text/plain; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Signer:
    """PEM files of one signing identity (test-only, in the session's temporary folder)."""

    cert: Path
    key: Path
    chain: Path | None = None  # extra certificates to put in the signature


@dataclass
class World:
    """Everything a case builder may use: the PKI and sealing helpers."""

    root: Path
    ports: dict[str, int]

    def __post_init__(self) -> None:
        self.pki = Pki(self.root)
        self.extra = self.root / "hostile-identities"
        self.extra.mkdir(mode=0o700, exist_ok=True)
        self._signers: dict[str, Signer] = {}
        self._once: dict[str, object] = {}

    def once(self, key: str, make: Callable[[World], T]) -> T:
        """``make(self)``, computed once per session (shared pieces of several cases)."""
        if key not in self._once:
            self._once[key] = make(self)
        return self._once[key]  # type: ignore[return-value]

    # --- identities ------------------------------------------------------------------------

    def issuing_ca(self, network: str) -> Issued:
        """The CA that issues the users of ``network`` (apicrypt: the root; mssante: the
        intermediate)."""
        stem = "ca" if network == "apicrypt" else "intermediate"
        folder = self.root / network
        return self._issued(folder / f"{stem}.pem", folder / f"{stem}.key")

    def root_ca(self, network: str) -> Issued:
        return self._issued(self.root / network / "ca.pem", self.root / network / "ca.key")

    @staticmethod
    def _issued(cert: Path, key: Path) -> Issued:
        return Issued(parse_certificates(cert.read_bytes())[0],
                      parse_private_key(key.read_bytes()))

    def signer(self, name: str) -> Signer:
        """A devpki user by address, or an identity registered by ``issue``."""
        if name in self._signers:
            return self._signers[name]
        if name in USERS:
            return Signer(self.pki.user_cert(name), self.pki.user_key(name))
        raise KeyError(name)

    def issue(self, name: str,
              make: Callable[[World], tuple[Issued, Sequence[x509.Certificate]]]) -> Signer:
        """An extra identity made by ``make`` once, written as PEM files for openssl."""
        if name not in self._signers:
            issued, chain = make(self)
            cert, key = self.extra / f"{name}.pem", self.extra / f"{name}.key"
            cert.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
            key.touch(mode=0o600)
            key.write_bytes(issued.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            chain_file = None
            if chain:
                chain_file = self.extra / f"{name}-chain.pem"
                chain_file.write_bytes(b"".join(
                    c.public_bytes(serialization.Encoding.PEM) for c in chain))
            self._signers[name] = Signer(cert, key, chain_file)
        return self._signers[name]

    # --- sealing ---------------------------------------------------------------------------

    def sign(self, entity: bytes, signer: str = JEAN, *, md: str = "sha256",
             opaque: bool = False, extra: Sequence[str] = (),
             signers: Sequence[str] = ()) -> bytes:
        """``entity`` signed (multipart/signed, or opaque signed-data) by OpenSSL."""
        args: list[str | Path] = ["cms", "-sign", "-md", md, "-binary", "-outform", "SMIME"]
        for name in (signer, *signers):
            s = self.signer(name)
            args += ["-signer", s.cert, "-inkey", s.key]
            if s.chain is not None:
                args += ["-certfile", s.chain]
        if opaque:
            args.append("-nodetach")
        return crlf(openssl(*args, *extra, data=entity))

    def encrypt(self, entity: bytes, network: str = "apicrypt", *,
                recipient: Path | None = None, cipher: str = "-aes-256-cbc",
                extra: Sequence[str] = ()) -> bytes:
        """``entity`` enveloped for the gateway of ``network`` (or ``recipient``)."""
        target = recipient or self.pki.gateway_cert(network)
        return crlf(openssl("cms", "-encrypt", cipher, "-binary", "-outform", "SMIME",
                            *extra, target, data=entity))

    def encrypt_der(self, entity: bytes, network: str = "apicrypt") -> bytes:
        """The EnvelopedData DER of ``entity`` for the gateway of ``network``."""
        return openssl("cms", "-encrypt", "-aes-256-cbc", "-binary", "-outform", "DER",
                       self.pki.gateway_cert(network), data=entity)

    def sealed(self, entity: bytes, network: str = "apicrypt", *, signer: str | None = None,
               md: str = "sha256") -> bytes:
        """Signed by ``signer`` (default: the network's sender), then encrypted: the body
        part of a user's message (its MIME headers included)."""
        return self.encrypt(self.sign(entity, signer or SENDER[network], md=md), network)

    @staticmethod
    def headers(network: str = "apicrypt", *, sender: str | None = None,
                to: str | None = None, subject: str = "Resultats",
                message_id: str = "<hostile@example.test>", extra: str = "") -> bytes:
        return (f"From: {sender or SENDER[network]}\r\nTo: {to or RCPT[network]}\r\n"
                f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n"
                f"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n{extra}").encode()

    def message(self, entity: bytes, network: str = "apicrypt", *,
                signer: str | None = None, head: bytes | None = None, md: str = "sha256",
                **header_args: Any) -> bytes:
        """A whole genuine message: headers, then ``entity`` signed and encrypted."""
        top = head if head is not None else self.headers(network, **header_args)
        return top + self.sealed(entity, network, signer=signer, md=md)

    def canary(self, network: str) -> bytes:
        return self.message(text_entity(f"canary {network}\n"), network,
                            message_id=f"<canary-{network}@example.test>")
