"""Reading CDA R2 documents as French labs and hospitals write them (CI-SIS CR-BIO, TROD,
N1 text/PDF), for the HPRIM text an apicrypt practitioner reads.

Rules kept here: every result is read wherever the CI-SIS puts it (directly under ``entry``,
or nested in ``act``/``organizer``/``entryRelationship``/``component``, batteries included),
with the lab's own label (the narrative that ``originalText/reference`` points to) before the
code's display name; the narrative of every section (``section/text``) is read too, tables
as aligned lines, so that what the author wrote reaches the reader even where nothing is
structured. An "auto-presentable" document (a ClinicalDocument inside an ``xsl:stylesheet``
root) is read as the document it holds. The patient's INS is recognised under every root of
the INS family. Parsing goes through :mod:`gateway.formats.xmlsafe`; nothing but
``gateway.errors`` types is raised.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import date

from lxml import etree

from gateway.errors import MalformedError
from gateway.formats.cda import (
    HL7,
    INS_ROOTS,
    LOCAL_PATIENT_ID_ROOT,
    NS,
    CdaContent,
    LabObservation,
    Patient,
    _decimal,
)
from gateway.formats.hprim import LabResult, nir_birth, parse_date
from gateway.formats.xmlsafe import MAX_XML_BYTES, parse_xml

__all__ = ["lab_results_of", "narrative_text", "read_cda"]

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_XSL = "http://www.w3.org/1999/XSL/Transform"
# Observations that describe the document, not a result (CI-SIS "type of attached document").
_NOT_RESULTS = frozenset({"69764-9"})
_MAX_CELL = 120  # a table cell longer than this is wrapped onto lines of its own


def _t(el: etree._Element) -> str:
    return "".join(t if isinstance(t, str) else t.decode("utf-8", "replace")
                   for t in el.itertext())


def _first(root: etree._Element, path: str) -> etree._Element | None:
    return root.find(path, NS)


def _attr(root: etree._Element, path: str, name: str) -> str | None:
    el = _first(root, path)
    if el is None:
        return None
    value = el.get(name)
    return str(value) if value is not None else None


def _text(root: etree._Element, path: str) -> str | None:
    el = _first(root, path)
    if el is None:
        return None
    return " ".join(_t(el).split()) or None


# --- the patient -----------------------------------------------------------------------------


def _read_patient(root: etree._Element) -> Patient:
    role = _first(root, "h:recordTarget/h:patientRole")
    if role is None:
        raise MalformedError("CDA without recordTarget/patientRole")
    nir: str | None = None
    local_id: str | None = None
    local_root = LOCAL_PATIENT_ID_ROOT
    for ident in role.findall("h:id", NS):
        ext, oid = ident.get("extension"), ident.get("root")
        if ext is None or oid is None:
            continue
        if oid in INS_ROOTS and nir is None:
            nir = "".join(str(ext).split())
        elif local_id is None:
            local_id, local_root = str(ext), str(oid)
    sex = _attr(role, "h:patient/h:administrativeGenderCode", "code")
    birth = _attr(role, "h:patient/h:birthTime", "value")
    birth_date: date | None = None
    if birth and len(birth) >= 8 and birth[:8].isdigit():
        birth_date = parse_date(f"{birth[6:8]}/{birth[4:6]}/{birth[0:4]}")
    if birth_date is None and nir is not None:
        birth_date = nir_birth(nir)
    if sex not in ("M", "F") and nir is not None and len(nir) >= 13:
        sex = {"1": "M", "2": "F"}.get(nir[0])
    address = tuple(" ".join(_t(line).split())
                    for line in role.findall("h:addr/h:streetAddressLine", NS))
    city = " ".join(x for x in (_text(role, "h:addr/h:postalCode"),
                                _text(role, "h:addr/h:city")) if x)
    if city:
        address = (*address, city)
    return Patient(
        last_name=_text(role, "h:patient/h:name/h:family") or "",
        first_name=_text(role, "h:patient/h:name/h:given") or "",
        birth_date=birth_date,
        sex="M" if sex == "M" else "F" if sex == "F" else None,
        nir=nir,
        local_id=local_id,
        local_id_root=local_root,
        address=address,
    )


# --- results ---------------------------------------------------------------------------------


def _ids(root: etree._Element) -> dict[str, str]:
    """Narrative elements by their ID (what ``reference value="#id"`` points to)."""
    out: dict[str, str] = {}
    for el in root.iter(f"{{{HL7}}}content", f"{{{HL7}}}td", f"{{{HL7}}}paragraph",
                        f"{{{HL7}}}item", f"{{{HL7}}}caption"):
        ident = el.get("ID")
        if ident:
            out[str(ident)] = " ".join(_t(el).split())
    return out


def _referenced(el: etree._Element | None, ids: dict[str, str]) -> str | None:
    if el is None:
        return None
    ref = _attr(el, "h:originalText/h:reference", "value") or _attr(el, "h:reference", "value")
    if ref and ref.startswith("#") and ids.get(ref[1:]):
        return ids[ref[1:]]
    text = _text(el, "h:originalText")
    return text or None


def _comment(el: etree._Element | None, ids: dict[str, str]) -> str | None:
    """An observation's ``text``: the narrative it points to, or its own words."""
    if el is None:
        return None
    return _referenced(el, ids) or " ".join(_t(el).split()) or None


def _quantity(el: etree._Element) -> tuple[str | None, str | None]:
    value = el.get("value")
    unit = el.get("unit")
    return (str(value) if value is not None else None,
            str(unit) if unit is not None and unit != "1" else None)


def _value(el: etree._Element | None, ids: dict[str, str]) -> tuple[str | None, str | None]:
    """(value, unit) of an observation's ``value``, whatever its data type."""
    if el is None:
        return None, None
    kind = str(el.get(_XSI_TYPE) or "").rpartition(":")[2].upper()
    if kind in ("PQ", "INT", "REAL", "MO", "TS"):
        return _quantity(el)
    if kind.startswith("IVL"):
        low, high = _first(el, "h:low"), _first(el, "h:high")
        lv, lu = _quantity(low) if low is not None else (None, None)
        hv, hu = _quantity(high) if high is not None else (None, None)
        if lv and hv:
            return f"{lv}-{hv}", lu or hu
        if lv:
            return f">= {lv}", lu
        if hv:
            return f"<= {hv}", hu
        return None, None
    if kind in ("CD", "CE", "CV", "CO", "CS"):
        shown = el.get("displayName") or _referenced(el, ids) or el.get("code")
        return (str(shown) if shown else None), None
    if kind == "BL":
        flag = el.get("value")
        return ({"true": "positif", "false": "négatif"}.get(str(flag), str(flag))
                if flag is not None else None), None
    if kind == "RTO":
        num, den = _first(el, "h:numerator"), _first(el, "h:denominator")
        if num is not None and den is not None:
            return f"{num.get('value')}/{den.get('value')}", None
    text = _referenced(el, ids) or " ".join(_t(el).split())
    return (text or (str(el.get("value")) if el.get("value") else None)), None


def _observations(body: etree._Element, ids: dict[str, str]) -> tuple[LabObservation, ...]:
    out = []
    for obs in body.iter(f"{{{HL7}}}observation"):
        code = _attr(obs, "h:code", "code")
        if code in _NOT_RESULTS or obs.get("moodCode") not in (None, "EVN"):
            continue
        value_el = _first(obs, "h:value")
        value, unit = _value(value_el, ids)
        if value is None:
            continue  # a battery's heading or an empty observation: its members carry results
        label = (_referenced(_first(obs, "h:code"), ids)
                 or _attr(obs, "h:code", "displayName") or code)
        out.append(LabObservation(
            code=code,
            label=label,
            value=value,
            unit=unit,
            low=_attr(obs, "h:referenceRange/h:observationRange/h:value/h:low", "value"),
            high=_attr(obs, "h:referenceRange/h:observationRange/h:value/h:high", "value"),
            interpretation=_attr(obs, "h:interpretationCode", "code"),
            comment=_comment(_first(obs, "h:text"), ids),
        ))
    return tuple(out)


# --- narrative -------------------------------------------------------------------------------


def _cells(row: etree._Element) -> list[str]:
    return [" ".join(_t(cell).split()) for cell in row
            if etree.QName(cell).localname in ("td", "th")]


def _table(table: etree._Element) -> list[str]:
    """A table as aligned lines: columns padded to their widest cell."""
    rows = [_cells(row) for row in table.iter(f"{{{HL7}}}tr")]
    rows = [r for r in rows if any(r)]
    if not rows:
        return []
    widths = [0] * max(len(r) for r in rows)
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], min(len(cell), _MAX_CELL))
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]


def _block(el: etree._Element, out: list[str]) -> None:
    """The lines of a narrative block (paragraphs, line breaks, lists, tables)."""
    line: list[str] = [el.text or ""]
    for child in el:  # (comments and processing instructions were dropped by the parser)
        name = etree.QName(child).localname
        if name == "br":
            out.append(" ".join("".join(line).split()))
            line = []
        elif name == "table":
            out.append(" ".join("".join(line).split()))
            line = []
            out.extend(_table(child))
        elif name in ("paragraph", "list", "item"):
            out.append(" ".join("".join(line).split()))
            line = []
            if name == "item":
                sub: list[str] = []
                _block(child, sub)
                out.extend(f"- {s}" if i == 0 else f"  {s}"
                           for i, s in enumerate(x for x in sub if x))
            else:
                _block(child, out)
        elif name in ("renderMultiMedia",):
            pass  # an image or an embedded document: named by its own entry
        else:
            line.append(_t(child))
        line.append(child.tail or "")
    out.append(" ".join("".join(line).split()))


def narrative_text(body: etree._Element) -> str:
    """Every section's title and text, in document order, sub-sections indented by nothing
    but their own titles; blank runs collapsed. CRLF line ends."""
    lines: list[str] = []
    for section in body.iter(f"{{{HL7}}}section"):
        title = _text(section, "h:title")
        text_el = _first(section, "h:text")
        block: list[str] = []
        if text_el is not None:
            _block(text_el, block)
        block = [b.rstrip() for b in block]
        while block and not block[0]:
            block.pop(0)
        if not title and not any(block):
            continue
        if lines and lines[-1]:
            lines.append("")
        if title:
            lines.append(title)
        for b in block:
            if b or (lines and lines[-1]):  # no run of blank lines
                lines.append(b)
    while lines and not lines[-1]:
        lines.pop()
    return "".join(f"{line}\r\n" for line in lines)


# --- the document ----------------------------------------------------------------------------


def _clinical_document(root: etree._Element) -> etree._Element:
    if root.tag == f"{{{HL7}}}ClinicalDocument":
        return root
    if root.tag in (f"{{{_XSL}}}stylesheet", f"{{{_XSL}}}transform"):
        # "auto-presentable": the stylesheet carries the document to display
        found = next(root.iter(f"{{{HL7}}}ClinicalDocument"), None)
        if found is not None:
            return found
    raise MalformedError("not a CDA R2 ClinicalDocument")


def read_cda(data: bytes, max_bytes: int = MAX_XML_BYTES) -> CdaContent:
    """Read identity, text, narrative and results from a CDA R2 document (hardened parser)."""
    root = _clinical_document(parse_xml(data, max_bytes))
    media_type: str | None = None
    content: bytes | None = None
    text_el = _first(root, "h:component/h:nonXMLBody/h:text")
    if text_el is not None:
        media = text_el.get("mediaType")
        media_type = str(media) if media is not None else "text/plain"
        raw = _t(text_el)
        if text_el.get("representation") == "B64":
            try:
                content = base64.b64decode("".join(raw.split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise MalformedError("CDA nonXMLBody is not valid base64") from exc
        else:
            content = raw.encode("utf-8", "replace")
    body = _first(root, "h:component/h:structuredBody")
    observations: tuple[LabObservation, ...] = ()
    narrative = ""
    embedded: tuple[tuple[str, bytes, str], ...] = ()
    if body is not None:
        observations = _observations(body, _ids(body))
        narrative = narrative_text(body)
        embedded = _embedded(body)
    return CdaContent(
        document_id=_attr(root, "h:id", "root"),
        title=_text(root, "h:title"),
        type_code=_attr(root, "h:code", "code"),
        effective_time=_attr(root, "h:effectiveTime", "value"),
        patient=_read_patient(root),
        author_name=_text(root, "h:author/h:assignedAuthor/h:assignedPerson/h:name"),
        media_type=media_type,
        content=content,
        observations=observations,
        narrative=narrative,
        structured=body is not None,
        embedded=embedded,
    )


def _embedded(body: etree._Element) -> tuple[tuple[str, bytes, str], ...]:
    """The files a structured body carries (a PDF copy of the report, images): what the
    reader of the HPRIM text gets as attachments. One that does not decode is left out."""
    out: list[tuple[str, bytes, str]] = []
    for media in body.iter(f"{{{HL7}}}observationMedia"):
        value = _first(media, "h:value")
        if value is None or value.get("representation") != "B64":
            continue
        try:
            data = base64.b64decode("".join(_t(value).split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        kind = str(value.get("mediaType") or "application/octet-stream")
        out.append((kind, data, str(media.get("ID") or f"media{len(out) + 1}")))
    return tuple(out)


def lab_results_of(observations: Iterable[LabObservation]) -> tuple[LabResult, ...]:
    """Observations read back as HPRIM results (the other direction's raw material)."""
    return tuple(
        LabResult(
            label=o.label,
            code=o.code,
            type="N" if _decimal(o.value) is not None else "A",
            value=o.value,
            unit=o.unit,
            low=o.low,
            high=o.high,
            flag=o.interpretation if o.interpretation in _HPRIM_FLAGS else None,
            # an interpretation HPRIM has no flag for (A, POS, NEG, R...) stays, as text
            comments=tuple(c for c in (
                o.comment,
                "Interprétation : " + _INTERPRETATIONS.get(o.interpretation, o.interpretation)
                if o.interpretation and o.interpretation not in _HPRIM_FLAGS else None) if c),
        )
        for o in observations
    )


_HPRIM_FLAGS = frozenset({"L", "H", "LL", "HH", "N"})
# HL7 ObservationInterpretation codes HPRIM has no flag for (antibiograms, qualitative tests)
_INTERPRETATIONS = {"R": "résistant", "I": "intermédiaire", "S": "sensible", "A": "anormal",
                    "AA": "très anormal", "POS": "positif", "NEG": "négatif",
                    "DET": "détecté", "ND": "non détecté", "IND": "indéterminé"}
