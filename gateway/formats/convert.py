"""Conversions between the two networks' payloads: HPRIM text <-> CDA documents / XDM.

Rule kept here: pure and deterministic (times are parameters), built only from the other
``formats`` modules; what one network cannot express is kept as text, never dropped silently
(a lab result travels both as the N1 text the practitioner reads and as structured
observations). Raises only ``gateway.errors`` types. Deciding the direction, the MIME wrapping
and the ``X-MSS-*`` headers belong to the pipeline, not here: :class:`HprimConversion` gives it
what those headers need (CDA codes, whether an INS is present).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gateway.config.settings import DocumentSettings
from gateway.errors import MalformedError
from gateway.formats.cda import (
    DEFAULT_N1_CODE,
    LAB_REPORT_CODE,
    Author,
    CdaContent,
    CdaDocument,
    Patient,
    build_lab_cda,
    build_n1_cda,
)
from gateway.formats.cda_reader import lab_results_of
from gateway.formats.charset import decode_text, normalise_newlines
from gateway.formats.hprim import (
    HprimDocument,
    HprimHeader,
    LabBlock,
    LabResult,
    inert_text,
    looks_like_hprim,
    parse_hprim,
    write_hprim,
)
from gateway.formats.xdm import XdmContent, build_xdm

_IDS = DocumentSettings()  # the defaults; the pipeline passes the network's own

__all__ = ["HprimConversion", "documents_from_hprim", "hprim_from_xdm", "hprim_to_xdm"]


@dataclass(frozen=True)
class HprimConversion:
    patient: Patient
    author: Author
    documents: tuple[CdaDocument, ...]

    @property
    def cda_codes(self) -> tuple[str, ...]:
        """The CDA ``code`` of each document (what ``X-MSS-CODECDA`` lists)."""
        return tuple(d.type_code[0] for d in self.documents)

    @property
    def has_ins(self) -> bool:
        """A qualified INS is present (``X-MSS-INS: O``)."""
        return self.patient.ins is not None


def documents_from_hprim(
    doc: HprimDocument,
    *,
    effective_time: datetime,
    title: str | None = None,
    author: Author | None = None,
    ids: DocumentSettings = _IDS,
) -> HprimConversion:
    """The N1 text CDA of the whole HPRIM file, plus a structured lab CDA when it has results.

    ``author`` defaults to the sender of HPRIM line 11; the pipeline passes the verified signer.
    """
    patient = Patient.from_hprim(doc.header, ids.patient_id_root)
    author = author or Author.from_hprim(doc.header, ids.author_id_root)
    is_lab = doc.lab is not None and bool(doc.lab.results)
    code = LAB_REPORT_CODE if is_lab else DEFAULT_N1_CODE
    text = normalise_newlines(write_hprim(doc))
    documents = [
        build_n1_cda(
            patient=patient,
            author=author,
            content=text.encode("utf-8"),
            media_type="text/plain",
            title=title or code[1],
            effective_time=effective_time,
            code=code,
            ids=ids,
        )
    ]
    if is_lab and doc.lab is not None:
        documents.append(
            build_lab_cda(
                patient=patient,
                author=author,
                lab=doc.lab,
                title=(title or code[1]) + " (résultats structurés)",
                effective_time=effective_time,
                ids=ids,
            )
        )
    return HprimConversion(patient=patient, author=author, documents=tuple(documents))


def hprim_to_xdm(
    doc: HprimDocument,
    *,
    effective_time: datetime,
    submission_time: datetime,
    author: Author | None = None,
    ids: DocumentSettings = _IDS,
) -> tuple[HprimConversion, bytes]:
    """The conversion and its ``IHE_XDM.ZIP``."""
    conv = documents_from_hprim(doc, effective_time=effective_time, author=author, ids=ids)
    return conv, build_xdm(conv.documents, conv.patient, conv.author, submission_time,
                           source_id=ids.source_id)


def _hl7_date(value: str | None) -> str:
    """``YYYYMMDD...`` as ``DD/MM/YYYY``; empty when absent or malformed."""
    if not value or len(value) < 8 or not value[:8].isdigit():
        return ""
    return f"{value[6:8]}/{value[4:6]}/{value[0:4]}"


def _header_from_cda(
    cda: CdaContent, sender: tuple[str, str], recipient: tuple[str, str]
) -> HprimHeader:
    p = cda.patient
    street = list(p.address)
    # "59000 LILLE" is the postcode-and-city line, wherever it comes in the CDA's address
    city = street.pop() if street and re.match(r"\d{5}\b", street[-1]) else ""
    return HprimHeader(
        patient_code=p.local_id or "",
        last_name=p.last_name,
        first_name=p.first_name,
        address1=street[0] if street else "",
        address2=" ".join(street[1:]),
        postcode_city=city,
        birth_date_raw=p.birth_date.strftime("%d/%m/%Y") if p.birth_date else "",
        nir=p.ins or (p.nir if p.nir else None),
        request_number="",
        exam_date_raw=_hl7_date(cda.effective_time),
        sender_code=sender[0],
        sender_name=sender[1] or (cda.author_name or ""),
        recipient_code=recipient[0],
        recipient_name=recipient[1],
    )


def hprim_from_xdm(
    content: XdmContent, *, sender: tuple[str, str], recipient: tuple[str, str]
) -> HprimDocument:
    """One HPRIM document for an XDM submission (toward apicrypt).

    The N1 text, when it is already HPRIM (what this gateway sends the other way), is taken as
    it is; other text becomes the free text under a header built from the CDA's identity; a
    structured lab CDA becomes the ``****LAB****`` block; a PDF is named in the text (the
    pipeline attaches the PDF itself). ``sender`` / ``recipient`` are (code, name) pairs.
    """
    cdas = [e.cda for e in content.entries if e.cda is not None]
    if not cdas:
        raise MalformedError("XDM submission without a CDA document")
    texts: list[str] = []
    results: list[LabResult] = []
    first = cdas[0]
    has_text = any(c.media_type == "text/plain" and c.content for c in cdas)
    for entry in content.entries:
        cda = entry.cda
        if cda is None:
            continue
        if cda.media_type == "text/plain" and cda.content is not None:
            text = decode_text(cda.content, "utf-8").text
            if looks_like_hprim(text):
                try:
                    return parse_hprim(text)
                except MalformedError:
                    pass  # not quite HPRIM: keep it as free text
            texts.append(inert_text(text))
        elif cda.media_type is not None:
            texts.append(f"Document joint ({cda.media_type}) : {cda.title or entry.uri}\r\n")
        else:
            # A structured document: its narrative is what its author wrote for the reader,
            # its observations the RES lines; the original CDA travels attached (the pipeline
            # adds it), so nothing the lab wrote is lost to the HPRIM reader.
            if not has_text:  # beside a text document, the narrative would say it twice
                if cda.title:
                    texts.append(inert_text(f"{cda.title}\r\n"))
                if cda.narrative:
                    texts.append(inert_text(cda.narrative))
            results += lab_results_of(cda.observations)
            texts += [f"Document joint ({kind}) : {inert_text(name)}\r\n"
                      for kind, _, name in cda.embedded]
            texts.append(f"Document CDA original joint : {entry.uri.rpartition('/')[2]}\r\n")
    body = "".join(t if t.endswith("\r\n") else t + "\r\n" for t in texts)
    return HprimDocument(
        header=_header_from_cda(first, sender, recipient),
        text=body,
        lab=LabBlock.from_results(tuple(results)) if results else None,
    )
