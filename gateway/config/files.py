"""Reading the files a configuration names: certificates, CRLs and private keys.

Rule kept here: one reader per kind of file, used by the configuration check and by the runtime
alike, so what ``check-config`` accepted is what the gateway loads. A file is read whole (a PEM
bundle of certificates or CRLs keeps every block) or refused naming the file; messages never
quote key material. Config stays below the S/MIME layer: it returns cryptography objects and a
``KeyPair``, and the runtime makes them an ``Identity``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from gateway.config.settings import NetworkConfig

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one DER certificate; ValueError otherwise."""
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    if not certs:
        raise ValueError("no certificate")
    return certs


# One PEM CRL block; a file may hold several (a bundle of the CRLs of several CAs).
_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (one or more blocks), or the one CRL of a DER file.

    ValueError if there is none or one does not parse: a bundle is used whole or not at all,
    so a revocation of its second CA can never be lost silently."""
    if b"-----BEGIN" in data:
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            raise ValueError("no PEM CRL block")
        return [x509.load_pem_x509_crl(block) for block in blocks]
    return [x509.load_der_x509_crl(data)]


def parse_private_key(data: bytes) -> PrivateKey:
    """An unencrypted PEM (or DER) RSA or EC private key; TypeError/ValueError otherwise."""
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
    else:
        key = serialization.load_der_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("unsupported key type")
    return key


def _problem(path: Path, what: str, reason: str) -> ConfigError:
    return ConfigError([ConfigProblem(str(path), what, reason)])


def read_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates of a file (PEM, one or more; or DER). ConfigError if unusable."""
    try:
        return parse_certificates(path.read_bytes())
    except OSError as exc:
        raise _problem(path, "certificate", f"cannot read: {exc.strerror}") from None
    except ValueError:
        raise _problem(path, "certificate", "not a PEM or DER certificate") from None


def read_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    """Every CRL of every file (PEM bundles or DER). ConfigError naming the file if one is
    unusable."""
    crls = []
    for path in paths:
        try:
            crls.extend(parse_crls(path.read_bytes()))
        except OSError as exc:
            raise _problem(path, "crl", f"cannot read: {exc.strerror}") from None
        except ValueError:
            raise _problem(path, "crl", "not a PEM or DER CRL") from None
    return crls


def read_private_key(path: Path) -> PrivateKey:
    try:
        return parse_private_key(path.read_bytes())
    except OSError as exc:
        raise _problem(path, "private key", f"cannot read: {exc.strerror}") from None
    except (TypeError, ValueError):
        # The library's message is not repeated: keep anything about the key out of logs.
        raise _problem(path, "private key", "not an unencrypted RSA or EC private key") from None


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key as read from the files (the runtime makes it an
    ``Identity``; config stays below the S/MIME layer and does not import it)."""

    certificate: x509.Certificate
    private_key: PrivateKey


def load_identity(net: NetworkConfig) -> KeyPair:
    """The gateway's S/MIME certificate and private key on ``net``."""
    certificate = read_certificates(net.smime_cert)[0]
    key = read_private_key(net.smime_key)
    if not same_public_key(certificate, key):
        raise _problem(net.smime_key, "private key", "does not match the certificate")
    return KeyPair(certificate=certificate, private_key=key)


def same_public_key(certificate: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return certificate.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except ValueError:  # an unsupported public key type in the certificate
        return False

