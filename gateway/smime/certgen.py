"""Issuing certificates and CRLs for development PKIs and tests.

Rule kept here: nothing in this module is used on a message path; it exists so that the
development PKI (``gateway pki init``), the demo and the tests generate their keys instead of
committing them. Keys are made fresh each time and never written by this module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.smime.model import PrivateKey

UTC = dt.UTC


def new_key(kind: str = "rsa2048") -> PrivateKey:
    """``rsa2048``, ``rsa3072``, ``rsa4096`` or ``p256`` / ``p384``."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    curves: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
    return ec.generate_private_key(curves[kind])


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: PrivateKey


def _name(common_name: str, org: str | None = None, email: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def make_ca(
    common_name: str,
    *,
    org: str = "Passerelle development PKI",
    issuer: Issued | None = None,
    key_kind: str = "rsa2048",
    not_before: dt.datetime | None = None,
    days: int = 3650,
    path_length: int | None = None,
    name_constraints: x509.NameConstraints | None = None,
) -> Issued:
    """A root CA (``issuer`` None) or an intermediate CA signed by ``issuer``."""
    key = new_key(key_kind)
    now = not_before or dt.datetime.now(UTC) - dt.timedelta(days=1)
    subject = _name(common_name, org)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    signer_key = issuer.key if issuer else key
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())
    return Issued(cert, key)


def make_leaf(
    issuer: Issued,
    common_name: str,
    *,
    emails: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    email_in_subject: bool = False,
    key_kind: str = "rsa2048",
    not_before: dt.datetime | None = None,
    days: int = 825,
    key_usage: str = "smime",  # "smime", "sign", "encrypt", "tls", "none"
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.EMAIL_PROTECTION,),
    san: bool = True,
    hash_algorithm: Any = None,  # SHA-1 only to make refused certificates in tests
    capabilities: bytes | None = None,  # DER SMIMECapabilities (RFC 4262 extension)
) -> Issued:
    """An end-entity certificate for S/MIME (default) or TLS (``key_usage="tls"``).

    ``eku=None`` leaves the extension out (allowed by RFC 8550); ``san=False`` with
    ``email_in_subject=True`` puts the address only in the subject DN.
    """
    key = new_key(key_kind)
    now = not_before or dt.datetime.now(UTC) - dt.timedelta(days=1)
    subject = _name(common_name, "Passerelle development PKI",
                    emails[0] if (email_in_subject and emails) else None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    usages = {
        "smime": dict(digital_signature=True, content_commitment=True, key_encipherment=is_rsa,
                      key_agreement=not is_rsa),
        "sign": dict(digital_signature=True, content_commitment=True),
        "encrypt": dict(key_encipherment=is_rsa, key_agreement=not is_rsa),
        "tls": dict(digital_signature=True, key_encipherment=is_rsa),
    }
    if key_usage != "none":
        flags = dict(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        )
        flags.update(usages[key_usage])
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if key_usage == "tls" and eku == (ExtendedKeyUsageOID.EMAIL_PROTECTION,):
        eku = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails]
    names += [x509.DNSName(d) for d in dns_names]
    if san and names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if capabilities is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.2.840.113549.1.9.15"), capabilities), critical=False)
    cert = builder.sign(issuer.key, hash_algorithm or hashes.SHA256())
    return Issued(cert, key)


def make_crl(
    issuer: Issued,
    revoked_serials: Sequence[int],
    *,
    last_update: dt.datetime | None = None,
    days: int = 30,
) -> x509.CertificateRevocationList:
    now = last_update or dt.datetime.now(UTC) - dt.timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256())
