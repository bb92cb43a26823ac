"""CMS EnvelopedData and AuthEnvelopedData: open what peers encrypt for us, seal what we relay.

Rules kept here:

* Pure functions on bytes: no files, no sockets, no clock. Input may be DER or BER (indefinite
  lengths, chunked strings, as ``openssl cms -stream`` writes): asn1crypto parses it, the
  cryptography primitives do the rest.
* Every failure is a typed ``gateway.errors`` error: unparseable input is ``MalformedError``
  (asn1crypto's own exceptions never escape), another CMS type is ``NotEncrypted``, no recipient
  info for our identities is ``NotForGateway``, an algorithm outside the allow-list (3DES, RC2,
  unknown OIDs) is ``UnsupportedAlgorithm``.
* No Bleichenbacher oracle: after an RSA PKCS#1 v1.5 key transport, a key that does not unwrap,
  a key of the wrong length, bad CBC padding and a bad GCM tag all end in the same
  ``NotForGateway`` reason, and a failed unwrap continues with a random key so that the work done
  does not depend on the padding either.
* We seal with AES-256-CBC and RSA PKCS#1 v1.5 key transport, one recipient info per recipient
  (issuerAndSerialNumber): the combination every peer on both networks opens.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
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
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from gateway.errors import (
    GatewayError,
    MalformedError,
    NotEncrypted,
    NotForGateway,
    RecipientCertificateError,
    UnsupportedAlgorithm,
)
from gateway.memo import Memo
from gateway.smime import der
from gateway.smime.model import Identity, Layer, LayerKind

__all__ = ["decrypt", "encrypt"]

# Content-encryption allow-list: algorithm name (asn1crypto's) -> key length in bytes.
_CBC_KEY_LENGTHS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_GCM_KEY_LENGTHS = {"aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}
# Known but refused: named in the reason so that the operator sees why.
_REFUSED_CONTENT = {
    "tripledes_3key": "3DES",
    "des": "DES",
    "rc2": "RC2",
    "rc4": "RC4",
    "rc5": "RC5",
}
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
_ECDH_SEAL_SCHEME = "1.3.132.1.11.1"  # dhSinglePass-stdDH-sha256kdf-scheme, what we write
_KEY_WRAPS = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}
_BLOCK = 16
_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
# The names asn1crypto gives the content-encryption algorithms it knows.
_ENCRYPTION_NAMES: dict[str, str] = dict(algos.EncryptionAlgorithmId._map)
# The one reason given for every failure after a PKCS#1 v1.5 unwrap (see the module rules).
_OPAQUE_FAILURE = "the message key could not be recovered with the gateway's key"
# Normalised issuer names by their encoding: RFC 4518 string preparation costs ~0.2 ms a name,
# and every message names the same few issuers. Bounded: cleared when full, long names skipped.
_NAME_CACHE_MAX_BYTES = 2048
_name_keys: Memo[bytes, str] = Memo(1024)


class _GcmParameters(core.Sequence):  # type: ignore[misc]
    """RFC 5084 ``GCMParameters`` (asn1crypto 1.5.1 has no definition of its own)."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("aes_nonce", core.OctetString),
        ("aes_icv_len", core.Integer, {"default": 12}),
    ]


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
class _Recipient:
    """One key for one recipient: a KeyTransRecipientInfo, or one RecipientEncryptedKey of a
    KeyAgreeRecipientInfo (with what that info shares), reduced to plain values."""

    method: str  # "ktri" | "kari"
    rid_kind: str  # "issuer-serial" | "ski"
    issuer: str | None  # asn1crypto's normalised ("hashable") form of the issuer name
    serial: int | None
    ski: bytes | None
    algorithm: object  # the asn1crypto KeyEncryptionAlgorithm, parsed when the recipient matches
    encrypted_key: bytes
    originator: object = None  # kari: the asn1crypto OriginatorIdentifierOrKey
    ukm: bytes | None = None  # kari: user keying material


@dataclass(frozen=True)
class _Envelope:
    kind: LayerKind
    recipients: tuple[_Recipient, ...]
    recipient_count: int  # every RecipientInfo, key transport or not
    content_algorithm: str
    iv: bytes  # CBC IV or GCM nonce
    ciphertext: bytes
    mac: bytes  # GCM tag (empty for CBC)
    aad: bytes  # DER of authAttrs as a SET OF (empty if absent)


@dataclass(frozen=True)
class _KeyTransport:
    name: str  # "rsaes_pkcs1v15" | "rsaes_oaep"
    padding: asym_padding.AsymmetricPadding
    oaep_hash: str | None


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Turn whatever asn1crypto raises on bad input into a ``MalformedError``."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as error:  # ValueError, TypeError, KeyError, RecursionError...
        # ``from None``: the library's message may quote bytes of the message.
        raise MalformedError(f"malformed CMS ({what}: {type(error).__name__})") from None


# --- decrypt ---------------------------------------------------------------------------------


def decrypt(cms: bytes, identities: Sequence[Identity]) -> tuple[bytes, Layer]:
    """Open an EnvelopedData or AuthEnvelopedData ContentInfo (DER or BER) for one of our keys.

    Returns the decrypted content exactly as it was encrypted (the inner MIME entity) and the
    layer describing how it was protected.
    """
    envelope = _parse(cms)
    candidates = _match(envelope.recipients, identities)
    if not candidates:
        raise NotForGateway("encrypted for none of the gateway's identities")
    _check_content_algorithm(envelope)

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


def _parse(data: bytes) -> _Envelope:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError("CMS input is not bytes")
    data = bytes(data)
    if not data:
        raise MalformedError("empty CMS input")
    try:  # the common shape, read directly; anything else goes to asn1crypto
        return _parse_der(data)
    except der.Unsupported:
        pass
    return _parse_general(data)


def _parse_der(data: bytes) -> _Envelope:
    """``_parse_general``'s result for plain DER of the usual shape (``der.Unsupported``
    otherwise): an EnvelopedData without originator info or attributes, key-transport
    recipients only, AES-CBC content encrypted in one piece."""
    try:
        top = der.only(data, 0, len(data), der.SEQUENCE)
        info = der.children(data, top.body, top.end)
        if len(info) != 2 or der.oid(data, info[0]) != _OID_ENVELOPED_DATA:
            raise der.Unsupported
        wrapper = der.expect(info[1], der.CONTEXT_0)
        body = der.only(data, wrapper.body, wrapper.end, der.SEQUENCE)
        fields = der.children(data, body.body, body.end)
        if [f.tag for f in fields] != [der.INTEGER, der.SET, der.SEQUENCE]:
            raise der.Unsupported
        der.integer(data, fields[0])
        recipients = tuple(_ktri_der(data, r)
                           for r in der.children(data, fields[1].body, fields[1].end))
        eci = der.children(data, fields[2].body, fields[2].end)
        if len(eci) != 3 or eci[2].tag != der.CONTEXT_0_PRIMITIVE:
            raise der.Unsupported  # detached, or BER chunks (openssl -stream)
        der.oid(data, eci[0])
        algorithm = der.children(data, der.expect(eci[1], der.SEQUENCE).body, eci[1].end)
        name = _ENCRYPTION_NAMES.get(der.oid(data, algorithm[0]), "")
        if name not in _CBC_KEY_LENGTHS or len(algorithm) != 2:
            raise der.Unsupported
        iv = der.content(data, der.expect(algorithm[1], der.OCTET_STRING))
        if len(iv) != _BLOCK:
            raise der.Unsupported
        return _Envelope(kind="enveloped", recipients=recipients,
                         recipient_count=len(recipients), content_algorithm=name, iv=iv,
                         ciphertext=der.content(data, eci[2]), mac=b"", aad=b"")
    except der.Unsupported:
        raise
    except Exception:  # whatever the general parser would say, it says it
        raise der.Unsupported from None


def _ktri_der(data: bytes, element: der.Element) -> _Recipient:
    fields = der.children(data, der.expect(element, der.SEQUENCE).body, element.end)
    if [f.tag for f in fields][:1] != [der.INTEGER] or len(fields) != 4:
        raise der.Unsupported
    der.integer(data, fields[0])
    rid = fields[1]
    algorithm = der.expect(fields[2], der.SEQUENCE)
    if len(der.children(data, algorithm.body, algorithm.end)) not in (1, 2):
        raise der.Unsupported
    encrypted_key = der.content(data, der.expect(fields[3], der.OCTET_STRING))
    key_algorithm = asn1_cms.KeyEncryptionAlgorithm.load(der.whole(data, algorithm))
    if rid.tag == der.SEQUENCE:
        parts = der.children(data, rid.body, rid.end)
        if len(parts) != 2 or parts[0].tag != der.SEQUENCE:
            raise der.Unsupported
        return _Recipient(method="ktri", rid_kind="issuer-serial",
                          issuer=_name_key(asn1_x509.Name.load(der.whole(data, parts[0]))),
                          serial=der.integer(data, parts[1]), ski=None,
                          algorithm=key_algorithm, encrypted_key=encrypted_key)
    if rid.tag == der.CONTEXT_0_PRIMITIVE:
        return _Recipient(method="ktri", rid_kind="ski", issuer=None, serial=None,
                          ski=der.content(data, rid), algorithm=key_algorithm,
                          encrypted_key=encrypted_key)
    raise der.Unsupported


def _parse_general(data: bytes) -> _Envelope:
    with _parsing("ContentInfo"):
        info = asn1_cms.ContentInfo.load(data, strict=True)
        content_type = info["content_type"].native
    if content_type not in ("enveloped_data", "authenticated_enveloped_data"):
        raise NotEncrypted(f"CMS content type is {content_type}, not an enveloped one")
    with _parsing("EnvelopedData"):
        body = info["content"]
        if not isinstance(body, asn1_cms.EnvelopedData | asn1_cms.AuthEnvelopedData):
            raise MalformedError("CMS enveloped content is missing")
        recipients: list[_Recipient] = []
        count = 0
        for info_choice in body["recipient_infos"]:
            count += 1
            if info_choice.name == "ktri":
                recipients.append(_parse_ktri(info_choice.chosen))
            elif info_choice.name == "kari":
                recipients.extend(_parse_kari(info_choice.chosen))
            # kekri / pwri / ori: shared secrets the gateway never holds; skipped.
        if isinstance(body, asn1_cms.AuthEnvelopedData):
            kind: LayerKind = "auth-enveloped"
            eci = body["auth_encrypted_content_info"]
            mac = body["mac"].native
            attrs = body["auth_attrs"]
            # RFC 5083 §2.1: the AAD is the DER of authAttrs with a SET OF tag, not [1].
            aad = b"" if isinstance(attrs, core.Void) else attrs.untag().dump(force=True)
        else:
            kind = "enveloped"
            eci = body["encrypted_content_info"]
            mac = b""
            aad = b""
        algorithm = eci["content_encryption_algorithm"]
        algorithm_name = algorithm["algorithm"].native
        ciphertext = eci["encrypted_content"].native
        if ciphertext is None:
            raise MalformedError("CMS encrypted content is absent (detached)")
        iv, icv_len = _content_parameters(kind, algorithm_name, algorithm)
    if kind == "auth-enveloped" and icv_len and len(mac) != icv_len:
        raise MalformedError("CMS authentication tag length does not match its parameters")
    return _Envelope(
        kind=kind,
        recipients=tuple(recipients),
        recipient_count=count,
        content_algorithm=algorithm_name,
        iv=iv,
        ciphertext=ciphertext,
        mac=mac,
        aad=aad,
    )


def _parse_ktri(ktri: asn1_cms.KeyTransRecipientInfo) -> _Recipient:
    rid = ktri["rid"]
    encrypted_key = ktri["encrypted_key"].native
    algorithm = ktri["key_encryption_algorithm"]
    if rid.name == "issuer_and_serial_number":
        return _Recipient(
            method="ktri",
            rid_kind="issuer-serial",
            issuer=_name_key(rid.chosen["issuer"]),
            serial=rid.chosen["serial_number"].native,
            ski=None,
            algorithm=algorithm,
            encrypted_key=encrypted_key,
        )
    return _Recipient(
        method="ktri",
        rid_kind="ski",
        issuer=None,
        serial=None,
        ski=rid.chosen.native,
        algorithm=algorithm,
        encrypted_key=encrypted_key,
    )


def _parse_kari(kari: asn1_cms.KeyAgreeRecipientInfo) -> list[_Recipient]:
    ukm = kari["ukm"].native
    shared = {
        "method": "kari",
        "algorithm": kari["key_encryption_algorithm"],
        "originator": kari["originator"],
        "ukm": ukm,
    }
    recipients = []
    for encrypted in kari["recipient_encrypted_keys"]:
        rid = encrypted["rid"]
        key = encrypted["encrypted_key"].native
        if rid.name == "issuer_and_serial_number":
            recipients.append(_Recipient(
                rid_kind="issuer-serial",
                issuer=_name_key(rid.chosen["issuer"]),
                serial=rid.chosen["serial_number"].native,
                ski=None,
                encrypted_key=key,
                **shared,
            ))
        else:
            recipients.append(_Recipient(
                rid_kind="ski",
                issuer=None,
                serial=None,
                ski=rid.chosen["subject_key_identifier"].native,
                encrypted_key=key,
                **shared,
            ))
    return recipients


def _name_key(name: asn1_x509.Name) -> str:
    """asn1crypto's normalised ("hashable") form of ``name``, cached by its encoding.

    The same value and the same exceptions as ``name.hashable``: only successes are cached.
    """
    encoded: bytes = name.dump()
    key = _name_keys.get(encoded)
    if key is None:
        key = name.hashable
        if len(encoded) <= _NAME_CACHE_MAX_BYTES:
            _name_keys.put(encoded, key)
    return key


def _content_parameters(
    kind: LayerKind, name: str, algorithm: algos.EncryptionAlgorithm
) -> tuple[bytes, int]:
    """The IV (CBC) or nonce and tag length (GCM); empty for what is refused later."""
    if kind == "enveloped" and name in _CBC_KEY_LENGTHS:
        iv = algorithm["parameters"].native
        if not isinstance(iv, bytes) or len(iv) != _BLOCK:
            raise MalformedError("CMS AES-CBC parameters are not a 16-byte IV")
        return iv, 0
    if kind == "auth-enveloped" and name in _GCM_KEY_LENGTHS:
        raw = algorithm["parameters"]
        if isinstance(raw, core.Void):
            raise MalformedError("CMS AES-GCM parameters are absent")
        params = _GcmParameters.load(raw.dump(), strict=True)
        nonce = params["aes_nonce"].native
        icv_len = params["aes_icv_len"].native
        # RFC 5084: a 12-octet nonce is recommended; GCM needs at least 8 for cryptography.
        if not 8 <= len(nonce) <= 64 or icv_len not in (12, 13, 14, 15, 16):
            raise MalformedError("CMS AES-GCM parameters out of range")
        return nonce, icv_len
    return b"", 0


def _check_content_algorithm(envelope: _Envelope) -> None:
    name = envelope.content_algorithm
    if name in _REFUSED_CONTENT:
        raise UnsupportedAlgorithm(f"{_REFUSED_CONTENT[name]} content encryption refused")
    allowed = _GCM_KEY_LENGTHS if envelope.kind == "auth-enveloped" else _CBC_KEY_LENGTHS
    if name not in allowed:
        raise UnsupportedAlgorithm(f"content encryption {name} refused in {envelope.kind} data")


def _match(
    recipients: Sequence[_Recipient], identities: Sequence[Identity]
) -> list[tuple[_Recipient, Identity]]:
    """Pairs (recipient info, identity) whose identifier names the identity's certificate."""
    keys = [(_identity_keys(identity), identity) for identity in identities]
    pairs: list[tuple[_Recipient, Identity]] = []
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
    issuer = _name_key(asn1_x509.Name.load(cert.issuer.public_bytes()))
    skis = {x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest}
    with suppress(x509.ExtensionNotFound):
        skis.add(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    return issuer, cert.serial_number, frozenset(skis)


def _key_transport(recipient: _Recipient) -> _KeyTransport:
    with _parsing("key transport algorithm"):
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
    envelope: _Envelope, recipient: _Recipient, identity: Identity
) -> tuple[bytes, dict[str, str]]:
    """The content and what recovered its key (``key_transport`` and friends)."""
    key = identity.private_key
    key_length = {**_CBC_KEY_LENGTHS, **_GCM_KEY_LENGTHS}[envelope.content_algorithm]
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
    recipient: _Recipient, key: rsa.RSAPrivateKey, key_length: int
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
    recipient: _Recipient, key: ec.EllipticCurvePrivateKey, key_length: int
) -> tuple[bytes, dict[str, str]]:
    """RFC 5753 ephemeral-static ECDH: X9.63 KDF to a key-encryption key, AES key unwrap."""
    with _parsing("key agreement"):
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


def _decrypt_content(envelope: _Envelope, cek: bytes) -> bytes | None:
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
    if not ciphertext or len(ciphertext) % _BLOCK:
        return None
    cbc = Cipher(algorithms.AES(cek), modes.CBC(envelope.iv)).decryptor()
    padded = cbc.update(ciphertext) + cbc.finalize()
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()  # checks every padding byte
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


# --- encrypt ---------------------------------------------------------------------------------


def encrypt(content: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """Seal ``content`` (as-is, binary) for every recipient: DER ContentInfo EnvelopedData.

    AES-256-CBC with a fresh key and IV; recipients named by issuer and serial number. RSA
    recipients get RSA PKCS#1 v1.5 key transport; EC recipients get RFC 5753 ephemeral-static
    ECDH (X9.63 KDF with SHA-256, AES-256 key wrap).
    """
    if not recipients:
        raise RecipientCertificateError("no recipient certificate to encrypt for")
    public_keys = [_recipient_key(cert) for cert in recipients]
    cek = os.urandom(32)
    iv = os.urandom(_BLOCK)
    padder = padding.PKCS7(_BLOCK * 8).padder()
    padded = padder.update(bytes(content)) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()

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
    # RFC 5652 §6.1: version 2 as soon as a recipient info is not version 0 (kari is v3).
    enveloped = _der(0x30, b"".join((
        _DER_VERSION_0 if all_ktri else _DER_VERSION_2,
        _der(0x31, b"".join(sorted(recipient_infos))),  # DER: a SET OF sorted by encoding
        _der(0x30, b"".join((
            _DER_OID_DATA,
            _der(0x30, _DER_OID_AES256_CBC + _der(0x04, iv)),
            _der(0x80, ciphertext),  # encryptedContent [0] IMPLICIT OCTET STRING
        ))),
    )))
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
