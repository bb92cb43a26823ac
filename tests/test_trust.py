"""Trust stores: loading, addresses, chains, RFC 8550 usage rules, CRLs, weak algorithms.

Keys come from gateway.smime.certgen once per module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import parse_certificates, parse_crls
from gateway.errors import (
    CertificateUsageError,
    ExpiredSigner,
    GatewayError,
    RecipientCertificateError,
    RevokedSigner,
    UntrustedSigner,
    WeakAlgorithm,
)
from gateway.memo import Memo
from gateway.smime import certgen
from gateway.smime.trust import TrustStore, email_addresses

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pki:
    root: certgen.Issued
    inter: certgen.Issued
    leaf: certgen.Issued
    ec_leaf: certgen.Issued
    other_root: certgen.Issued
    sign_only: certgen.Issued
    encrypt_only: certgen.Issued
    server_auth: certgen.Issued
    subject_only: certgen.Issued
    no_eku: certgen.Issued
    any_eku: certgen.Issued
    no_ku: certgen.Issued
    no_email: certgen.Issued
    expired: certgen.Issued
    future: certgen.Issued
    sha1_leaf: certgen.Issued
    expired_inter: certgen.Issued
    under_expired_inter: certgen.Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    old = NOW - dt.timedelta(days=400)
    root = certgen.make_ca("Trust Root", not_before=old - dt.timedelta(days=100))
    inter = certgen.make_ca("Trust Inter", issuer=root, not_before=old - dt.timedelta(days=50))
    expired_inter = certgen.make_ca("Old Inter", issuer=root, not_before=old, days=100)
    return Pki(
        root=root,
        inter=inter,
        leaf=certgen.make_leaf(inter, "Alice", emails=["Alice@Example.test"]),
        ec_leaf=certgen.make_leaf(inter, "Ecc", emails=["ecc@example.test"], key_kind="p256"),
        other_root=certgen.make_ca("Other Root"),
        sign_only=certgen.make_leaf(inter, "Signer", emails=["s@example.test"], key_usage="sign"),
        encrypt_only=certgen.make_leaf(
            inter, "Encrypter", emails=["e@example.test"], key_usage="encrypt"
        ),
        server_auth=certgen.make_leaf(
            inter, "Server", emails=["srv@example.test"], eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
        subject_only=certgen.make_leaf(
            inter, "Dn", emails=["Dn@Example.test"], san=False, email_in_subject=True
        ),
        no_eku=certgen.make_leaf(inter, "NoEku", emails=["noeku@example.test"], eku=None),
        any_eku=certgen.make_leaf(
            inter, "AnyEku", emails=["any@example.test"],
            eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        ),
        no_ku=certgen.make_leaf(inter, "NoKu", emails=["noku@example.test"], key_usage="none"),
        no_email=certgen.make_leaf(inter, "NoMail", dns_names=["host.example.test"]),
        expired=certgen.make_leaf(
            inter, "Expired", emails=["old@example.test"], not_before=old, days=30
        ),
        future=certgen.make_leaf(
            inter, "Future", emails=["new@example.test"], not_before=NOW + dt.timedelta(days=30)
        ),
        sha1_leaf=resign_sha1(
            certgen.make_leaf(inter, "Sha1", emails=["sha1@example.test"]), inter
        ),
        expired_inter=expired_inter,
        under_expired_inter=certgen.make_leaf(
            expired_inter, "Orphan", emails=["orphan@example.test"], not_before=old, days=825
        ),
    )


def resign_sha1(issued: certgen.Issued, issuer: certgen.Issued) -> certgen.Issued:
    """The same certificate signed with sha1WithRSAEncryption (cryptography 50 refuses to)."""
    assert isinstance(issuer.key, rsa.RSAPrivateKey)
    parsed = asn1_x509.Certificate.load(issued.certificate.public_bytes(Encoding.DER))
    tbs = parsed["tbs_certificate"]
    tbs["signature"] = {"algorithm": "sha1_rsa", "parameters": None}
    tbs_der = tbs.dump(force=True)
    signature = issuer.key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    cert = asn1_x509.Certificate({
        "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
        "signature_algorithm": {"algorithm": "sha1_rsa", "parameters": None},
        "signature_value": signature,
    })
    return certgen.Issued(x509.load_der_x509_certificate(cert.dump()), issued.key)


def store_of(pki: Pki, **kwargs: object) -> TrustStore:
    return TrustStore((pki.root.certificate,), **kwargs)  # type: ignore[arg-type]


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


# --- loading ---------------------------------------------------------------------------------


def test_load_certificates_pem_bundle_and_der(pki: Pki) -> None:
    certs = [pki.root.certificate, pki.inter.certificate, pki.leaf.certificate]
    assert parse_certificates(b"junk before\n" + pem(*certs)) == certs
    assert parse_certificates(pki.leaf.certificate.public_bytes(Encoding.DER)) == [
        pki.leaf.certificate
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     b"\x30\x03\x02\x01\x01"],
)
def test_parse_certificates_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_certificates(data)


def test_parse_crls_keeps_every_crl_of_a_bundle(pki: Pki) -> None:
    first = certgen.make_crl(pki.root, [1])
    second = certgen.make_crl(pki.inter, [2, 3])
    bundle = first.public_bytes(Encoding.PEM) + b"\n" + second.public_bytes(Encoding.PEM)
    loaded = parse_crls(bundle)
    assert [c.issuer for c in loaded] == [pki.root.certificate.subject,
                                           pki.inter.certificate.subject]
    assert loaded[1].get_revoked_certificate_by_serial_number(3) is not None
    assert parse_crls(first.public_bytes(Encoding.DER)) == [first]
    for bad in (b"", b"nope", b"-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----"):
        with pytest.raises(ValueError):
            parse_crls(bad)


# --- addresses -------------------------------------------------------------------------------


def test_email_addresses_from_san_and_subject(pki: Pki) -> None:
    assert email_addresses(pki.leaf.certificate) == {"alice@example.test"}
    assert email_addresses(pki.subject_only.certificate) == {"dn@example.test"}
    assert email_addresses(pki.no_email.certificate) == frozenset()
    both = certgen.make_leaf(
        pki.inter, "Both", emails=["One@example.test", "two@example.test"], email_in_subject=True
    )
    assert email_addresses(both.certificate) == {"one@example.test", "two@example.test"}


# --- chains ----------------------------------------------------------------------------------


def test_chain_is_leaf_first_ending_with_anchor(pki: Pki) -> None:
    chain = store_of(pki).validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    assert chain == (pki.leaf.certificate, pki.inter.certificate, pki.root.certificate)


def test_intermediate_from_the_store(pki: Pki) -> None:
    store = store_of(pki, intermediates=(pki.inter.certificate,))
    chain = store.validate(pki.leaf.certificate, [], NOW, "sign")
    assert chain[-1] == pki.root.certificate
    with pytest.raises(UntrustedSigner):
        store_of(pki).validate(pki.leaf.certificate, [], NOW, "sign")


def test_intermediate_as_anchor(pki: Pki) -> None:
    store = TrustStore((pki.inter.certificate,))
    assert store.validate(pki.leaf.certificate, [], NOW, "sign") == (
        pki.leaf.certificate, pki.inter.certificate)


def test_naive_time_is_utc(pki: Pki) -> None:
    naive = NOW.replace(tzinfo=None)
    assert store_of(pki).validate(pki.leaf.certificate, [pki.inter.certificate], naive, "sign")


def test_wrong_anchor_is_untrusted(pki: Pki) -> None:
    store = TrustStore((pki.other_root.certificate,))
    with pytest.raises(UntrustedSigner):
        store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    with pytest.raises(UntrustedSigner):
        TrustStore(()).validate(pki.leaf.certificate, [], NOW, "sign")


def test_a_self_signed_leaf_claiming_the_issuer_name_is_untrusted(pki: Pki) -> None:
    # Same issuer name as the real intermediate, another key: the chain must not follow names.
    fake_inter = certgen.make_ca("Trust Inter", issuer=pki.root)  # not given to the store
    forged = certgen.make_leaf(fake_inter, "Mallory", emails=["alice@example.test"])
    with pytest.raises(UntrustedSigner):
        store_of(pki).validate(forged.certificate, [pki.inter.certificate], NOW, "sign")


# --- validity --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["expired", "future"])
def test_expired_and_not_yet_valid(pki: Pki, name: str) -> None:
    issued: certgen.Issued = getattr(pki, name)
    cert = issued.certificate
    with pytest.raises(ExpiredSigner) as caught:
        store_of(pki).validate(cert, [pki.inter.certificate], NOW, "sign")
    assert ("expired" if name == "expired" else "not yet valid") in caught.value.reason
    assert f"{cert.serial_number:x}" in caught.value.reason
    inside = cert.not_valid_before_utc + dt.timedelta(days=1)
    assert store_of(pki).validate(cert, [pki.inter.certificate], inside, "sign")[0] == cert


def test_expired_intermediate(pki: Pki) -> None:
    leaf = pki.under_expired_inter.certificate
    with pytest.raises(ExpiredSigner, match="in chain"):
        store_of(pki).validate(leaf, [pki.expired_inter.certificate], NOW, "sign")


# --- RFC 8550 usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["leaf", "ec_leaf", "sign_only", "subject_only", "no_eku", "any_eku", "no_ku"]
)
def test_usable_for_signing(pki: Pki, name: str) -> None:
    cert = getattr(pki, name).certificate
    assert store_of(pki).validate(cert, [pki.inter.certificate], NOW, "sign")[0] == cert


@pytest.mark.parametrize("name", ["encrypt_only", "server_auth", "no_email"])
def test_unusable_for_signing(pki: Pki, name: str) -> None:
    cert = getattr(pki, name).certificate
    with pytest.raises(CertificateUsageError):
        store_of(pki).validate(cert, [pki.inter.certificate], NOW, "sign")


@pytest.mark.parametrize("name", ["leaf", "ec_leaf", "encrypt_only", "no_ku", "subject_only"])
def test_usable_for_encryption(pki: Pki, name: str) -> None:
    cert = getattr(pki, name).certificate
    assert store_of(pki).validate(cert, [pki.inter.certificate], NOW, "encrypt")[0] == cert


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("sign_only", "key usage"),
        ("server_auth", "extended key usage"),
        ("expired", "expired"),
        ("future", "not yet valid"),
        ("no_email", "no e-mail address"),
        ("sha1_leaf", "SHA-1"),
    ],
)
def test_recipient_refusals(pki: Pki, name: str, words: str) -> None:
    cert = getattr(pki, name).certificate
    with pytest.raises(RecipientCertificateError) as caught:
        store_of(pki).validate(cert, [pki.inter.certificate], NOW, "encrypt")
    assert words in caught.value.reason
    with pytest.raises(RecipientCertificateError):
        TrustStore((pki.other_root.certificate,)).validate(cert, [], NOW, "encrypt")


def test_revoked_recipient(pki: Pki) -> None:
    crl = certgen.make_crl(pki.inter, [pki.leaf.certificate.serial_number])
    store = store_of(pki, crls=(crl,))
    with pytest.raises(RecipientCertificateError, match="revoked"):
        store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "encrypt")


# --- revocation ------------------------------------------------------------------------------


def test_revoked_signer(pki: Pki) -> None:
    crl = certgen.make_crl(pki.inter, [12345, pki.leaf.certificate.serial_number])
    store = store_of(pki, crls=(crl,))
    with pytest.raises(RevokedSigner):
        store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    # Another certificate of the same CA is not affected.
    assert store.validate(pki.no_eku.certificate, [pki.inter.certificate], NOW, "sign")


def test_revoked_intermediate(pki: Pki) -> None:
    crl = certgen.make_crl(pki.root, [pki.inter.certificate.serial_number])
    with pytest.raises(RevokedSigner):
        store_of(pki, crls=(crl,)).validate(
            pki.leaf.certificate, [pki.inter.certificate], NOW, "sign"
        )


def test_crl_not_signed_by_the_issuer_is_ignored(pki: Pki) -> None:
    # Same issuer name, another key: a forged CRL must not revoke (nor be trusted at all).
    impostor = certgen.Issued(pki.inter.certificate, pki.other_root.key)
    forged = certgen.make_crl(impostor, [pki.leaf.certificate.serial_number])
    other_ca = certgen.make_crl(pki.other_root, [pki.leaf.certificate.serial_number])
    store = store_of(pki, crls=(forged, other_ca))
    assert store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")


def test_stale_crl_still_revokes(pki: Pki) -> None:
    stale = certgen.make_crl(pki.inter, [pki.leaf.certificate.serial_number],
                             last_update=NOW - dt.timedelta(days=60), days=7)
    assert stale.next_update_utc is not None and stale.next_update_utc < NOW
    with pytest.raises(RevokedSigner):
        store_of(pki, crls=(stale,)).validate(
            pki.leaf.certificate, [pki.inter.certificate], NOW, "sign"
        )


# --- weak algorithms -------------------------------------------------------------------------


def test_sha1_signed_leaf_is_weak(pki: Pki) -> None:
    with pytest.raises(WeakAlgorithm):
        store_of(pki).validate(pki.sha1_leaf.certificate, [pki.inter.certificate], NOW, "sign")


def test_sha1_signed_intermediate_is_weak(pki: Pki) -> None:
    sha1_inter = resign_sha1(pki.inter, pki.root)
    with pytest.raises(WeakAlgorithm):
        store_of(pki).validate(pki.leaf.certificate, [sha1_inter.certificate], NOW, "sign")
    with pytest.raises(RecipientCertificateError):
        store_of(pki).validate(pki.leaf.certificate, [sha1_inter.certificate], NOW, "encrypt")


def _sha1_self_signed_root() -> certgen.Issued:
    key = certgen.new_key("rsa2048")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old SHA-1 Root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = certgen.Issued(cert, key)
    return resign_sha1(issued, issued)


def test_sha1_self_signature_of_the_anchor_is_accepted() -> None:
    root = _sha1_self_signed_root()
    leaf = certgen.make_leaf(root, "Under old root", emails=["u@example.test"])
    chain = TrustStore((root.certificate,)).validate(leaf.certificate, [], NOW, "sign")
    assert chain == (leaf.certificate, root.certificate)


# --- reasons ---------------------------------------------------------------------------------


def test_reasons_never_hold_addresses(pki: Pki) -> None:
    dn_expired = certgen.make_leaf(
        pki.inter, "who@example.test", emails=["who@example.test"], email_in_subject=True,
        not_before=NOW - dt.timedelta(days=100), days=10,
    )
    crl = certgen.make_crl(pki.inter, [pki.subject_only.certificate.serial_number])
    cases = [
        (dn_expired.certificate, store_of(pki)),
        (pki.subject_only.certificate, store_of(pki, crls=(crl,))),
        (pki.subject_only.certificate, TrustStore((pki.other_root.certificate,))),
    ]
    for cert, store in cases:
        for purpose in ("sign", "encrypt"):
            with pytest.raises(GatewayError) as caught:
                store.validate(cert, [pki.inter.certificate], NOW, purpose)
            assert "@" not in str(caught.value)


# --- the chain cache -----------------------------------------------------------------------------


def _half_minute(moment: dt.datetime) -> dt.datetime:
    """``moment`` moved to second 30 of its minute: ±1 s stays in the same minute."""
    return moment.replace(second=30, microsecond=0)


def _refusal(store: TrustStore, leaf: x509.Certificate, untrusted: list[x509.Certificate],
             at: dt.datetime, purpose: str) -> tuple[type[GatewayError], str]:
    with pytest.raises(GatewayError) as caught:
        store.validate(leaf, untrusted, at, purpose)  # type: ignore[arg-type]
    return type(caught.value), caught.value.reason


def test_cached_chain_is_the_same_and_reused(pki: Pki) -> None:
    store = store_of(pki)
    first = store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    again = store.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    assert again is first  # from the cache
    fresh = store_of(pki).validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    assert fresh == first


def test_cache_never_accepts_an_expired_leaf_late(pki: Pki) -> None:
    expiry = _half_minute(NOW + dt.timedelta(days=5))
    leaf = certgen.make_leaf(pki.inter, "Brief", emails=["brief@example.test"],
                             not_before=expiry - dt.timedelta(days=10), days=10).certificate
    assert leaf.not_valid_after_utc == expiry
    store = store_of(pki)
    before, after = expiry - dt.timedelta(seconds=1), expiry + dt.timedelta(seconds=1)
    assert store.validate(leaf, [pki.inter.certificate], before, "sign")[0] == leaf
    assert store.validate(leaf, [pki.inter.certificate], expiry, "sign")[0] == leaf
    refused = _refusal(store, leaf, [pki.inter.certificate], after, "sign")
    assert refused[0] is ExpiredSigner
    assert refused == _refusal(store_of(pki), leaf, [pki.inter.certificate], after, "sign")
    # not yet valid: the window's other end
    start = leaf.not_valid_before_utc
    assert store.validate(leaf, [pki.inter.certificate], start, "encrypt")[0] == leaf
    assert _refusal(store, leaf, [pki.inter.certificate], start - dt.timedelta(seconds=1),
                    "encrypt")[0] is RecipientCertificateError


def test_cache_never_accepts_an_expired_intermediate_late(pki: Pki) -> None:
    expiry = _half_minute(NOW + dt.timedelta(days=3))
    inter = certgen.make_ca("Short Inter", issuer=pki.root,
                            not_before=expiry - dt.timedelta(days=20), days=20)
    leaf = certgen.make_leaf(inter, "Long", emails=["long@example.test"],
                             not_before=expiry - dt.timedelta(days=10)).certificate
    assert leaf.not_valid_after_utc > expiry
    store = store_of(pki)
    before, after = expiry - dt.timedelta(seconds=1), expiry + dt.timedelta(seconds=1)
    assert len(store.validate(leaf, [inter.certificate], before, "sign")) == 3
    refused = _refusal(store, leaf, [inter.certificate], after, "sign")
    assert refused == _refusal(store_of(pki), leaf, [inter.certificate], after, "sign")


def test_cache_is_per_purpose_and_untrusted_set(pki: Pki) -> None:
    store = store_of(pki)
    store.validate(pki.sign_only.certificate, [pki.inter.certificate], NOW, "sign")
    with pytest.raises(RecipientCertificateError):
        store.validate(pki.sign_only.certificate, [pki.inter.certificate], NOW, "encrypt")
    with pytest.raises(UntrustedSigner):  # the intermediate is not in the store: needed
        store.validate(pki.sign_only.certificate, [], NOW, "sign")


def test_cache_is_bounded(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.smime import trust

    monkeypatch.setattr(trust, "_CACHE_SIZE", 3)  # read when the store makes its table
    store = store_of(pki)
    for minutes in range(10):
        at = NOW + dt.timedelta(minutes=minutes)
        store.validate(pki.leaf.certificate, [pki.inter.certificate], at, "sign")
        assert len(store._validated) <= 3


def test_a_new_store_with_a_crl_refuses_what_the_old_one_cached(pki: Pki) -> None:
    old = store_of(pki)
    old.validate(pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")
    crl = certgen.make_crl(pki.inter, [pki.leaf.certificate.serial_number])
    with pytest.raises(RevokedSigner):
        store_of(pki, crls=(crl,)).validate(
            pki.leaf.certificate, [pki.inter.certificate], NOW, "sign")


def test_email_addresses_cache_is_exact_and_bounded(pki: Pki,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.smime import trust

    monkeypatch.setattr(trust, "_addresses", Memo(2))
    certs = [pki.leaf, pki.subject_only, pki.no_email, pki.any_eku]
    for issued in certs * 2:
        cert = issued.certificate
        assert email_addresses(cert) == trust._email_addresses(cert)
        # an equal certificate (same DER) parsed again: the same answer
        again = x509.load_der_x509_certificate(cert.public_bytes(Encoding.DER))
        assert email_addresses(again) == trust._email_addresses(cert)
        assert len(trust._addresses) <= 2
