"""CDA and IHE XDM: build -> read round trips keep identity and text; metadata and CDA carry
the required elements and OIDs; hostile archives and XML (zip bomb, lying sizes, traversal,
duplicates, overlapping entries, encryption, billion laughs, external entities) are refused."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import struct
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.errors import GatewayError, LimitExceeded, MalformedError
from gateway.formats.cda import (
    FORMAT_LAB,
    FORMAT_PDF,
    FORMAT_TEXT,
    INS_NIR_OID,
    Author,
    Patient,
    build_lab_cda,
    build_n1_cda,
)
from gateway.formats.cda_reader import lab_results_of, read_cda
from gateway.formats.charset import decode_text
from gateway.formats.hprim import parse_hprim
from gateway.formats.xdm import METADATA_PATH, XdmLimits, build_xdm, patient_id_cx, read_xdm
from gateway.formats.xmlsafe import parse_xml

DATA = Path(__file__).parent / "data" / "formats"
WHEN = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
HL7 = {"h": "urn:hl7-org:v3", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
RIM = {
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
}


@pytest.fixture(scope="module")
def lab_doc() -> tuple[str, object]:
    text = decode_text((DATA / "hprim_lab_inr_latin1.hpr").read_bytes(), "iso-8859-1").text
    return text, parse_hprim(text)


@pytest.fixture(scope="module")
def xdm(lab_doc: tuple[str, object]) -> bytes:
    text, doc = lab_doc
    assert hasattr(doc, "header")
    patient = Patient.from_hprim(doc.header)  # type: ignore[attr-defined]
    author = Author.from_hprim(doc.header)  # type: ignore[attr-defined]
    n1 = build_n1_cda(
        patient=patient,
        author=author,
        content=text.encode(),
        media_type="text/plain",
        title="Résultats d'analyses",
        effective_time=WHEN,
    )
    lab = build_lab_cda(
        patient=patient,
        author=author,
        lab=doc.lab,  # type: ignore[attr-defined]
        title="Résultats structurés",
        effective_time=WHEN,
    )
    return build_xdm([n1, lab], patient, author, WHEN)


def _zip_member(data: bytes, name: str) -> bytes:
    return zipfile.ZipFile(io.BytesIO(data)).read(name)


def test_round_trip_keeps_identity_text_and_results(
    xdm: bytes, lab_doc: tuple[str, object]
) -> None:
    text, doc = lab_doc
    content = read_xdm(xdm)
    assert content.patient_id == "252035935001239^^^&1.2.250.1.213.1.4.8&ISO"
    assert content.submission_time == "20261128093000"
    assert set(content.files) == {
        "INDEX.HTM",
        "README.TXT",
        METADATA_PATH,
        "IHE_XDM/SUBSET01/DOC0001.XML",
        "IHE_XDM/SUBSET01/DOC0002.XML",
    }
    n1, lab = content.entries
    assert (n1.uri, n1.format_code, n1.mime_type, n1.title) == (
        "DOC0001.XML",
        FORMAT_TEXT,
        "text/xml",
        "Résultats d'analyses",
    )
    assert n1.patient_id == content.patient_id
    assert n1.cda is not None and lab.cda is not None
    patient = n1.cda.patient
    assert (patient.last_name, patient.first_name, patient.birth_date, patient.sex) == (
        "DURAND",
        "Élise",
        date(1952, 3, 14),
        "F",
    )
    assert patient.ins == "252035935001239" and patient.local_id == "DUR-004512"
    assert n1.cda.media_type == "text/plain"
    assert n1.cda.content == text.encode()
    assert n1.cda.effective_time == "20261128093000+0000"
    # structured lab report: every RES line, with interpretation, value, unit and range
    assert lab.format_code == FORMAT_LAB
    back = lab_results_of(lab.cda.observations)
    assert doc.lab is not None  # type: ignore[attr-defined]
    original = doc.lab.results  # type: ignore[attr-defined]
    assert [r.code for r in back] == [r.code for r in original]
    inr = back[0]
    assert (inr.value, inr.flag, inr.low, inr.high, inr.comments) == (
        "3.2",
        "H",
        "2.0",
        "3.0",
        ("Patient sous AVK (fluindione). Zone cible 2,0 - 3,0.",),
    )
    hb = next(r for r in back if r.code == "HB")
    assert (hb.value, hb.unit, hb.flag) == ("10.9", "g/dL", "L")  # the CDA carries the UCUM code
    aspect = next(r for r in back if r.code == "ASP")
    assert (aspect.value, aspect.type) == ("ictérique", "A")


def test_metadata_has_required_elements(xdm: bytes) -> None:
    meta = etree.fromstring(_zip_member(xdm, METADATA_PATH))
    assert meta.tag == "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest"
    entries = meta.findall(".//rim:ExtrinsicObject", RIM)
    assert len(entries) == 2
    for eo, name in zip(entries, ("DOC0001.XML", "DOC0002.XML"), strict=True):
        assert eo.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
        assert eo.get("mimeType") == "text/xml"
        slots = {
            s.get("name"): [v.text for v in s.iterfind("rim:ValueList/rim:Value", RIM)]
            for s in eo.findall("rim:Slot", RIM)
        }
        doc = _zip_member(xdm, "IHE_XDM/SUBSET01/" + name)
        assert slots["hash"] == [hashlib.sha1(doc).hexdigest()]  # noqa: S324
        assert slots["size"] == [str(len(doc))]
        assert slots["URI"] == [name]
        assert slots["creationTime"] == ["20261128093000"]
        assert slots["sourcePatientId"] == ["252035935001239^^^&1.2.250.1.213.1.4.8&ISO"]
        schemes = {c.get("classificationScheme"): c for c in eo.findall("rim:Classification", RIM)}
        for scheme in (
            "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",  # author
            "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",  # classCode
            "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",  # confidentialityCode
            "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",  # formatCode
            "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",  # healthcareFacilityTypeCode
            "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",  # practiceSettingCode
            "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",  # typeCode
        ):
            assert scheme in schemes, scheme
        ids = {
            x.get("identificationScheme"): x.get("value")
            for x in eo.findall("rim:ExternalIdentifier", RIM)
        }
        assert ids["urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"] == (
            "252035935001239^^^&1.2.250.1.213.1.4.8&ISO"
        )
        assert ids["urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"].startswith("2.25.")
    formats = [
        c.get("nodeRepresentation")
        for c in meta.iterfind(".//rim:Classification", RIM)
        if c.get("classificationScheme") == "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
    ]
    assert formats == [FORMAT_TEXT, FORMAT_LAB]
    package = meta.find(".//rim:RegistryPackage", RIM)
    assert package is not None
    pids = {
        x.get("identificationScheme"): x.get("value")
        for x in package.findall("rim:ExternalIdentifier", RIM)
    }
    assert set(pids) == {
        "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
        "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
        "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
    }
    nodes = [
        c.get("classificationNode")
        for c in meta.iterfind("rim:RegistryObjectList/rim:Classification", RIM)
    ]
    assert nodes == ["urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"]
    assocs = meta.findall(".//rim:Association", RIM)
    assert len(assocs) == 2
    assert {a.get("targetObject") for a in assocs} == {e.get("id") for e in entries}
    assert "INDEX.HTM" in zipfile.ZipFile(io.BytesIO(xdm)).namelist()
    assert b"DOC0002.XML" in _zip_member(xdm, "INDEX.HTM")


def test_cda_has_required_elements(xdm: bytes) -> None:
    cda = etree.fromstring(_zip_member(xdm, "IHE_XDM/SUBSET01/DOC0001.XML"))
    assert cda.tag == "{urn:hl7-org:v3}ClinicalDocument"
    type_id = cda.find("h:typeId", HL7)
    assert type_id is not None and type_id.get("extension") == "POCD_HD000040"
    ins = cda.find("h:recordTarget/h:patientRole/h:id", HL7)
    assert ins is not None
    assert (ins.get("root"), ins.get("extension")) == (INS_NIR_OID, "252035935001239")
    assert cda.find("h:author/h:time", HL7) is not None
    assert cda.find("h:custodian", HL7) is not None
    eff = cda.find("h:effectiveTime", HL7)
    assert eff is not None and eff.get("value") == "20261128093000+0000"
    text = cda.find("h:component/h:nonXMLBody/h:text", HL7)
    assert text is not None
    assert (text.get("mediaType"), text.get("representation")) == ("text/plain", "B64")
    assert base64.b64decode(text.text or "").decode().startswith("DUR-004512\r\nDURAND\r\nÉlise")

    lab = etree.fromstring(_zip_member(xdm, "IHE_XDM/SUBSET01/DOC0002.XML"))
    obs = lab.findall(".//h:section/h:entry/h:observation", HL7)
    assert len(obs) == 6
    inr = obs[0]
    value = inr.find("h:value", HL7)
    assert value is not None
    assert value.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "PQ"
    assert value.get("value") == "3.2"
    interp = inr.find("h:interpretationCode", HL7)
    assert interp is not None and interp.get("code") == "H"
    assert interp.get("codeSystem") == "2.16.840.1.113883.5.83"
    rng = inr.find("h:referenceRange/h:observationRange/h:value", HL7)
    assert rng is not None
    assert rng.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "IVL_PQ"
    # the narrative table carries the same results for a human reader
    assert "Hémoglobine" in "".join(lab.find(".//h:section/h:text", HL7).itertext())  # type: ignore[union-attr]


def test_pdf_n1_and_patient_without_ins() -> None:
    patient = Patient(
        last_name="PETIT", first_name="Léo", nir="1 84 12 76 451 089 47", local_id="P-1"
    )
    assert patient.ins is None
    author = Author(id="10101010101", name="Dr Claire PETIT", organisation="Cabinet")
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    doc = build_n1_cda(
        patient=patient,
        author=author,
        content=pdf,
        media_type="application/pdf",
        title="Compte rendu",
        effective_time=WHEN,
    )
    assert doc.format_code == FORMAT_PDF
    cda = read_cda(doc.xml)
    assert (cda.media_type, cda.content) == ("application/pdf", pdf)
    assert cda.patient.nir is None and cda.patient.local_id == "P-1"
    assert INS_NIR_OID.encode() not in doc.xml
    archive = build_xdm([doc], patient, author, WHEN)
    content = read_xdm(archive)
    assert content.patient_id == patient_id_cx(patient) == "P-1^^^&1.2.250.1.999.1.1&ISO"
    assert content.entries[0].format_code == FORMAT_PDF
    # deterministic: same input, same bytes
    assert build_xdm([doc], patient, author, WHEN) == archive
    with pytest.raises(MalformedError):
        build_n1_cda(
            patient=patient,
            author=author,
            content=b"x",
            media_type="image/png",
            title="x",
            effective_time=WHEN,
        )


# --- hostile archives -------------------------------------------------------------------------


def _zip(files: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def _patch_central(data: bytes, index: int, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite a field of the index-th central directory record."""
    pos = -1
    for _ in range(index + 1):
        pos = data.index(b"PK\x01\x02", pos + 1)
    out = bytearray(data)
    struct.pack_into(fmt, out, pos + offset, value)
    return bytes(out)


def _member_files(xdm: bytes) -> list[tuple[str, bytes]]:
    archive = zipfile.ZipFile(io.BytesIO(xdm))
    return [(n, archive.read(n)) for n in archive.namelist()]


def test_zip_bomb_refused(xdm: bytes) -> None:
    files = _member_files(xdm)
    bomb = _zip([*files, ("IHE_XDM/SUBSET01/BOMB.BIN", b"\x00" * (30 * 1024 * 1024))])
    with pytest.raises(LimitExceeded):
        read_xdm(bomb)
    ratio = _zip([*files, ("IHE_XDM/SUBSET01/Z.BIN", b"\x00" * (5 * 1024 * 1024))])
    with pytest.raises(LimitExceeded, match="ratio"):
        read_xdm(ratio)
    with pytest.raises(LimitExceeded, match="uncompressed"):
        read_xdm(xdm, XdmLimits(max_total_bytes=1000))


def test_lying_sizes_refused(xdm: bytes) -> None:
    files = _member_files(xdm)
    big = _zip(
        [(n, d) for n, d in files if not n.endswith("DOC0001.XML")]
        + [("IHE_XDM/SUBSET01/DOC0001.XML", b"<a>" + b" " * 3_000_000 + b"</a>")]
    )
    index = [n for n, _ in files if not n.endswith("DOC0001.XML")].__len__()
    lying = _patch_central(big, index, 24, "<I", 100)  # uncompressed size: 100 bytes
    with pytest.raises(GatewayError):
        read_xdm(lying)


def test_too_many_entries_refused(xdm: bytes) -> None:
    many = _zip([*_member_files(xdm), *((f"X{i}.TXT", b"x") for i in range(100))])
    with pytest.raises(LimitExceeded, match="entries"):
        read_xdm(many)


@pytest.mark.parametrize(
    "name", ["../evil.txt", "/etc/passwd", "IHE_XDM/../../x", "C:/x", "a\\..\\b", "IHE_XDM/./x"]
)
def test_path_traversal_refused(xdm: bytes, name: str) -> None:
    with pytest.raises(MalformedError, match="unsafe"):
        read_xdm(_zip([*_member_files(xdm), (name, b"x")]))


def test_duplicate_entries_refused(xdm: bytes) -> None:
    files = _member_files(xdm)
    with pytest.warns(UserWarning):
        dup = _zip([*files, ("IHE_XDM/SUBSET01/DOC0001.XML", b"<x/>")])
    with pytest.raises(MalformedError, match="duplicate"):
        read_xdm(dup)
    with pytest.raises(MalformedError, match="duplicate"):
        read_xdm(_zip([*files, ("ihe_xdm/subset01/doc0001.xml", b"<x/>")]))


def test_overlapping_entries_refused(xdm: bytes) -> None:
    stored = _zip(_member_files(xdm), method=zipfile.ZIP_STORED)
    read_xdm(stored)  # fine as it is
    # the second entry's central record points at the first entry's local header
    overlap = _patch_central(stored, 1, 42, "<I", 0)
    with pytest.raises(MalformedError, match="overlap"):
        read_xdm(overlap)


def test_encrypted_entry_refused(xdm: bytes) -> None:
    encrypted = _patch_central(xdm, 0, 8, "<H", 0x1)
    with pytest.raises(MalformedError, match="encrypted"):
        read_xdm(encrypted)


def test_metadata_hash_mismatch_refused(xdm: bytes) -> None:
    files = [
        (n, d.replace(b"DURAND", b"DUPONT") if n.endswith("DOC0001.XML") else d)
        for n, d in _member_files(xdm)
    ]
    with pytest.raises(MalformedError, match="hash"):
        read_xdm(_zip(files))


def test_not_a_zip() -> None:
    with pytest.raises(MalformedError):
        read_xdm(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(MalformedError):
        read_xdm(_zip([("README.TXT", b"no metadata")]))


# --- hostile XML ------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&lol9;
</lcm:SubmitObjectsRequest>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""


def test_billion_laughs_and_external_entities_refused(xdm: bytes) -> None:
    for payload in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        with pytest.raises(MalformedError, match="DOCTYPE"):
            parse_xml(payload)
    files = [(n, BILLION_LAUGHS if n == METADATA_PATH else d) for n, d in _member_files(xdm)]
    with pytest.raises(MalformedError):
        read_xdm(_zip(files))
    files = [
        (n, EXTERNAL_ENTITY if n.endswith("DOC0001.XML") else d) for n, d in _member_files(xdm)
    ]
    with pytest.raises(MalformedError):
        read_xdm(_zip(files))
    with pytest.raises(MalformedError):
        read_cda(EXTERNAL_ENTITY)


def test_doctype_hidden_by_utf16_refused() -> None:
    hidden = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'
    with pytest.raises(MalformedError, match="DOCTYPE"):
        parse_xml(hidden.encode("utf-16"))
    assert parse_xml('<?xml version="1.0" encoding="UTF-16"?><x>é</x>'.encode("utf-16")).text == "é"


def test_xml_size_bound() -> None:
    with pytest.raises(LimitExceeded):
        parse_xml(b"<x>" + b"a" * 100 + b"</x>", max_bytes=50)


# --- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_content_or_gateway_error(data: bytes) -> None:
    try:
        read_xdm(b"PK\x03\x04" + data)
        read_xdm(data)
    except GatewayError:
        pass


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=8,
    )
)
def test_mutated_archives_give_content_or_gateway_error(
    xdm: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(xdm)
    for pos, value in flips:
        data[pos % len(data)] = value
    with contextlib.suppress(GatewayError):
        read_xdm(bytes(data))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_read_cda_any_bytes(data: bytes) -> None:
    with contextlib.suppress(GatewayError):
        read_cda(b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + data)
