"""Chains judged by RFC 5280 §6 and RFC 8550, not WebPKI: the field's shapes pass, and the
identity binding holds (issue: a constrained sub-CA must not vouch for another domain's user).

Certificates are built here with cryptography's builder, each with exactly the extensions the
case is about (the development PKI's CAs carry every extension and would hide the point).
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.errors import ExpiredSigner, RevocationUnknown, RevokedSigner, UntrustedSigner
from gateway.smime.trust import TrustStore, describe, email_addresses

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
JEAN = "jean.dupont@medical59.apicrypt.org"
KEYS = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]


def name(cn: str, email: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name,
         issuer_key: rsa.RSAPrivateKey, *extensions: tuple[x509.ExtensionType, bool],
         days: tuple[int, int] = (-30, 365), serial: int | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(serial or x509.random_serial_number())
               .not_valid_before(NOW + dt.timedelta(days=days[0]))
               .not_valid_after(NOW + dt.timedelta(days=days[1])))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


ROOT_NAME = name("Field Root")
# A root as many are in the field: basicConstraints present but not critical.
ROOT = cert(ROOT_NAME, KEYS[0], ROOT_NAME, KEYS[0],
            (x509.BasicConstraints(ca=True, path_length=None), False))
CA = (x509.BasicConstraints(ca=True, path_length=None), True)


def test_leaf_without_extensions_under_a_non_critical_root() -> None:
    """v3 without any extension (no AKI, no SAN: the address in the DN), as Thunderbird's
    corpus and legacy Apicrypt-style certificates are."""
    leaf = cert(name("Jean", JEAN), KEYS[1], ROOT_NAME, KEYS[0])
    chain = TrustStore(anchors=(ROOT,)).validate(leaf, [], NOW, "sign")
    assert chain == (leaf, ROOT)
    assert email_addresses(leaf) == frozenset({JEAN})


def test_issuer_found_by_name_and_signature_without_aki() -> None:
    inter_name = name("Field Inter")
    inter = cert(inter_name, KEYS[1], ROOT_NAME, KEYS[0], CA)
    # a decoy of the same name with another key: only the signature tells them apart
    decoy = cert(inter_name, KEYS[3], ROOT_NAME, KEYS[0], CA)
    leaf = cert(name("Jean", JEAN), KEYS[2], inter_name, KEYS[1])
    chain = TrustStore(anchors=(ROOT,)).validate(leaf, [decoy, inter], NOW, "sign")
    assert chain == (leaf, inter, ROOT)


def test_reasons_name_the_cause() -> None:
    store = TrustStore(anchors=(ROOT,))
    stranger = name("Orphan CA")
    orphan = cert(name("Jean", JEAN), KEYS[1], stranger, KEYS[2])
    with pytest.raises(UntrustedSigner, match="no issuer named 'CN=Orphan CA'"):
        store.validate(orphan, [], NOW, "sign")
    inter_name = name("Not A CA")
    not_ca = cert(inter_name, KEYS[1], ROOT_NAME, KEYS[0])
    leaf = cert(name("Jean", JEAN), KEYS[2], inter_name, KEYS[1])
    with pytest.raises(UntrustedSigner, match="basicConstraints missing on intermediate"):
        store.validate(leaf, [not_ca], NOW, "sign")
    old = cert(inter_name, KEYS[1], ROOT_NAME, KEYS[0], CA, days=(-400, -30))
    with pytest.raises(ExpiredSigner, match="in chain expired on"):
        store.validate(leaf, [old], NOW, "sign")
    critical = cert(inter_name, KEYS[1], ROOT_NAME, KEYS[0], CA,
                    (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                b"\x05\x00"), True))
    with pytest.raises(UntrustedSigner, match=r"unknown critical extension 1\.3\.6\.1\.4\.1\."):
        store.validate(leaf, [critical], NOW, "sign")


def test_reasons_never_name_the_holder() -> None:
    leaf = cert(name("Utilisateur Révoqué", JEAN), KEYS[1], name("Orphan CA"), KEYS[2])
    with pytest.raises(UntrustedSigner) as info:
        TrustStore(anchors=(ROOT,)).validate(leaf, [], NOW, "sign")
    assert "Révoqué" not in info.value.reason and "jean" not in info.value.reason
    assert describe(leaf) in info.value.reason and f"{leaf.serial_number:x}" in info.value.reason


def test_name_constraints_apply_to_the_dn_email_address() -> None:
    """A sub-CA constrained to labo59.apicrypt.org issues a certificate whose address is only
    in its DN, for a user of medical59: not Jean (RFC 5280 §4.2.1.10). Refused before the fix:
    the DN address escaped the rfc822Name constraint."""
    sub_name = name("Labo 59 CA")
    constrained = (x509.NameConstraints(
        permitted_subtrees=[x509.RFC822Name("labo59.apicrypt.org")], excluded_subtrees=None),
        True)
    sub = cert(sub_name, KEYS[1], ROOT_NAME, KEYS[0], CA, constrained)
    store = TrustStore(anchors=(ROOT,))
    forged = cert(name("Jean", JEAN), KEYS[2], sub_name, KEYS[1])
    with pytest.raises(UntrustedSigner, match="outside the name constraints"):
        store.validate(forged, [sub], NOW, "sign")
    genuine = cert(name("Biologiste", "bio@labo59.apicrypt.org"), KEYS[2], sub_name, KEYS[1])
    assert store.validate(genuine, [sub], NOW, "sign")[0] == genuine
    # and in a SAN just the same
    in_san = cert(name("Jean"), KEYS[2], sub_name, KEYS[1],
                  (x509.SubjectAlternativeName([x509.RFC822Name(JEAN)]), False))
    with pytest.raises(UntrustedSigner, match="outside the name constraints"):
        store.validate(in_san, [sub], NOW, "sign")


def test_with_a_san_the_dn_email_address_is_no_identity() -> None:
    """The CA vouched for the SAN; an emailAddress beside it in the DN names nobody."""
    leaf = cert(name("Labo", JEAN), KEYS[1], ROOT_NAME, KEYS[0],
                (x509.SubjectAlternativeName([x509.RFC822Name("bio@labo59.apicrypt.org")]),
                 False))
    assert email_addresses(leaf) == frozenset({"bio@labo59.apicrypt.org"})


def test_path_length_constraint() -> None:
    top_name, low_name = name("Top"), name("Low")
    top = cert(top_name, KEYS[1], ROOT_NAME, KEYS[0],
               (x509.BasicConstraints(ca=True, path_length=0), True))
    low = cert(low_name, KEYS[2], top_name, KEYS[1], CA)
    leaf = cert(name("Jean", JEAN), KEYS[3], low_name, KEYS[2])
    with pytest.raises(UntrustedSigner, match="pathLenConstraint 0 exceeded"):
        TrustStore(anchors=(ROOT,)).validate(leaf, [top, low], NOW, "sign")


def _crl(next_update: dt.datetime, revoked: tuple[int, ...] = ()) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ROOT_NAME)
               .last_update(next_update - dt.timedelta(days=30)).next_update(next_update))
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(NOW - dt.timedelta(days=40)).build())
    return builder.sign(KEYS[0], hashes.SHA256())


def test_crl_policy_fail_closed_waits_for_a_fresh_crl() -> None:
    leaf = cert(name("Jean", JEAN), KEYS[1], ROOT_NAME, KEYS[0])
    stale = _crl(NOW - dt.timedelta(days=1))
    fresh = _crl(NOW + dt.timedelta(days=7))
    # fail-open (the default): a stale CRL still proves revocations, and its age is a warning
    assert TrustStore(anchors=(ROOT,), crls=(stale,)).validate(leaf, [], NOW, "sign")
    closed = TrustStore(anchors=(ROOT,), crls=(stale,), crl_fail_closed=True)
    with pytest.raises(RevocationUnknown) as info:
        closed.validate(leaf, [], NOW, "sign")
    assert info.value.reply.code == 451
    with pytest.raises(RevocationUnknown):  # also for a recipient: 451, not a 550
        closed.validate(leaf, [], NOW, "encrypt")
    with pytest.raises(RevocationUnknown):  # no CRL at all
        TrustStore(anchors=(ROOT,), crl_fail_closed=True).validate(leaf, [], NOW, "sign")
    reloaded = TrustStore(anchors=(ROOT,), crls=(stale, fresh), crl_fail_closed=True)
    assert reloaded.validate(leaf, [], NOW, "sign") == (leaf, ROOT)


def test_a_revocation_in_a_stale_crl_still_counts() -> None:
    leaf = cert(name("Jean", JEAN), KEYS[1], ROOT_NAME, KEYS[0], serial=4242)
    store = TrustStore(anchors=(ROOT,), crls=(_crl(NOW - dt.timedelta(days=1), (4242,)),))
    with pytest.raises(RevokedSigner):
        store.validate(leaf, [], NOW, "sign")
