"""Certificate cases: genuine messages whose signer's certificate (or the recipient's) is wrong
in one way: expired, not yet valid, wrong key usage, no or another address, untrusted or forged
issuer, revoked, self-signed, weak, under an expired or over-deep chain.

Rule kept here: the signer must chain to the source network's anchors at the time of relay, be
valid for S/MIME signing, unrevoked, and hold the From address; anything else is
``550 5.7.7``. The recipient's certificate must be valid for encryption on the destination
network; otherwise ``550 5.7.1``. Certificates are issued by ``gateway.smime.certgen`` from the
session's development CAs (``prepare`` writes the recipients' ones before the gateway starts).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.smime import certgen
from gateway.smime.certgen import Issued
from tests.hostile.case import Case, message_case
from tests.hostile.world import (
    JEAN,
    LABO,
    MARIE,
    MARIE_ON_APICRYPT,
    RCPT,
    REVOQUE_A,
    REVOQUE_M,
    REVOQUE_M_ON_APICRYPT,
    SECRETARIAT_ON_APICRYPT,
    World,
    text_entity,
)
from tests.messages import open_as_recipient
from tests.test_trust import resign_sha1

CATEGORY = "cert"
CASES: list[Case] = []
TEXT = text_entity("Lettre de liaison.\n")
NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=400)
Maker = Callable[[World], tuple[Issued, Sequence[x509.Certificate]]]


def case(name: str, outcome: str, build: Callable[[World], bytes], **kw: Any) -> None:
    CASES.append(message_case(CATEGORY, name, outcome, build, **kw))


def signed_by(name: str, make: Maker, network: str = "apicrypt",
              sender: str | None = None) -> Callable[[World], bytes]:
    """A message whose From is ``sender`` (default: the network's user), signed by the
    identity ``make`` issues (once per session)."""
    def build(w: World) -> bytes:
        w.issue(name, make)
        return w.message(TEXT, network, signer=name, sender=sender)
    return build


def leaf(network: str = "apicrypt", emails: Sequence[str] = (JEAN,),
         **kw: object) -> Maker:
    def make(w: World) -> tuple[Issued, Sequence[x509.Certificate]]:
        return certgen.make_leaf(w.issuing_ca(network), "Hostile", emails=emails,
                                 **kw), ()  # type: ignore[arg-type]
    return make


def _custom(subject_cn: str, issuer: Issued | None, *, ca: bool, emails: Sequence[str],
            path_length: int | None = None) -> Issued:
    """A certificate certgen does not make: a leaf claiming CA, or self-signed."""
    key = certgen.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(issuer.certificate.subject if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    if emails:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


# --- the signer's certificate (apicrypt: issued by the apicrypt root) -------------------------

case("expired signer", "550 5.7.7", signed_by("expired", leaf(not_before=OLD, days=30)))
case("signer not yet valid", "550 5.7.7", signed_by(
    "future", leaf(not_before=NOW + dt.timedelta(days=30))))
case("signer certificate for encryption only", "550 5.7.7", signed_by(
    "encrypt-only", leaf(key_usage="encrypt")))
case("signer certificate for TLS servers", "550 5.7.7", signed_by(
    "server-auth", leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH])))
# RFC 8550 §4.4: no key usage or no extended key usage extension means no restriction.
case("signer without key usage", "250 2.0.0", signed_by("no-ku", leaf(key_usage="none")))
case("signer without extended key usage", "250 2.0.0", signed_by("no-eku", leaf(eku=None)))
case("signer with anyExtendedKeyUsage", "250 2.0.0", signed_by(
    "any-eku", leaf(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])))
case("signer that is a CA", "550 5.7.7", signed_by(
    "ca-leaf", lambda w: (_custom("CA signer", w.issuing_ca("apicrypt"), ca=True,
                                  emails=[JEAN]), ())))
case("From is another user than the signer", "550 5.7.7", lambda w: w.message(
    TEXT, signer=LABO))
case("signer address only in the subject DN", "250 2.0.0", signed_by(
    "dn-only", leaf(san=False, email_in_subject=True)))
case("signer with no address", "550 5.7.7", signed_by(
    "no-email", leaf(emails=(), dns_names=["poste.medical59.apicrypt.org"])))
case("signer with the From among two addresses", "250 2.0.0", signed_by(
    "two-emails", leaf(emails=(LABO, JEAN))))
case("signer from an unknown CA", "550 5.7.7", signed_by(
    "foreign", lambda w: (certgen.make_leaf(certgen.make_ca("Unknown CA"), "X",
                                            emails=[JEAN]), ())))
case("signer from a CA forging the anchor's name", "550 5.7.7", signed_by(
    "forged-anchor", lambda w: (certgen.make_leaf(certgen.make_ca(
        "Apicrypt Dev Root CA", org="Apicrypt (development)"), "X", emails=[JEAN]), ())))
case("revoked signer", "550 5.7.7", lambda w: w.message(TEXT, signer=REVOQUE_A,
                                                         sender=REVOQUE_A),
     sender=REVOQUE_A)
case("revoked signer under another From", "550 5.7.7", lambda w: w.message(
    TEXT, signer=REVOQUE_A))
case("self-signed signer", "550 5.7.7", signed_by(
    "self-signed", lambda w: (_custom("Jean Dupont", None, ca=False, emails=[JEAN]), ())))
case("signer of the other network's CA", "550 5.7.7", signed_by(
    "wrong-network", leaf(network="mssante")))
case("signer certificate signed with SHA-1", "550 5.7.7", signed_by(
    "sha1", lambda w: (resign_sha1(certgen.make_leaf(w.issuing_ca("apicrypt"), "S",
                                                     emails=[JEAN]),
                                   w.issuing_ca("apicrypt")), ())))
case("signer with an RSA-1024 key", "550 5.7.7", signed_by(
    "rsa1024", leaf(key_kind="rsa1024")))
case("signer with a P-256 key", "250 2.0.0", signed_by("p256", leaf(key_kind="p256")))
# An address book alias of the gateway for a real mssante user: a certificate the CA issued
# for it must not let its holder send as that user. As MAIL FROM it is refused at once
# (smtp_cases); here the envelope is a real user's and only From and the signer are the alias.
case("signer and From are the gateway's alias of a real mssante user", "550 5.7.1", signed_by(
    "alias", leaf(emails=(MARIE_ON_APICRYPT,)), sender=MARIE_ON_APICRYPT),
     rcpts=(SECRETARIAT_ON_APICRYPT,))


# --- mssante: chains ---------------------------------------------------------------------------

def _under_expired_intermediate(w: World) -> tuple[Issued, Sequence[x509.Certificate]]:
    inter = certgen.make_ca("IGC-Santé Dev Personnes", org="IGC-Santé (development)",
                            issuer=w.root_ca("mssante"), not_before=OLD, days=100, path_length=0)
    return certgen.make_leaf(inter, "Marie", emails=[MARIE], not_before=OLD), [inter.certificate]


def _below_path_length(w: World) -> tuple[Issued, Sequence[x509.Certificate]]:
    sub = certgen.make_ca("Sub-CA", issuer=w.issuing_ca("mssante"))
    return certgen.make_leaf(sub, "Marie", emails=[MARIE]), [sub.certificate]


def _extra_chain(w: World) -> tuple[Issued, Sequence[x509.Certificate]]:
    stray = certgen.make_ca("Stray CA")
    return certgen.make_leaf(w.issuing_ca("mssante"), "Marie", emails=[MARIE]), [
        stray.certificate, w.issuing_ca("mssante").certificate]


case("signer under an expired intermediate", "550 5.7.7", signed_by(
    "old-inter", _under_expired_intermediate, "mssante"), network="mssante")
case("signer under a sub-CA past the path length", "550 5.7.7", signed_by(
    "sub-ca", _below_path_length, "mssante"), network="mssante")
case("signer with stray certificates in the signature", "250 2.0.0", signed_by(
    "stray", _extra_chain, "mssante"), network="mssante")
case("revoked mssante signer", "550 5.7.7", lambda w: w.message(
    TEXT, "mssante", signer=REVOQUE_M, sender=REVOQUE_M), network="mssante", sender=REVOQUE_M)
case("mssante sender signed under the apicrypt CA", "550 5.7.7", signed_by(
    "apicrypt-issued", leaf(network="apicrypt", emails=(MARIE,)), "mssante"), network="mssante")


# --- the recipient's certificate (mssante directory) ----------------------------------------

RECIPIENTS = {  # local part -> what its directory certificate is
    "expire": "expired",
    "signature-seule": "signing only",
    "sans-certificat": "no certificate",
    "etranger": "issued by an unknown CA",
    "cle-courte": "an RSA-1024 key",
    "renouvele": "an expired and a valid certificate",
}
DOMAIN = "hopital-test.mssante.fr"


def alias(local: str) -> str:
    return f"{local}.mssante@passerelle.apicrypt.org"


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def prepare(world: World) -> str:
    """Write the hostile recipients' certificates into the mssante directory (before the
    gateway starts); return their address-book entries (TOML)."""
    inter = world.issuing_ca("mssante")
    users, keys = world.root / "mssante" / "users", world.root / "mssante" / "users-keys"
    made = {
        "expire": [certgen.make_leaf(inter, "E", emails=[f"expire@{DOMAIN}"], not_before=OLD,
                                     days=30).certificate],
        "signature-seule": [certgen.make_leaf(inter, "S", emails=[f"signature-seule@{DOMAIN}"],
                                              key_usage="sign").certificate],
        "sans-certificat": [],
        "cle-courte": [certgen.make_leaf(inter, "C", emails=[f"cle-courte@{DOMAIN}"],
                                         key_kind="rsa1024").certificate],
        "etranger": [certgen.make_leaf(certgen.make_ca("Unknown CA"), "U",
                                       emails=[f"etranger@{DOMAIN}"]).certificate],
    }
    renewed = certgen.make_leaf(inter, "R", emails=[f"renouvele@{DOMAIN}"])
    made["renouvele"] = [certgen.make_leaf(inter, "R", emails=[f"renouvele@{DOMAIN}"],
                                           not_before=OLD, days=30).certificate,
                         renewed.certificate]
    (keys / f"renouvele@{DOMAIN}.pem").write_bytes(_pem(renewed.certificate))
    key_file = keys / f"renouvele@{DOMAIN}.key"
    key_file.touch(mode=0o600)
    key_file.write_bytes(renewed.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    toml = []
    for local, certs in made.items():
        if certs:
            (users / f"{local}@{DOMAIN}.pem").write_bytes(_pem(*certs))
        toml += ["", "[[address_book]]", f'apicrypt = "{alias(local)}"',
                 f'mssante = "{local}@{DOMAIN}"']
    return "\n".join(toml) + "\n"


def _opened_by_renewed_key(w: World, relayed: list[bytes]) -> None:
    [raw] = relayed
    assert b"Lettre de liaison" in open_as_recipient(w.pki, f"renouvele@{DOMAIN}", raw).content


def _to(address: str) -> Callable[[World], bytes]:
    return lambda w: w.message(TEXT, to=address)


for _local, _what in RECIPIENTS.items():
    _ok = _local == "renouvele"
    case(f"recipient certificate: {_what}", "250 2.0.0" if _ok else "550 5.7.1",
         _to(alias(_local)), rcpts=(alias(_local),),
         check=_opened_by_renewed_key if _ok else None)
case("recipient certificate: revoked", "550 5.7.1", lambda w: w.message(
    TEXT, to=REVOQUE_M_ON_APICRYPT), rcpts=(REVOQUE_M_ON_APICRYPT,))
case("one good and one unusable recipient", "550 5.7.1", lambda w: w.message(
    TEXT, to=f"{RCPT['apicrypt']}, {alias('expire')}"),
     rcpts=(RCPT["apicrypt"], alias("expire")))
