"""Lab units and one-field reference ranges as real HPRIM files write them (gateway.formats
.units), and what the lab CDA makes of them: a 38.5 °C temperature is a quantity in Cel, a
unit without a UCUM code travels with its value as text, the second unit of a 14-field RES
line is a translation, and "40,2-47,6" or "> 32" are reference ranges."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from gateway.formats.cda import build_lab_cda
from gateway.formats.hprim import LabBlock, parse_hprim
from gateway.formats.units import Range, parse_range, ucum
from tests.cda_conformance import schema_errors, schematron_failures
from tests.test_cda_conformance import AUTHOR, PATIENT

WHEN = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)
H = {"h": "urn:hl7-org:v3"}
XSI = "{http://www.w3.org/2001/XMLSchema-instance}type"


@pytest.mark.parametrize(("written", "code"), [
    ("°C", "Cel"), ("mmol/l", "mmol/L"), ("mUI/l", "m[IU]/L"), ("g/l", "g/L"),
    ("µmol/l", "umol/L"), ("μmol/l", "umol/L"), ("G/l", "10*9/L"), ("pg/ml", "pg/mL"),
    ("ml/min/1,73m²", "mL/min/{1.73_m2}"), ("mm/h", "mm/h"), ("%", "%"),
    ("UI OMS", None), ("mg/mM créat", None), ("", None), (None, None),
])
def test_units_map_to_ucum_or_stay_as_written(written: str | None, code: str | None) -> None:
    assert ucum(written) == code


@pytest.mark.parametrize(("low", "high", "expected"), [
    ("40,2-47,6", "", Range("40.2", "47.6")),
    ("> 32", "", Range("32", None, low_inclusive=False)),
    ("", "<5", Range(None, "5", high_inclusive=False)),
    ("<= 1,5", "", Range(None, "1.5")),
    ("4.11", "5.88", Range("4.11", "5.88")),
    ("12", "", Range("12", None)),
    ("négatif", "", None),
    ("", "", None),
])
def test_reference_ranges_in_one_or_two_fields(low: str, high: str,
                                                 expected: Range | None) -> None:
    assert parse_range(low, high) == expected


@given(st.text(max_size=30), st.text(max_size=30))
def test_parse_range_never_raises(low: str, high: str) -> None:
    parse_range(low, high)


@given(st.text(max_size=30))
def test_ucum_never_raises_and_gives_no_space(unit: str) -> None:
    code = ucum(unit)
    assert code is None or (code and not any(c.isspace() for c in code))


LAB = (
    "P1\r\nDUPONT\r\nJEANNE\r\n\r\n\r\n59000 LILLE\r\n14/07/1956\r\n\r\nR1\r\n28/11/2026\r\n"
    "LABO59    Laboratoire\r\nDUPONTJ   Dr Dupont\r\n****LAB****\r\n"
    "RES|Température|TEMP|N|38,5|°C||||F\r\n"
    "RES|IgE totales|IGET 000|N|35|UI OMS|0|100|N|F\r\n"
    "RES|Glycémie|GLY|N|0,91|g/l|0,70|1,06|N|F|5.05|mmol/l|4.11|5.88\r\n"
    "RES|Hématocrite|HT|N|44|%|40,2-47,6||N|F\r\n"
    "RES|Vitamine D|VITD|N|40|ng/ml|> 32||N|F\r\n"
    "****FIN****\r\n****FINFICHIER****\r\n"
)


def test_the_lab_cda_keeps_units_second_units_and_ranges() -> None:
    lab = parse_hprim(LAB).lab
    assert lab is not None
    xml = build_lab_cda(patient=PATIENT, author=AUTHOR, lab=LabBlock.from_results(lab.results),
                        title="R", effective_time=WHEN).xml
    assert schema_errors(xml) == [] and schematron_failures(xml) == []
    root = etree.fromstring(xml)
    values = [o.find("h:value", H) for o in root.iterfind(".//h:observation", H)]
    temp, ige, gly, ht, vitd = values
    assert (ht.get("unit"), vitd.get("unit")) == ("%", "ng/mL")
    assert (temp.get("value"), temp.get("unit")) == ("38.5", "Cel")
    assert ige.get(XSI) == "ST" and ige.text == "35 UI OMS"
    translation = gly.find("h:translation", H)
    assert (gly.get("unit"), translation.get("value"), translation.get("code")) == (
        "g/L", "5.05", "mmol/L")
    ranges = [o.find("h:referenceRange/h:observationRange/h:value", H)
              for o in root.iterfind(".//h:observation", H)]
    assert ranges[3].find("h:low", H).get("value") == "40.2"
    assert ranges[3].find("h:high", H).get("value") == "47.6"
    assert ranges[4].find("h:low", H).get("inclusive") == "false"
    assert ranges[1].get(XSI) == "ST" and ranges[1].text == "0 - 100 UI OMS"
