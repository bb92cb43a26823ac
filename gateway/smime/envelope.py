"""CMS EnvelopedData and AuthEnvelopedData: open what peers encrypt for us, seal what we relay.

Rules kept here:

* Pure functions on bytes: no files, no sockets, no clock. Input may be DER or BER (indefinite
  lengths, chunked strings, as ``openssl cms -stream`` writes): asn1crypto parses it, the
  cryptography primitives do the rest.
* Every failure is a typed ``gateway.errors`` error: unparseable input is ``MalformedError``
  (asn1crypto's own exceptions never escape), another CMS type is ``NotEncrypted``, no recipient
  info for our identities is ``NotForGateway``, an algorithm outside the allow-list (3DES, RC2,
  unknown OIDs) is ``UnsupportedAlgorithm``.
* No Bleichenbacher and no padding oracle: a key that does not unwrap continues with a random
  key, and bad CBC padding is not refused here: the decrypted bytes go on as content (they
  will not parse or verify), so the work done and the answer do not depend on either; the
  pipeline gives one reply to every failure after a CBC decryption
  (``gateway.translate.pipeline``). A bad GCM tag is ``MalformedError`` (GCM is authenticated:
  no oracle), a key of the wrong length ``NotForGateway``.
* We seal with AES-256-CBC (or AES-256-GCM in AuthEnvelopedData where the network is
  configured for it) and RSA PKCS#1 v1.5 key transport, one recipient info per recipient
  (issuerAndSerialNumber): the combination every peer on both networks opens.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.errors import (
    GatewayError,
    MalformedError,
    NotForGateway,
    RecipientCertificateError,
    UnsupportedAlgorithm,
)
from gateway.smime.enveloped_data import (
    BLOCK,
    CBC_KEY_LENGTHS,
    GCM_KEY_LENGTHS,
    Envelope,
    Recipient,
    check_content_algorithm,
    name_key,
    parse,
    parsing,
)
from gateway.smime.model import Identity, Layer

__all__ = ["decrypt", "encrypt"]

_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# RFC 5753 ECDH ephemeral-static schemes -> X9.63 KDF hash. The cofactor variants are the
# same computation on the prime curves used for S/MIME (cofactor 1). SHA-1 here is a KDF, not a
# signature: it is OpenSSL's default and stays accepted.
_ECDH_SCHEMES = {
    "1.3.133.16.840.63.0.2": "sha1",  # dhSinglePass-stdDH-sha1kdf-scheme
    "1.3.132.1.11.0": "sha224",
    "1.3.132.1.11.1": "sha256",
    "1.3.132.1.11.2": "sha384",
    "1.3.132.1.11.3": "sha512",
    "1.3.133.16.840.63.0.3": "sha1",  # dhSinglePass-cofactorDH-sha1kdf-scheme
    "1.3.132.1.14.0": "sha224",
    "1.3.132.1.14.1": "sha256",
    "1.3.132.1.14.2": "sha384",
    "1.3.132.1.14.3": "sha512",
}
# RFC 8418 originator keys: named in the refusal (see docs/algorithms.md).
_CFRG_KEYS = {"1.3.101.110": "X25519", "1.3.101.111": "X448"}
_ECDH_SEAL_SCHEME = "1.3.132.1.11.1"  # dhSinglePass-stdDH-sha256kdf-scheme, what we write
_KEY_WRAPS = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}
# The one reason given for every failure after a PKCS#1 v1.5 unwrap (see the module rules).
_OPAQUE_FAILURE = "the message key could not be recovered with the gateway's key"



class _WrapAlgorithm(core.Sequence):  # type: ignore[misc]
    """AlgorithmIdentifier of an AES key wrap: parameters absent (RFC 3565)."""

    _fields = [("algorithm", core.ObjectIdentifier)]  # noqa: RUF012


class _EccCmsSharedInfo(core.Sequence):  # type: ignore[misc]
    """RFC 5753 ``ECC-CMS-SharedInfo``: the X9.63 KDF's shared info."""

    _fields = [  # noqa: RUF012
        ("key_info", _WrapAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


@dataclass(frozen=True)
class _KeyTransport:
    name: str  # "rsaes_pkcs1v15" | "rsaes_oaep"
    padding: asym_padding.AsymmetricPadding
    oaep_hash: str | None


# --- decrypt ---------------------------------------------------------------------------------


def decrypt(cms: bytes, identities: Sequence[Identity]) -> tuple[bytes, Layer]:
    """Open an EnvelopedData or AuthEnvelopedData ContentInfo (DER or BER) for one of our keys.

    Returns the decrypted content exactly as it was encrypted (the inner MIME entity) and the
    layer describing how it was protected.
    """
    envelope = parse(cms)
    candidates = _match(envelope.recipients, identities)
    if not candidates:
        raise NotForGateway("encrypted for none of the gateway's identities")
    check_content_algorithm(envelope)

    first_error: GatewayError | None = None
    for recipient, identity in candidates:
        try:
            content, key_detail = _open(envelope, recipient, identity)
        except UnsupportedAlgorithm:
            raise
        except GatewayError as error:
            # Several of our identities may be listed; one failing does not condemn the others.
            first_error = first_error or error
            continue
        detail = {
            "key_transport": key_detail.pop("key_transport"),
            "content_encryption": envelope.content_algorithm,
            "recipient": recipient.rid_kind,
            "recipients": str(envelope.recipient_count),
            **key_detail,
        }
        return content, Layer(kind=envelope.kind, detail=detail)
    assert first_error is not None  # noqa: S101 - candidates was not empty
    raise first_error


def _match(
    recipients: Sequence[Recipient], identities: Sequence[Identity]
) -> list[tuple[Recipient, Identity]]:
    """Pairs (recipient info, identity) whose identifier names the identity's certificate."""
    keys = [(_identity_keys(identity), identity) for identity in identities]
    pairs: list[tuple[Recipient, Identity]] = []
    for recipient in recipients:
        for (issuer, serial, skis), identity in keys:
            wanted = rsa.RSAPrivateKey if recipient.method == "ktri" else ec.EllipticCurvePrivateKey
            if not isinstance(identity.private_key, wanted):
                continue
            if recipient.rid_kind == "ski":
                hit = recipient.ski in skis
            else:
                hit = recipient.serial == serial and recipient.issuer == issuer
            if hit:
                pairs.append((recipient, identity))
    return pairs


def _identity_keys(identity: Identity) -> tuple[str, int, frozenset[bytes]]:
    return _certificate_keys(identity.certificate)


@functools.lru_cache(maxsize=64)
def _certificate_keys(cert: x509.Certificate) -> tuple[str, int, frozenset[bytes]]:
    """Issuer (normalised), serial and key identifiers of one of our certificates.

    Cached by certificate (equal DER, equal keys): the gateway has one identity per network and
    a reload that changes it brings a different certificate, hence a different entry.
    """
    issuer = name_key(asn1_x509.Name.load(cert.issuer.public_bytes()))
    skis = {x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest}
    with suppress(x509.ExtensionNotFound):
        skis.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    return issuer, cert.serial_number, frozenset(skis)


def _key_transport(recipient: Recipient) -> _KeyTransport:
    with parsing("key transport algorithm"):
        algorithm = recipient.algorithm
        name = algorithm["algorithm"].native  # type: ignore[index]
        if name == "rsaes_pkcs1v15":
            return _KeyTransport(name, asym_padding.PKCS1v15(), None)
        if name != "rsaes_oaep":
            raise UnsupportedAlgorithm(f"key transport {name} refused")
        params = algorithm["parameters"]  # type: ignore[index]
        if isinstance(params, core.Void):  # absent: every field takes its default
            params = algos.RSAESOAEPParams({})
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_name = mgf["algorithm"].native
        mgf_hash_name = mgf["parameters"]["algorithm"].native
        p_source = params["p_source_algorithm"]
        label = p_source["parameters"].native if p_source["algorithm"].native else b""
    if mgf_name != "mgf1":
        raise UnsupportedAlgorithm(f"RSA-OAEP mask generation {mgf_name} refused")
    if hash_name not in _OAEP_HASHES or mgf_hash_name not in _OAEP_HASHES:
        raise UnsupportedAlgorithm(f"RSA-OAEP hash {hash_name}/{mgf_hash_name} refused")
    oaep = asym_padding.OAEP(
        mgf=asym_padding.MGF1(_OAEP_HASHES[mgf_hash_name]()),
        algorithm=_OAEP_HASHES[hash_name](),
        label=label or None,
    )
    return _KeyTransport("rsaes_oaep", oaep, hash_name)


def _open(
    envelope: Envelope, recipient: Recipient, identity: Identity
) -> tuple[bytes, dict[str, str]]:
    """The content and what recovered its key (``key_transport`` and friends)."""
    key = identity.private_key
    key_length = {**CBC_KEY_LENGTHS, **GCM_KEY_LENGTHS}[envelope.content_algorithm]
    if isinstance(key, rsa.RSAPrivateKey):
        cek, detail, opaque = _unwrap_ktri(recipient, key, key_length)
    else:
        cek, detail = _unwrap_kari(recipient, key, key_length)
        opaque = False
    content = _decrypt_content(envelope, cek)
    if content is None:
        if opaque:
            raise NotForGateway(_OPAQUE_FAILURE)
        raise MalformedError("CMS content did not decrypt or authenticate")
    return content, detail


def _unwrap_ktri(
    recipient: Recipient, key: rsa.RSAPrivateKey, key_length: int
) -> tuple[bytes, dict[str, str], bool]:
    """The content key, the detail, and whether failures must stay opaque (PKCS#1 v1.5)."""
    transport = _key_transport(recipient)
    detail = {"key_transport": transport.name}
    if transport.oaep_hash is not None:
        detail["oaep_hash"] = transport.oaep_hash
    opaque = transport.name == "rsaes_pkcs1v15"
    try:
        cek: bytes | None = key.decrypt(recipient.encrypted_key, transport.padding)
    except ValueError:
        cek = None
    if cek is None or len(cek) != key_length:
        if not opaque:
            raise NotForGateway("RSA-OAEP key transport did not open with the gateway's key")
        # Carry on with a random key (as RFC 3218 §2.3.2 advises): failure surfaces later,
        # with the same reason and nearly the same work as a wrong content key.
        cek = os.urandom(key_length)
    return cek, detail, opaque


def _unwrap_kari(
    recipient: Recipient, key: ec.EllipticCurvePrivateKey, key_length: int
) -> tuple[bytes, dict[str, str]]:
    """RFC 5753 ephemeral-static ECDH: X9.63 KDF to a key-encryption key, AES key unwrap."""
    with parsing("key agreement"):
        algorithm = recipient.algorithm
        scheme = algorithm["algorithm"].dotted  # type: ignore[index]
        if scheme not in _ECDH_SCHEMES:
            raise UnsupportedAlgorithm(f"key agreement {scheme} refused")
        wrap = asn1_cms.KeyEncryptionAlgorithm.load(
            algorithm["parameters"].dump(), strict=True  # type: ignore[index]
        )
        wrap_name = wrap["algorithm"].native
        wrap_oid = wrap["algorithm"].dotted
        if wrap_name not in _KEY_WRAPS:
            raise UnsupportedAlgorithm(f"key wrap {wrap_name} refused")
        originator = recipient.originator
        if originator.name != "originator_key":  # type: ignore[attr-defined]
            raise UnsupportedAlgorithm("static-static key agreement refused")
        info = originator.chosen  # type: ignore[attr-defined]
        originator_algorithm = info["algorithm"]["algorithm"].dotted
        if originator_algorithm in _CFRG_KEYS:
            raise UnsupportedAlgorithm(f"{_CFRG_KEYS[originator_algorithm]} key agreement "
                                       "(RFC 8418) is not accepted")
        if info["algorithm"]["algorithm"].native != "ec":
            raise UnsupportedAlgorithm("key agreement with a non-EC originator key refused")
        point = info["public_key"].native
        curve_name = info["algorithm"]["parameters"].chosen.native if (
            info["algorithm"]["parameters"].native is not None
        ) else None
    if curve_name is not None and curve_name.lower() != key.curve.name.lower():
        raise NotForGateway("key agreement originator key is on another curve")
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
        shared_secret = key.exchange(ec.ECDH(), peer)
    except ValueError:
        raise MalformedError("key agreement originator key is not a valid point") from None
    kek_length = _KEY_WRAPS[wrap_name]
    hash_name = _ECDH_SCHEMES[scheme]
    kek = X963KDF(
        algorithm=_OAEP_HASHES[hash_name](),
        length=kek_length,
        sharedinfo=_shared_info(wrap_oid, recipient.ukm, kek_length),
    ).derive(shared_secret)
    try:
        cek = aes_key_unwrap(kek, recipient.encrypted_key)
    except (InvalidUnwrap, ValueError):
        raise NotForGateway("key agreement did not open with the gateway's key") from None
    if len(cek) != key_length:
        raise NotForGateway("key agreement gave a key of the wrong length")
    detail = {"key_transport": "ecdh", "kdf_hash": hash_name, "key_wrap": wrap_name}
    return cek, detail


def _shared_info(wrap_oid: str, ukm: bytes | None, kek_length: int) -> bytes:
    fields: dict[str, object] = {
        "key_info": {"algorithm": wrap_oid},
        "supp_pub_info": (kek_length * 8).to_bytes(4, "big"),
    }
    if ukm is not None:
        fields["entity_u_info"] = ukm
    encoded: bytes = _EccCmsSharedInfo(fields).dump()
    return encoded


def _decrypt_content(envelope: Envelope, cek: bytes) -> bytes | None:
    """The plaintext, or None when padding or tag is wrong (the caller picks the reason)."""
    ciphertext = envelope.ciphertext
    if envelope.kind == "auth-enveloped":
        decryptor = Cipher(
            algorithms.AES(cek),
            modes.GCM(envelope.iv, envelope.mac, min_tag_length=len(envelope.mac)),
        ).decryptor()
        if envelope.aad:
            decryptor.authenticate_additional_data(envelope.aad)
        try:
            return decryptor.update(ciphertext) + decryptor.finalize()
        except InvalidTag:
            return None
    if not ciphertext or len(ciphertext) % BLOCK:
        return None
    cbc = Cipher(algorithms.AES(cek), modes.CBC(envelope.iv)).decryptor()
    padded = cbc.update(ciphertext) + cbc.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()  # checks every padding byte
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        # No padding oracle: bad padding is not a reply of its own. The bytes go on as the
        # content, fail to parse or verify like any other garbage, and the pipeline answers
        # every failure after an unauthenticated (CBC) decryption the same way.
        return padded


# --- encrypt ---------------------------------------------------------------------------------

# RFC 4262: a certificate may carry the sender's S/MIME capabilities as an extension; RFC 8551
# §2.7.1 lets a sender use what the recipient advertised.
OID_SMIME_CAPABILITIES = x509.ObjectIdentifier("1.2.840.113549.1.9.15")
_GCM_CAPABILITIES = frozenset({"2.16.840.1.101.3.4.1.6", "2.16.840.1.101.3.4.1.26",
                               "2.16.840.1.101.3.4.1.46"})  # id-aes{128,192,256}-GCM


def advertises_gcm(cert: x509.Certificate) -> bool:
    """True when ``cert``'s SMIMECapabilities extension lists an AES-GCM algorithm, so that
    AuthEnvelopedData (RFC 5083) can be written toward its holder. An unreadable extension
    advertises nothing (the CBC default still reaches every reader)."""
    try:
        ext = cert.extensions.get_extension_for_oid(OID_SMIME_CAPABILITIES)
    except x509.ExtensionNotFound:
        return False
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return False
    with suppress(ValueError, TypeError, AttributeError):
        capabilities = asn1_cms.SMIMECapabilites.load(value.value, strict=True)
        return any(c["capability_id"].dotted in _GCM_CAPABILITIES for c in capabilities)
    return False



def encrypt(content: bytes, recipients: Sequence[x509.Certificate], *,
            gcm: bool = False) -> bytes:
    """Seal ``content`` (as-is, binary) for every recipient: DER ContentInfo EnvelopedData,
    or with ``gcm`` AuthEnvelopedData (RFC 5083/5084: AES-256-GCM, 12-octet nonce, 16-octet
    tag), whose content cannot be altered unnoticed (no padding oracle on the reader's side).

    AES-256 with a fresh key and IV; recipients named by issuer and serial number. RSA
    recipients get RSA PKCS#1 v1.5 key transport; EC recipients get RFC 5753 ephemeral-static
    ECDH (X9.63 KDF with SHA-256, AES-256 key wrap).
    """
    if not recipients:
        raise RecipientCertificateError("no recipient certificate to encrypt for")
    public_keys = [_recipient_key(cert) for cert in recipients]
    cek = os.urandom(32)
    if gcm:
        nonce = os.urandom(12)
        sealed = AESGCM(cek).encrypt(nonce, bytes(content), None)
        ciphertext, mac = sealed[:-16], sealed[-16:]
        algorithm = _DER_OID_AES256_GCM + _der(0x30, _der(0x04, nonce) + _DER_ICV_16)
    else:
        iv = os.urandom(BLOCK)
        padder = padding.PKCS7(BLOCK * 8).padder()
        padded = padder.update(bytes(content)) + padder.finalize()
        encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        algorithm = _DER_OID_AES256_CBC + _der(0x04, iv)

    # The envelope is written as DER by hand around asn1crypto-made pieces: building it as
    # nested asn1crypto values re-encodes every parent on each assignment (~0.5 ms a message).
    recipient_infos: list[bytes] = []
    all_ktri = True
    for cert, public_key in zip(recipients, public_keys, strict=True):
        issuer_and_serial = _issuer_and_serial(cert)
        if isinstance(public_key, rsa.RSAPublicKey):
            recipient_infos.append(_der(0x30, b"".join((
                _DER_VERSION_0,
                issuer_and_serial,
                _DER_KTRI_ALGORITHM,
                _der(0x04, public_key.encrypt(cek, asym_padding.PKCS1v15())),
            ))))
        else:
            all_ktri = False
            recipient_infos.append(_kari_for(
                public_key, asn1_cms.IssuerAndSerialNumber.load(issuer_and_serial), cek
            ).dump())
    content_info = _der(0x30, b"".join((
        _DER_OID_DATA,
        _der(0x30, algorithm),
        _der(0x80, ciphertext),  # encryptedContent [0] IMPLICIT OCTET STRING
    )))
    infos = _der(0x31, b"".join(sorted(recipient_infos)))  # DER: a SET OF sorted by encoding
    if gcm:  # RFC 5083: version 0, no authAttrs, then the tag as the mac
        auth = _der(0x30, _DER_VERSION_0 + infos + content_info + _der(0x04, mac))
        return _der(0x30, _DER_OID_AUTH_ENVELOPED_DATA + _der(0xA0, auth))
    # RFC 5652 §6.1: version 2 as soon as a recipient info is not version 0 (kari is v3).
    enveloped = _der(0x30, (_DER_VERSION_0 if all_ktri else _DER_VERSION_2) + infos
                     + content_info)
    return _der(0x30, _DER_OID_ENVELOPED_DATA + _der(0xA0, enveloped))


def _der(tag: int, body: bytes) -> bytes:
    """One DER TLV (single-octet tag, definite minimal length)."""
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + body


@functools.lru_cache(maxsize=256)
def _issuer_and_serial(cert: x509.Certificate) -> bytes:
    """DER IssuerAndSerialNumber of a recipient certificate (recipients recur: cached)."""
    encoded: bytes = asn1_cms.IssuerAndSerialNumber({
        "issuer": asn1_x509.Name.load(cert.issuer.public_bytes()),
        "serial_number": cert.serial_number,
    }).dump()
    return encoded


_DER_VERSION_0: bytes = core.Integer(0).dump()
_DER_VERSION_2: bytes = core.Integer(2).dump()
_DER_OID_DATA: bytes = core.ObjectIdentifier("1.2.840.113549.1.7.1").dump()
_DER_OID_ENVELOPED_DATA: bytes = core.ObjectIdentifier("1.2.840.113549.1.7.3").dump()
_DER_OID_AES256_CBC: bytes = core.ObjectIdentifier("2.16.840.1.101.3.4.1.42").dump()
_DER_OID_AES256_GCM: bytes = core.ObjectIdentifier("2.16.840.1.101.3.4.1.46").dump()
_DER_OID_AUTH_ENVELOPED_DATA: bytes = core.ObjectIdentifier("1.2.840.113549.1.9.16.1.23").dump()
_DER_ICV_16: bytes = core.Integer(16).dump()  # GCMParameters aes-ICVlen
_DER_KTRI_ALGORITHM: bytes = asn1_cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump()


def _kari_for(
    public_key: ec.EllipticCurvePublicKey,
    issuer_and_serial: asn1_cms.IssuerAndSerialNumber,
    cek: bytes,
) -> asn1_cms.RecipientInfo:
    """A KeyAgreeRecipientInfo with a fresh ephemeral key for one EC recipient."""
    ephemeral = ec.generate_private_key(public_key.curve)
    shared_secret = ephemeral.exchange(ec.ECDH(), public_key)
    wrap_oid = "2.16.840.1.101.3.4.1.45"  # id-aes256-wrap
    kek = X963KDF(
        algorithm=hashes.SHA256(), length=32, sharedinfo=_shared_info(wrap_oid, None, 32)
    ).derive(shared_secret)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return asn1_cms.RecipientInfo(
        name="kari",
        value=asn1_cms.KeyAgreeRecipientInfo({
            "version": "v3",
            "originator": asn1_cms.OriginatorIdentifierOrKey(
                name="originator_key",
                # RFC 5753 §3.1.1: id-ecPublicKey with absent parameters.
                value={"algorithm": {"algorithm": "ec"}, "public_key": point},
            ),
            "key_encryption_algorithm": {
                "algorithm": _ECDH_SEAL_SCHEME,
                "parameters": _WrapAlgorithm({"algorithm": wrap_oid}),
            },
            "recipient_encrypted_keys": [{
                "rid": asn1_cms.KeyAgreementRecipientIdentifier(
                    name="issuer_and_serial_number", value=issuer_and_serial
                ),
                "encrypted_key": aes_key_wrap(kek, cek),
            }],
        }),
    )


def _recipient_key(cert: x509.Certificate) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise RecipientCertificateError("recipient certificate has neither an RSA nor an EC key")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey) and not usage.key_encipherment:
        raise RecipientCertificateError("recipient certificate key usage forbids key encipherment")
    if isinstance(public_key, ec.EllipticCurvePublicKey) and not usage.key_agreement:
        raise RecipientCertificateError("recipient certificate key usage forbids key agreement")
    return public_key
