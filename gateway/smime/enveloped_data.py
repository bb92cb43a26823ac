"""Reading EnvelopedData and AuthEnvelopedData: who it is for, and how its content is sealed.

Rule kept here: the reader only describes (recipients, content algorithm and parameters,
ciphertext); it holds no key and opens nothing. Input is DER (read directly by ``der``) or BER
(asn1crypto); anything unparseable is ``MalformedError`` (asn1crypto's own exceptions never
escape, and no reason quotes the input), another CMS type ``NotEncrypted``, a content algorithm
outside the allow-list ``UnsupportedAlgorithm``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509

from gateway.errors import GatewayError, MalformedError, NotEncrypted, UnsupportedAlgorithm
from gateway.memo import Memo
from gateway.smime import der
from gateway.smime.model import LayerKind

BLOCK = 16  # the AES block, and the CBC IV's length
# Content-encryption allow-list: algorithm name (asn1crypto's) -> key length in bytes.
CBC_KEY_LENGTHS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
GCM_KEY_LENGTHS = {"aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}
# Known but refused: named in the reason so that the operator sees why.
_REFUSED_CONTENT = {
    "tripledes_3key": "3DES",
    "des": "DES",
    "rc2": "RC2",
    "rc4": "RC4",
    "rc5": "RC5",
}
_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
# The names asn1crypto gives the content-encryption algorithms it knows.
_ENCRYPTION_NAMES: dict[str, str] = dict(algos.EncryptionAlgorithmId._map)
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


@dataclass(frozen=True)
class Recipient:
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
class Envelope:
    kind: LayerKind
    recipients: tuple[Recipient, ...]
    recipient_count: int  # every RecipientInfo, key transport or not
    content_algorithm: str
    iv: bytes  # CBC IV or GCM nonce
    ciphertext: bytes
    mac: bytes  # GCM tag (empty for CBC)
    aad: bytes  # DER of authAttrs as a SET OF (empty if absent)


@contextmanager
def parsing(what: str) -> Iterator[None]:
    """Turn whatever asn1crypto raises on bad input into a ``MalformedError``."""
    try:
        yield
    except GatewayError:
        raise
    except Exception as error:  # ValueError, TypeError, KeyError, RecursionError...
        # ``from None``: the library's message may quote bytes of the message.
        raise MalformedError(f"malformed CMS ({what}: {type(error).__name__})") from None


def parse(data: bytes) -> Envelope:
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


def _parse_der(data: bytes) -> Envelope:
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
        if name not in CBC_KEY_LENGTHS or len(algorithm) != 2:
            raise der.Unsupported
        iv = der.content(data, der.expect(algorithm[1], der.OCTET_STRING))
        if len(iv) != BLOCK:
            raise der.Unsupported
        return Envelope(kind="enveloped", recipients=recipients,
                         recipient_count=len(recipients), content_algorithm=name, iv=iv,
                         ciphertext=der.content(data, eci[2]), mac=b"", aad=b"")
    except der.Unsupported:
        raise
    except Exception:  # whatever the general parser would say, it says it
        raise der.Unsupported from None


def _ktri_der(data: bytes, element: der.Element) -> Recipient:
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
        return Recipient(method="ktri", rid_kind="issuer-serial",
                          issuer=name_key(asn1_x509.Name.load(der.whole(data, parts[0]))),
                          serial=der.integer(data, parts[1]), ski=None,
                          algorithm=key_algorithm, encrypted_key=encrypted_key)
    if rid.tag == der.CONTEXT_0_PRIMITIVE:
        return Recipient(method="ktri", rid_kind="ski", issuer=None, serial=None,
                          ski=der.content(data, rid), algorithm=key_algorithm,
                          encrypted_key=encrypted_key)
    raise der.Unsupported


def _parse_general(data: bytes) -> Envelope:
    with parsing("ContentInfo"):
        info = asn1_cms.ContentInfo.load(data, strict=True)
        content_type = info["content_type"].native
    if content_type not in ("enveloped_data", "authenticated_enveloped_data"):
        raise NotEncrypted(f"CMS content type is {content_type}, not an enveloped one")
    with parsing("EnvelopedData"):
        body = info["content"]
        if not isinstance(body, asn1_cms.EnvelopedData | asn1_cms.AuthEnvelopedData):
            raise MalformedError("CMS enveloped content is missing")
        recipients: list[Recipient] = []
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
    return Envelope(
        kind=kind,
        recipients=tuple(recipients),
        recipient_count=count,
        content_algorithm=algorithm_name,
        iv=iv,
        ciphertext=ciphertext,
        mac=mac,
        aad=aad,
    )


def _parse_ktri(ktri: asn1_cms.KeyTransRecipientInfo) -> Recipient:
    rid = ktri["rid"]
    encrypted_key = ktri["encrypted_key"].native
    algorithm = ktri["key_encryption_algorithm"]
    if rid.name == "issuer_and_serial_number":
        return Recipient(
            method="ktri",
            rid_kind="issuer-serial",
            issuer=name_key(rid.chosen["issuer"]),
            serial=rid.chosen["serial_number"].native,
            ski=None,
            algorithm=algorithm,
            encrypted_key=encrypted_key,
        )
    return Recipient(
        method="ktri",
        rid_kind="ski",
        issuer=None,
        serial=None,
        ski=rid.chosen.native,
        algorithm=algorithm,
        encrypted_key=encrypted_key,
    )


def _parse_kari(kari: asn1_cms.KeyAgreeRecipientInfo) -> list[Recipient]:
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
            recipients.append(Recipient(
                rid_kind="issuer-serial",
                issuer=name_key(rid.chosen["issuer"]),
                serial=rid.chosen["serial_number"].native,
                ski=None,
                encrypted_key=key,
                **shared,
            ))
        else:
            recipients.append(Recipient(
                rid_kind="ski",
                issuer=None,
                serial=None,
                ski=rid.chosen["subject_key_identifier"].native,
                encrypted_key=key,
                **shared,
            ))
    return recipients


def name_key(name: asn1_x509.Name) -> str:
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
    if kind == "enveloped" and name in CBC_KEY_LENGTHS:
        iv = algorithm["parameters"].native
        if not isinstance(iv, bytes) or len(iv) != BLOCK:
            raise MalformedError("CMS AES-CBC parameters are not a 16-byte IV")
        return iv, 0
    if kind == "auth-enveloped" and name in GCM_KEY_LENGTHS:
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


def check_content_algorithm(envelope: Envelope) -> None:
    name = envelope.content_algorithm
    if name in _REFUSED_CONTENT:
        raise UnsupportedAlgorithm(f"{_REFUSED_CONTENT[name]} content encryption refused")
    allowed = GCM_KEY_LENGTHS if envelope.kind == "auth-enveloped" else CBC_KEY_LENGTHS
    if name not in allowed:
        raise UnsupportedAlgorithm(f"content encryption {name} refused in {envelope.kind} data")

