"""Every CDA the gateway writes is valid: HL7 CDA R2 schema (CDA.xsd) and the CI-SIS
StructurationMinimale schematron (tests/cda_conformance.py says where both come from).

The documents are the gateway's own, built from HPRIM files written by others (tests/data/
formats: a lab result in ISO-8859-1, a letter in cp1252, a Corsican NIR, an echography report
in MacRoman) and from results shaped like the field's (codes with spaces, units with spaces,
accents or a degree sign).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.formats.cda import Author, Patient, build_lab_cda, build_n1_cda
from gateway.formats.charset import decode_text
from gateway.formats.convert import documents_from_hprim
from gateway.formats.hprim import LabBlock, LabResult, parse_hprim
from tests.cda_conformance import SCHEMATRON, schema_errors, schematron_failures

pytest.importorskip("saxonche")
WHEN = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)
FORMATS = Path(__file__).parent / "data" / "formats"
PATIENT = Patient(last_name="SANTONI", first_name="Maria Ange", birth_date=dt.date(1990, 5, 3),
                  sex="F", nir="290052A00412352", local_id="AJA-778",
                  address=("Route des Sanguinaires", "20000 AJACCIO"))
NO_INS = Patient(last_name="DUBOIS", first_name="Léon", local_id="CHU-55012")
AUTHOR = Author(id="10003456789", name="Dr Santu CASANOVA", organisation="Labo Ajaccio")
FIELD_RESULTS = [
    LabResult("IgE totales", "IGET 000", "N", "35", "UI OMS", "0", "100", "N"),
    LabResult("Température", "T", "N", "38,5", "°C"),
    LabResult("Microalbumine", "MALB", "N", "2,1", "mg/mM créat", "", "3"),
    LabResult("Aspect", "ASP", "A", "trouble"),
    LabResult("Glycémie", "GLY", "N", "5.05", "mmol/l", "4.11", "5.88", "N"),
]


def _valid(xml: bytes) -> None:
    assert schema_errors(xml) == []
    assert schematron_failures(xml) == []


def test_the_schematron_is_there() -> None:
    assert SCHEMATRON.is_file(), SCHEMATRON


@pytest.mark.parametrize("patient", [PATIENT, NO_INS], ids=["ins", "no-ins"])
def test_the_text_pdf_and_lab_documents_are_valid(patient: Patient) -> None:
    _valid(build_n1_cda(patient=patient, author=AUTHOR, content=b"Bilan.\n",
                        media_type="text/plain", title="CR", effective_time=WHEN).xml)
    _valid(build_n1_cda(patient=patient, author=AUTHOR, content=b"%PDF-1.4\n%%EOF\n",
                        media_type="application/pdf", title="CR PDF", effective_time=WHEN).xml)
    _valid(build_lab_cda(patient=patient, author=AUTHOR,
                         lab=LabBlock.from_results(FIELD_RESULTS), title="Résultats",
                         effective_time=WHEN).xml)


@pytest.mark.parametrize("name", sorted(p.name for p in FORMATS.glob("*.hpr")))
def test_documents_written_from_real_hprim_files_are_valid(name: str) -> None:
    raw = (FORMATS / name).read_bytes()
    conversion = documents_from_hprim(parse_hprim(decode_text(raw, None).text),
                                      effective_time=WHEN)
    assert conversion.documents
    for document in conversion.documents:
        _valid(document.xml)


def test_a_lab_code_with_spaces_keeps_the_original() -> None:
    xml = build_lab_cda(patient=PATIENT, author=AUTHOR, lab=LabBlock.from_results(
        FIELD_RESULTS[:1]), title="R", effective_time=WHEN).xml
    assert b'code="IGET_000"' in xml and b"<originalText>IGET 000</originalText>" in xml


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20) | st.sampled_from(
    ["", "  ", "IGET 000", "°C", "mg/mM créat", "40,2-47,6", "> 32", "\t"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(LabResult, _TEXT, _TEXT, st.sampled_from(["N", "A"]), _TEXT, _TEXT,
                          _TEXT, _TEXT, st.sampled_from(["", "H", "L", "N", "HH"])),
                min_size=1, max_size=4))
def test_any_results_give_a_schema_valid_lab_document(results: list[LabResult]) -> None:
    xml = build_lab_cda(patient=PATIENT, author=AUTHOR, lab=LabBlock.from_results(results),
                        title="R", effective_time=WHEN).xml
    assert schema_errors(xml) == []


def test_html_in_hprim_results_is_plain_text_in_the_narrative() -> None:
    """67 of 80 real lab files a review collected write HTML in HPRIM text."""
    results = [LabResult("H&eacute;moglobine", "HB", "N", "11,2", "g/dL", "12", "16", "L",
                         comments=("Contr&ocirc;le &lt; 1 mois<br />&agrave; jeun",))]
    xml = build_lab_cda(patient=PATIENT, author=AUTHOR, lab=LabBlock.from_results(results),
                        title="R", effective_time=WHEN).xml
    text = xml.decode()
    assert "Hémoglobine" in text and "Contrôle &lt; 1 mois\nà jeun" in text
    assert "&amp;eacute;" not in text and "&lt;br" not in text
    _valid(xml)


def test_the_configured_identifiers_are_written() -> None:
    from gateway.config.settings import DocumentSettings
    from gateway.formats.xdm import build_xdm

    ids = DocumentSettings(patient_id_root="1.2.250.1.4242.1", author_id_root="1.2.250.1.4242.2",
                           lab_code_system="1.2.250.1.4242.3", source_id="1.2.250.1.4242.9",
                           custodian_finess="750712184", custodian_name="GHU Paris")
    text = (FORMATS / "hprim_lab_inr_latin1.hpr").read_bytes()
    conversion = documents_from_hprim(parse_hprim(decode_text(text, None).text),
                                      effective_time=WHEN, ids=ids)
    n1, lab = conversion.documents
    for document in (n1, lab):
        _valid(document.xml)
        assert b'root="1.2.250.1.71.4.2.2" extension="750712184"' in document.xml
        assert b"<name>GHU Paris</name>" in document.xml
        assert b'root="1.2.250.1.4242.1"' in document.xml  # the patient code's root
    assert b'codeSystem="1.2.250.1.4242.3"' in lab.xml
    assert b"1.2.250.1.999" not in n1.xml + lab.xml
    archive = build_xdm(conversion.documents, conversion.patient, conversion.author, WHEN,
                        source_id=ids.source_id)
    import io
    import zipfile
    metadata = zipfile.ZipFile(io.BytesIO(archive)).read("IHE_XDM/SUBSET01/METADATA.XML")
    assert b'value="1.2.250.1.4242.9"' in metadata
