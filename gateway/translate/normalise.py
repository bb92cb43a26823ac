"""Payload normalisation between the two networks: the ``Normaliser`` of the pipeline.

Rules kept here: the verified inner entity is parsed only through the bounded
:func:`gateway.formats.mime_limits.parse_message`, and every archive through
:func:`gateway.formats.xdm.read_xdm` with its limits; the function is pure (no clock: the time
is the keyword ``at``, no randomness: MIME boundaries are derived from the content, no I/O) and
total: for ANY bytes it returns a :class:`Normalised` or raises a ``gateway.errors`` type
(``MessageTooBig``, ``LimitExceeded``, ``MalformedError``; ``InternalError`` only for a bug of
ours, so such a message is deferred, never bounced). The facts it returns for the trace log
name charsets, methods, counts and codes, never text, names or addresses.

What it does (DESIGN §7):

* Every inline ``text/plain`` part is decoded (declared charset, UTF-8, detection, mojibake
  repair) and re-emitted in the destination's charset: UTF-8 toward mssante; toward apicrypt
  ISO-8859-1 with transliteration (œ -> oe, ’ -> ') unless every recipient is configured for
  UTF-8. Text goes out as quoted-printable with CRLF hard line breaks (7-bit safe and still
  readable); every other leaf goes out as base64 with its bytes, type and file name unchanged.
* apicrypt -> mssante: an HPRIM text also travels as ``IHE_XDM.ZIP`` (the N1 text CDA, the
  structured lab CDA when there are ``RES`` lines, one PDF N1 CDA per PDF attachment), with the
  ``X-MSS-CODECDA`` and ``X-MSS-INS`` message headers; the author is the verified signer.
* mssante -> apicrypt: an ``IHE_XDM.ZIP`` becomes an HPRIM text (12-line header from the CDA's
  patient and the signer, the CDA text or the message's text, ``****FINFICHIER****``) and the
  PDFs it holds become attachments; the archive itself is not carried further.
* A ``multipart/report; report-type=disposition-notification`` (an MDN) is carried like any
  message, its structure kept and its text part re-encoded. The gateway never generates an MDN
  (so it can never answer an MDN with an MDN): it only relays those the users' clients write.

The output entity is rebuilt (the incoming signature was verified before; the gateway signs
what it writes), with CRLF line endings. Header values this module writes are refused if they
hold CR or LF. Headers of the inner entity other than its MIME headers are not carried: the
pipeline writes the message headers from the outer, verified envelope.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage, Message, MIMEPart

from cryptography.x509.oid import NameOID

from gateway import errors
from gateway.config.settings import DocumentSettings
from gateway.formats.cda import (
    LOCAL_AUTHOR_ID_ROOT,
    Author,
    CdaDocument,
    Patient,
    build_n1_cda,
)
from gateway.formats.charset import DecodedText, decode_text, encode_for_apicrypt
from gateway.formats.convert import documents_from_hprim, hprim_from_xdm
from gateway.formats.hprim import inert_text, looks_like_hprim, parse_hprim, write_hprim
from gateway.formats.mime_limits import DEFAULT_LIMITS, MimeLimits, parse_message
from gateway.formats.xdm import DEFAULT_LIMITS as DEFAULT_XDM_LIMITS
from gateway.formats.xdm import XdmContent, XdmLimits, build_xdm, read_xdm
from gateway.smime.model import Signer
from gateway.translate.pipeline import NetworkRuntime, Normalised

__all__ = ["XDM_FILENAME", "author_from_signer", "normalise", "target_charset"]

XDM_FILENAME = "IHE_XDM.ZIP"
_POLICY = policy.SMTP  # CRLF, RFC 2047 / 2231 for non-ASCII header values and parameters
#: when the caller gives no time and the signature carries none: fixed, never the clock
UNKNOWN_TIME = datetime(1980, 1, 1, tzinfo=UTC)
_MAX_FACT_ITEMS = 8
_MAX_FILENAME = 120
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_CID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
_TOKEN = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f/\\\"]+")


@dataclass
class _Ctx:
    """What one call accumulates: the boundary seed, and the facts for the trace."""

    seed: bytes
    charset_out: str
    boundaries: int = 0
    decisions: list[DecodedText] = field(default_factory=list)

    def boundary(self) -> str:
        # "=_" cannot occur in quoted-printable or base64 bodies; the hash makes a collision
        # with a verbatim carried part (message/*) astronomically unlikely.
        self.boundaries += 1
        digest = hashlib.sha256(self.seed + str(self.boundaries).encode()).hexdigest()
        return f"=_passerelle_{digest[:32]}"


# --- small helpers -----------------------------------------------------------------------------


def _header(name: str, value: str) -> tuple[str, str]:
    """A message header this module writes: printable ASCII on one line, or a bug of ours."""
    if "\r" in value or "\n" in value or not _HEADER_VALUE.fullmatch(value):
        raise errors.InternalError(f"refused to write header {name}: CR, LF or non-ASCII")
    return name, value


def _mime_charset(label: str) -> str:
    """A charset label safe to declare (a token Python knows), else ISO-8859-1."""
    label = label.strip().lower()
    if not _TOKEN.fullmatch(label):
        return "iso-8859-1"
    try:
        codecs.lookup(label)
    except LookupError:
        return "iso-8859-1"
    return label


def target_charset(destination: NetworkRuntime, recipients: Sequence[str]) -> str:
    """The text charset for this destination: its own, or UTF-8 when every recipient wants it."""
    charset = _mime_charset(destination.charset or "utf-8")
    wanted = {r.lower() for r in recipients}
    if charset not in ("utf-8", "utf8") and wanted and wanted <= destination.utf8_recipients:
        return "utf-8"
    return "utf-8" if charset == "utf8" else charset


def _safe_filename(name: str | None) -> str | None:
    if not name:
        return None
    cleaned = _UNSAFE_NAME.sub("_", name).strip().strip(".")
    if not cleaned:
        return None
    if len(cleaned) > _MAX_FILENAME:
        _, dot, ext = cleaned.rpartition(".")
        ext = ext if dot and len(ext) <= 8 else ""
        cleaned = cleaned[: _MAX_FILENAME - len(ext) - 1] + ("." + ext if ext else "")
    return cleaned


def _payload(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _declared_charset(part: Message) -> str | None:
    charset = part.get_content_charset(None)
    return str(charset) if charset else None


def _is_text(part: Message) -> bool:
    return (part.get_content_type() == "text/plain"
            and part.get_content_disposition() != "attachment")


def _is_xdm(part: Message) -> bool:
    name = part.get_filename()
    return isinstance(name, str) and name.strip().upper() == XDM_FILENAME


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [p for p in payload if isinstance(p, Message)]


def _leaves(msg: Message) -> list[Message]:
    """Leaf entities in order; a message/* part counts as one leaf (carried whole)."""
    out: list[Message] = []
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() == "multipart":
            stack.extend(reversed(_children(part)))
        else:
            out.append(part)
    return out


def _signer_name(signer: Signer) -> str:
    for attr in signer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attr.value, str) and attr.value.strip():
            return " ".join(attr.value.split())
    return ""


def author_from_signer(signer: Signer, sender_name: str = "",
                       id_root: str = LOCAL_AUTHOR_ID_ROOT) -> Author:
    """The CDA author: the verified signer (certificate CN, first address); the HPRIM sender
    name (a laboratory, a practice) as its organisation when it says something else."""
    address = min(signer.addresses) if signer.addresses else ""
    name = _signer_name(signer) or sender_name or address or "Inconnu"
    organisation = sender_name if sender_name and sender_name != name else None
    return Author(id=address or "UNKNOWN", name=name, id_root=id_root,
                  organisation=organisation)


def _moment(at: datetime | None, signer: Signer) -> datetime:
    if at is not None:
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    if signer.signing_time:
        try:
            stamp = datetime.fromisoformat(signer.signing_time)
        except ValueError:
            return UNKNOWN_TIME
        return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
    return UNKNOWN_TIME


def _day(value: date | None, fallback: datetime) -> datetime:
    if value is None:
        return fallback
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


# --- building parts ------------------------------------------------------------------------------


def _text_part(text: str, ctx: _Ctx) -> Message:
    body = encode_for_apicrypt(text, ctx.charset_out)  # CRLF; never raises; UTF-8 is lossless
    # A plain (compat32) Message: both header values are ASCII written here, and the default
    # policy's header objects would cost more than encoding the text. The tree is still
    # serialised with _POLICY, which writes such short string values as they are.
    part = Message()
    part["Content-Type"] = f'text/plain; charset="{ctx.charset_out}"'
    part["Content-Transfer-Encoding"] = "quoted-printable"
    # istext: CRLF stay hard line breaks; lines are soft-wrapped at 76, trailing blanks encoded
    part.set_payload(binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
                     .decode("ascii"))
    return part


def _binary_part(data: bytes, ctype: str, *, filename: str | None,
                 disposition: str | None = None, charset: str | None = None,
                 cid: str | None = None) -> MIMEPart:
    maintype, _, subtype = ctype.partition("/")
    if maintype in ("multipart", "message") or not subtype:
        maintype, subtype = "application", "octet-stream"
    params = {"charset": charset} if charset and maintype == "text" else None
    part = MIMEPart(policy=_POLICY)
    part.set_content(data, maintype, subtype, cte="base64",
                     disposition=disposition or ("attachment" if filename else None),
                     filename=filename, cid=cid, params=params)
    return part


def _copy_leaf(part: Message) -> MIMEPart:
    """A leaf carried as it is: same bytes, type, charset, file name; base64 on the wire."""
    charset = _declared_charset(part)
    cid = part.get("Content-ID")
    cid = str(cid).strip() if cid is not None else None
    disposition = part.get_content_disposition()
    return _binary_part(
        _payload(part), part.get_content_type(),
        filename=_safe_filename(part.get_filename()),
        disposition=disposition if disposition in ("inline", "attachment") else None,
        charset=_mime_charset(charset) if charset else None,
        cid=cid if cid and _CID.fullmatch(cid) else None)


def _copy_message(part: Message) -> Message:
    """A message/* part (an MDN's disposition, a forwarded message) carried whole when it is
    7-bit; otherwise as a base64 octet stream, which every reader can still save and open."""
    try:
        raw = part.as_bytes(policy=_POLICY)
    except Exception as exc:
        raise errors.MalformedError("unserialisable message part") from exc
    if raw.isascii():
        return part
    body = raw.partition(b"\r\n\r\n")[2]
    return _binary_part(body, "application/octet-stream", filename="message.eml")


def _multipart(subtype: str, parts: Sequence[Message], ctx: _Ctx,
               params: dict[str, str] | None = None) -> MIMEPart:
    out = MIMEPart(policy=_POLICY)
    out["Content-Type"] = f"multipart/{subtype}"
    for key, value in (params or {}).items():
        out.set_param(key, value)
    out.set_param("boundary", ctx.boundary())
    out.set_payload(list(parts))
    return out


def _decode(part: Message, ctx: _Ctx) -> str:
    decoded = decode_text(_payload(part), _declared_charset(part))
    ctx.decisions.append(decoded)
    return decoded.text


def _rebuild(part: Message, ctx: _Ctx, first_text: list[str]) -> Message:
    """The same structure, every inline text/plain re-encoded, every other leaf copied."""
    maintype = part.get_content_maintype()
    if maintype == "multipart":
        rebuilt = [_rebuild(c, ctx, first_text) for c in _children(part)]
        params: dict[str, str] = {}
        report_type = part.get_param("report-type")
        if (part.get_content_subtype() == "report" and isinstance(report_type, str)
                and _TOKEN.fullmatch(report_type)):
            params["report-type"] = report_type.lower()
        return _multipart(part.get_content_subtype(), rebuilt, ctx, params)
    if maintype == "message":
        return _copy_message(part)
    if _is_text(part):
        text = _decode(part, ctx)
        if not first_text:
            first_text.append(text)
        return _text_part(text, ctx)
    return _copy_leaf(part)


# --- apicrypt -> mssante -------------------------------------------------------------------------


def _pdf_documents(leaves: Sequence[Message], code: tuple[str, str], patient: Patient,
                   author: Author, effective: datetime,
                   ids: DocumentSettings) -> list[CdaDocument]:
    """One PDF N1 CDA per PDF attachment (the same patient, author and document code)."""
    out = []
    for leaf in leaves:
        name = leaf.get_filename() if leaf.get_content_maintype() != "message" else None
        is_pdf = leaf.get_content_type() == "application/pdf" or (
            leaf.get_content_type() == "application/octet-stream"
            and isinstance(name, str) and name.lower().endswith(".pdf"))
        if not is_pdf:
            continue
        data = _payload(leaf)
        if not data.startswith(b"%PDF-"):
            continue  # not a PDF whatever its label says: carried as an attachment only
        out.append(build_n1_cda(patient=patient, author=author, content=data,
                                media_type="application/pdf",
                                title=_safe_filename(name) or "Document PDF",
                                effective_time=effective, code=code, ids=ids))
    return out


def _to_mssante(msg: EmailMessage, ctx: _Ctx, signer: Signer, moment: datetime,
                facts: dict[str, str], ids: DocumentSettings,
                ) -> tuple[Message, list[tuple[str, str]]]:
    first_text: list[str] = []
    root = _rebuild(msg, ctx, first_text)
    if not first_text or not looks_like_hprim(first_text[0]):
        facts["format"] = "text"
        return root, []
    try:
        doc = parse_hprim(first_text[0])
    except errors.MalformedError:
        facts["format"] = "text"
        facts["hprim"] = "unparsed"
        return root, []
    author = author_from_signer(signer, doc.header.sender_name, ids.author_id_root)
    effective = _day(doc.header.exam_date, moment)
    try:
        conv = documents_from_hprim(doc, effective_time=effective, author=author, ids=ids)
        documents = list(conv.documents)
        documents += _pdf_documents(_leaves(msg), conv.documents[0].type_code, conv.patient,
                                    author, effective, ids)
        archive = build_xdm(documents, conv.patient, author, moment, source_id=ids.source_id)
    except errors.MalformedError:
        # the text and the files still go over, readable: a missing XDM is better than a bounce
        facts["format"] = "text"
        facts["hprim"] = "unconverted"
        return root, []
    xdm = _binary_part(archive, "application/zip", filename=XDM_FILENAME)
    if root.get_content_type() == "multipart/mixed":
        payload = root.get_payload()
        if isinstance(payload, list):
            payload.append(xdm)
    else:
        root = _multipart("mixed", [root, xdm], ctx)
    codes = ",".join(d.type_code[0] for d in documents)
    ins = "O" if conv.has_ins else "N"
    facts.update(format="hprim-xdm", xdm_documents=str(len(documents)), cda_codes=codes,
                 ins=ins)
    return root, [_header("X-MSS-CODECDA", codes), _header("X-MSS-INS", ins)]


# --- mssante -> apicrypt -------------------------------------------------------------------------


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _xdm_attachments(content: XdmContent, carried: set[bytes]) -> list[MIMEPart]:
    """What the archive holds besides text: PDFs (and other non-XML documents) as files."""
    out = []
    for index, entry in enumerate(content.entries, start=1):
        cda = entry.cda
        if cda is not None and cda.structured:
            # its results and narrative are in the HPRIM text; the original goes along,
            # as the text says, for software (and readers) that take the CDA itself; the
            # files it embeds (a PDF copy, images) go along as files of their own
            out += _embedded_parts(cda.embedded, carried)
            data, media = entry.content, "text/xml"
            title = entry.uri.rpartition("/")[2] or f"document{index}.xml"
        elif cda is not None:
            if cda.media_type == "text/plain" or cda.content is None:
                continue  # text is in the HPRIM body
            data, media = cda.content, cda.media_type or "application/octet-stream"
            title = cda.title or entry.title or f"document{index}"
        else:
            data, media = entry.content, entry.mime_type or "application/octet-stream"
            title = entry.uri.rpartition("/")[2]
        digest = hashlib.sha256(data).digest()
        if digest in carried:
            continue  # the same file is attached to the message already
        carried.add(digest)
        media = media.lower() if re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", media.lower()) \
            else "application/octet-stream"
        filename = _safe_filename(title) or f"document{index}"
        if media == "application/pdf" and not filename.lower().endswith(".pdf"):
            filename += ".pdf"
        out.append(_binary_part(data, media, filename=filename))
    return out


_EXTENSIONS = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png",
               "image/gif": ".gif", "text/plain": ".txt"}


def _embedded_parts(embedded: Sequence[tuple[str, bytes, str]],
                    carried: set[bytes]) -> list[MIMEPart]:
    parts = []
    for kind, data, name in embedded:
        digest = hashlib.sha256(data).digest()
        if digest in carried:
            continue
        carried.add(digest)
        media = kind.lower() if re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", kind.lower()) \
            else "application/octet-stream"
        filename = (_safe_filename(name) or "document") + _EXTENSIONS.get(media, "")
        parts.append(_binary_part(data, media, filename=filename))
    return parts


def _to_apicrypt_xdm(msg: EmailMessage, xdm_leaf: Message, ctx: _Ctx, signer: Signer,
                     recipients: Sequence[str], xdm_limits: XdmLimits,
                     facts: dict[str, str]) -> Message | None:
    content = read_xdm(_payload(xdm_leaf), xdm_limits)
    if not any(e.cda is not None for e in content.entries):
        return None  # no CDA to build a header from: the archive travels as a file
    leaves = _leaves(msg)
    texts = [leaf for leaf in leaves if _is_text(leaf)]
    message_text = _decode(texts[0], ctx) if texts else ""
    sender = ("", _signer_name(signer) or (min(signer.addresses) if signer.addresses else ""))
    recipient = ("", recipients[0] if len(recipients) == 1 else "")
    doc = hprim_from_xdm(content, sender=sender, recipient=recipient)
    cda_texts = [
        decode_text(e.cda.content, "utf-8").text for e in content.entries
        if e.cda is not None and e.cda.media_type == "text/plain" and e.cda.content is not None
    ]
    extra: list[Message] = []
    if message_text.strip():
        if not cda_texts:
            note = message_text if message_text.endswith("\r\n") else message_text + "\r\n"
            doc = replace(doc, text=inert_text(note) + doc.text)
        elif not any(_same_text(message_text, t) for t in cda_texts):
            extra.append(_text_part(message_text, ctx))  # a cover note: its own part
    parts: list[Message] = [_text_part(write_hprim(doc), ctx), *extra]
    carried: set[bytes] = set()
    for leaf in leaves:
        if leaf is xdm_leaf or (texts and leaf is texts[0]):
            continue
        if leaf.get_content_maintype() == "message":
            parts.append(_copy_message(leaf))
        elif _is_text(leaf):
            parts.append(_text_part(_decode(leaf, ctx), ctx))
        else:
            carried.add(hashlib.sha256(_payload(leaf)).digest())
            parts.append(_copy_leaf(leaf))
    parts += _xdm_attachments(content, carried)
    facts.update(format="xdm-hprim", xdm_documents=str(len(content.entries)),
                 ins="O" if doc.header.nir_valid else "N")
    return parts[0] if len(parts) == 1 else _multipart("mixed", parts, ctx)


# --- the normaliser ------------------------------------------------------------------------------


def _decision_facts(ctx: _Ctx) -> dict[str, str]:
    decisions = ctx.decisions[:_MAX_FACT_ITEMS]
    facts = {"charset_out": ctx.charset_out, "text_parts": str(len(ctx.decisions))}
    if decisions:
        facts.update(
            charset_in=",".join(d.charset for d in decisions),
            charset_method=",".join(d.method for d in decisions),
            charset_confidence=",".join(f"{d.confidence:.2f}" for d in decisions),
            charset_repaired=",".join("yes" if d.repaired else "no" for d in decisions),
        )
    return facts


def _is_mdn(msg: Message) -> bool:
    report_type = msg.get_param("report-type")
    return (msg.get_content_type() == "multipart/report" and isinstance(report_type, str)
            and report_type.strip().lower() == "disposition-notification")


def serialise(root: Message) -> bytes:
    """``root.as_bytes()``, with a direct path for the common single text part (the email
    generator writes it line by line, the largest cost of a plain message)."""
    if (not root.is_multipart() and [k.lower() for k in root]
            == ["content-type", "content-transfer-encoding"]
            and root.get_content_type() == "text/plain"
            and str(root["Content-Transfer-Encoding"]) == "quoted-printable"):
        payload = root.get_payload()
        if isinstance(payload, str) and payload.isascii():
            head = (f"Content-Type: {root['Content-Type']}\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n")
            if len(head) < 78 + 60:  # unfolded header lines only
                return (head + payload.replace("\r\n", "\n").replace("\n", "\r\n")).encode(
                    "ascii")
    return root.as_bytes(policy=_POLICY)


def _normalise(content: bytes, source: NetworkRuntime, destination: NetworkRuntime,
               signer: Signer, recipients: Sequence[str], at: datetime | None,
               limits: MimeLimits, xdm_limits: XdmLimits) -> Normalised:
    msg = parse_message(content, limits)
    ctx = _Ctx(seed=hashlib.sha256(content).digest(),
               charset_out=target_charset(destination, recipients))
    facts: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    root: Message | None = None
    if _is_mdn(msg):
        facts["format"] = "mdn"  # carried, never answered: the gateway writes no MDN
    elif destination.name == "mssante" and source.name != "mssante":
        root, headers = _to_mssante(msg, ctx, signer, _moment(at, signer), facts,
                                    destination.documents)
    elif destination.name == "apicrypt":
        xdm_leaf = next((leaf for leaf in _leaves(msg) if _is_xdm(leaf)), None)
        if xdm_leaf is not None:
            root = _to_apicrypt_xdm(msg, xdm_leaf, ctx, signer, recipients, xdm_limits, facts)
    if root is None:
        ctx.decisions.clear()
        root = _rebuild(msg, ctx, [])
        facts.setdefault("format", "text")
    facts.update(_decision_facts(ctx))
    facts["attachments"] = str(sum(
        1 for leaf in _leaves(root) if leaf.get_content_type() != "text/plain"
        or leaf.get_content_disposition() == "attachment"))
    try:
        out = serialise(root)
    except Exception as exc:
        raise errors.MalformedError("normalised entity could not be serialised") from exc
    return Normalised(content=out, headers=tuple(headers), facts=facts)


def _raised_by_email(exc: BaseException) -> bool:
    """Did ``exc`` come out of the standard library's email package (its innermost frame)?"""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}email{os.sep}" in tb.tb_frame.f_code.co_filename


def normalise(
    content: bytes,
    source: NetworkRuntime,
    destination: NetworkRuntime,
    signer: Signer,
    recipients: Sequence[str],
    *,
    at: datetime | None = None,
    limits: MimeLimits = DEFAULT_LIMITS,
    xdm_limits: XdmLimits = DEFAULT_XDM_LIMITS,
) -> Normalised:
    """Normalise the verified entity ``content`` for ``destination`` (a ``Normaliser``).

    ``at`` is the submission time written in an XDM (the pipeline's ``at``: wire it with
    ``functools.partial(normalise, at=at)``); without it the signer's signing time is used,
    else a fixed 1980-01-01 (never the clock). The output depends only on the arguments.
    """
    try:
        return _normalise(content, source, destination, signer, recipients, at, limits,
                          xdm_limits)
    except errors.GatewayError:
        raise
    except RecursionError as exc:
        raise errors.LimitExceeded("MIME nesting too deep") from exc
    except (ValueError, LookupError, UnicodeError) as exc:
        # the email package raises these on header values it cannot read back
        raise errors.MalformedError(f"unusable MIME structure ({type(exc).__name__})") from exc
    except TypeError as exc:
        if not _raised_by_email(exc):
            raise errors.InternalError(f"normalisation failed ({type(exc).__name__})") from exc
        # and this one on RFC 2231 parameters numbered and not (name*0= beside name*=)
        raise errors.MalformedError("unusable MIME parameters") from exc
    except Exception as exc:
        raise errors.InternalError(f"normalisation failed ({type(exc).__name__})") from exc
