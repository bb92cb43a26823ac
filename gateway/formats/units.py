"""Lab units and reference ranges as French HPRIM files write them, for CDA quantities.

Rules kept here: a unit becomes its UCUM code (what a CDA ``PQ`` carries) only through the
table below or when it already is one; anything else is kept as the lab wrote it, never
replaced by ``1``. A reference range written in one field ("40,2-47,6", "> 32", "<5") is
split into its bounds. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Common French lab units (as written, case-folded) -> UCUM. Sources: UCUM's own tables and
# the units of the ANS CR-BIO examples (m[IU]/L, pg/mL, mmol/L, 10*9/L...).
_UCUM = {
    "°c": "Cel", "degc": "Cel", "°": "deg",
    "g/l": "g/L", "mg/l": "mg/L", "µg/l": "ug/L", "ug/l": "ug/L", "ng/l": "ng/L",
    "g/dl": "g/dL", "mg/dl": "mg/dL", "g/100ml": "g/dL",
    "mmol/l": "mmol/L", "µmol/l": "umol/L", "umol/l": "umol/L", "nmol/l": "nmol/L",
    "pmol/l": "pmol/L", "mol/l": "mol/L",
    "ui/l": "[IU]/L", "mui/l": "m[IU]/L", "µui/ml": "u[IU]/mL", "uui/ml": "u[IU]/mL",
    "ui/ml": "[IU]/mL", "kui/l": "k[IU]/L", "mui/ml": "m[IU]/mL",
    "u/l": "U/L", "u/ml": "U/mL", "ku/l": "kU/L",
    "meq/l": "meq/L", "mosm/kg": "mosm/kg",
    "g/24h": "g/(24.h)", "mg/24h": "mg/(24.h)", "mmol/24h": "mmol/(24.h)",
    "pg/ml": "pg/mL", "ng/ml": "ng/mL", "µg/ml": "ug/mL", "ug/ml": "ug/mL", "mg/ml": "mg/mL",
    "giga/l": "10*9/L", "g/l (giga)": "10*9/L", "10^9/l": "10*9/L", "10*9/l": "10*9/L",
    "tera/l": "10*12/L", "10^12/l": "10*12/L", "10*12/l": "10*12/L",
    "/mm3": "/mm3", "/µl": "/uL", "/ul": "/uL", "/ml": "/mL",
    "fl": "fL", "µ3": "fL", "pg": "pg", "%": "%", "‰": "10*-3",
    "mm/h": "mm/h", "s": "s", "sec": "s", "min": "min", "h": "h",
    "mmhg": "mm[Hg]", "ml/min": "mL/min", "ml/min/1,73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m2": "mL/min/{1.73_m2}", "ml/min/1,73m²": "mL/min/{1.73_m2}",
    "ml/min/1.73m²": "mL/min/{1.73_m2}", "kg": "kg", "g": "g", "cm": "cm", "m": "m",
    "l/l": "L/L", "ratio": "{ratio}", "inr": "{INR}",
}
# Where case is the meaning: "G/l" is giga per litre (a blood count), "g/l" grams per litre.
_CASE_SENSITIVE = {"G/l": "10*9/L", "G/L": "10*9/L", "T/l": "10*12/L", "T/L": "10*12/L"}
# A unit written as UCUM already (ASCII, no space): kept as it is.
_UCUM_LIKE = re.compile(r"[!-~]{1,30}")
_NUMBER = r"[+-]?\d+(?:[.,]\d+)?"
_BETWEEN = re.compile(rf"\s*({_NUMBER})\s*(?:-|à|a|–|;|/)\s*({_NUMBER})\s*")
_BOUND = re.compile(rf"\s*(<=|>=|≤|≥|<|>|inf\.?\s*[àa]|sup\.?\s*[àa])\s*({_NUMBER})\s*",
                    re.IGNORECASE)


def ucum(unit: str | None) -> str | None:
    """The UCUM code of a lab unit, or None when it has none (keep the lab's text)."""
    if unit is None:
        return None
    written = unicodedata.normalize("NFC", unit).strip()
    if not written:
        return None
    compact = "".join(written.split())
    if compact in _CASE_SENSITIVE:
        return _CASE_SENSITIVE[compact]
    key = compact.casefold().replace("μ", "µ")
    if key in _UCUM:
        return _UCUM[key]
    if _UCUM_LIKE.fullmatch(written) and not any(c in written for c in "()'\""):
        return written
    return None


@dataclass(frozen=True)
class Range:
    low: str | None
    high: str | None
    low_inclusive: bool = True
    high_inclusive: bool = True


def _number(text: str) -> str:
    return text.replace(",", ".").lstrip("+")


def parse_range(low: str | None, high: str | None) -> Range | None:
    """The reference range of a ``RES`` line: its two fields, or one field that holds the
    whole range ("40,2-47,6", "> 32", "< 5"). None when nothing numeric is there."""
    low, high = (low or "").strip(), (high or "").strip()
    if low and high:
        if re.fullmatch(_NUMBER, low) and re.fullmatch(_NUMBER, high):
            return Range(_number(low), _number(high))
        return None
    field = low or high
    if not field:
        return None
    if re.fullmatch(_NUMBER, field):
        return Range(_number(field), None) if low else Range(None, _number(field))
    between = _BETWEEN.fullmatch(field)
    if between:
        return Range(_number(between.group(1)), _number(between.group(2)))
    bound = _BOUND.fullmatch(field)
    if bound:
        sign, value = bound.group(1).lower(), _number(bound.group(2))
        if sign in (">", ">=", "≥") or sign.startswith("sup"):
            return Range(value, None, low_inclusive=sign in (">=", "≥"))
        return Range(None, value, high_inclusive=sign in ("<=", "≤"))
    return None
