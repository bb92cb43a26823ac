"""Peel the S/MIME layers of a message (decrypt, verify) and seal a message the other way.

Rules kept here:

* A loop, never recursion: each layer costs one decryption or one verification, and more than
  ``max_depth`` layers is ``LimitExceeded`` before the next one is opened, so a bomb of nested
  layers fails fast and bounded (never ``RecursionError``).
* Fail closed. Every signed layer met must verify; ``require_encrypted`` wants at least one
  encryption layer (``NotEncrypted``); ``require_signed`` wants a signature over the decrypted
  content, i.e. inside the innermost encryption layer (``NotSigned``): a signature only over the
  ciphertext proves who sent the envelope, not who wrote the message. The signer must then
  match the From address (:func:`check_from`, ``SignerMismatch``).
* Bytes only, through :mod:`gateway.smime.mime`: nothing is re-serialised by the ``email``
  package. The returned content is the innermost MIME entity with CRLF line endings.
* Reasons never contain addresses or content.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from gateway.config.addresses import lookup_key
from gateway.config.settings import GatewaySettings, default_of
from gateway.errors import (
    LimitExceeded,
    MalformedError,
    NotEncrypted,
    NotSigned,
    SignerMismatch,
    UnsupportedAlgorithm,
)
from gateway.smime import envelope, signature
from gateway.smime.mime import (
    canonical,
    classify,
    crlf,
    enveloped_entity,
    parse_entity,
    pkcs7_der,
    prepend_headers,
    signed_detached_entity,
    split_signed,
)
from gateway.smime.model import Identity, Layer, LayerKind, Unwrapped, Verified
from gateway.smime.trust import TrustStore, describe

__all__ = ["check_from", "mailboxes", "seal", "single_address", "unwrap"]

_PKCS7_MIME = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_ENCRYPTED: frozenset[str] = frozenset({"enveloped", "auth-enveloped"})

DEFAULT_MAX_DEPTH: int = default_of(GatewaySettings, "max_depth")


def unwrap(
    raw: bytes,
    identities: Sequence[Identity],
    store: TrustStore,
    at: dt.datetime,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    require_encrypted: bool = True,
    require_signed: bool = True,
    trace: list[Layer] | None = None,
    accept_cbc: bool = True,
) -> Unwrapped:
    """Decrypt and verify every S/MIME layer of ``raw``, outermost first, as of ``at``.

    ``accept_cbc=False`` refuses an (unauthenticated) EnvelopedData before decrypting it: for
    a network whose senders all write AuthEnvelopedData (AES-GCM).

    ``trace``, if given, receives each layer as soon as it is opened, so that a report can show
    how far unwrapping went when a later layer (or a final check) fails.
    """
    outer = parse_entity(raw)
    entity = outer
    content = raw
    layers: list[Layer] = [] if trace is None else trace
    first = len(layers)
    while True:
        kind = classify(entity)
        if kind in ("other", "certs-only"):
            if kind == "other" and entity.content_type[0] in _PKCS7_MIME:
                raise MalformedError("S/MIME content of an unsupported type")
            break
        if len(layers) - first >= max_depth:
            raise LimitExceeded(f"more than {max_depth} S/MIME layers")
        if kind in _ENCRYPTED:
            if kind == "enveloped" and not accept_cbc:
                raise UnsupportedAlgorithm("unauthenticated encryption (EnvelopedData) refused "
                                           "on this network: AuthEnvelopedData (AES-GCM) only")
            content, layer = envelope.decrypt(pkcs7_der(entity), identities)
        elif kind == "signed-detached":
            signed, signature_der = split_signed(entity)
            verified = signature.verify(signature_der, store, at, detached_content=signed)
            content, layer = verified.content, _signed_layer("signed-detached", verified)
        else:  # signed-opaque
            verified = signature.verify(pkcs7_der(entity), store, at)
            content, layer = verified.content, _signed_layer("signed-opaque", verified)
        layers.append(layer)
        entity = parse_entity(content)

    layers = layers[first:]
    result = Unwrapped(content=crlf(content), layers=tuple(layers))
    if require_encrypted and not result.encrypted:
        raise NotEncrypted("message is not S/MIME encrypted")
    if require_signed:
        innermost_encryption = max(
            (i for i, layer in enumerate(layers) if layer.kind in _ENCRYPTED), default=-1
        )
        if not any(layer.signer for layer in layers[innermost_encryption + 1 :]):
            if any(layer.signer for layer in layers):
                raise NotSigned("signed outside the encryption only: content is not signed")
            raise NotSigned("message is not signed")
        outer_from = outer.get("From")
        if outer_from is None:
            raise SignerMismatch("message has no From field")
        check_from(result, outer_from)
    return result


def _signed_layer(kind: LayerKind, verified: Verified) -> Layer:
    signer = verified.signer
    detail = {
        "digest_algorithm": signer.digest_algorithm,
        "signature_algorithm": signer.signature_algorithm,
    }
    if signer.signing_time is not None:
        detail["signing_time"] = signer.signing_time
    return Layer(kind, detail=detail, signer=signer)


def check_from(unwrapped: Unwrapped, outer_from: str) -> None:
    """The From address is exactly one, agrees with the inner From, and belongs to the signer.

    ``outer_from`` is the From field of the message as received; when the innermost entity
    carries a From of its own (header protection, RFC 8551 §3.1), it must name the same address.
    """
    signer = unwrapped.signer
    if signer is None:
        raise NotSigned("message is not signed")
    address = single_address(outer_from)
    inner = parse_entity(unwrapped.content)
    inner_from = inner.get("From")
    if inner_from is not None and single_address(inner_from) != address:
        raise SignerMismatch("inner and outer From addresses differ")
    if inner.content_type[0] == "message/rfc822":
        # A whole message signed: its own From is what a client shows as the author, so it
        # must be the signer too (else Eve signs a message "from" Jean and forwards it).
        wrapped_from = parse_entity(inner.body).get("From")
        if wrapped_from is None or single_address(wrapped_from) != address:
            raise SignerMismatch("the signed message/rfc822 is from another address than "
                                 "the signer")
    if lookup_key(address) not in signer.addresses:
        signed = sum(1 for layer in unwrapped.layers if layer.signer is not None)
        wrapped = (f"; signed {signed} times: the innermost signature, the author's, counts"
                   if signed > 1 else "")
        raise SignerMismatch("From address is not an address of the signer's certificate "
                             f"(signer {describe(signer.certificate)}{wrapped})")


def single_address(value: str) -> str:
    """The one address of a From-like field, lower-cased; SignerMismatch otherwise."""
    found = mailboxes(value)
    if len(found) != 1:
        raise SignerMismatch(f"From holds {len(found)} addresses; exactly one is accepted")
    address = found[0].lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SignerMismatch("From address is not a valid address")
    return address


def mailboxes(value: str) -> list[str]:
    """The addr-specs of an RFC 5322 address list, in one linear pass.

    Display names, quoted strings and comments are skipped; ``<...>`` wins over the bare text
    of its element; groups (``name: a@b, c@d;``) are flattened.
    """
    found: list[str] = []
    bare: list[str] = []  # text of the current element outside quotes, comments, angles
    angle: str | None = None
    pos, size = 0, len(value)

    def close_element() -> None:
        address = angle if angle is not None else "".join(bare)
        address = address.strip()
        if address:
            found.append(address)

    while pos < size:
        char = value[pos]
        if char == '"':
            pos += 1
            while pos < size and value[pos] != '"':
                pos += 2 if value[pos] == "\\" else 1
        elif char == "(":
            depth = 1
            pos += 1
            while pos < size and depth:
                if value[pos] == "\\":
                    pos += 1
                elif value[pos] == "(":
                    depth += 1
                elif value[pos] == ")":
                    depth -= 1
                pos += 1
            continue
        elif char == "<":
            end = value.find(">", pos + 1)
            if end < 0:
                raise SignerMismatch("unterminated angle address in From")
            angle = value[pos + 1 : end]
            pos = end
        elif char == ":" and angle is None:
            bare.clear()  # a group's display name
        elif char in ",;":
            close_element()
            bare.clear()
            angle = None
        elif not char.isspace():
            bare.append(char)
        pos += 1
    close_element()
    return found


def seal(
    content: bytes,
    identity: Identity,
    recipients: Sequence[x509.Certificate],
    headers: Sequence[tuple[str, str]],
    *,
    chain: Sequence[x509.Certificate] = (),
    gcm: bool = False,
) -> bytes:
    """Sign ``content`` (a MIME entity) detached, encrypt for ``recipients``, add ``headers``.
    ``gcm``: AuthEnvelopedData (AES-256-GCM) instead of EnvelopedData (AES-256-CBC).

    The content is made canonical (CRLF) first, so what is signed is what the reader hashes.
    Returns the full message, CRLF, ready to relay.
    """
    return envelop(sign_entity(content, identity, chain=chain), recipients, headers, gcm=gcm)


def sign_entity(content: bytes, identity: Identity, *,
                chain: Sequence[x509.Certificate] = ()) -> bytes:
    """The multipart/signed entity of ``content`` (made canonical first): signed once, it can
    be sealed for several groups of recipients (``envelop``)."""
    entity = canonical(content)
    parse_entity(entity)  # a bounded check that it is a MIME entity at all
    signature_der = signature.sign(entity, identity, detached=True, extra_certs=chain)
    return signed_detached_entity(entity, signature_der)


def envelop(signed: bytes, recipients: Sequence[x509.Certificate],
            headers: Sequence[tuple[str, str]], *, gcm: bool = False) -> bytes:
    """``signed`` encrypted for ``recipients`` (one RecipientInfo each), ``headers`` on top."""
    return prepend_headers(enveloped_entity(envelope.encrypt(signed, recipients, gcm=gcm),
                                            auth=gcm), headers)
