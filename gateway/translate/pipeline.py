"""The translation pipeline: one received message in, one re-sealed message (or an error) out.

Rule kept here: no I/O. The pipeline is given the raw bytes, the runtime of both networks
(identities, trust stores, directories already loaded), the routed envelope and the time; it
returns a ``Translation`` or raises a ``gateway.errors`` error that carries the SMTP reply.
Transports (SMTP, IMAP) and the CLI are thin adapters around ``translate``. The decrypted
content exists only in the locals of one call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.header
import email.utils
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gateway import errors
from gateway.config.addresses import lookup_key
from gateway.config.settings import DocumentSettings
from gateway.smime.directory import CertificateDirectory
from gateway.smime.envelope import advertises_gcm
from gateway.smime.mime import parse_entity
from gateway.smime.model import Identity, Layer, Signer
from gateway.smime.trust import TrustStore, email_addresses
from gateway.smime.unwrap import (
    DEFAULT_MAX_DEPTH,
    envelop,
    mailboxes,
    sign_entity,
    single_address,
    unwrap,
)
from gateway.translate.names import KnownNames, display, display_name, header_text

# Headers carried over from the received message as they are (Subject stays what the sender
# wrote; thread headers keep conversations together on the other side).
_CARRIED = ("Subject", "Date", "Message-ID", "In-Reply-To", "References")
_MAX_ADDRESS_HEADER = 16 * 1024
_MAX_ADDRESS_FIELD = 16 * 1024  # To/Cc values longer than this are not read for addressees


@dataclass(frozen=True)
class NetworkRuntime:
    """What the pipeline needs of one network, loaded once (and on reload) by the app."""

    name: str
    identity: Identity
    store: TrustStore
    directory: CertificateDirectory
    identity_chain: tuple[x509.Certificate, ...] = ()  # intermediates sent with our signature
    # Text charset the network expects (apicrypt: iso-8859-1 unless the recipient wants UTF-8).
    charset: str = "utf-8"
    utf8_recipients: frozenset[str] = frozenset()
    write_gcm: bool = False  # seal toward this network as AuthEnvelopedData (AES-256-GCM)
    accept_cbc: bool = True  # accept EnvelopedData (AES-CBC, unauthenticated) from it
    # identifiers written in the CDA/XDM documents made for this network
    documents: DocumentSettings = field(default_factory=DocumentSettings)


@dataclass(frozen=True)
class Normalised:
    content: bytes  # the MIME entity to seal for the destination
    headers: tuple[tuple[str, str], ...] = ()  # extra message headers (X-MSS-*, ...)
    facts: dict[str, str] = field(default_factory=dict)  # for the trace log: charset decision...


# (content entity, source network, destination network, signer, recipients) -> Normalised
Normaliser = Callable[[bytes, "NetworkRuntime", "NetworkRuntime", Signer, Sequence[str]],
                      Normalised]


def carry_over(content: bytes, source: NetworkRuntime, destination: NetworkRuntime,
               signer: Signer, recipients: Sequence[str]) -> Normalised:
    """The default normaliser: the verified content goes over unchanged."""
    return Normalised(content)


@dataclass(frozen=True)
class SealedCopy:
    raw: bytes  # the re-sealed message, ready for the next hop
    recipients: tuple[str, ...]  # its envelope recipients on the destination network


@dataclass(frozen=True)
class Translation:
    copies: tuple[SealedCopy, ...]  # one for the To/Cc recipients, one per Bcc recipient
    mail_from: str  # envelope sender on the destination network
    signer: Signer
    layers: tuple[Layer, ...]
    facts: dict[str, str]  # sizes, algorithms, normalisation decisions: safe to log

    @property
    def raw(self) -> bytes:
        """The first copy (the one the To/Cc recipients read)."""
        return self.copies[0].raw

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(r for copy in self.copies for r in copy.recipients)


def recipient_certificate(runtime: NetworkRuntime, address: str,
                          at: dt.datetime) -> x509.Certificate:
    """The newest certificate of ``address`` that is valid for encryption right now."""
    candidates = runtime.directory.lookup(address)
    reasons: list[str] = []
    valid: list[x509.Certificate] = []
    for cert in candidates:
        try:
            runtime.store.validate(cert, (), at, "encrypt")
        except errors.GatewayError as exc:
            reasons.append(exc.reason)
            continue
        valid.append(cert)
    if not valid:
        why = "; ".join(reasons) if reasons else "no certificate in the directory"
        raise errors.RecipientCertificateError(f"recipient certificate unusable: {why}")
    return max(valid, key=lambda c: c.not_valid_after_utc)


def _single_address(value: str | None) -> str:
    # The same parser as the From/signer check (unwrap.single_address), so both agree on what
    # "the address" of a tricky From is; only the size bound is added here.
    if value is None or len(value) > _MAX_ADDRESS_HEADER:
        raise errors.SignerMismatch("From header missing or oversized")
    return single_address(value)


def ascii_header(value: str) -> str:
    """A carried header value as 7-bit: raw 8-bit (RFC 6532 or legacy) becomes RFC 2047."""
    if value.isascii():
        return value
    return email.header.Header(header_text(value), "utf-8", maxlinelen=998).encode()


def translate(
    raw: bytes,
    *,
    source: NetworkRuntime,
    destination: NetworkRuntime,
    mail_from: str,
    recipients: Sequence[str],
    map_sender: Callable[[str], str],
    map_recipient: Callable[[str], str] | None = None,
    at: dt.datetime,
    hostname: str,
    trace_id: str,
    normalise: Normaliser = carry_over,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_signing_age: dt.timedelta | None = None,
    known_names: KnownNames | None = None,
) -> Translation:
    """Open, verify, normalise and re-seal ``raw`` for ``recipients`` on ``destination``.

    ``mail_from`` and ``recipients`` are already routed (destination-side addresses);
    ``map_sender`` rewrites a source-side address into its destination-side alias (for the
    From header), raising ``SenderRefused`` when it cannot. ``known_names``: the persons a
    From display name must not claim to be unless the signer is them.
    """
    if not recipients:
        raise errors.RecipientRefused("no routable recipient")
    outer = parse_entity(raw)
    # Decided by the envelope, not by the content: before anything is decrypted.
    certificates = [recipient_certificate(destination, rcpt, at) for rcpt in recipients]
    opened: list[Layer] = []
    try:
        unwrapped = unwrap(raw, [source.identity], source.store, at, max_depth=max_depth,
                           trace=opened, accept_cbc=source.accept_cbc)
        signer = unwrapped.signer
        if signer is None:  # unwrap(require_signed=True) guarantees it; keep the type honest
            raise errors.NotSigned("no signature")
        _check_signing_age(signer, at, max_signing_age)
        protected = parse_entity(unwrapped.content)
        _check_protected_recipients(protected, recipients, map_recipient)
        normalised = normalise(unwrapped.content, source, destination, signer, recipients)
    except errors.SenderError as error:
        if any(layer.kind == "enveloped" for layer in opened):
            # CBC is not authenticated: a reply per cause would be a padding oracle.
            raise errors.ContentRefused(f"{error.code}: {error.reason}") from None
        raise

    from_address = _single_address(outer.get("From"))
    from_name = display_name(outer.get("From") or "")
    headers: list[tuple[str, str]] = [
        # Nothing of the other network: no client address, no real sender, no serial.
        ("Received", f"from {source.name} by {hostname} with ESMTPS id {trace_id}; "
                     f"{email.utils.format_datetime(at)}"),
        ("Authentication-Results", authentication_results(hostname, map_sender(from_address))),
        ("From", display(from_name, map_sender(from_address), signer.addresses, known_names)),
        # RFC 8551 §3: the signer must match From or Sender; the gateway signs, so it is
        # the Sender, and the author stays in From for replies to route back.
        ("Sender", f"<{min(email_addresses(destination.identity.certificate))}>"),
    ]
    # protected To/Cc (in the signed part, RFC 9788) win over the outer, unprotected ones
    addressees, named = _addressees(protected if _protects_recipients(protected) else outer,
                                    recipients, map_recipient)
    headers.extend(addressees)
    for name in _CARRIED:
        value = protected.get(name) or outer.get(name)
        if value is not None:
            headers.append((name, ascii_header(value)))
    if outer.get("Date") is None:
        headers.append(("Date", email.utils.format_datetime(at)))
    dnt = outer.get("Disposition-Notification-To")
    if dnt is not None:
        # Kept only when it asks the receipt for the signer (else anyone could make the
        # recipient's software mail a third party); one we cannot route back is dropped.
        with contextlib.suppress(errors.GatewayError):
            asked = _single_address(dnt)
            if lookup_key(asked) in signer.addresses:
                headers.append(("Disposition-Notification-To", f"<{map_sender(asked)}>"))
    headers.extend(normalised.headers)
    headers.append(("MIME-Version", "1.0"))

    signed = sign_entity(normalised.content, destination.identity,
                         chain=destination.identity_chain)
    copies = tuple(
        SealedCopy(envelop(signed, [certificates[i] for i in group], headers,
                           gcm=_gcm_for(destination, [certificates[i] for i in group])),
                   tuple(recipients[i] for i in group))
        for group in _copy_groups(recipients, named))
    facts = {
        "size_in": str(len(raw)),
        "size_content": str(len(unwrapped.content)),
        "size_out": str(sum(len(c.raw) for c in copies)),
        "copies": str(len(copies)),
        "layers": ",".join(layer.kind for layer in unwrapped.layers),
        "signer_serial": format(signer.certificate.serial_number, "x"),
        "digest": signer.digest_algorithm,
        **normalised.facts,
    }
    return Translation(copies, mail_from, signer, unwrapped.layers, facts)


def _copy_groups(recipients: Sequence[str], named: set[str]) -> list[list[int]]:
    """Which recipients share a sealed copy: those named in To/Cc share one; each other (a
    Bcc) gets its own, since every RecipientInfo of an envelope (issuer and serial of the
    recipient's certificate) can be read by every reader of it."""
    visible = [i for i, r in enumerate(recipients) if r in named]
    hidden = [[i] for i, r in enumerate(recipients) if r not in named]
    return ([visible] if visible else []) + hidden


def _gcm_for(destination: NetworkRuntime, certificates: Sequence[x509.Certificate]) -> bool:
    """AuthEnvelopedData when the network is configured for it, or when every reader of this
    copy advertises AES-GCM in its certificate (RFC 4262 SMIMECapabilities)."""
    return destination.write_gcm or all(advertises_gcm(c) for c in certificates)


def _addressees(outer: Any, recipients: Sequence[str], map_recipient: Callable[[str], str] | None,
                ) -> tuple[list[tuple[str, str]], set[str]]:
    """To and Cc as the author wrote them, mapped, and only for recipients of this
    transaction, with the set of recipients they name: an envelope recipient named in neither
    (a Bcc) is never written where the others read it."""
    if map_recipient is None:  # no routing at hand (offline tools): the envelope, as To
        return [("To", ", ".join(f"<{r}>" for r in recipients))], set(recipients)
    out: list[tuple[str, str]] = []
    named: set[str] = set()
    for name in ("To", "Cc"):
        mapped: list[str] = []
        for value in outer.get_all(name):
            for address in mailboxes(value) if len(value) <= _MAX_ADDRESS_FIELD else []:
                with contextlib.suppress(errors.GatewayError):
                    target = map_recipient(address)
                    if target in recipients and target not in mapped:
                        mapped.append(target)
        if mapped:
            out.append((name, ", ".join(f"<{r}>" for r in mapped)))
            named.update(mapped)
    return out or [("To", "undisclosed-recipients:;")], named


def _check_signing_age(signer: Signer, at: dt.datetime, limit: dt.timedelta | None) -> None:
    """``max_signing_age``: an old signature replayed today is refused (no signingTime: no
    claim to judge, the certificate's validity still applies)."""
    if limit is None or signer.signing_time is None:
        return
    signed = dt.datetime.fromisoformat(signer.signing_time)
    if signed.tzinfo is None:
        signed = signed.replace(tzinfo=dt.UTC)
    if at - signed > limit:
        raise errors.SignatureTooOld(
            f"signed {(at - signed).days} days ago, over max_signing_age "
            f"({limit.days} days)")


def _protects_recipients(entity: Any) -> bool:
    return any(entity.get(name) is not None for name in ("To", "Cc", "Bcc"))


def _check_protected_recipients(entity: Any, recipients: Sequence[str],
                                map_recipient: Callable[[str], str] | None) -> None:
    """When the signed part names its recipients (header protection, RFC 9788 / RFC 8551
    §3.1), every envelope recipient must be one of them: else the signed message is being
    replayed to someone its author did not write to."""
    if map_recipient is None or not _protects_recipients(entity):
        return
    named: set[str] = set()
    for name in ("To", "Cc", "Bcc"):
        for value in entity.get_all(name):
            for address in mailboxes(value) if len(value) <= _MAX_ADDRESS_FIELD else []:
                with contextlib.suppress(errors.GatewayError):
                    named.add(map_recipient(address))
    if any(rcpt not in named for rcpt in recipients):
        raise errors.SignerMismatch("an envelope recipient is not among the signed To/Cc/Bcc "
                                    "(a signed message sent on to someone else)")


def authentication_results(hostname: str, identifier: str) -> str:
    """RFC 8601 syntax with the ``smime`` method of RFC 7281; the identifier is the signer's
    address as the destination network knows it (its alias), never the real one."""
    return f"{hostname}; smime=pass body.smime-identifier={identifier}"
