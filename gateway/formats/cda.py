"""CDA R2 documents for MSSanté: "N1" (text or PDF in ``nonXMLBody``) and a structured lab
report (one observation per HPRIM ``RES`` line); :mod:`gateway.formats.cda_reader` reads
them (and those of others) back.

Rules kept here: pure functions, no clock (times are parameters), no randomness (identifiers
are derived from the content, so the same input gives the same bytes); the patient's INS is
written (root ``1.2.250.1.213.1.4.8``) only when the NIR's key is valid. Reading goes through
:mod:`gateway.formats.xmlsafe` (no DOCTYPE, no entity, no network) and never raises anything
but ``gateway.errors`` types.

CDA R2 lets a document have ``nonXMLBody`` or ``structuredBody``, not both: a lab result
therefore travels as two documents, the N1 text (what the practitioner reads) and a structured
lab report (formatCode ``urn:ihe:lab:xd-lab:2008``) with the observations.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from lxml import etree

from gateway.config.settings import DocumentSettings
from gateway.errors import MalformedError
from gateway.formats.hprim import HprimHeader, LabBlock, LabResult, validate_nir
from gateway.formats.units import parse_range, ucum

__all__ = [
    "FORMAT_LAB",
    "FORMAT_PDF",
    "FORMAT_TEXT",
    "INS_NIR_OID",
    "Author",
    "CdaContent",
    "CdaDocument",
    "LabObservation",
    "Patient",
    "build_lab_cda",
    "build_n1_cda",
    "cda_timestamp",
    "xml_text",
]

HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"h": HL7}
_XSI_TYPE = f"{{{XSI}}}type"

INS_NIR_OID = "1.2.250.1.213.1.4.8"  #: INS-NIR: the NIR as national health identifier
#: The INS family (ANS, "Référentiel INS"): INS-NIR and INS-NIA, and their test and
#: demonstration roots, which the CI-SIS examples use (4.10) — all read as the patient's INS.
INS_ROOTS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10",
                       "1.2.250.1.213.1.4.11", "1.2.250.1.213.1.4.12", "1.2.250.1.213.1.4.13"})
RPPS_OID = "1.2.250.1.71.4.2.1"  #: national identifiers of health professionals (RPPS/ADELI)
LOINC = "2.16.840.1.113883.6.1"
GENDER_OID = "2.16.840.1.113883.5.1"
INTERPRETATION_OID = "2.16.840.1.113883.5.83"
CONFIDENTIALITY_OID = "2.16.840.1.113883.5.25"
#: the identifiers a deployment configures ([networks.mssante.documents]); their defaults
_IDS = DocumentSettings()
LOCAL_PATIENT_ID_ROOT = _IDS.patient_id_root
LOCAL_AUTHOR_ID_ROOT = _IDS.author_id_root
#: custodian (the organisation keeping the document): its FINESS under 1.2.250.1.71.4.2.2,
#: one of the two roots the CI-SIS allows (with 1.2.250.1.213.4.1)
CUSTODIAN_ROOT = "1.2.250.1.71.4.2.2"
ENCOUNTER_CODE = ("AMB", "Ambulatoire (hors établissement)")  # HL7 ActCode 2.16.840.1.113883.5.4
#: the performer's setting of practice (CI-SIS TRE_A01-CadreExercice): an HPRIM sender is a
#: practice or a lab outside hospitals
SECTOR = ("AMBULATOIRE", "Ambulatoire")
SECTOR_SYSTEM = "1.2.250.1.213.1.1.4.9"

FORMAT_TEXT = "urn:ihe:iti:xds-sd:text:2008"
FORMAT_PDF = "urn:ihe:iti:xds-sd:pdf:2008"
FORMAT_LAB = "urn:ihe:lab:xd-lab:2008"
_FORMAT_FOR_MEDIA = {"text/plain": FORMAT_TEXT, "application/pdf": FORMAT_PDF}

LAB_REPORT_CODE = ("11502-2", "CR d'examens biologiques")
DEFAULT_N1_CODE = ("11488-4", "Compte rendu de consultation")



@dataclass(frozen=True)
class Patient:
    last_name: str
    first_name: str
    birth_date: date | None = None
    sex: Literal["M", "F"] | None = None
    nir: str | None = None  #: as written; used as the INS only when its key is valid
    local_id: str | None = None
    local_id_root: str = LOCAL_PATIENT_ID_ROOT
    address: tuple[str, ...] = ()

    @property
    def ins(self) -> str | None:
        """The 15-character INS-NIR, or None when there is no valid NIR."""
        if self.nir is None or not validate_nir(self.nir):
            return None
        return "".join(self.nir.split()).upper()

    @classmethod
    def from_hprim(cls, header: HprimHeader, id_root: str = LOCAL_PATIENT_ID_ROOT) -> Patient:
        return cls(
            last_name=header.last_name,
            first_name=header.first_name,
            birth_date=header.birth_date,
            sex=header.sex,
            nir=header.nir_compact,
            local_id=header.patient_code or None,
            local_id_root=id_root,
            address=tuple(a for a in (header.address1, header.address2, header.postcode_city) if a),
        )


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    id_root: str = RPPS_OID
    organisation: str | None = None

    @classmethod
    def from_hprim(cls, header: HprimHeader, id_root: str = LOCAL_AUTHOR_ID_ROOT) -> Author:
        return cls(
            id=header.sender_code or "UNKNOWN",
            name=header.sender_name or header.sender_code,
            id_root=id_root,
        )


@dataclass(frozen=True)
class CdaDocument:
    """A built CDA and the metadata an XDM entry needs."""

    xml: bytes
    format_code: str
    title: str
    type_code: tuple[str, str]  #: LOINC code and display name
    unique_id: str  #: an OID (2.25.x, derived from the content)
    creation_time: datetime
    mime_type: str = "text/xml"


@dataclass(frozen=True)
class LabObservation:
    code: str | None
    label: str | None
    value: str | None
    unit: str | None
    low: str | None
    high: str | None
    interpretation: str | None
    comment: str | None = None


@dataclass(frozen=True)
class CdaContent:
    """What :func:`read_cda` found in a CDA."""

    document_id: str | None
    title: str | None
    type_code: str | None
    effective_time: str | None
    patient: Patient
    author_name: str | None
    media_type: str | None  #: of the nonXMLBody, None for a structured body
    content: bytes | None  #: the decoded nonXMLBody
    observations: tuple[LabObservation, ...]
    narrative: str = ""  #: the structured body's sections as text (titles, tables aligned)
    structured: bool = False  #: a structuredBody (its results and narrative above)
    #: files embedded in the structured body (observationMedia): (media type, bytes, its ID)
    embedded: tuple[tuple[str, bytes, str], ...] = ()


# --- writing ----------------------------------------------------------------------------------


def cda_timestamp(moment: datetime) -> str:
    """HL7 TS: ``YYYYMMDDHHMMSS+ZZZZ`` (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.strftime("%Y%m%d%H%M%S%z")


def _derived_oid(*parts: bytes) -> str:
    """A stable OID under 2.25 (ITU-T X.667) derived from the content: no randomness."""
    digest = hashlib.sha256(b"\x00".join(parts)).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{HL7}}}{tag}", {k: v for k, v in attrs.items()})
    if text is not None:
        el.text = xml_text(text)
    return el


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_text(text: str) -> str:
    """XML 1.0 cannot hold control characters or lone surrogates: they become U+FFFD."""
    return _XML_INVALID.sub("\ufffd", text)


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def plain_text(text: str) -> str:
    """Lab software writes HTML into HPRIM text ("&eacute;", "&lt;", "<br />"): what the
    narrative shows is the text they stand for (the N1 document keeps the file as written)."""
    if "&" not in text and "<" not in text:
        return text
    return html.unescape(_BR.sub("\n", text))


def _header(
    *,
    patient: Patient,
    author: Author,
    title: str,
    code: tuple[str, str],
    effective_time: datetime,
    document_id: str,
    ids: DocumentSettings = _IDS,
) -> etree._Element:
    nsmap: dict[str | None, str] = {None: HL7, "xsi": XSI}
    root = etree.Element(f"{{{HL7}}}ClinicalDocument", nsmap=nsmap)  # type: ignore[arg-type]
    _el(root, "realmCode", code="FR")
    _el(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    _el(root, "templateId", root="2.16.840.1.113883.2.8.2.1")  # HL7 France
    _el(root, "templateId", root="1.3.6.1.4.1.19376.1.5.3.1.1.1")  # IHE PCC medical document
    _el(root, "templateId", root="1.2.250.1.213.1.1.1.1")  # CI-SIS common header
    _el(root, "id", root=document_id)
    _el(root, "code", code=code[0], codeSystem=LOINC, displayName=xml_text(code[1]))
    _el(root, "title", title)
    ts = cda_timestamp(effective_time)
    _el(root, "effectiveTime", value=ts)
    _el(root, "confidentialityCode", code="N", codeSystem=CONFIDENTIALITY_OID)
    _el(root, "languageCode", code="fr-FR")

    role = _el(_el(root, "recordTarget"), "patientRole")
    ins = patient.ins
    if ins is not None:
        _el(role, "id", root=INS_NIR_OID, extension=ins)
    if patient.local_id:
        _el(role, "id", root=patient.local_id_root, extension=xml_text(patient.local_id))
    if ins is None and not patient.local_id:
        _el(role, "id", nullFlavor="UNK")
    if patient.address:
        addr = _el(role, "addr")
        for line in patient.address:
            _el(addr, "streetAddressLine", line)
    person = _el(role, "patient", classCode="PSN")
    name = _el(person, "name")
    # CI-SIS: the family name is qualified (BR: birth name, the INS trait HPRIM carries), and
    # the first given name of the birth certificate is one of the INS traits
    _el(name, "given", patient.first_name)
    first_given = patient.first_name.split()[0] if patient.first_name.split() else ""
    if first_given:
        _el(name, "given", first_given, qualifier="BR")
    _el(name, "family", patient.last_name, qualifier="BR")
    if patient.sex is not None:
        _el(person, "administrativeGenderCode", code=patient.sex, codeSystem=GENDER_OID)
    else:
        _el(person, "administrativeGenderCode", code="UN", codeSystem=GENDER_OID)
    if patient.birth_date is not None:
        _el(person, "birthTime", value=patient.birth_date.strftime("%Y%m%d"))
    else:
        _el(person, "birthTime", nullFlavor="UNK")

    auth = _el(root, "author")
    _el(auth, "time", value=ts)
    assigned = _el(auth, "assignedAuthor")
    _el(assigned, "id", root=author.id_root, extension=xml_text(author.id))
    _el(_el(_el(assigned, "assignedPerson"), "name"), "family", author.name)
    if author.organisation:
        _el(_el(assigned, "representedOrganization"), "name", author.organisation)

    custodian = _el(
        _el(_el(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization"
    )
    _el(custodian, "id", root=CUSTODIAN_ROOT, extension=ids.custodian_finess)
    _el(custodian, "name", ids.custodian_name or author.organisation or author.name)

    # the author validated what they sent (signed S/MIME): the legal authenticator
    legal = _el(root, "legalAuthenticator")
    _el(legal, "time", value=ts)
    _el(legal, "signatureCode", code="S")
    _assigned_entity(legal, author)
    event = _el(_el(root, "documentationOf"), "serviceEvent", classCode="ACT")
    _el(_el(event, "effectiveTime"), "low", value=ts)
    _assigned_entity(_el(event, "performer", typeCode="PRF"), author, sector=True)
    encounter = _el(_el(root, "componentOf"), "encompassingEncounter")
    _el(encounter, "code", code=ENCOUNTER_CODE[0], codeSystem="2.16.840.1.113883.5.4",
        displayName=ENCOUNTER_CODE[1])
    _el(_el(encounter, "effectiveTime"), "low", value=ts)
    return root


def _assigned_entity(parent: etree._Element, author: Author, *, sector: bool = False) -> None:
    entity = _el(parent, "assignedEntity")
    _el(entity, "id", root=author.id_root, extension=xml_text(author.id))
    _el(_el(_el(entity, "assignedPerson"), "name"), "family", author.name)
    if author.organisation or sector:
        organisation = _el(entity, "representedOrganization")
        if author.organisation:
            _el(organisation, "name", author.organisation)
        if sector:  # CI-SIS: the performer's sector of activity
            _el(organisation, "standardIndustryClassCode", code=SECTOR[0],
                codeSystem=SECTOR_SYSTEM, displayName=SECTOR[1])


def _serialise(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def build_n1_cda(
    *,
    patient: Patient,
    author: Author,
    content: bytes,
    media_type: str,
    title: str,
    effective_time: datetime,
    code: tuple[str, str] = DEFAULT_N1_CODE,
    ids: DocumentSettings = _IDS,
) -> CdaDocument:
    """A "N1" CDA wrapping ``content`` (``text/plain`` UTF-8 or ``application/pdf``)."""
    format_code = _FORMAT_FOR_MEDIA.get(media_type)
    if format_code is None:
        raise MalformedError("unsupported media type for a N1 CDA")
    document_id = _derived_oid(b"n1", content, cda_timestamp(effective_time).encode())
    root = _header(
        patient=patient,
        author=author,
        title=title,
        code=code,
        effective_time=effective_time,
        document_id=document_id,
        ids=ids,
    )
    body = _el(_el(root, "component"), "nonXMLBody")
    text = _el(body, "text", mediaType=media_type, representation="B64")
    text.text = base64.b64encode(content).decode("ascii")
    return CdaDocument(
        xml=_serialise(root),
        format_code=format_code,
        title=title,
        type_code=code,
        unique_id=document_id,
        creation_time=effective_time,
    )


def _decimal(value: str | None) -> str | None:
    """An HPRIM number ("3,2") as an HL7 REAL literal, or None when it is no number."""
    if value is None:
        return None
    text = value.strip().replace(",", ".")
    if re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text) is None:
        return None
    return text


def _observation(section: etree._Element, res: LabResult, ts: str, code_system: str) -> None:
    obs = _el(_el(section, "entry"), "observation", classCode="OBS", moodCode="EVN")
    # a code value holds no white space (CDA.xsd: "IGET 000" is refused): spaces become "_",
    # and the lab's own code stays, as written, in originalText
    value = "_".join(xml_text(res.code or "").split())
    if value and res.code:
        attrs = {"code": value, "codeSystem": code_system}
        if res.label:
            attrs["displayName"] = xml_text(plain_text(res.label))
        code_el = _el(obs, "code", **attrs)
        if value != res.code:
            _el(code_el, "originalText", res.code)
    else:
        code = _el(obs, "code", nullFlavor="OTH")
        if res.label or res.code:
            _el(code, "originalText", res.label or res.code)
    if res.comments:
        _el(obs, "text", plain_text(" ".join(res.comments)))
    _el(obs, "statusCode", code="completed")
    _el(obs, "effectiveTime", value=ts)
    # UCUM where the unit has a code (°C -> Cel, mUI/l -> m[IU]/L); a unit without one
    # ("UI OMS", "mg/mM créat") is kept as written: the value travels as text with it
    unit = ucum(res.unit)
    number = _decimal(res.value)
    quantity = number is not None and (unit is not None or not res.unit)
    if quantity and number is not None:
        value_el = _el(obs, "value", **{_XSI_TYPE: "PQ", "value": number, "unit": unit or "1"})
        _second_unit(value_el, res)
    elif res.value is not None:
        shown = f"{res.value} {res.unit}" if res.unit else res.value
        _el(obs, "value", plain_text(shown), **{_XSI_TYPE: "ST"})
    if res.flag:
        _el(obs, "interpretationCode", code=res.flag, codeSystem=INTERPRETATION_OID)
    bounds = parse_range(res.low, res.high)
    if bounds is not None:
        rng = _el(_el(_el(obs, "referenceRange"), "observationRange"), "value")
        if quantity:
            rng.set(_XSI_TYPE, "IVL_PQ")
            for tag, bound, inclusive in (("low", bounds.low, bounds.low_inclusive),
                                          ("high", bounds.high, bounds.high_inclusive)):
                if bound is not None:
                    attrs = {"value": bound, "unit": unit or "1"}
                    if not inclusive:
                        attrs["inclusive"] = "false"
                    _el(rng, tag, **attrs)
        else:
            rng.set(_XSI_TYPE, "ST")
            rng.text = xml_text(" - ".join(b for b in (bounds.low, bounds.high) if b)
                                + (f" {res.unit}" if res.unit else ""))


UCUM_OID = "2.16.840.1.113883.6.8"


def _second_unit(value_el: etree._Element, res: LabResult) -> None:
    """The second unit of a 14-field RES line (``…|F|5.05|mmol/l|4.11|5.88``, the shape of
    most real lab lines): the same result in another unit, as a ``translation``."""
    if len(res.extra) < 2:
        return
    number, written = _decimal(res.extra[0]), res.extra[1].strip()
    if number is None or not written:
        return
    code = ucum(written)
    if code is not None:
        _el(value_el, "translation", value=number, code=code, codeSystem=UCUM_OID)
    else:
        translation = _el(value_el, "translation", value=number, nullFlavor="OTH")
        _el(translation, "originalText", written)


def build_lab_cda(
    *,
    patient: Patient,
    author: Author,
    lab: LabBlock,
    title: str,
    effective_time: datetime,
    code: tuple[str, str] = LAB_REPORT_CODE,
    ids: DocumentSettings = _IDS,
) -> CdaDocument:
    """A structured CDA with one observation per ``RES`` line (value, unit, reference range,
    interpretation L/H/LL/HH/N) and a narrative table of the same results."""
    ts = cda_timestamp(effective_time)
    document_id = _derived_oid(
        b"lab", "\n".join(lab.raw_lines).encode("utf-8", "replace"), ts.encode()
    )
    root = _header(
        patient=patient,
        author=author,
        title=title,
        code=code,
        effective_time=effective_time,
        document_id=document_id,
        ids=ids,
    )
    structured = _el(_el(root, "component"), "structuredBody")
    section = _el(_el(structured, "component"), "section")
    _el(section, "code", code="26436-6", codeSystem=LOINC, displayName="Laboratory studies")
    _el(section, "title", "Résultats")
    narrative = _el(section, "text")
    table = _el(narrative, "table", border="1")
    head = _el(_el(table, "thead"), "tr")
    for label in ("Examen", "Résultat", "Unité", "Normales", "Indicateur"):
        _el(head, "th", label)
    tbody = _el(table, "tbody")
    for res in lab.results:
        row = _el(tbody, "tr")
        for cell in (
            res.label or res.code or "",
            res.value or "",
            res.unit or "",
            " - ".join(v for v in (res.low, res.high) if v),
            res.flag or "",
        ):
            _el(row, "td", plain_text(cell))
    for res in lab.results:
        _observation(section, res, ts, ids.lab_code_system)
    return CdaDocument(
        xml=_serialise(root),
        format_code=FORMAT_LAB,
        title=title,
        type_code=code,
        unique_id=document_id,
        creation_time=effective_time,
    )


# --- reading ----------------------------------------------------------------------------------
