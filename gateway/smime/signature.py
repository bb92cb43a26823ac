"""CMS SignedData: verify what authors sign, sign what the gateway relays.

Rules kept here:

* Pure functions on bytes: no files, no sockets, no clock read by us (the verification time is a
  parameter; the signing-time attribute of ``sign`` is stamped by cryptography's builder).
* Any input, however hostile, ends in a ``Verified`` or a ``gateway.errors`` error: unparseable
  CMS (DER or BER) is ``MalformedError``, asn1crypto's and cryptography's own exceptions never
  escape, and their messages (which may quote input bytes) never reach a reason.
* Exactly one SignerInfo (``SignerCountError`` otherwise): with several, a client may show "valid"
  for the one signer that verifies over content another one did not sign (Johnny c2/c3).
* Detached and opaque are never mixed: eContent together with a detached content is refused
  ("eContent confusion", Johnny c1), so the content we return is always what was signed.
* The encapsulated content type is id-data (a MIME entity); anything else is ``MalformedError``.
* Signed attributes, when present, bind the content: content-type equals eContentType,
  message-digest equals the digest of the content (constant-time compare), and the signature
  covers the DER of the attributes as a SET. Without them the signature covers the content.
  Only those attributes (and signing-time) are decoded: others are covered by the signature but
  may not match asn1crypto's definitions (Outlook's encrypKeyPref does not).
* Algorithm allow-list: digests SHA-256/384/512; RSA PKCS#1 v1.5, RSASSA-PSS and ECDSA over
  those. SHA-1, MD5 and anything unknown is ``WeakAlgorithm``.
* The signer is then validated by ``TrustStore.validate(..., "sign")`` as of the given time.
  Matching From to the signer's addresses is the caller's job (``Signer.addresses``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.errors import (
    BadSignature,
    GatewayError,
    MalformedError,
    SignerCountError,
    UntrustedSigner,
    WeakAlgorithm,
)
from gateway.memo import Memo
from gateway.smime import der
from gateway.smime.enveloped_data import parsing
from gateway.smime.model import Identity, Signer, Verified
from gateway.smime.trust import TrustStore, email_addresses

__all__ = ["sign", "verify"]

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
_DECODED_ATTRS = frozenset({_OID_CONTENT_TYPE, _OID_MESSAGE_DIGEST, _OID_SIGNING_TIME})
# The names asn1crypto gives the content types it knows (its ContentType map).
_CONTENT_TYPE_NAMES: dict[str, str] = dict(asn1_cms.ContentType._map)

# Digest allow-list: OID -> (hashlib name, cryptography hash).
_DIGESTS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "2.16.840.1.101.3.4.2.1": ("sha256", hashes.SHA256),
    "2.16.840.1.101.3.4.2.2": ("sha384", hashes.SHA384),
    "2.16.840.1.101.3.4.2.3": ("sha512", hashes.SHA512),
}
_WEAK_DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "1.2.840.113549.2.5": "md5",
    "1.2.840.113549.2.2": "md2",
    "2.16.840.1.101.3.4.2.4": "sha224",
}

_RSA = "1.2.840.113549.1.1.1"
_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_ED25519 = "1.3.101.112"  # RFC 8419: the digest of the signed attributes is SHA-512
_ED448 = "1.3.101.113"
# Signature OIDs that name their hash: OID -> (family, digest name).
_HASHED_SIGNATURES = {
    "1.2.840.113549.1.1.11": ("rsassa_pkcs1v15", "sha256"),
    "1.2.840.113549.1.1.12": ("rsassa_pkcs1v15", "sha384"),
    "1.2.840.113549.1.1.13": ("rsassa_pkcs1v15", "sha512"),
    "1.2.840.10045.4.3.2": ("ecdsa", "sha256"),
    "1.2.840.10045.4.3.3": ("ecdsa", "sha384"),
    "1.2.840.10045.4.3.4": ("ecdsa", "sha512"),
}
# Parsed certificates by their DER (bounded; cleared when full; large ones not kept).
_CERT_CACHE_MAX_BYTES = 16 * 1024
_certificates: Memo[bytes, x509.Certificate] = Memo(1024)

_WEAK_SIGNATURES = {
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.3.14.3.2.29": "sha1WithRSAEncryption",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10040.4.3": "dsa-with-sha1",
    "1.2.840.113549.1.1.14": "sha224WithRSAEncryption",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
}




@dataclass(frozen=True)
class _SignerInfo:
    issuer_serial: tuple[asn1_cms.Name, int] | None
    key_identifier: bytes | None
    digest_oid: str
    signature_oid: str
    pss: tuple[str, str, int] | None  # (hash OID, MGF1 hash OID, salt length)
    signed_attrs: list[tuple[str, list[object]]] | None  # (type OID, native values)
    signed_attrs_der: bytes | None  # DER of the SET the signature covers
    signature: bytes


@dataclass(frozen=True)
class _Signed:
    content_type: str
    econtent: bytes | None
    certificates: list[tuple[asn1_cms.Certificate, x509.Certificate]]
    signer: _SignerInfo


# --- verify ----------------------------------------------------------------------------------


def verify(
    cms: bytes,
    store: TrustStore,
    at: dt.datetime,
    *,
    detached_content: bytes | None = None,
) -> Verified:
    """Verify a DER/BER ContentInfo SignedData as of ``at``; return what was signed and by whom.

    ``detached_content`` is the signed MIME entity of a ``multipart/signed`` (raw bytes of the
    first part, CRLF); for an opaque signature leave it None: the content is the eContent.
    """
    signed = _parse(cms)
    if signed.econtent is not None and detached_content is not None:
        raise MalformedError("eContent confusion: detached content given and eContent present")
    content = signed.econtent if signed.econtent is not None else detached_content
    if content is None:
        raise MalformedError("detached signature without its content")
    if signed.content_type != _OID_DATA:
        raise MalformedError("encapsulated content type is not id-data")

    info = signed.signer
    digest_name, digest_hash = _digest(info.digest_oid)
    family = _signature_family(info, digest_name)
    signing_time = _check_signed_attrs(info, signed.content_type, content, digest_name)

    cert = _find_signer_cert(info, signed.certificates)
    to_be_signed = info.signed_attrs_der if info.signed_attrs_der is not None else content
    _check_signature(cert, info, family, digest_hash(), to_be_signed)

    others = [c for _, c in signed.certificates if c is not cert]
    chain = store.validate(cert, others, at, "sign")
    return Verified(
        content=content,
        signer=Signer(
            certificate=cert,
            chain=chain,
            addresses=email_addresses(cert),
            digest_algorithm=digest_name,
            signature_algorithm=family,
            signing_time=signing_time,
        ),
    )


def _parse(data: bytes) -> _Signed:
    try:  # the common shape, read directly; anything else goes to asn1crypto
        return _parse_der(bytes(data))
    except der.Unsupported:
        pass
    return _parse_general(data)


def _parse_der(data: bytes) -> _Signed:
    """``_parse_general``'s result for plain DER of the usual shape (``der.Unsupported``
    otherwise): ContentInfo, SignedData without BER, one SignerInfo, certificates only,
    PKCS#1 v1.5 or ECDSA, UTCTime/GeneralizedTime signing time in their plain forms."""
    try:
        top = der.only(data, 0, len(data), der.SEQUENCE)
        info = der.children(data, top.body, top.end)
        if len(info) != 2 or der.oid(data, info[0]) != _OID_SIGNED_DATA:
            raise der.Unsupported
        wrapper = der.expect(info[1], der.CONTEXT_0)
        body = der.only(data, wrapper.body, wrapper.end, der.SEQUENCE)
        fields = der.children(data, body.body, body.end)
        tags = [f.tag for f in fields]
        if tags[:3] != [der.INTEGER, der.SET, der.SEQUENCE] or tags[-1] != der.SET:
            raise der.Unsupported
        middle = tags[3:-1]
        if middle not in ([], [der.CONTEXT_0], [der.CONTEXT_1], [der.CONTEXT_0, der.CONTEXT_1]):
            raise der.Unsupported
        encap = der.children(data, fields[2].body, fields[2].end)
        if not 1 <= len(encap) <= 2:
            raise der.Unsupported
        content_type = der.oid(data, encap[0])
        if content_type != _OID_DATA:  # asn1crypto types eContent by it: its reading decides
            raise der.Unsupported
        econtent: bytes | None = None
        if len(encap) == 2:
            explicit = der.expect(encap[1], der.CONTEXT_0)
            octets = der.only(data, explicit.body, explicit.end, der.OCTET_STRING)
            econtent = der.content(data, octets)
        certificates: list[tuple[asn1_cms.Certificate, x509.Certificate]] = []
        if middle and middle[0] == der.CONTEXT_0:
            for choice in der.children(data, fields[3].body, fields[3].end):
                cert_der = der.whole(data, der.expect(choice, der.SEQUENCE))
                certificates.append((asn1_cms.Certificate.load(cert_der),
                                     _load_certificate(cert_der)))
        signer_infos = der.children(data, fields[-1].body, fields[-1].end)
        if len(signer_infos) != 1:
            raise der.Unsupported  # the general parser says how many, with its error
        signer = _signer_info_der(data, der.expect(signer_infos[0], der.SEQUENCE))
    except der.Unsupported:
        raise
    except Exception:  # e.g. a certificate cryptography cannot read: the general parser says
        raise der.Unsupported from None
    return _Signed(content_type, econtent, certificates, signer)


def _signer_info_der(data: bytes, element: der.Element) -> _SignerInfo:
    fields = der.children(data, element.body, element.end)
    if len(fields) < 5:
        raise der.Unsupported
    der.integer(data, fields[0])  # version: read, not judged (as asn1crypto)
    sid = fields[1]
    issuer_serial: tuple[asn1_cms.Name, int] | None = None
    key_identifier: bytes | None = None
    if sid.tag == der.SEQUENCE:
        parts = der.children(data, sid.body, sid.end)
        if len(parts) != 2 or parts[0].tag != der.SEQUENCE:
            raise der.Unsupported
        issuer_serial = (asn1_cms.Name.load(der.whole(data, parts[0])),
                         der.integer(data, parts[1]))
    elif sid.tag == der.CONTEXT_0_PRIMITIVE:
        key_identifier = der.content(data, sid)
    else:
        raise der.Unsupported
    digest_oid = _algorithm_der(data, fields[2])
    rest = fields[3:]
    signed_attrs: list[tuple[str, list[object]]] | None = None
    signed_attrs_der: bytes | None = None
    if rest[0].tag == der.CONTEXT_0:
        attrs = rest[0]
        signed_attrs = [_attribute_der(data, a) for a in der.children(data, attrs.body, attrs.end)]
        signed_attrs_der = b"\x31" + data[attrs.start + 1 : attrs.end]
        rest = rest[1:]
    if len(rest) not in (2, 3) or (len(rest) == 3 and rest[2].tag != der.CONTEXT_1):
        raise der.Unsupported
    signature_oid = _algorithm_der(data, rest[0])
    if signature_oid == _PSS:
        raise der.Unsupported  # its parameters are read by the general parser
    return _SignerInfo(
        issuer_serial=issuer_serial,
        key_identifier=key_identifier,
        digest_oid=digest_oid,
        signature_oid=signature_oid,
        pss=None,
        signed_attrs=signed_attrs,
        signed_attrs_der=signed_attrs_der,
        signature=der.content(data, der.expect(rest[1], der.OCTET_STRING)),
    )


def _algorithm_der(data: bytes, element: der.Element) -> str:
    """The OID of an AlgorithmIdentifier whose parameters are absent or NULL."""
    parts = der.children(data, der.expect(element, der.SEQUENCE).body, element.end)
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and der.whole(data, parts[1]) != b"\x05\x00"):
        raise der.Unsupported
    return der.oid(data, parts[0])


def _attribute_der(data: bytes, element: der.Element) -> tuple[str, list[object]]:
    parts = der.children(data, der.expect(element, der.SEQUENCE).body, element.end)
    if len(parts) != 2:
        raise der.Unsupported
    oid = der.oid(data, parts[0])
    values = der.children(data, der.expect(parts[1], der.SET)[2], parts[1][3])
    if oid not in _DECODED_ATTRS:
        return oid, []
    if oid == _OID_CONTENT_TYPE:
        # asn1crypto names the OIDs it knows ("data"); the same names here
        return oid, [_CONTENT_TYPE_NAMES.get(d, d) for d in (der.oid(data, v) for v in values)]
    if oid == _OID_MESSAGE_DIGEST:
        return oid, [der.content(data, der.expect(v, der.OCTET_STRING)) for v in values]
    return oid, [_time_der(data, v) for v in values]


def _time_der(data: bytes, value: der.Element) -> dt.datetime:
    text = der.content(data, value).decode("ascii")
    if value.tag == der.UTC_TIME and len(text) == 13 and text[12] == "Z" and text[:12].isdigit():
        year = int(text[:2])
        year += 2000 if year < 50 else 1900  # RFC 5280: UTCTime is 1950..2049
        rest = text[2:12]
    elif (value.tag == der.GENERALIZED_TIME and len(text) == 15 and text[14] == "Z"
          and text[:14].isdigit() and text[:4] != "0000"):
        year = int(text[:4])
        rest = text[4:14]
    else:
        raise der.Unsupported
    return dt.datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                       int(rest[8:10]), tzinfo=dt.UTC)


def _parse_general(data: bytes) -> _Signed:
    with parsing("ContentInfo"):
        info = asn1_cms.ContentInfo.load(data, strict=True)
        if info["content_type"].dotted != _OID_SIGNED_DATA:
            raise MalformedError("CMS content is not SignedData")
        signed_data = info["content"]
    with parsing("SignedData"):
        encap = signed_data["encap_content_info"]
        content_type = encap["content_type"].dotted
        econtent_field = encap["content"]
        econtent: bytes | None = None
        if econtent_field.native is not None:
            # BER chunked OCTET STRINGs (openssl -stream) come back joined by ``native``.
            econtent = bytes(econtent_field.native)
        signer_infos = list(signed_data["signer_infos"])
    if len(signer_infos) != 1:
        raise SignerCountError(f"{len(signer_infos)} SignerInfos; exactly one is accepted")
    with parsing("certificates"):
        certificates: list[tuple[asn1_cms.Certificate, x509.Certificate]] = []
        for choice in signed_data["certificates"] or ():
            if choice.name != "certificate":
                continue  # attribute certificates and other formats say nothing about signers
            parsed = choice.chosen
            # The bytes as received: a certificate that is not DER is malformed (its
            # signature covers its DER encoding), and re-encoding costs more than the rest.
            certificates.append((parsed, _load_certificate(parsed.dump())))
    with parsing("SignerInfo"):
        signer = _parse_signer_info(signer_infos[0])
    return _Signed(content_type, econtent, certificates, signer)


def _load_certificate(der: bytes) -> x509.Certificate:
    """``x509.load_der_x509_certificate``, remembered: a sender's certificates recur."""
    cert = _certificates.get(der)
    if cert is None:
        cert = x509.load_der_x509_certificate(der)
        if len(der) <= _CERT_CACHE_MAX_BYTES:
            _certificates.put(der, cert)
    return cert


def _parse_signer_info(si: asn1_cms.SignerInfo) -> _SignerInfo:
    sid = si["sid"]
    issuer_serial: tuple[asn1_cms.Name, int] | None = None
    key_identifier: bytes | None = None
    if sid.name == "issuer_and_serial_number":
        issuer_serial = (sid.chosen["issuer"], int(sid.chosen["serial_number"].native))
    else:
        key_identifier = bytes(sid.chosen.native)

    signature_algorithm = si["signature_algorithm"]
    signature_oid = signature_algorithm["algorithm"].dotted
    pss: tuple[str, str, int] | None = None
    if signature_oid == _PSS:
        params = signature_algorithm["parameters"]
        hash_oid = params["hash_algorithm"]["algorithm"].dotted
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].dotted != _MGF1:
            raise WeakAlgorithm("RSASSA-PSS with a mask generation other than MGF1")
        mgf_hash_oid = mgf["parameters"]["algorithm"].dotted
        if params["trailer_field"].native != "trailer_field_bc":
            raise MalformedError("RSASSA-PSS with an unknown trailer field")
        pss = (hash_oid, mgf_hash_oid, int(params["salt_length"].native))

    signed_attrs: list[tuple[str, list[object]]] | None = None
    signed_attrs_der: bytes | None = None
    raw_attrs = si["signed_attrs"]
    if not isinstance(raw_attrs, core.Void):  # Void: the optional field is absent
        signed_attrs = []
        for attribute in raw_attrs:
            oid = attribute["type"].dotted
            # Only the attributes we rely on are decoded: others (Outlook's encryption key
            # preferences...) may not match asn1crypto's definitions, and are signed bytes anyway.
            values = [v.native for v in attribute["values"]] if oid in _DECODED_ATTRS else []
            signed_attrs.append((oid, values))
        signed_attrs_der = _attrs_as_set(raw_attrs)

    return _SignerInfo(
        issuer_serial=issuer_serial,
        key_identifier=key_identifier,
        digest_oid=si["digest_algorithm"]["algorithm"].dotted,
        signature_oid=signature_oid,
        pss=pss,
        signed_attrs=signed_attrs,
        signed_attrs_der=signed_attrs_der,
        signature=bytes(si["signature"].native),
    )


def _attrs_as_set(attrs: asn1_cms.CMSAttributes) -> bytes:
    """The bytes the signature covers: the attributes as sent, re-tagged [0] -> SET (0x31).

    RFC 5652 §5.4: the signer DER-encodes the SET; we hash exactly the octets it sent (a
    definite-length encoding) rather than a re-encoding that could differ in order.
    """
    raw: bytes = attrs.dump()
    if raw[:1] != b"\xa0" or len(raw) < 2 or raw[1] == 0x80:
        # Indefinite length (BER): only a DER re-encoding can be what was signed.
        der: bytes = attrs.untag().dump(force=True)
        return b"\x31" + der[1:]
    return b"\x31" + raw[1:]


def _digest(oid: str) -> tuple[str, type[hashes.HashAlgorithm]]:
    if oid in _WEAK_DIGESTS:
        raise WeakAlgorithm(f"digest algorithm {_WEAK_DIGESTS[oid]} refused")
    if oid not in _DIGESTS:
        raise WeakAlgorithm("digest algorithm not accepted")
    return _DIGESTS[oid]


def _signature_family(info: _SignerInfo, digest_name: str) -> str:
    """The signature family (``Signer.signature_algorithm``), after the allow-list."""
    oid = info.signature_oid
    if oid in _WEAK_SIGNATURES:
        raise WeakAlgorithm(f"signature algorithm {_WEAK_SIGNATURES[oid]} refused")
    if oid == _RSA:
        return "rsassa_pkcs1v15"
    if oid == _EC_PUBLIC_KEY:
        return "ecdsa"
    if oid == _ED25519:
        if digest_name != "sha512":  # RFC 8419 §3.1
            raise MalformedError("Ed25519 signature with a digest other than SHA-512")
        return "ed25519"
    if oid == _ED448:
        raise WeakAlgorithm("signature algorithm Ed448 (RFC 8419) not accepted")
    if oid in _HASHED_SIGNATURES:
        family, named = _HASHED_SIGNATURES[oid]
        if named != digest_name:
            raise MalformedError("signature and digest algorithms disagree")
        return family
    if oid == _PSS and info.pss is not None:
        hash_oid, mgf_hash_oid, _salt = info.pss
        pss_name, _ = _digest(hash_oid)
        _digest(mgf_hash_oid)
        if pss_name != digest_name or mgf_hash_oid != hash_oid:
            raise MalformedError("RSASSA-PSS parameters disagree with the digest algorithm")
        return "rsassa_pss"
    raise WeakAlgorithm("signature algorithm not accepted")


def _check_signed_attrs(
    info: _SignerInfo, content_type: str, content: bytes, digest_name: str
) -> str | None:
    """Bind the content to the signed attributes; return the signing time (ISO 8601), if any."""
    if info.signed_attrs is None:
        return None
    found: dict[str, list[object]] = {}
    for oid, values in info.signed_attrs:
        if oid not in _DECODED_ATTRS:
            continue
        if oid in found:  # RFC 5652 §11: these appear once, with one value
            raise MalformedError("a signed attribute appears twice")
        found[oid] = values
    kinds = found.get(_OID_CONTENT_TYPE)
    digests = found.get(_OID_MESSAGE_DIGEST)
    if kinds is None or digests is None or len(kinds) != 1 or len(digests) != 1:
        raise BadSignature("signed attributes lack a single content-type and message-digest")
    if _content_type_oid(kinds[0]) != content_type:
        raise BadSignature("content-type attribute differs from the encapsulated content type")
    expected = hashlib.new(digest_name, content).digest()
    claimed = digests[0]
    if not isinstance(claimed, bytes) or not hmac.compare_digest(claimed, expected):
        raise BadSignature("message digest does not match the content")
    times = found.get(_OID_SIGNING_TIME)
    if times and len(times) == 1 and isinstance(times[0], dt.datetime):
        return times[0].isoformat()
    return None


def _content_type_oid(native: object) -> str | None:
    # asn1crypto gives the name it knows ("data") or the dotted OID for others.
    if native == "data":
        return _OID_DATA
    return native if isinstance(native, str) else None


def _find_signer_cert(
    info: _SignerInfo, certificates: list[tuple[asn1_cms.Certificate, x509.Certificate]]
) -> x509.Certificate:
    with parsing("certificates"):
        for parsed, cert in certificates:
            if info.issuer_serial is not None:
                issuer, serial = info.issuer_serial
                # Serial first (cheap, already parsed by cryptography); the issuer as bytes
                # (the certificate is DER: cryptography's bytes are the ones received), then
                # by RFC 5280 name matching.
                if cert.serial_number == serial and (
                    cert.issuer.public_bytes() == issuer.dump() or parsed.issuer == issuer
                ):
                    return cert
            elif info.key_identifier is not None and parsed.key_identifier == info.key_identifier:
                return cert
    raise UntrustedSigner("the signer's certificate is not in the signature")


def _check_signature(
    cert: x509.Certificate,
    info: _SignerInfo,
    family: str,
    algorithm: hashes.HashAlgorithm,
    data: bytes,
) -> None:
    try:
        key = cert.public_key()
    except Exception:  # unsupported or broken key in a hostile certificate
        raise BadSignature("the signer's public key is unusable") from None
    try:
        if family in ("rsassa_pkcs1v15", "rsassa_pss") and isinstance(key, rsa.RSAPublicKey):
            if family == "rsassa_pss" and info.pss is not None:
                pad: padding.AsymmetricPadding = padding.PSS(
                    mgf=padding.MGF1(algorithm), salt_length=info.pss[2]
                )
            else:
                pad = padding.PKCS1v15()
            key.verify(info.signature, data, pad, algorithm)
        elif family == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(info.signature, data, ec.ECDSA(algorithm))
        elif family == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(info.signature, data)  # pure EdDSA over the signed attributes
        else:
            raise BadSignature("signature algorithm does not fit the signer's key")
    except InvalidSignature:
        raise BadSignature("signature value does not verify") from None
    except GatewayError:
        raise
    except Exception:  # ValueError on absurd salt lengths, sizes...
        raise BadSignature("signature value does not verify") from None


# --- sign ------------------------------------------------------------------------------------


def sign(
    content: bytes,
    identity: Identity,
    *,
    detached: bool = True,
    extra_certs: Sequence[x509.Certificate] = (),
) -> bytes:
    """A DER ContentInfo SignedData over ``content`` (bytes as given, never CRLF-rewritten).

    SHA-256 with RSA PKCS#1 v1.5 (or ECDSA for an EC key); signed attributes content-type,
    signing-time, message-digest and smimeCapabilities; the signer's certificate and
    ``extra_certs`` included. Detached (no eContent) by default, opaque if ``detached=False``.
    """
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    builder = builder.add_signer(identity.certificate, identity.private_key, hashes.SHA256())
    for cert in extra_certs:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.Binary]  # Binary: a bare LF stays a bare LF
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    return builder.sign(Encoding.DER, options)
