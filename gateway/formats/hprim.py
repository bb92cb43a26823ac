"""HPRIM Santé documents: the 12-line header, the free text and the ``****LAB****`` block.

Rules kept here: parsing is lenient (short ``RES`` lines, missing markers, padded header lines)
and lossless: ``write_hprim(parse_hprim(x)) == x`` for a well-formed ``x`` (one line-ending
style), because the free text is kept verbatim and the header and lab lines are kept as they
came. :func:`parse_hprim` never raises anything but ``gateway.errors.MalformedError`` and
:func:`looks_like_hprim` never raises at all. Both are linear in the text. Nothing here reads
the clock: dates are parsed, never compared with "today".

Layout (DESIGN §7): patient code; last name; first name; address 1; address 2; postcode and
city; birth date ``DD/MM/YYYY``; NIR (13 characters, a space, a 2-digit key); request number;
exam date; sender code (columns 1-10) and name; recipient code (columns 1-10) and name. Then
free text and, for lab results, ``****LAB****`` ... ``RES|label|code|type|value|unit|min|max|
flag|status|...`` / ``TEX|...`` ... ``****FIN****``, and ``****FINFICHIER****`` at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal

from gateway.errors import MalformedError

__all__ = [
    "FINFICHIER",
    "FIN_MARKER",
    "LAB_MARKER",
    "HprimDocument",
    "HprimHeader",
    "LabBlock",
    "LabResult",
    "format_res",
    "looks_like_hprim",
    "nir_sex",
    "parse_date",
    "parse_hprim",
    "validate_nir",
    "write_hprim",
]

LAB_MARKER = "****LAB****"
FIN_MARKER = "****FIN****"
FINFICHIER = "****FINFICHIER****"
HEADER_LINES = 12
CODE_COLUMNS = 10
FLAGS = frozenset({"L", "H", "LL", "HH", "N"})

_LINE_END = re.compile(r"\r\n|\r|\n")
_DATE = re.compile(r"\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})\s*")
_LAB_LINE = re.compile(r"(?:^|[\r\n])[ \t]*\*\*\*\*LAB\*\*\*\*[ \t]*(?:[\r\n]|$)")
_DATE_COMPACT = re.compile(r"\s*(\d{2})(\d{2})(\d{4})\s*")


# --- dates and NIR ------------------------------------------------------------------------


def _date_parts(text: str) -> tuple[int, int, int] | None:
    m = _DATE.fullmatch(text) or _DATE_COMPACT.fullmatch(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def parse_date(text: str) -> date | None:
    """``DD/MM/YYYY`` (also ``-`` or ``.`` separators, or ``DDMMYYYY``) as a date, else None.

    Two-digit years are not guessed: the century would need a clock.
    """
    parts = _date_parts(text)
    if parts is None:
        return None
    day, month, year = parts
    if year < 1000:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _plausible_date(text: str) -> bool:
    parts = _date_parts(text)
    if parts is None:
        return False
    day, month, year = parts
    if year < 100:
        year += 2000  # any century will do to check day and month
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _nir_compact(nir: str) -> str:
    return "".join(nir.split()).upper()


def validate_nir(nir: str) -> bool:
    """A French NIR: 13 characters and a 2-digit key, ``key = 97 - (N mod 97)``.

    For Corsica, department ``2A`` counts as 19 and ``2B`` as 18 in N (the standard rule).
    Spaces are ignored. Never raises.
    """
    checked: object = nir  # callers may hand anything over from a parsed document
    if not isinstance(checked, str):
        return False
    compact = _nir_compact(nir)
    if len(compact) != 15 or not compact.isascii():
        return False
    body, key = compact[:13], compact[13:]
    if not key.isdigit() or body[0] not in "123478":
        return False
    dept = body[5:7]
    if dept == "2A":
        body = body[:5] + "19" + body[7:]
    elif dept == "2B":
        body = body[:5] + "18" + body[7:]
    if not body.isdigit():
        return False
    return 97 - int(body) % 97 == int(key)


def nir_sex(nir: str | None) -> Literal["M", "F"] | None:
    """Sex from the NIR's first digit where it is known (1 male, 2 female), else None."""
    if not nir:
        return None
    compact = _nir_compact(nir)
    if len(compact) < 13:
        return None
    if compact[0] == "1":
        return "M"
    if compact[0] == "2":
        return "F"
    return None


def nir_birth(nir: str | None) -> date | None:
    """The first day of the birth month a NIR encodes (digits 2-5: YYMM), with or without its
    key; the century is the latest that does not put the birth in the future. None when the
    month is unknown (a NIR may carry 20 or more for it)."""
    if not nir:
        return None
    compact = _nir_compact(nir)
    if len(compact) < 13 or not compact[1:5].isdigit() or compact[0] not in "12":
        return None
    year, month = int(compact[1:3]), int(compact[3:5])
    if not 1 <= month <= 12:
        return None
    today = date.today()
    century = 2000 if 2000 + year <= today.year else 1900
    return date(century + year, month, 1)


# --- data model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HprimHeader:
    """The 12 header lines. Values are stripped; ``source_lines`` keeps them as they came."""

    patient_code: str
    last_name: str
    first_name: str
    address1: str
    address2: str
    postcode_city: str
    birth_date_raw: str
    nir: str | None  #: line 8 as written (spaces kept), None when empty
    request_number: str
    exam_date_raw: str
    sender_code: str  #: columns 1-10 of line 11
    sender_name: str
    recipient_code: str  #: columns 1-10 of line 12
    recipient_name: str
    source_lines: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def birth_date(self) -> date | None:
        return parse_date(self.birth_date_raw)

    @property
    def exam_date(self) -> date | None:
        return parse_date(self.exam_date_raw)

    @property
    def nir_valid(self) -> bool:
        return self.nir is not None and validate_nir(self.nir)

    @property
    def nir_compact(self) -> str | None:
        """The NIR without spaces (15 characters when well-formed), or None."""
        return _nir_compact(self.nir) if self.nir else None

    @property
    def sex(self) -> Literal["M", "F"] | None:
        # a NIR without its key (13 characters) still says the sex
        compact = self.nir_compact
        well_formed = self.nir_valid or (compact is not None and len(compact) == 13
                                         and compact[:5].isdigit())
        return nir_sex(self.nir) if well_formed else None

    def lines(self) -> tuple[str, ...]:
        """The 12 header lines to write: as they came, unless a field was changed since."""
        if self.source_lines is not None and _header_from_lines(self.source_lines) == self:
            return self.source_lines
        return (
            self.patient_code,
            self.last_name,
            self.first_name,
            self.address1,
            self.address2,
            self.postcode_city,
            self.birth_date_raw,
            self.nir or "",
            self.request_number,
            self.exam_date_raw,
            _code_line(self.sender_code, self.sender_name),
            _code_line(self.recipient_code, self.recipient_name),
        )


@dataclass(frozen=True)
class LabResult:
    """One ``RES`` line. Missing or empty fields are None; ``flag`` is L, H, LL, HH, N or None."""

    label: str | None
    code: str | None = None
    type: str | None = None  #: N numeric, A alphanumeric, T text (as the sender wrote it)
    value: str | None = None
    unit: str | None = None
    low: str | None = None  #: lower bound of the reference range ("min")
    high: str | None = None  #: upper bound of the reference range ("max")
    flag: str | None = None
    status: str | None = None  #: F final, P partial, C corrected...
    extra: tuple[str, ...] = ()  #: fields after the status, as written
    comments: tuple[str, ...] = ()  #: ``TEX`` lines that follow this result

    @property
    def numeric_value(self) -> float | None:
        return _number(self.value)


@dataclass(frozen=True)
class LabBlock:
    """The ``****LAB****`` block: parsed results, every ``TEX`` text, and the lines as written
    (markers included), which is what :func:`write_hprim` writes."""

    results: tuple[LabResult, ...]
    texts: tuple[str, ...]
    raw_lines: tuple[str, ...]

    @classmethod
    def from_results(cls, results: Iterable[LabResult]) -> LabBlock:
        """A block written from results (``RES`` lines, each followed by its ``TEX`` lines)."""
        results = tuple(results)
        lines = [LAB_MARKER]
        for res in results:
            lines.append(format_res(res))
            lines.extend("TEX|" + _one_line(c) for c in res.comments)
        lines.append(FIN_MARKER)
        texts = tuple(_one_line(c) for r in results for c in r.comments)
        return cls(results=results, texts=texts, raw_lines=tuple(lines))


@dataclass(frozen=True)
class HprimDocument:
    """A whole HPRIM file: ``header``, ``text`` (free text before the lab block, verbatim),
    ``lab``, ``trailing_text`` (verbatim, after the lab block) and the end marker."""

    header: HprimHeader
    text: str
    lab: LabBlock | None = None
    trailing_text: str = ""
    has_finfichier: bool = True
    newline: str = "\r\n"  #: line ending of the header, the lab block and the end marker
    epilogue: str = "\r\n"  #: what follows ``****FINFICHIER****`` on its line and after it


# --- helpers ----------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return _LINE_END.sub(" ", text)


def _code_line(code: str, name: str) -> str:
    code = _one_line(code)[:CODE_COLUMNS]
    name = _one_line(name)
    return code.ljust(CODE_COLUMNS) + name if name else code


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().replace(",", ".")
    if not text or len(text) > 40:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _opt(fields_: list[str], index: int) -> str | None:
    if index >= len(fields_):
        return None
    value = fields_[index].strip()
    return value or None


def _parse_res(line: str) -> LabResult:
    parts = line.split("|")
    flag = _opt(parts, 8)
    flag = flag.upper() if flag is not None else None
    return LabResult(
        label=_opt(parts, 1),
        code=_opt(parts, 2),
        type=_opt(parts, 3),
        value=_opt(parts, 4),
        unit=_opt(parts, 5),
        low=_opt(parts, 6),
        high=_opt(parts, 7),
        flag=flag if flag in FLAGS else None,
        status=_opt(parts, 9),
        extra=_trim(parts[10:]),
    )


def _trim(values: list[str]) -> tuple[str, ...]:
    """Fields after the status, without the empty ones a trailing ``|`` leaves."""
    end = len(values)
    while end and not values[end - 1].strip():
        end -= 1
    return tuple(values[:end])


def format_res(result: LabResult) -> str:
    """One ``RES`` line for ``result`` (``|`` and line breaks in values become spaces)."""

    def clean(value: str | None) -> str:
        return _one_line(value or "").replace("|", " ")

    values = [
        result.label,
        result.code,
        result.type,
        result.value,
        result.unit,
        result.low,
        result.high,
        result.flag,
        result.status,
    ]
    return "|".join(["RES", *(clean(v) for v in values), *(clean(e) for e in result.extra)]) + "|"


def _parse_lab(lines: list[str]) -> LabBlock:
    results: list[LabResult] = []
    texts: list[str] = []
    current: LabResult | None = None
    comments: list[str] = []

    def close() -> None:
        if current is not None:
            results.append(replace(current, comments=tuple(comments)))

    for line in lines:
        tag = line[:4].upper()
        if tag == "RES|":
            close()
            current = _parse_res(line)
            comments = []
        elif tag == "TEX|":
            text = line[4:].rstrip()
            texts.append(text)
            if current is not None:
                comments.append(text)
    close()
    return LabBlock(results=tuple(results), texts=tuple(texts), raw_lines=tuple(lines))


def _header_from_lines(lines: tuple[str, ...]) -> HprimHeader:
    def code(line: str) -> tuple[str, str]:
        # HPRIM Santé: the code in columns 1-10, then the name. Many writers do not pad
        # ("M Marcel CAMPARINI", "     FAKFAK FAKE.NAME"): a first word shorter than the
        # columns is the code, as FreeHealth's parser reads it; blank columns hold no code; a
        # word as long as the columns or longer is cut at them (the spec's "MED0012345Dr X")
        if not line[:CODE_COLUMNS].strip():
            return "", line[CODE_COLUMNS:].strip()
        first, _, rest = line.strip().partition(" ")
        if len(first) >= CODE_COLUMNS:
            return line[:CODE_COLUMNS].strip(), line[CODE_COLUMNS:].strip()
        return first, rest.strip()

    sender_code, sender_name = code(lines[10])
    recipient_code, recipient_name = code(lines[11])
    nir = lines[7].strip()
    return HprimHeader(
        patient_code=lines[0].strip(),
        last_name=lines[1].strip(),
        first_name=lines[2].strip(),
        address1=lines[3].strip(),
        address2=lines[4].strip(),
        postcode_city=lines[5].strip(),
        birth_date_raw=lines[6].strip(),
        nir=nir or None,
        request_number=lines[8].strip(),
        exam_date_raw=lines[9].strip(),
        sender_code=sender_code,
        sender_name=sender_name,
        recipient_code=recipient_code,
        recipient_name=recipient_name,
        source_lines=lines,
    )


def _is_marker(line: str) -> bool:
    return line.strip().startswith("****")


def _is_record(line: str) -> bool:
    return line[:4].upper() in ("RES|", "TEX|")


def inert_text(text: str) -> str:
    """Free text made safe to write into an HPRIM file: a line an HPRIM reader would take for
    structure (a ``****`` marker, a ``RES|``/``TEX|`` record) is quoted with "> ", so text
    written by someone else (a CDA narrative) can never forge a result block."""
    lines = text.split("\n")
    return "\n".join(f"> {line}" if _is_marker(line) or _is_record(line.lstrip())
                     else line for line in lines)


# --- detection, parsing, writing ---------------------------------------------------------------


def _first_lines(text: str, count: int) -> list[str]:
    lines: list[str] = []
    pos = 0
    for m in _LINE_END.finditer(text):
        lines.append(text[pos : m.start()])
        pos = m.end()
        if len(lines) == count:
            return lines
    if pos < len(text):
        lines.append(text[pos:])
    return lines


def looks_like_hprim(text: str) -> bool:
    """12 header lines with a plausible date on line 7 or 10, or a ``****LAB****`` line."""
    checked: object = text
    if not isinstance(checked, str):
        return False
    head = _first_lines(text, HEADER_LINES)
    if (
        len(head) == HEADER_LINES
        and not any(_is_marker(h) or _is_record(h) for h in head)
        and (_plausible_date(head[6]) or _plausible_date(head[9]))
    ):
        return True
    # the substring test first: the anchored regex would scan every character of a long text
    return "****LAB****" in text and _LAB_LINE.search(text) is not None


def parse_hprim(text: str) -> HprimDocument:
    """Parse an HPRIM document (as text: decode it with ``charset.decode_text`` first)."""
    checked: object = text
    if not isinstance(checked, str):
        raise MalformedError("HPRIM document is not text")
    # (content start, content end, line end) of every line
    spans: list[tuple[int, int, int]] = []
    pos = 0
    for m in _LINE_END.finditer(text):
        spans.append((pos, m.start(), m.end()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text), len(text)))
    if len(spans) < HEADER_LINES:
        raise MalformedError("HPRIM document has fewer than 12 lines")
    head = tuple(text[s:e] for s, e, _ in spans[:HEADER_LINES])
    if any(_is_marker(h) or _is_record(h) for h in head) or not looks_like_hprim(text):
        raise MalformedError("not an HPRIM document")
    first_end = text[spans[0][1] : spans[0][2]]
    newline = first_end or "\r\n"
    body_start = spans[HEADER_LINES - 1][2]

    body = spans[HEADER_LINES:]
    i_end: int | None = None
    for i in range(len(body) - 1, -1, -1):
        s, e, _ = body[i]
        if text[s:e].rstrip() == FINFICHIER:
            i_end = i
            break
    limit = i_end if i_end is not None else len(body)
    i_lab: int | None = None
    for i in range(limit):
        s, e, _ = body[i]
        if text[s:e].strip() == LAB_MARKER:
            i_lab = i
            break

    lab: LabBlock | None = None
    trailing = ""
    end_text = body[i_end][0] if i_end is not None else len(text)
    if i_lab is None:
        free_text = text[body_start:end_text]
    else:
        free_text = text[body_start : body[i_lab][0]]
        i_last = limit - 1
        for i in range(i_lab + 1, limit):
            s, e, _ = body[i]
            if text[s:e].strip() == FIN_MARKER:
                i_last = i
                break
        lab = _parse_lab([text[s:e] for s, e, _ in body[i_lab : i_last + 1]])
        trailing = text[body[i_last][2] : end_text]
    epilogue = ""
    if i_end is not None:
        s, _, _ = body[i_end]
        epilogue = text[s + len(FINFICHIER) :]
    return HprimDocument(
        header=_header_from_lines(head),
        text=free_text,
        lab=lab,
        trailing_text=trailing,
        has_finfichier=i_end is not None,
        newline=newline,
        epilogue=epilogue,
    )


def write_hprim(doc: HprimDocument) -> str:
    """The HPRIM text of ``doc``; the exact input for a document :func:`parse_hprim` returned."""
    nl = doc.newline if doc.newline in ("\r\n", "\n", "\r") else "\r\n"
    out = [nl.join(_one_line(line) for line in doc.header.lines()), nl, doc.text]
    if doc.lab is not None:
        out.extend((nl.join(doc.lab.raw_lines), nl))
    out.append(doc.trailing_text)
    if doc.has_finfichier:
        out.extend((FINFICHIER, doc.epilogue))
    return "".join(out)
