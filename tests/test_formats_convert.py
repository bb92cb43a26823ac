"""HPRIM <-> CDA/XDM conversions: a lab result survives the trip to MSSanté and back."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.errors import MalformedError
from gateway.formats.cda import Author, Patient, build_lab_cda, build_n1_cda
from gateway.formats.charset import decode_text
from gateway.formats.convert import documents_from_hprim, hprim_from_xdm, hprim_to_xdm
from gateway.formats.hprim import LabBlock, LabResult, parse_hprim, write_hprim
from gateway.formats.xdm import XdmContent, build_xdm, read_xdm

DATA = Path(__file__).parent / "data" / "formats"
WHEN = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
SENDER = ("PASSERELLE", "Passerelle MSSanté")
RECIPIENT = ("MED0012345", "Dr Jean DUPONT")


def test_hprim_to_xdm_and_back_is_lossless() -> None:
    text = decode_text((DATA / "hprim_lab_inr_latin1.hpr").read_bytes(), "iso-8859-1").text
    doc = parse_hprim(text)
    conv, archive = hprim_to_xdm(doc, effective_time=WHEN, submission_time=WHEN)
    assert conv.cda_codes == ("11502-2", "11502-2")
    assert conv.has_ins
    back = hprim_from_xdm(read_xdm(archive), sender=SENDER, recipient=RECIPIENT)
    assert write_hprim(back) == text


def test_letter_without_lab_gives_one_document() -> None:
    text = decode_text((DATA / "hprim_letter_cp1252.hpr").read_bytes(), None).text
    conv = documents_from_hprim(parse_hprim(text), effective_time=WHEN)
    assert len(conv.documents) == 1 and conv.cda_codes == ("11488-4",)


def test_macroman_without_nir_has_no_ins() -> None:
    text = decode_text((DATA / "hprim_echo_macroman_cr.hpr").read_bytes(), None).text
    conv = documents_from_hprim(parse_hprim(text), effective_time=WHEN)
    assert not conv.has_ins


def test_plain_text_and_structured_lab_become_hprim() -> None:
    patient = Patient(
        last_name="SANTONI",
        first_name="Maria",
        birth_date=date(1990, 5, 3),
        sex="F",
        nir="290052A00412352",
        local_id="AJA-778",
        address=("Route des Sanguinaires", "20000 AJACCIO"),
    )
    author = Author(id="10003456789", name="Dr Santu CASANOVA")
    results = [
        LabResult("TSH", "TSH", "N", "6.8", "mUI/l", "0.4", "4.0", "H", "F"),
        LabResult("Aspect", "ASP", "A", "trouble"),
    ]
    docs = [
        build_n1_cda(
            patient=patient,
            author=author,
            content="Bilan thyroïdien.\n".encode(),
            media_type="text/plain",
            title="CR",
            effective_time=WHEN,
        ),
        build_lab_cda(
            patient=patient,
            author=author,
            lab=LabBlock.from_results(results),
            title="Résultats",
            effective_time=WHEN,
        ),
        build_n1_cda(
            patient=patient,
            author=author,
            content=b"%PDF-1.4\n%%EOF\n",
            media_type="application/pdf",
            title="Compte rendu PDF",
            effective_time=WHEN,
        ),
    ]
    doc = hprim_from_xdm(
        read_xdm(build_xdm(docs, patient, author, WHEN)), sender=SENDER, recipient=RECIPIENT
    )
    h = doc.header
    assert (h.last_name, h.first_name, h.birth_date, h.exam_date) == (
        "SANTONI",
        "Maria",
        date(1990, 5, 3),
        date(2026, 11, 28),
    )
    assert h.nir_valid and h.sex == "F" and h.patient_code == "AJA-778"
    assert (h.address1, h.postcode_city) == ("Route des Sanguinaires", "20000 AJACCIO")
    assert (h.sender_code, h.recipient_code) == ("PASSERELLE", "MED0012345")
    assert (
        doc.text == "Bilan thyroïdien.\r\nDocument CDA original joint : DOC0002.XML\r\n"
        "Document joint (application/pdf) : Compte rendu PDF\r\n"
    )
    assert doc.lab is not None
    tsh, aspect = doc.lab.results
    assert (tsh.code, tsh.value, tsh.flag, tsh.low, tsh.high) == ("TSH", "6.8", "H", "0.4", "4.0")
    assert (aspect.value, aspect.type) == ("trouble", "A")
    # what we write toward apicrypt parses again as HPRIM
    again = parse_hprim(write_hprim(doc))
    assert again.header == h and again.lab is not None
    assert again.lab.results[0].flag == "H"


def test_no_cda_refused() -> None:
    with pytest.raises(MalformedError):
        hprim_from_xdm(XdmContent(None, None, (), ()), sender=SENDER, recipient=RECIPIENT)
