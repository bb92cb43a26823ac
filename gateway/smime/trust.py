"""Trust stores: is this certificate, as of this time, a valid S/MIME signer or recipient?

Rules kept here:

* Pure: certificates, CRLs and the time come in as values; no files, no network, no clock.
* The chain is built by ``cryptography.x509.verification`` (RFC 5280 path building, signatures,
  validity, basic constraints, name constraints) with its WebPKI extension policies relaxed only
  where RFC 8550 allows S/MIME certificates to differ: the leaf may lack the clientAuth EKU and
  the subjectAltName (its address may sit in the subject DN as ``emailAddress``).
* On top of it we apply RFC 8550 ourselves: an e-mail address is present; the EKU is absent or
  holds emailProtection / anyExtendedKeyUsage; the KeyUsage is absent or allows the purpose
  (digitalSignature / nonRepudiation to sign; keyEncipherment for RSA, keyAgreement for EC to
  encrypt).
* Revocation: every certificate of the chain but the anchor is looked up in the CRLs of the store
  that its issuer really signed. A listed serial is revoked whatever the revocation date and even
  if the CRL is stale (``next_update`` before ``at``): a stale CRL still proves a revocation, it
  only fails to prove the absence of one, and we do not hard-fail on missing freshness (CRLs are
  optional in the configuration). CRLs not signed by the issuer are ignored.
* SHA-1 / MD5 certificate signatures are refused (``WeakAlgorithm``), except the anchor's own
  self-signature, which proves nothing anyway; so are RSA keys under 2048 bits and EC keys under
  256 bits anywhere in the chain (S/MIME profiles and ANSSI RGS B1 ask for 2048-bit RSA at
  least: a key that can be factored proves nothing).
* Successes are remembered per store (a reload builds a new store) for the same leaf, untrusted
  certificates and purpose within the same minute, and reused only while ``at`` lies inside
  every certificate of the chain's validity window, checked exactly: an expiry is never
  accepted late. Failures are always worked out again.
* Failures are typed: for ``"sign"`` ``UntrustedSigner``, ``ExpiredSigner``, ``RevokedSigner``,
  ``CertificateUsageError``, ``WeakAlgorithm``; for ``"encrypt"`` always
  ``RecipientCertificateError``. Reasons name the problem and the certificate by subject CN and
  serial (never an e-mail address; a CN that holds one is left out).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import (
    CertificateUsageError,
    ExpiredSigner,
    GatewayError,
    MalformedError,
    RecipientCertificateError,
    RevokedSigner,
    UntrustedSigner,
    WeakAlgorithm,
)
from gateway.memo import Memo

__all__ = ["TrustStore", "describe", "email_addresses"]

Purpose = Literal["sign", "encrypt"]

# Signature algorithms refused in certificates (besides anything whose hash is SHA-1 / MD5).
_WEAK_SIGNATURE_OIDS = frozenset({
    "1.2.840.113549.1.1.2",  # md2WithRSAEncryption
    "1.2.840.113549.1.1.4",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5",  # sha1WithRSAEncryption
    "1.3.14.3.2.29",  # sha1WithRSAEncryption (OIW)
    "1.2.840.10045.4.1",  # ecdsa-with-SHA1
    "1.2.840.10040.4.3",  # dsa-with-sha1
})
_MAX_DIAGNOSTIC_DEPTH = 10
_CACHE_SIZE = 4096  # validated chains remembered per store (cleared when full)
_CACHE_BUCKET_SECONDS = 60
_DER = Encoding.DER
_MIN_RSA_BITS = 2048
_MIN_EC_BITS = 256
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

# --- looking at certificates -----------------------------------------------------------------


def email_addresses(cert: x509.Certificate) -> frozenset[str]:
    """The rfc822Name SANs and the subject DN emailAddress values, lower-cased."""
    known = _addresses.get(cert)
    if known is None:
        known = _email_addresses(cert)
        _addresses.put(cert, known)
    return known


# Certificates (equal DER, equal addresses) -> their addresses: every message asks for the same
# few (signer, gateway identity). Only successes are kept.
_addresses: Memo[x509.Certificate, frozenset[str]] = Memo(_CACHE_SIZE)


def _email_addresses(cert: x509.Certificate) -> frozenset[str]:
    found: set[str] = set()
    try:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            pass
        else:
            found.update(san.get_values_for_type(x509.RFC822Name))
        for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
            if isinstance(attribute.value, str):
                found.add(attribute.value)
    except Exception:  # duplicate or undecodable extensions in a hostile certificate
        raise MalformedError("unparseable certificate extensions") from None
    return frozenset(a.strip().lower() for a in found if a.strip())


def describe(cert: x509.Certificate) -> str:
    """``CN=... serial=...`` for reasons; a CN holding an e-mail address is left out."""
    cn = ""
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names and isinstance(names[0].value, str) and "@" not in names[0].value:
            cn = names[0].value[:64]
    except Exception:  # a subject that does not decode: the serial still identifies it
        cn = ""
    serial = f"serial={cert.serial_number:x}"
    return f"CN={cn!r} {serial}" if cn else serial


def is_weak_key(cert: x509.Certificate) -> bool:
    """True for an RSA key under 2048 bits or an EC key under 256 bits."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size < _MIN_RSA_BITS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size < _MIN_EC_BITS
    return False


def is_weak_signature(cert: x509.Certificate) -> bool:
    """True for a certificate signed with SHA-1, MD5 or MD2."""
    if cert.signature_algorithm_oid.dotted_string in _WEAK_SIGNATURE_OIDS:
        return True
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # unknown algorithm: the chain builder refuses it on its own
        return False
    return isinstance(algorithm, hashes.SHA1 | hashes.MD5)


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _valid_at(cert: x509.Certificate, at: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError (key types)
        return False
    return True


# --- the store -------------------------------------------------------------------------------


def _extension_policies() -> tuple[verification.ExtensionPolicy, verification.ExtensionPolicy]:
    """WebPKI policies, with the leaf's EKU and SAN made optional (RFC 8550 §4.4)."""
    agnostic = verification.Criticality.AGNOSTIC
    ee = (
        verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, None)
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
    )
    return verification.ExtensionPolicy.webpki_defaults_ca(), ee


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors of one network, intermediates known in advance, and its CRLs."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @cached_property
    def _store(self) -> verification.Store:
        return verification.Store(list(self.anchors))

    @cached_property
    def _validated(self) -> Memo[_CacheKey, _Validated]:
        return Memo(_CACHE_SIZE)

    def validate(
        self,
        leaf: x509.Certificate,
        untrusted: Sequence[x509.Certificate],
        at: dt.datetime,
        purpose: Purpose,
    ) -> tuple[x509.Certificate, ...]:
        """The chain of ``leaf`` (leaf first, anchor last), valid for ``purpose`` as of ``at``."""
        try:
            when = _utc(at)
            key = (leaf, tuple(untrusted), purpose, int(when.timestamp() // _CACHE_BUCKET_SECONDS))
            known = self._validated.get(key)
            if known is not None and known.not_before <= when <= known.not_after:
                return known.chain
            chain = self._validate(leaf, untrusted, when, purpose)
            self._validated.put(key, _Validated(
                chain,
                max(c.not_valid_before_utc for c in chain),
                min(c.not_valid_after_utc for c in chain),
            ))
            return chain
        except GatewayError as error:
            if purpose == "encrypt" and not isinstance(error, RecipientCertificateError):
                raise RecipientCertificateError(f"recipient certificate: {error.reason}") from None
            raise
        except Exception:  # a hostile certificate whose fields do not decode
            reason = f"unusable certificate ({describe(leaf)})"
            if purpose == "encrypt":
                raise RecipientCertificateError(reason) from None
            raise UntrustedSigner(reason) from None

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        der = cert.public_bytes(_DER)
        return any(a.public_bytes(_DER) == der for a in self.anchors)

    def _validate(
        self,
        leaf: x509.Certificate,
        untrusted: Sequence[x509.Certificate],
        at: dt.datetime,
        purpose: Purpose,
    ) -> tuple[x509.Certificate, ...]:
        if not self.anchors:
            raise UntrustedSigner("no trust anchor configured")
        # The leaf first, explicitly, so that the reason is precise.
        if at < leaf.not_valid_before_utc:
            raise ExpiredSigner(f"certificate not yet valid ({describe(leaf)})")
        if at > leaf.not_valid_after_utc:
            raise ExpiredSigner(f"certificate expired ({describe(leaf)})")
        if is_weak_signature(leaf) and not self._is_anchor(leaf):
            raise WeakAlgorithm(f"certificate signed with SHA-1 or MD5 ({describe(leaf)})")

        pool = [*untrusted, *self.intermediates]
        ca_policy, ee_policy = _extension_policies()
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        try:
            chain = tuple(verifier.verify(leaf, pool).chain)
        except verification.VerificationError:
            # The verifier's message quotes subjects (addresses included): say why ourselves.
            self._diagnose(leaf, pool, at)
            raise UntrustedSigner(f"no valid chain to a trust anchor ({describe(leaf)})") from None

        for cert in chain[:-1]:
            if is_weak_signature(cert):
                raise WeakAlgorithm(f"certificate signed with SHA-1 or MD5 ({describe(cert)})")
            if is_weak_key(cert):
                raise WeakAlgorithm(f"certificate key too short ({describe(cert)})")
        _check_usage(leaf, purpose)
        for cert, issuer in itertools.pairwise(chain):
            self._check_revocation(cert, issuer)
        return chain

    def _diagnose(
        self, leaf: x509.Certificate, pool: Sequence[x509.Certificate], at: dt.datetime
    ) -> None:
        """After the verifier refused: find a precise reason along the naive issuer path."""
        cert = leaf
        for _ in range(_MAX_DIAGNOSTIC_DEPTH):
            anchor = next((a for a in self.anchors if _directly_issued(cert, a)), None)
            if anchor is not None:
                if not _valid_at(anchor, at):
                    raise ExpiredSigner(f"trust anchor not valid at that time ({describe(anchor)})")
                return
            issuer = next((c for c in pool if c is not cert and _directly_issued(cert, c)), None)
            if issuer is None:
                return
            if not _valid_at(issuer, at):
                raise ExpiredSigner(
                    f"certificate in chain expired or not yet valid ({describe(issuer)})"
                )
            if is_weak_signature(issuer) and not self._is_anchor(issuer):
                raise WeakAlgorithm(f"certificate signed with SHA-1 or MD5 ({describe(issuer)})")
            cert = issuer

    def _check_revocation(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        for crl in self.crls:
            if crl.issuer != issuer.subject:
                continue
            try:
                genuine = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except Exception:  # key type the CRL cannot be checked with: not this issuer's
                genuine = False
            if genuine and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                raise RevokedSigner(f"certificate revoked ({describe(cert)})")


_CacheKey = tuple[x509.Certificate, tuple[x509.Certificate, ...], str, int]


@dataclass(frozen=True)
class _Validated:
    """A chain that validated, and the window in which every certificate of it is valid."""

    chain: tuple[x509.Certificate, ...]
    not_before: dt.datetime
    not_after: dt.datetime


def _check_usage(leaf: x509.Certificate, purpose: Purpose) -> None:
    """RFC 8550 §4.4: address present, EKU and KeyUsage compatible with the purpose."""
    if not email_addresses(leaf):
        raise CertificateUsageError(f"certificate holds no e-mail address ({describe(leaf)})")
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    if eku is not None and not (
        ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    ):
        raise CertificateUsageError(
            f"extended key usage does not allow e-mail protection ({describe(leaf)})"
        )
    ku = _extension(leaf, x509.KeyUsage)
    if ku is None:
        return
    if purpose == "sign":
        if not (ku.digital_signature or ku.content_commitment):
            raise CertificateUsageError(f"key usage does not allow signing ({describe(leaf)})")
        return
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        allowed = ku.key_encipherment
    elif isinstance(key, ec.EllipticCurvePublicKey):
        allowed = ku.key_agreement
    else:
        allowed = False
    if not allowed:
        raise CertificateUsageError(f"key usage does not allow encryption ({describe(leaf)})")
