"""Trust stores: is this certificate, as of this time, a valid S/MIME signer or recipient?

Rules kept here:

* Pure: certificates, CRLs and the time come in as values; no files, no network, no clock.
* The chain is built and judged by RFC 5280 §6 and RFC 8550, not by the WebPKI rules (which
  refuse most S/MIME certificates of the field): an issuer is found by name and signature (the
  AKI is only a hint, and may be absent); the trust anchor's own extensions are not judged (it
  is trusted by configuration); every intermediate must be a CA (basicConstraints cA, critical
  or not), allowed to sign certificates (keyUsage keyCertSign when present), within its
  pathLenConstraint, valid at the time; rfc822Name name constraints of every CA apply to the
  certificates below it, to their rfc822Name SANs and to their subject DN ``emailAddress``
  alike (RFC 5280 §4.2.1.10); an unknown critical extension is refused. The end-entity
  certificate may be v1, or v3 without any extension, as RFC 8550 allows.
* The leaf, by RFC 8550: an e-mail address is present (the rfc822Name SANs; the subject DN
  ``emailAddress`` only when there is no rfc822Name SAN); the EKU is absent or
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
  ``RecipientCertificateError``. Reasons name the cause (``no issuer named …``,
  ``basicConstraints missing on intermediate …``, ``expired on 2025-01-31``) and each
  certificate by serial and issuer: never by its subject (a person's name or address).
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
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from gateway.config.addresses import lookup_key
from gateway.errors import (
    CertificateUsageError,
    ExpiredSigner,
    GatewayError,
    MalformedError,
    RecipientCertificateError,
    RevocationUnknown,
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
_MAX_PATH = 8  # certificates below the anchor: deeper chains are refused
_CACHE_SIZE = 4096  # validated chains remembered per store (cleared when full)
_CACHE_BUCKET_SECONDS = 60
_DER = Encoding.DER
_MIN_RSA_BITS = 2048
_MIN_EC_BITS = 256
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

# --- looking at certificates -----------------------------------------------------------------


def email_addresses(cert: x509.Certificate, *, remember: bool = True) -> frozenset[str]:
    """The rfc822Name SANs and the subject DN emailAddress values, lower-cased.
    ``remember=False``: a certificate seen once (a directory being indexed) is not cached."""
    known = _addresses.get(cert) if remember else None
    if known is None:
        known = _email_addresses(cert)
        if remember:
            _addresses.put(cert, known)
    return known


# Certificates (equal DER, equal addresses) -> their addresses: every message asks for the same
# few (signer, gateway identity). Only successes are kept.
_addresses: Memo[x509.Certificate, frozenset[str]] = Memo(_CACHE_SIZE)


def ca_and_addresses(cert: x509.Certificate) -> tuple[bool, frozenset[str]]:
    """Is it a CA certificate, and its addresses (``email_addresses``' rule): one pass over the
    extensions, for a directory that indexes tens of thousands of certificates."""
    is_ca, san = False, None
    try:
        for extension in cert.extensions:
            value = extension.value
            if isinstance(value, x509.BasicConstraints):
                is_ca = bool(value.ca)
            elif isinstance(value, x509.SubjectAlternativeName):
                san = value
    except Exception:  # duplicate or undecodable extensions in a hostile certificate
        raise MalformedError("unparseable certificate extensions") from None
    return is_ca, _addresses_of(cert, san)


def _email_addresses(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except Exception:  # duplicate or undecodable extensions in a hostile certificate
        raise MalformedError("unparseable certificate extensions") from None
    return _addresses_of(cert, san)


def _addresses_of(cert: x509.Certificate,
                  san: x509.SubjectAlternativeName | None) -> frozenset[str]:
    """rfc822Name SANs; the DN emailAddress only without them (RFC 8550 §3: when a SAN names
    the mailbox, a DN attribute beside it is not an identity the CA vouched for)."""
    found: set[str] = set()
    try:
        if san is not None:
            found.update(name.value for name in san if isinstance(name, x509.RFC822Name))
        if not found:
            for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
                if isinstance(attribute.value, str):
                    found.add(attribute.value)
    except Exception:  # duplicate or undecodable extensions in a hostile certificate
        raise MalformedError("unparseable certificate extensions") from None
    return frozenset(lookup_key(a) for a in found if a.strip())


def _dn_addresses(cert: x509.Certificate) -> list[str]:
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
            if isinstance(a.value, str)]


def describe(cert: x509.Certificate) -> str:
    """``serial=… issuer='…'`` for reasons and logs: what identifies a certificate to the
    operator (and its CA) without naming its holder, whose subject is a person."""
    return f"serial={cert.serial_number:x} issuer={_name(cert.issuer)!r}"


def _name(name: x509.Name) -> str:
    """A CA's name, bounded, for reasons; '?' where it does not decode."""
    try:
        return name.rfc4514_string()[:120]
    except Exception:
        return "?"


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


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors of one network, intermediates known in advance, and its CRLs."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    # "fail-closed": a certificate whose issuer has no CRL valid at the time is not judged
    # (RevocationUnknown, 451) rather than accepted: the sender retries once a fresh one is in.
    crl_fail_closed: bool = False

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
        except RevocationUnknown:
            raise  # transient whatever the purpose: the sender retries
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
        _check_dates(leaf, at, "certificate")
        if is_weak_signature(leaf) and not self._is_anchor(leaf):
            raise WeakAlgorithm(f"certificate signed with SHA-1 or MD5 ({describe(leaf)})")
        _check_critical(leaf, ca=False)
        bc = _extension(leaf, x509.BasicConstraints)
        if bc is not None and bc.ca:  # a CA's key certifies others; it does not sign mail
            raise CertificateUsageError(f"a CA certificate used as an end entity "
                                        f"({describe(leaf)})")
        pool = [c for c in (*untrusted, *self.intermediates) if c != leaf]
        failures: list[GatewayError] = []
        chain = self._path([leaf], pool, at, failures)
        if chain is None:
            # the most specific cause met on the way (a broken link beats a missing issuer)
            raise failures[0] if failures else UntrustedSigner(
                f"no issuer named {_name(leaf.issuer)!r} among the trust anchors and "
                f"intermediates ({describe(leaf)})")
        for cert in chain[:-1]:
            if is_weak_key(cert):
                raise WeakAlgorithm(f"certificate key too short ({describe(cert)})")
        _check_name_constraints(chain)
        _check_usage(leaf, purpose)
        for cert, issuer in itertools.pairwise(chain):
            self._check_revocation(cert, issuer, at)
        return chain

    def _path(self, path: list[x509.Certificate], pool: Sequence[x509.Certificate],
              at: dt.datetime, failures: list[GatewayError]) -> tuple[x509.Certificate, ...] | None:
        """Depth-first: extend ``path`` (leaf first) up to an anchor; None if no way leads."""
        cert = path[-1]
        for anchor in self.anchors:
            if _directly_issued(cert, anchor):
                if not _valid_at(anchor, at):
                    failures.insert(0, ExpiredSigner(
                        f"trust anchor {_dates(anchor, at)} ({describe(anchor)})"))
                    continue
                return (*path, anchor)
        if len(path) > _MAX_PATH:
            return None
        for issuer in _by_hint(cert, pool):
            if issuer in path or not _directly_issued(cert, issuer):
                continue
            problem = _intermediate_problem(issuer, path, at)
            if problem is not None:
                failures.insert(0, problem)
                continue
            found = self._path([*path, issuer], pool, at, failures)
            if found is not None:
                return found
        if not failures:
            failures.append(UntrustedSigner(
                f"no issuer named {_name(cert.issuer)!r} among the trust anchors and "
                f"intermediates ({describe(cert)})"))
        return None

    def _check_revocation(self, cert: x509.Certificate, issuer: x509.Certificate,
                          at: dt.datetime) -> None:
        fresh = False
        for crl in self.crls:
            if crl.issuer != issuer.subject:
                continue
            try:
                genuine = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except Exception:  # key type the CRL cannot be checked with: not this issuer's
                genuine = False
            if genuine and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                raise RevokedSigner(f"certificate revoked ({describe(cert)})")
            next_update = crl.next_update_utc
            fresh = fresh or (genuine and (next_update is None or at <= next_update))
        if self.crl_fail_closed and not fresh:
            raise RevocationUnknown(f"no fresh CRL of {_name(issuer.subject)!r} "
                                    f"(crl_policy fail-closed; {describe(cert)})")


_CacheKey = tuple[x509.Certificate, tuple[x509.Certificate, ...], str, int]


@dataclass(frozen=True)
class _Validated:
    """A chain that validated, and the window in which every certificate of it is valid."""

    chain: tuple[x509.Certificate, ...]
    not_before: dt.datetime
    not_after: dt.datetime


# Extensions understood here (RFC 5280 §4.2 and S/MIME's own); another one marked critical
# means the certificate may be used only by software that understands it: refused.
_KNOWN_EXTENSIONS = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.NAME_CONSTRAINTS, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_CONSTRAINTS, ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.INHIBIT_ANY_POLICY, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER, ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS, ExtensionOID.SUBJECT_INFORMATION_ACCESS,
    ExtensionOID.FRESHEST_CRL, ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,
    x509.ObjectIdentifier("1.2.840.113549.1.9.15"),  # sMIMECapabilities (RFC 8551 §2.5.2)
})


def _dates(cert: x509.Certificate, at: dt.datetime) -> str:
    if at < cert.not_valid_before_utc:
        return f"not yet valid (from {cert.not_valid_before_utc:%Y-%m-%d})"
    return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"


def _check_dates(cert: x509.Certificate, at: dt.datetime, what: str) -> None:
    if not _valid_at(cert, at):
        raise ExpiredSigner(f"{what} {_dates(cert, at)} ({describe(cert)})")


def _check_critical(cert: x509.Certificate, *, ca: bool) -> None:
    role = "intermediate" if ca else "certificate"
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _KNOWN_EXTENSIONS:
            raise UntrustedSigner(f"unknown critical extension {extension.oid.dotted_string} "
                                  f"on {role} ({describe(cert)})")


def _by_hint(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Candidate issuers by name, those whose SKI matches the AKI first (a hint only)."""
    named = [c for c in pool if c.subject == cert.issuer]
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    if aki is None or aki.key_identifier is None or len(named) < 2:
        return named

    def rank(candidate: x509.Certificate) -> int:
        ski = _extension(candidate, x509.SubjectKeyIdentifier)
        return 0 if ski is not None and ski.digest == aki.key_identifier else 1

    return sorted(named, key=rank)


def _intermediate_problem(issuer: x509.Certificate, path: Sequence[x509.Certificate],
                          at: dt.datetime) -> GatewayError | None:
    """Why ``issuer`` cannot sign for the ``path`` below it (RFC 5280 §6.1.4), or None."""
    who = describe(issuer)
    if not _valid_at(issuer, at):
        return ExpiredSigner(f"intermediate certificate in chain {_dates(issuer, at)} ({who})")
    if is_weak_signature(issuer):
        return WeakAlgorithm(f"certificate signed with SHA-1 or MD5 ({who})")
    try:
        _check_critical(issuer, ca=True)
    except UntrustedSigner as error:
        return error
    bc = _extension(issuer, x509.BasicConstraints)
    if bc is None:
        return UntrustedSigner(f"basicConstraints missing on intermediate ({who})")
    if not bc.ca:
        return UntrustedSigner(f"basicConstraints cA false on intermediate ({who})")
    # intermediates between this one and the leaf (self-issued ones do not count)
    below = sum(1 for c in path[1:] if c.subject != c.issuer)
    if bc.path_length is not None and below > bc.path_length:
        return UntrustedSigner(f"pathLenConstraint {bc.path_length} exceeded below "
                               f"intermediate ({who})")
    ku = _extension(issuer, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        return UntrustedSigner(f"keyUsage without keyCertSign on intermediate ({who})")
    return None


def _check_name_constraints(chain: Sequence[x509.Certificate]) -> None:
    """rfc822Name constraints of each CA (anchor included) over every certificate below it:
    its rfc822Name SANs and its subject DN emailAddress values alike (RFC 5280 §4.2.1.10)."""
    for index in range(len(chain) - 1, 0, -1):
        constraints = _extension(chain[index], x509.NameConstraints)
        if constraints is None:
            continue
        permitted = [n.value for n in constraints.permitted_subtrees or ()
                     if isinstance(n, x509.RFC822Name)]
        excluded = [n.value for n in constraints.excluded_subtrees or ()
                    if isinstance(n, x509.RFC822Name)]
        if not permitted and not excluded:
            continue
        for cert in chain[:index]:
            san = _extension(cert, x509.SubjectAlternativeName)
            names = list(san.get_values_for_type(x509.RFC822Name)) if san is not None else []
            for address in [*names, *_dn_addresses(cert)]:
                if any(_rfc822_within(address, c) for c in excluded) or (
                        permitted and not any(_rfc822_within(address, c) for c in permitted)):
                    raise UntrustedSigner(
                        f"e-mail address outside the name constraints of "
                        f"{describe(chain[index])} ({describe(cert)})")


def _rfc822_within(address: str, constraint: str) -> bool:
    """RFC 5280 §4.2.1.10: a mailbox, all mailboxes of a host, or of a domain (".example")."""
    address, constraint = address.lower(), constraint.lower()
    host = address.rpartition("@")[2]
    if "@" in constraint:
        return address == constraint
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


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


# --- what an operator configured that no chain can use ---------------------------------------


def unusable_certificates(anchors: Sequence[x509.Certificate],
                          intermediates: Sequence[x509.Certificate],
                          at: dt.datetime) -> list[tuple[x509.Certificate, str]]:
    """Anchors and intermediates that no chain as of ``at`` could go through, and why: an
    anchor or intermediate that is no CA, expired or not yet valid; an intermediate with no
    path to any anchor. For ``check-config``: a warning, since the file may still be right
    tomorrow (a renewed intermediate, an anchor whose successor is not out yet)."""
    when = _utc(at)
    found: list[tuple[x509.Certificate, str]] = []
    for anchor in anchors:
        bc = _extension(anchor, x509.BasicConstraints)
        if not _valid_at(anchor, when):
            found.append((anchor, f"trust anchor {_dates(anchor, when)}"))
        elif anchor.version is x509.Version.v3 and (bc is None or not bc.ca):
            found.append((anchor, "trust anchor is not a CA (basicConstraints cA absent)"))
    store = TrustStore(anchors=tuple(anchors))
    for inter in intermediates:
        problem = _intermediate_problem(inter, [inter], when)
        if problem is not None:
            found.append((inter, problem.reason.rsplit(" (", 1)[0]))
            continue
        failures: list[GatewayError] = []
        others = [c for c in intermediates if c != inter]
        if store._path([inter], others, when, failures) is None:
            why = failures[0].reason.rsplit(" (", 1)[0] if failures else "no path"
            found.append((inter, f"intermediate leads to no trust anchor: {why}"))
    return found
