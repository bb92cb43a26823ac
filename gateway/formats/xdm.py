"""IHE XDM (``IHE_XDM.ZIP``): building the archive and reading one safely.

Rules kept here: pure, in memory (a ``BytesIO``, never a file), deterministic (zip times come
from ``submission_time``, identifiers from the content). Reading is bounded before it is done:
entry count (from the end-of-central-directory record, before ``zipfile`` parses anything),
declared and actual sizes (read in chunks), compression ratio, path traversal, duplicate and
overlapping entries (CVE-2024-0450, unfixed in Python 3.11.7), encryption, and the XML through
:mod:`gateway.formats.xmlsafe`. Never raises anything but ``gateway.errors`` types
(``LimitExceeded`` for a bound, ``MalformedError`` for the rest); reasons never quote content.
"""

from __future__ import annotations

import hashlib
import html
import io
import itertools
import struct
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from gateway.config.settings import DocumentSettings
from gateway.errors import LimitExceeded, MalformedError
from gateway.formats.cda import Author, CdaContent, CdaDocument, Patient, xml_text
from gateway.formats.cda_reader import read_cda
from gateway.formats.xmlsafe import parse_xml

__all__ = [
    "METADATA_PATH",
    "XdmContent",
    "XdmEntry",
    "XdmLimits",
    "build_xdm",
    "patient_id_cx",
    "read_xdm",
]

SUBSET = "IHE_XDM/SUBSET01/"
METADATA_PATH = SUBSET + "METADATA.XML"

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
_NS = {"rim": RIM, "lcm": LCM}

# IHE ITI TF-3 identifiers
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY_TYPE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
CLASSIFICATION_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_ID_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
IHE_FORMAT_CODES = "1.3.6.1.4.1.19376.1.2.3"
LOINC = "2.16.840.1.113883.6.1"
INS_NIR_OID = "1.2.250.1.213.1.4.8"
#: the gateway's source id for submission sets (its own OID arc)
SOURCE_ID = DocumentSettings().source_id  # default; a deployment configures its own


@dataclass(frozen=True)
class XdmLimits:
    max_entries: int = 64
    max_entry_bytes: int = 20 * 1024 * 1024
    max_total_bytes: int = 50 * 1024 * 1024
    max_ratio: int = 100  #: uncompressed / compressed, per entry
    max_xml_bytes: int = 10 * 1024 * 1024
    max_name_bytes: int = 255


DEFAULT_LIMITS = XdmLimits()


@dataclass(frozen=True)
class XdmEntry:
    """One XDSDocumentEntry as METADATA.XML describes it, with its document's bytes."""

    uri: str
    mime_type: str | None
    format_code: str | None
    type_code: str | None
    title: str | None
    hash: str | None
    size: int | None
    creation_time: str | None
    unique_id: str | None
    patient_id: str | None
    content: bytes
    cda: CdaContent | None  #: the document read as CDA (XML entries), None otherwise


@dataclass(frozen=True)
class XdmContent:
    patient_id: str | None  #: the submission set's patientId (CX)
    submission_time: str | None
    entries: tuple[XdmEntry, ...]
    files: tuple[str, ...]  #: every name in the archive


def patient_id_cx(patient: Patient) -> str:
    """``NIR^^^&1.2.250.1.213.1.4.8&ISO`` for a patient with an INS, else the local id."""
    if patient.ins is not None:
        return f"{patient.ins}^^^&{INS_NIR_OID}&ISO"
    local = (patient.local_id or "UNKNOWN").replace("^", " ").replace("&", " ")
    return f"{local}^^^&{patient.local_id_root}&ISO"


def _hl7_time(moment: datetime) -> str:
    """XDS DTM: UTC, ``YYYYMMDDHHMMSS``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


# --- building ---------------------------------------------------------------------------------


class _Ids:
    """Deterministic urn:uuid identifiers for the registry objects of one submission."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._n = 0

    def next(self) -> str:
        self._n += 1
        digest = hashlib.sha256(self._seed + self._n.to_bytes(4, "big")).digest()
        return f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}"


def _rim(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{RIM}}}{tag}", attrs)


def _slot(parent: etree._Element, name: str, *values: str) -> None:
    values_el = _rim(_rim(parent, "Slot", name=name), "ValueList")
    for value in values:
        # names and codes from the sender's document: XML 1.0 cannot hold control characters
        _rim(values_el, "Value").text = xml_text(value)


def _name(parent: etree._Element, text: str) -> None:
    _rim(_rim(parent, "Name"), "LocalizedString", value=xml_text(text))


def _classification(
    parent: etree._Element,
    ids: _Ids,
    scheme: str,
    obj: str,
    code: str,
    coding_scheme: str | None,
    display: str | None,
) -> etree._Element:
    cl = _rim(
        parent,
        "Classification",
        id=ids.next(),
        objectType=CLASSIFICATION_TYPE,
        classificationScheme=scheme,
        classifiedObject=obj,
        nodeRepresentation=code,
    )
    if coding_scheme is not None:
        _slot(cl, "codingScheme", coding_scheme)
    if display is not None:
        _name(cl, display)
    return cl


def _external_id(
    parent: etree._Element, ids: _Ids, scheme: str, obj: str, value: str, label: str
) -> None:
    ext = _rim(
        parent,
        "ExternalIdentifier",
        id=ids.next(),
        objectType=EXTERNAL_ID_TYPE,
        identificationScheme=scheme,
        registryObject=obj,
        value=xml_text(value),
    )
    _name(ext, label)


def _author_xcn(author: Author) -> str:
    safe = author.name.replace("^", " ").replace("&", " ")
    return f"{author.id}^{safe}^^^^^^^&{author.id_root}&ISO"


def _patient_info(patient: Patient) -> list[str]:
    info = [
        f"PID-3|{patient_id_cx(patient)}",
        f"PID-5|{patient.last_name}^{patient.first_name}^^^^^L".replace("\r", " "),
    ]
    if patient.birth_date is not None:
        info.append(f"PID-7|{patient.birth_date.strftime('%Y%m%d')}")
    if patient.sex is not None:
        info.append(f"PID-8|{patient.sex}")
    return info


def _metadata(
    documents: Sequence[CdaDocument],
    patient: Patient,
    author: Author,
    submission_time: datetime,
    source_id: str,
) -> bytes:
    seed = (
        b"".join(hashlib.sha256(d.xml).digest() for d in documents)
        + _hl7_time(submission_time).encode()
    )
    ids = _Ids(seed)
    pid = patient_id_cx(patient)
    root = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    objects = _rim(root, "RegistryObjectList")
    ss_id = ids.next()
    doc_ids = []
    for index, doc in enumerate(documents, start=1):
        doc_id = ids.next()
        doc_ids.append(doc_id)
        eo = _rim(
            objects,
            "ExtrinsicObject",
            id=doc_id,
            mimeType=doc.mime_type,
            objectType=DOCUMENT_ENTRY,
            status=APPROVED,
        )
        _slot(eo, "creationTime", _hl7_time(doc.creation_time))
        _slot(eo, "hash", hashlib.sha1(doc.xml).hexdigest())  # noqa: S324 - XDS requires SHA-1
        _slot(eo, "size", str(len(doc.xml)))
        _slot(eo, "languageCode", "fr-FR")
        _slot(eo, "URI", f"DOC{index:04d}.XML")
        _slot(eo, "sourcePatientId", pid)
        _slot(eo, "sourcePatientInfo", *_patient_info(patient))
        _name(eo, doc.title)
        cl = _classification(eo, ids, DE_AUTHOR, doc_id, "", None, None)
        _slot(cl, "authorPerson", _author_xcn(author))
        code, display = doc.type_code
        _classification(eo, ids, DE_CLASS_CODE, doc_id, code, LOINC, display)
        _classification(
            eo, ids, DE_CONFIDENTIALITY, doc_id, "N", "2.16.840.1.113883.5.25", "Normal"
        )
        _classification(
            eo, ids, DE_FORMAT_CODE, doc_id, doc.format_code, IHE_FORMAT_CODES, doc.format_code
        )
        _classification(
            eo, ids, DE_FACILITY_TYPE, doc_id, "SA07", "1.2.250.1.71.4.2.4", "Cabinet de ville"
        )
        _classification(
            eo,
            ids,
            DE_PRACTICE_SETTING,
            doc_id,
            "ETABLISSEMENT",
            "1.2.250.1.213.1.1.4.9",
            "Etablissement de santé",
        )
        _classification(eo, ids, DE_TYPE_CODE, doc_id, code, LOINC, display)
        _external_id(eo, ids, DE_PATIENT_ID, doc_id, pid, "XDSDocumentEntry.patientId")
        _external_id(eo, ids, DE_UNIQUE_ID, doc_id, doc.unique_id, "XDSDocumentEntry.uniqueId")

    ss = _rim(objects, "RegistryPackage", id=ss_id, status=APPROVED)
    _slot(ss, "submissionTime", _hl7_time(submission_time))
    _name(ss, "Passerelle")
    cl = _classification(ss, ids, SS_AUTHOR, ss_id, "", None, None)
    _slot(cl, "authorPerson", _author_xcn(author))
    first_code = documents[0].type_code if documents else ("11488-4", "")
    _classification(ss, ids, SS_CONTENT_TYPE, ss_id, first_code[0], LOINC, first_code[1])
    ss_unique = "2.25." + str(uuid.UUID(ids.next()[9:]).int)
    _external_id(ss, ids, SS_UNIQUE_ID, ss_id, ss_unique, "XDSSubmissionSet.uniqueId")
    _external_id(ss, ids, SS_SOURCE_ID, ss_id, source_id, "XDSSubmissionSet.sourceId")
    _external_id(ss, ids, SS_PATIENT_ID, ss_id, pid, "XDSSubmissionSet.patientId")
    _rim(
        objects,
        "Classification",
        id=ids.next(),
        objectType=CLASSIFICATION_TYPE,
        classifiedObject=ss_id,
        classificationNode=SUBMISSION_SET,
    )
    for doc_id in doc_ids:
        assoc = _rim(
            objects,
            "Association",
            id=ids.next(),
            associationType=HAS_MEMBER,
            sourceObject=ss_id,
            targetObject=doc_id,
        )
        _slot(assoc, "SubmissionSetStatus", "Original")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _index_htm(documents: Sequence[CdaDocument], author: Author) -> bytes:
    items = "".join(
        f'<li><a href="IHE_XDM/SUBSET01/DOC{i:04d}.XML">{html.escape(d.title)}</a></li>\r\n'
        for i, d in enumerate(documents, start=1)
    )
    page = (
        '<!DOCTYPE html>\r\n<html><head><meta charset="utf-8"><title>IHE XDM</title></head>'
        f"<body>\r\n<h1>Documents</h1>\r\n<p>Auteur : {html.escape(author.name)}</p>\r\n"
        f'<ul>\r\n{items}</ul>\r\n<p><a href="README.TXT">README.TXT</a></p>\r\n'
        "</body></html>\r\n"
    )
    return page.encode("utf-8")


_README = (
    "IHE XDM media (IHE ITI TF-1 16), written by Passerelle, a secure-messaging gateway\r\n"
    "between the apicrypt and MSSante networks.\r\n"
    "Contents: INDEX.HTM (list of documents), IHE_XDM/SUBSET01/METADATA.XML (ebRIM\r\n"
    "SubmitObjectsRequest) and IHE_XDM/SUBSET01/DOCnnnn.XML (HL7 CDA R2 documents).\r\n"
)


def build_xdm(
    documents: Sequence[CdaDocument],
    patient: Patient,
    author: Author,
    submission_time: datetime,
    source_id: str = SOURCE_ID,
) -> bytes:
    """An ``IHE_XDM.ZIP`` holding ``documents`` and their metadata, as bytes."""
    if not documents:
        raise MalformedError("an XDM archive needs at least one document")
    stamp = submission_time
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    date_time = (
        max(stamp.year, 1980),
        stamp.month,
        stamp.day,
        stamp.hour,
        stamp.minute,
        stamp.second,
    )
    files = [
        ("INDEX.HTM", _index_htm(documents, author)),
        ("README.TXT", _README.encode("ascii")),
        (METADATA_PATH, _metadata(documents, patient, author, submission_time, source_id)),
    ]
    files += [(f"{SUBSET}DOC{i:04d}.XML", d.xml) for i, d in enumerate(documents, start=1)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


# --- reading ----------------------------------------------------------------------------------

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_LOCAL_HEADER = b"PK\x03\x04"


def _precheck(data: bytes, limits: XdmLimits) -> None:
    """Entry count from the end-of-central-directory record, before zipfile parses."""
    tail = data[-(22 + 65535) :]
    pos = tail.rfind(_EOCD)
    if pos < 0 or len(tail) - pos < 22:
        raise MalformedError("not a zip archive")
    if _ZIP64_LOCATOR in tail[max(0, pos - 20) : pos]:
        raise LimitExceeded("zip64 archives are not accepted")
    disk_entries, total_entries = struct.unpack("<HH", tail[pos + 8 : pos + 12])
    if max(disk_entries, total_entries) > limits.max_entries:
        raise LimitExceeded("too many entries in the archive")


def _check_name(name: str, limits: XdmLimits) -> None:
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise LimitExceeded("archive entry name too long")
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or ":" in name
        or any(part in ("..", ".") for part in name.split("/"))
    ):
        raise MalformedError("unsafe archive entry name")


def _check_layout(data: bytes, infos: list[zipfile.ZipInfo], cd_start: int) -> None:
    """Entries must not overlap each other nor the central directory (CVE-2024-0450)."""
    spans = []
    for info in infos:
        off = info.header_offset
        header = data[off : off + 30]
        if len(header) < 30 or header[:4] != _LOCAL_HEADER:
            raise MalformedError("bad local header in the archive")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = off + 30 + name_len + extra_len
        end = start + info.compress_size
        if end > cd_start:
            raise MalformedError("archive entry overlaps the central directory")
        spans.append((off, end))
    spans.sort()
    for (_, prev_end), (next_start, _) in itertools.pairwise(spans):
        if next_start < prev_end:
            raise MalformedError("overlapping entries in the archive")


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: XdmLimits, budget: int
) -> bytes:
    chunks: list[bytes] = []
    total = 0
    allowed = min(limits.max_entry_bytes, budget, info.file_size)
    with archive.open(info) as stream:
        while True:
            chunk = stream.read(64 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > allowed:
                if total > info.file_size:
                    raise MalformedError("archive entry larger than declared")
                raise LimitExceeded("archive entry too big")
            if total > limits.max_ratio * max(info.compress_size, 1) and total > 1024 * 1024:
                raise LimitExceeded("archive compression ratio too high")
            chunks.append(chunk)
    if total != info.file_size:
        raise MalformedError("archive entry size differs from its header")
    return b"".join(chunks)


def _values(parent: etree._Element, slot: str) -> list[str]:
    return [
        (v.text or "").strip()
        for v in parent.iterfind(f"rim:Slot[@name='{slot}']/rim:ValueList/rim:Value", _NS)
    ]


def _one(parent: etree._Element, slot: str) -> str | None:
    values = _values(parent, slot)
    return values[0] if values else None


def _classified(parent: etree._Element, scheme: str) -> str | None:
    for cl in parent.iterfind("rim:Classification", _NS):
        if cl.get("classificationScheme") == scheme:
            value = cl.get("nodeRepresentation")
            return str(value) if value is not None else None
    return None


def _identified(parent: etree._Element, scheme: str) -> str | None:
    for ext in parent.iterfind("rim:ExternalIdentifier", _NS):
        if ext.get("identificationScheme") == scheme:
            value = ext.get("value")
            return str(value) if value is not None else None
    return None


def read_xdm(data: bytes, limits: XdmLimits = DEFAULT_LIMITS) -> XdmContent:
    """Open an XDM archive safely, check its metadata against its documents, return both."""
    data = bytes(data)
    _precheck(data, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        cd_start = archive.start_dir
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise MalformedError("unreadable zip archive") from exc
    except Exception as exc:  # zipfile raises assorted types on hostile central directories
        raise MalformedError("unreadable zip archive") from exc
    if len(infos) > limits.max_entries:
        raise LimitExceeded("too many entries in the archive")
    seen: set[str] = set()
    declared = 0
    for info in infos:
        _check_name(info.filename, limits)
        key = info.filename.upper()
        if key in seen:
            raise MalformedError("duplicate entry in the archive")
        seen.add(key)
        if info.flag_bits & 0x1:
            raise MalformedError("encrypted archive entry")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise MalformedError("unsupported compression in the archive")
        if info.file_size > limits.max_entry_bytes:
            raise LimitExceeded("archive entry too big")
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) and (
            info.file_size > 1024 * 1024
        ):
            raise LimitExceeded("archive compression ratio too high")
        declared += info.file_size
    if declared > limits.max_total_bytes:
        raise LimitExceeded("archive too big once uncompressed")
    _check_layout(data, infos, cd_start)

    by_name = {info.filename.upper(): info for info in infos}
    meta_info = by_name.get(METADATA_PATH)
    if meta_info is None:
        raise MalformedError("XDM archive without METADATA.XML")
    budget = limits.max_total_bytes

    def read(info: zipfile.ZipInfo) -> bytes:
        nonlocal budget
        try:
            content = _read_entry(archive, info, limits, budget)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise MalformedError("corrupt archive entry") from exc
        except (LimitExceeded, MalformedError):
            raise
        except Exception as exc:
            raise MalformedError("corrupt archive entry") from exc
        budget -= len(content)
        return content

    metadata = read(meta_info)
    if len(metadata) > limits.max_xml_bytes:
        raise LimitExceeded("METADATA.XML too big")
    root = parse_xml(metadata, limits.max_xml_bytes)
    if root.tag != f"{{{LCM}}}SubmitObjectsRequest":
        raise MalformedError("METADATA.XML is not a SubmitObjectsRequest")

    entries = []
    for eo in root.iterfind(".//rim:ExtrinsicObject", _NS):
        uri = _one(eo, "URI")
        if not uri:
            raise MalformedError("document entry without URI")
        _check_name(uri, limits)
        doc_info = by_name.get((SUBSET + uri).upper())
        if doc_info is None:
            raise MalformedError("document entry whose file is missing")
        content = read(doc_info)
        digest = _one(eo, "hash")
        if digest is not None and digest.lower() != hashlib.sha1(content).hexdigest():  # noqa: S324
            raise MalformedError("document hash differs from its metadata")
        size_text = _one(eo, "size")
        size = int(size_text) if size_text and size_text.isdigit() else None
        if size is not None and size != len(content):
            raise MalformedError("document size differs from its metadata")
        name_el = eo.find("rim:Name/rim:LocalizedString", _NS)
        title = name_el.get("value") if name_el is not None else None
        mime = eo.get("mimeType")
        cda = None
        if mime in ("text/xml", "application/xml"):
            cda = read_cda(content, limits.max_xml_bytes)
        entries.append(
            XdmEntry(
                uri=uri,
                mime_type=str(mime) if mime is not None else None,
                format_code=_classified(eo, DE_FORMAT_CODE),
                type_code=_classified(eo, DE_TYPE_CODE),
                title=str(title) if title is not None else None,
                hash=digest,
                size=size,
                creation_time=_one(eo, "creationTime"),
                unique_id=_identified(eo, DE_UNIQUE_ID),
                patient_id=_identified(eo, DE_PATIENT_ID),
                content=content,
                cda=cda,
            )
        )
    package = root.find(".//rim:RegistryPackage", _NS)
    return XdmContent(
        patient_id=_identified(package, SS_PATIENT_ID) if package is not None else None,
        submission_time=_one(package, "submissionTime") if package is not None else None,
        entries=tuple(entries),
        files=tuple(info.filename for info in infos),
    )
