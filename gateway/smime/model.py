"""Plain data the S/MIME layer hands upward: identities, signature results, layers.

Rule kept here: these are values (frozen, no I/O); they hold certificates, never plaintext
beyond the ``content`` of one unwrapped message, which lives only as long as its translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key: the gateway's S/MIME identity on one network."""

    certificate: x509.Certificate
    private_key: PrivateKey


@dataclass(frozen=True)
class Signer:
    """Who signed, as proven by a verified signature and chain."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, ending with the trust anchor
    addresses: frozenset[str]  # e-mail addresses of the certificate, lower-cased
    digest_algorithm: str  # e.g. "sha256"
    signature_algorithm: str  # e.g. "rsassa_pkcs1v15", "rsassa_pss", "ecdsa"
    signing_time: str | None = None  # ISO 8601 from the signed attributes, if present

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


@dataclass(frozen=True)
class Verified:
    """A signature that verified: the content it covers and who signed it."""

    content: bytes  # the signed MIME entity (detached: the first part, CRLF) or eContent
    signer: Signer


LayerKind = Literal["enveloped", "auth-enveloped", "signed-detached", "signed-opaque"]


@dataclass(frozen=True)
class Layer:
    """One S/MIME layer met while unwrapping, outermost first."""

    kind: LayerKind
    detail: dict[str, str] = field(default_factory=dict)  # algorithms, recipient ids, ...
    signer: Signer | None = None  # for signed layers that verified


@dataclass(frozen=True)
class Unwrapped:
    """The innermost content of a message and every layer that covered it."""

    content: bytes  # innermost MIME entity (headers + body), CRLF line endings
    layers: tuple[Layer, ...]

    @property
    def encrypted(self) -> bool:
        return any(layer.kind in ("enveloped", "auth-enveloped") for layer in self.layers)

    @property
    def signer(self) -> Signer | None:
        """The signer of the innermost signed layer (the author)."""
        for layer in reversed(self.layers):
            if layer.signer is not None:
                return layer.signer
        return None
