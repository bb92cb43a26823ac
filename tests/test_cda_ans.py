"""Clinical documents as the ANS writes them, read toward apicrypt.

Data written by others: the CI-SIS example documents of the ANS (ansforge/TestContenuCDA-3-0,
``ExemplesCDA/BIO-*``; see ../shared/corpora/cda-ans/ORIGIN.md): CR-BIO lab reports with
results nested in ``entry/act/…/organizer/component/observation`` and section narrative, TROD
rapid tests, "auto-presentable" variants (inside an ``xsl:stylesheet`` root), a level-1 PDF
document. Every one must give an HPRIM text that carries its results (one ``RES`` line per
valued observation) and its narrative, and travel with the original CDA attached.
"""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from gateway.formats.cda import FORMAT_LAB, LAB_REPORT_CODE, CdaDocument
from gateway.formats.cda_reader import read_cda
from gateway.formats.convert import hprim_from_xdm
from gateway.formats.hprim import HprimHeader, parse_hprim, write_hprim
from gateway.formats.xdm import XdmContent, XdmEntry, build_xdm
from gateway.translate.normalise import XDM_FILENAME, normalise
from tests.test_normalise import (
    APICRYPT,
    AT,
    CURIE,
    JEAN,
    MARIE,
    MSSANTE,
    attachment,
    mixed,
    signers,
    text_entity,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "cda-ans" / "examples"
FILES = sorted(EXAMPLES.glob("*.xml"))
HL7 = {"h": "urn:hl7-org:v3"}


def _hprim(data: bytes) -> str:
    cda = read_cda(data)
    entry = XdmEntry(uri="IHE_XDM/SUBSET01/DOC0001.XML", mime_type="text/xml",
                     format_code=None, type_code=None, title=None, hash=None, size=None,
                     creation_time=None, unique_id=None, patient_id=None, content=data, cda=cda)
    return write_hprim(hprim_from_xdm(XdmContent(None, None, (entry,), ()),
                                      sender=("", ""), recipient=("", "")))


def _titles(data: bytes) -> list[str]:
    """Section titles, read independently of the gateway (plain lxml over the file)."""
    root = etree.fromstring(data)
    return [" ".join("".join(t.itertext()).split())
            for t in root.iterfind(".//h:section/h:title", HL7) if "".join(t.itertext()).strip()]


def _valued_observations(data: bytes) -> int:
    root = etree.fromstring(data)
    return sum(1 for o in root.iterfind(".//h:observation", HL7)
               if o.find("h:value", HL7) is not None
               and (o.find("h:code", HL7) is None
                    or o.find("h:code", HL7).get("code") != "69764-9"))


def test_the_corpus_is_there() -> None:
    assert len(FILES) == 23, FILES


def test_every_ans_example_carries_its_results_and_narrative() -> None:
    counts: Counter[str] = Counter()
    for path in FILES:
        data = path.read_bytes()
        text = _hprim(data)
        doc = parse_hprim(text)  # what the apicrypt software reads back
        expected = _valued_observations(data)
        res = len(doc.lab.results) if doc.lab else 0
        counts["documents"] += 1
        if expected:
            assert res == expected, (path.name, res, expected)
            counts["with RES lines"] += 1
            counts["RES lines"] += res
        for title in _titles(data):
            assert title in text, (path.name, title)
        counts["section titles"] += len(_titles(data))
        if read_cda(data).structured:
            assert "Document CDA original joint" in text, path.name
        else:
            assert "Document joint (application/pdf)" in text, path.name
            counts["level 1 (PDF)"] += 1
    print("ANS examples:", dict(counts))
    assert counts["with RES lines"] == 22 and counts["level 1 (PDF)"] == 1


def test_a_nested_lab_result_keeps_the_labs_label_range_and_flag() -> None:
    text = _hprim((EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes())
    assert "RES|Thyroxine libre (FT4)|3024-7|N|7.67|pg/mL|9.30|17.00|L||" in text
    # the narrative's table as aligned lines
    assert "Thyroxine libre (FT4) (ECL Modular)  7.67 pg/ml   (9.30 - 17.00)" in text


def test_the_ins_family_goes_on_the_nir_line() -> None:
    """1.2.250.1.213.1.4.10 (test INS-NIR, 21 of the 23 examples) is the INS: line 8."""
    data = (EXAMPLES / "BIO-TROD_2024.01_Cystite.xml").read_bytes()
    lines = _hprim(data).split("\r\n")
    assert lines[7] == "279035121518989"
    assert lines[0] == ""  # no local patient code in this document
    assert read_cda(data).patient.sex == "F"


def test_an_auto_presentable_document_is_read() -> None:
    data = (EXAMPLES / "BIO-CR-BIO_2021.01_Auto-Presentable.xml").read_bytes()
    assert etree.fromstring(data).tag == "{http://www.w3.org/1999/XSL/Transform}stylesheet"
    cda = read_cda(data)
    assert cda.structured and len(cda.observations) == 11


def test_a_nir_without_its_key_still_gives_sex_and_birth_month() -> None:
    header = HprimHeader(patient_code="", last_name="X", first_name="Y", address1="",
                         address2="", postcode_city="", birth_date_raw="", nir="2790351215189",
                         request_number="", exam_date_raw="", sender_code="", sender_name="",
                         recipient_code="", recipient_name="")
    assert header.sex == "F" and not header.nir_valid
    from gateway.formats.hprim import nir_birth
    assert nir_birth("2790351215189") == date(1979, 3, 1)
    assert nir_birth("1999999999999") is None  # month 99: unknown


@pytest.mark.parametrize("name", ["BIO-CR-BIO_2024.01_TSH_1.xml",
                                  "BIO-CR-BIO_2021.01_Auto-Presentable.xml"])
def test_toward_apicrypt_the_original_cda_is_attached(name: str) -> None:
    """Through the normaliser, as an MSSanté hospital's message with the example in its
    IHE_XDM.ZIP: the HPRIM text carries the results, the original CDA goes along."""
    data = (EXAMPLES / name).read_bytes()
    cda = read_cda(data)
    document = CdaDocument(xml=data, format_code=FORMAT_LAB, title=cda.title or "CR-BIO",
                           type_code=LAB_REPORT_CODE, unique_id="1.2.3", creation_time=AT)
    archive = build_xdm([document], cda.patient, CURIE, AT)
    entity = mixed(text_entity(b"Bonjour,\r\nci-joint le compte rendu.\r\n",
                               "text/plain; charset=utf-8"),
                   attachment(archive, "application/zip", XDM_FILENAME), boundary="mss-1")
    result = normalise(entity, MSSANTE, APICRYPT, signers()[MARIE], [JEAN], at=AT)
    message = email.message_from_bytes(b"MIME-Version: 1.0\r\n" + result.content,
                                       policy=email.policy.default)
    parts = list(message.walk())
    texts = [p.get_content() for p in parts if p.get_content_type() == "text/plain"]
    assert any("****LAB****" in t and "RES|" in t for t in texts)
    xml = [p.get_payload(decode=True) for p in parts if p.get_content_type() == "text/xml"]
    assert xml == [data]


def test_a_narrative_cannot_forge_an_hprim_result() -> None:
    """A CDA whose narrative holds HPRIM structure ("****LAB****", "RES|…") must not become
    results in the HPRIM text: the apicrypt reader would show a forged value as the lab's."""
    data = (EXAMPLES / "BIO-TROD_2024.01_Cystite.xml").read_bytes()
    forged = data.replace(
        b"<text>", b"<text><paragraph>****LAB****</paragraph>"
        b"<paragraph>RES|Potassium|K|N|9.9|mmol/l|3.5|5.0|HH|F</paragraph>"
        b"<paragraph>****FIN****</paragraph>", 1)
    assert forged != data
    doc = parse_hprim(_hprim(forged))
    assert doc.lab is not None
    assert [r.code for r in doc.lab.results] == ["5799-2", "5802-4", "80383-3"]
    assert "> RES|Potassium" in doc.text and "> ****LAB****" in doc.text


def test_an_antibiogram_keeps_its_interpretations() -> None:
    """R/I/S have no HPRIM flag: they follow their RES line as TEX text (42 in the examples)."""
    text = _hprim((EXAMPLES / "BIO-CR-BIO_2024.01_Microbiologie_V1.xml").read_bytes())
    doc = parse_hprim(text)
    assert doc.lab is not None
    said = [c for r in doc.lab.results for c in r.comments]
    assert {"Interprétation : résistant", "Interprétation : intermédiaire",
            "Interprétation : sensible"} <= set(said)


def test_an_embedded_pdf_copy_reaches_the_reader_as_a_file() -> None:
    """16 of the 23 examples embed files (the PDF copy of the report, images) in their
    structured body: toward apicrypt they are attachments of their own, named in the text."""
    data = (EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes()
    assert "Document joint (application/pdf) : doc-1" in _hprim(data)
    cda = read_cda(data)
    document = CdaDocument(xml=data, format_code=FORMAT_LAB, title=cda.title or "CR-BIO",
                           type_code=LAB_REPORT_CODE, unique_id="1.2.3", creation_time=AT)
    archive = build_xdm([document], cda.patient, CURIE, AT)
    entity = mixed(text_entity(b"Bonjour.\r\n", "text/plain; charset=utf-8"),
                   attachment(archive, "application/zip", XDM_FILENAME), boundary="mss-1")
    result = normalise(entity, MSSANTE, APICRYPT, signers()[MARIE], [JEAN], at=AT)
    message = email.message_from_bytes(b"MIME-Version: 1.0\r\n" + result.content,
                                       policy=email.policy.default)
    pdfs = [p for p in message.walk() if p.get_content_type() == "application/pdf"]
    assert [p.get_filename() for p in pdfs] == ["doc-1.pdf"]
    payload = pdfs[0].get_payload(decode=True)
    assert isinstance(payload, bytes) and payload.startswith(b"%PDF-")
