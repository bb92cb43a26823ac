"""HPRIM: golden files (legacy charsets, CRLF / LF / CR), lenient lab parsing, NIR keys, exact
round trips (property-tested), and no foreign exception for any input."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, MalformedError
from gateway.formats.charset import decode_text, encode_for_apicrypt
from gateway.formats.hprim import (
    HprimDocument,
    HprimHeader,
    LabBlock,
    LabResult,
    _code_line,
    looks_like_hprim,
    nir_sex,
    parse_date,
    parse_hprim,
    validate_nir,
    write_hprim,
)

DATA = Path(__file__).parent / "data" / "formats"


def _golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_lab_result_golden_latin1() -> None:
    raw = _golden("hprim_lab_inr_latin1.hpr")
    decoded = decode_text(raw, "iso-8859-1")
    assert decoded.method == "declared"
    doc = parse_hprim(decoded.text)
    h = doc.header
    assert (h.patient_code, h.last_name, h.first_name) == ("DUR-004512", "DURAND", "Élise")
    assert (h.address1, h.address2, h.postcode_city) == (
        "12 rue des Tilleuls",
        "Bâtiment B, appt 14",
        "59000 LILLE",
    )
    assert h.birth_date == date(1952, 3, 14)
    assert h.exam_date == date(2026, 11, 27)
    assert h.nir == "2 52 03 59 350 012 39"
    assert h.nir_valid and h.sex == "F" and h.nir_compact == "252035935001239"
    assert h.request_number == "2026112800417"
    assert (h.sender_code, h.sender_name) == (
        "LABO59",
        "Laboratoire de biologie médicale des Flandres",
    )
    assert (h.recipient_code, h.recipient_name) == ("MED0012345", "Dr Jean DUPONT")
    assert doc.text.startswith("Laboratoire de biologie médicale des Flandres\r\n")
    assert "INR .................. 3,2" in doc.text
    assert doc.has_finfichier and doc.trailing_text == "" and doc.newline == "\r\n"

    assert doc.lab is not None
    res = {r.code: r for r in doc.lab.results}
    inr = res["INR"]
    assert (inr.label, inr.value, inr.unit, inr.low, inr.high, inr.flag, inr.status) == (
        "INR",
        "3.2",
        None,
        "2.0",
        "3.0",
        "H",
        "F",
    )
    assert inr.numeric_value == 3.2
    assert inr.comments == ("Patient sous AVK (fluindione). Zone cible 2,0 - 3,0.",)
    assert (res["HB"].label, res["HB"].flag, res["HB"].unit) == ("Hémoglobine", "L", "g/dl")
    assert res["PLQ"].flag == "N"
    # short RES lines: missing fields are None
    crea = res["CREA"]
    assert (crea.value, crea.unit, crea.high, crea.flag, crea.status) == (
        "88",
        "µmol/l",
        "90",
        None,
        None,
    )
    asp = res["ASP"]
    assert (asp.type, asp.value, asp.unit, asp.numeric_value) == ("A", "ictérique", None, None)
    assert asp.comments == ("Résultats validés par Dr M. LEFÈVRE, biologiste.",)
    assert len(doc.lab.texts) == 2
    assert doc.lab.raw_lines[0] == "****LAB****" and doc.lab.raw_lines[-1] == "****FIN****"

    # lossless: text and bytes
    assert write_hprim(doc) == decoded.text
    assert encode_for_apicrypt(write_hprim(doc)) == raw


def test_letter_golden_cp1252_without_lab() -> None:
    raw = _golden("hprim_letter_cp1252.hpr")
    decoded = decode_text(raw, None)  # undeclared: Windows-1252 recognised
    assert decoded.charset == "windows-1252"
    doc = parse_hprim(decoded.text)
    assert doc.lab is None
    assert doc.header.first_name == "François"
    assert doc.header.nir_valid and doc.header.sex == "M"
    assert doc.header.request_number == ""
    assert "J’ai revu" in doc.text and "d’œdème" in doc.text and "80 €" in doc.text
    assert doc.has_finfichier
    assert write_hprim(doc) == decoded.text
    assert decoded.text.encode("cp1252") == raw


def test_corsica_golden_utf8_lf_without_end_marker() -> None:
    raw = _golden("hprim_corsica_utf8_lf.hpr")
    text = raw.decode("utf-8")
    doc = parse_hprim(text)
    assert doc.newline == "\n"
    assert doc.header.nir == "2 90 05 2A 004 123 52"
    assert doc.header.nir_valid and doc.header.sex == "F"
    assert doc.header.last_name == "SANTONI"
    assert not doc.has_finfichier
    assert doc.lab is not None
    tsh, ft4, atpo = doc.lab.results
    assert (tsh.numeric_value, tsh.flag) == (6.8, "H")
    assert (ft4.flag, ft4.status) == ("N", "F")
    assert (atpo.label, atpo.code, atpo.value, atpo.flag) == (
        "Anticorps anti-TPO",
        "ATPO",
        None,
        None,
    )
    assert write_hprim(doc) == text


def test_macroman_golden_with_cr_line_ends() -> None:
    raw = _golden("hprim_echo_macroman_cr.hpr")
    decoded = decode_text(raw, None)
    assert (decoded.charset, decoded.method) == ("macintosh", "detected")
    doc = parse_hprim(decoded.text)
    assert doc.header.first_name == "Hélène"
    assert doc.header.address1 == "8 impasse des Écoles"
    assert doc.header.nir is None and not doc.header.nir_valid and doc.header.sex is None
    assert doc.text.startswith("Échographie abdominale")
    assert write_hprim(doc) == decoded.text
    # and straight from the CR text too
    cr_doc = parse_hprim(raw.decode("mac_roman"))
    assert cr_doc.newline == "\r"
    assert write_hprim(cr_doc) == raw.decode("mac_roman")


def test_changed_header_field_is_written() -> None:
    doc = parse_hprim(decode_text(_golden("hprim_lab_inr_latin1.hpr"), "iso-8859-1").text)
    changed = replace(doc, header=replace(doc.header, last_name="DURAND-PETIT"))
    again = parse_hprim(write_hprim(changed))
    assert again.header.last_name == "DURAND-PETIT"
    assert again.header.sender_code == "LABO59"
    assert again.lab == doc.lab


def test_document_built_from_scratch() -> None:
    header = HprimHeader(
        patient_code="X1",
        last_name="NOEL",
        first_name="Zoé",
        address1="",
        address2="",
        postcode_city="75001 PARIS",
        birth_date_raw="01/02/2003",
        nir=None,
        request_number="R1",
        exam_date_raw="28/11/2026",
        sender_code="LAB",
        sender_name="Labo",
        recipient_code="DR12345678",
        recipient_name="Dr X",
    )
    lab = LabBlock.from_results(
        [
            LabResult(
                "Glycémie",
                "GLY",
                "N",
                "1,32",
                "g/l",
                "0,70",
                "1,10",
                "H",
                "F",
                comments=("A jeun",),
            ),
            LabResult("Potassium", "K", "N", "4.1", "mmol/l", "3.5", "5.0", "N", "F"),
        ]
    )
    doc = HprimDocument(header=header, text="Bilan.\r\n", lab=lab)
    text = write_hprim(doc)
    lines = text.split("\r\n")
    assert lines[10] == "LAB       Labo" and lines[11] == "DR12345678Dr X"
    assert text.endswith("****FIN****\r\n****FINFICHIER****\r\n")
    again = parse_hprim(text)
    assert again.header == header
    assert again.lab is not None and again.lab.results == lab.results
    assert again.lab.results[0].comments == ("A jeun",)


@pytest.mark.parametrize(
    ("nir", "valid"),
    [
        ("1 84 12 76 451 089 46", True),
        ("184127645108946", True),
        ("1 84 12 76 451 089 47", False),
        ("2 90 05 2A 004 123 52", True),
        ("2 90 05 2B 004 123 52", False),
        ("290052B00412322", False),
        ("1 84 12 76 451 089", False),
        ("9 84 12 76 451 089 46", False),
        ("", False),
        ("abcdefghijklmno", False),
        ("１８４１２７６４５１０８９４６", False),  # full-width digits are not a NIR
    ],
)
def test_validate_nir(nir: str, valid: bool) -> None:
    assert validate_nir(nir) is valid


def test_corsica_2b_rule() -> None:
    body = "1750" + "3" + "2B" + "123456"
    key = 97 - int(body.replace("2B", "18")) % 97
    assert validate_nir(f"{body}{key:02d}")
    assert not validate_nir(f"{body.replace('2B', '18')}{(key % 97) + 1:02d}")


@given(st.from_regex(r"[12][0-9]{12}", fullmatch=True))
def test_nir_key_property(body: str) -> None:
    key = 97 - int(body) % 97
    assert validate_nir(f"{body} {key:02d}")
    assert not validate_nir(f"{body} {(key % 97) + 1:02d}")
    assert nir_sex(body) == ("M" if body[0] == "1" else "F")


def test_parse_date() -> None:
    assert parse_date("14/03/1952") == date(1952, 3, 14)
    assert parse_date(" 14-03-1952 ") == date(1952, 3, 14)
    assert parse_date("14031952") == date(1952, 3, 14)
    assert parse_date("31/02/2020") is None
    assert parse_date("14/03/52") is None  # no century guessing
    assert parse_date("") is None


def test_detection_and_refusals() -> None:
    lines = ["x"] * 12
    assert not looks_like_hprim("\r\n".join(lines))
    lines[9] = "27/11/2026"
    assert looks_like_hprim("\r\n".join(lines))
    assert looks_like_hprim("hello\r\n****LAB****\r\nRES|A|B\r\n")
    assert not looks_like_hprim("just a letter\r\nwith two lines\r\n")
    with pytest.raises(MalformedError, match="fewer than 12"):
        parse_hprim("a\r\nb\r\n****LAB****\r\n")
    with pytest.raises(MalformedError, match="not an HPRIM"):
        parse_hprim("\r\n".join(["x"] * 20))
    bad = ["x"] * 12
    bad[6] = "01/01/2000"
    bad[3] = "****LAB****"
    with pytest.raises(MalformedError):
        parse_hprim("\r\n".join(bad) + "\r\n")


# --- properties ------------------------------------------------------------------------------

_FIELD = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="\r\n\x85"), max_size=30
).filter(lambda s: not s.strip().startswith("****") and s[:4].upper() not in ("RES|", "TEX|"))
_DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 1, 1)).map(
    lambda d: d.strftime("%d/%m/%Y")
)
_TEXT_LINE = _FIELD.filter(
    lambda s: (
        s.strip() not in ("****LAB****", "****FIN****") and not s.startswith("****FINFICHIER****")
    )
)
_RES_LINE = st.lists(
    st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n\x85|"), max_size=8),
    max_size=12,
).map(lambda f: "|".join(["RES", *f]))
_TEX_LINE = _TEXT_LINE.map(lambda s: "TEX|" + s)


@st.composite
def hprim_texts(draw: st.DrawFn) -> str:
    nl = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    header = [draw(_FIELD) for _ in range(12)]
    header[6] = draw(_DATES)
    header[9] = draw(st.one_of(_DATES, _FIELD))
    text = draw(st.lists(_TEXT_LINE, max_size=5))
    out = nl.join(header) + nl + "".join(t + nl for t in text)
    if draw(st.booleans()):
        lab = draw(st.lists(st.one_of(_RES_LINE, _TEX_LINE, _TEXT_LINE), max_size=6))
        out += nl.join(["****LAB****", *lab, "****FIN****"]) + nl
        out += "".join(t + nl for t in draw(st.lists(_TEXT_LINE, max_size=3)))
    if draw(st.booleans()):
        out += "****FINFICHIER****" + draw(st.sampled_from([nl, "", nl + nl]))
    return out


@settings(max_examples=300, deadline=None)
@given(hprim_texts())
def test_round_trip(text: str) -> None:
    doc = parse_hprim(text)
    assert write_hprim(doc) == text
    assert looks_like_hprim(text)
    # a changed field survives writing and parsing again
    changed = replace(doc, header=replace(doc.header, first_name="Zoé"))
    assert parse_hprim(write_hprim(changed)).header.first_name == "Zoé"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gives_document_or_gateway_error(text: str) -> None:
    looks_like_hprim(text)
    with contextlib.suppress(GatewayError):
        write_hprim(parse_hprim(text))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "x",
                "",
                "01/02/2003",
                "****LAB****",
                "****FIN****",
                "RES|a|b",
                "TEX|t",
                "****FINFICHIER****",
                "RES||||||||H|F|z",
            ]
        ),
        min_size=10,
        max_size=30,
    ),
    st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_structured_noise_gives_document_or_gateway_error(lines: list[str], nl: str) -> None:
    text = nl.join(lines)
    with contextlib.suppress(GatewayError):
        doc = parse_hprim(text)
        if doc.lab is not None:
            assert all(r.flag in (None, "L", "H", "LL", "HH", "N") for r in doc.lab.results)


def _with_lines(line11: str, line12: str) -> str:
    head = ["P1", "DUPONT", "JEANNE", "", "", "59000 LILLE", "14/07/1956", "", "R1",
            "28/11/2026", line11, line12]
    return "\r\n".join(head) + "\r\nTexte.\r\n****FINFICHIER****\r\n"


@pytest.mark.parametrize(("line", "code", "name"), [
    ("     FAKFAK FAKE.NAME", "FAKFAK", "FAKE.NAME"),       # code not in columns 1-10
    ("M Marcel CAMPARINI", "M", "Marcel CAMPARINI"),        # a one-letter code, no padding
    ("DUPONTJ   Dr Jean Dupont", "DUPONTJ", "Dr Jean Dupont"),  # padded as the spec says
    ("MED0012345Dr X", "MED0012345", "Dr X"),               # ten columns, no space after
    ("          Dr Jean Dupont", "", "Dr Jean Dupont"),     # no code
])
def test_lines_11_and_12_split_as_the_spec_and_freehealth_read_them(
        line: str, code: str, name: str) -> None:
    """Shapes seen in real HPRIM files (the first two from field files a review collected)."""
    header = parse_hprim(_with_lines(line, line)).header
    assert (header.sender_code, header.sender_name) == (code, name)
    assert (header.recipient_code, header.recipient_name) == (code, name)


@settings(max_examples=80)
@given(st.from_regex(r"[A-Z0-9]{1,10}", fullmatch=True),
       st.from_regex(r"[A-Za-z][A-Za-z .]{0,30}[a-z]", fullmatch=True))
def test_a_written_code_line_reads_back(code: str, name: str) -> None:
    header = parse_hprim(_with_lines(_code_line(code, name), "")).header
    assert (header.sender_code, header.sender_name) == (code, name)
