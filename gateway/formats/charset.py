"""Text decoding, mojibake repair and ISO-8859-1 output for the apicrypt network.

Rules kept here: :func:`decode_text` turns ANY bytes into text (it never raises: the worst case
is the Windows-1252 fallback, which maps every byte); :func:`encode_for_apicrypt` turns ANY
``str`` into bytes of the target charset (it never raises: what the charset cannot hold is
transliterated, or becomes ``?``). Both are pure and linear in the input. Text comes out with
CRLF line endings.

Decoding order (DESIGN §7): a BOM; the declared charset, if it decodes strictly (a declared
ISO-8859-1 whose bytes use 0x80-0x9F is really Windows-1252); strict UTF-8; then, for 8-bit text
that is none of these, detection: charset-normalizer for long text whose letters it reads as a
non-Latin script (never UTF-16/32 without a BOM), otherwise a French-letter score that picks
MacRoman or CP850 only where the bytes say so, and Windows-1252 in every other case. Mojibake
(UTF-8 decoded as Windows-1252, "RÃ©sultat") is then repaired with ``ftfy.fix_encoding``.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import charset_normalizer
import ftfy

__all__ = [
    "DecodedText",
    "decode_text",
    "decode_windows_1252",
    "encode_for_apicrypt",
    "normalise_newlines",
]

Method = Literal["declared", "utf-8", "bom", "detected", "fallback"]

#: charset-normalizer is unreliable on short text (b"M\xfcller" came out as UTF-16-LE)
MIN_DETECTION_BYTES = 64
#: detection reads this much (cut at a line end): enough to tell a script, bounded time
DETECTION_SAMPLE = 64 * 1024
#: ftfy's repair is linear but not free (about 0.25 s per MB): bounded on huge texts
MAX_REPAIR_CHARS = 4_000_000


@dataclass(frozen=True)
class DecodedText:
    text: str
    charset: str  #: the charset the bytes were decoded with (a MIME name)
    method: Method
    confidence: float  #: 0..1, how sure the decoder is of ``charset``
    repaired: bool  #: ftfy changed something (double-encoded UTF-8 repaired)


_NEWLINES = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


def normalise_newlines(text: str) -> str:
    """Every CR, LF or CRLF becomes CRLF."""
    lf = text.count("\n")
    if text.count("\r") == lf == text.count("\r\n"):  # already CRLF: three C scans, no copy
        return text
    return _NEWLINES.sub("\r\n", text)


# --- Windows-1252 as browsers read it (WHATWG): the five undefined bytes map to C1 controls, so
# decoding never fails and never loses a byte. Error handlers keep the work in the C codec.


def _c1_handler(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return chr(error.object[error.start]), error.start + 1


codecs.register_error("passerelle-c1", _c1_handler)


def decode_windows_1252(data: bytes) -> str:
    """Decode as Windows-1252, mapping its five undefined bytes to U+0081 etc. Never fails."""
    return data.decode("cp1252", errors="passerelle-c1")


# --- charset names -------------------------------------------------------------------------

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,39}")
_MIME_NAMES = {
    "utf_8": "utf-8",
    "ascii": "us-ascii",
    "latin_1": "iso-8859-1",
    "iso8859_1": "iso-8859-1",
    "iso8859_15": "iso-8859-15",
    "cp1252": "windows-1252",
    "mac_roman": "macintosh",
    "cp850": "ibm850",
    "utf_16": "utf-16",
    "utf_16_le": "utf-16le",
    "utf_16_be": "utf-16be",
    "utf_32": "utf-32",
    "utf_32_le": "utf-32le",
    "utf_32_be": "utf-32be",
}


def _codec_name(label: str | None) -> str | None:
    """Python's codec name for a MIME charset label, or None for unknown / non-text codecs."""
    if not label:
        return None
    label = label.strip().strip('"').strip()
    if not _LABEL.fullmatch(label):
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None  # bytes-to-bytes codecs (base64, zlib, rot13...) are no charsets
    name = info.name.replace("-", "_")
    if name in _NOT_CHARSETS:
        return None
    return name


# Python text codecs that no MIME charset names: escape decoders would turn "\x41" or "\N{...}"
# in a sender's text into other characters, IDNA and Punycode are for host names.
_NOT_CHARSETS = frozenset({"unicode_escape", "raw_unicode_escape", "idna", "punycode",
                           "undefined"})


def _mime_name(codec: str) -> str:
    return _MIME_NAMES.get(codec, codec.replace("_", "-"))


# --- BOM ----------------------------------------------------------------------------------

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf_8"),
    (codecs.BOM_UTF32_LE, "utf_32_le"),  # before UTF-16-LE: FF FE 00 00 starts with FF FE
    (codecs.BOM_UTF32_BE, "utf_32_be"),
    (codecs.BOM_UTF16_LE, "utf_16_le"),
    (codecs.BOM_UTF16_BE, "utf_16_be"),
)


def _from_bom(data: bytes) -> tuple[str, str] | None:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec), codec
            except UnicodeDecodeError:
                continue  # FF FE 00 00 may be UTF-16-LE followed by U+0000: try the next
    return None


# --- French-letter score for the 8-bit Latin candidates -------------------------------------

# Letters that French text uses; an accented capital inside a lowercase word is implausible.
_FRENCH_LOWER = frozenset("éèêëàâäçîïôöûùüÿœæ")
_FRENCH_UPPER = frozenset("ÉÈÊËÀÂÄÇÎÏÔÖÛÙÜŒÆ")
_COMMON_SIGNS = frozenset("’‘“”«»–—…€°²³±×·\u00a0§µ")
# Signs that appear in real text almost only as the wrong reading of another charset.
_RARE_SIGNS = frozenset("ŽžŠšˆ‰‡†ƒ˜Ÿ‹›¦¤¨¯¸¬®©ª º¹¼½¾ÞþÐðÝý÷¿¡")

_HIGH_BYTES = bytes(range(0x80, 0x100))
_C1_BYTES = bytes(range(0x80, 0xA0))
#: candidates in order of preference on equal scores
_LATIN_CANDIDATES = ("cp1252", "mac_roman", "cp850")


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
#: scoring looks at this many non-ASCII characters at most: enough evidence, bounded time
MAX_SCORED_CHARS = 20_000


def _french_score(text: str) -> float:
    """Plausibility of ``text`` as French: + for French letters in words, - for junk.

    Only non-ASCII characters are scored: ASCII reads the same in every candidate.
    """
    score = 0.0
    n = len(text)
    for count, match in enumerate(_NON_ASCII.finditer(text)):
        if count >= MAX_SCORED_CHARS:
            break
        i = match.start()
        ch = text[i]
        prev = text[i - 1] if i > 0 else " "
        nxt = text[i + 1] if i + 1 < n else " "
        in_word = prev.isalpha() or nxt.isalpha()
        if ch in _FRENCH_LOWER:
            score += 3.0 if in_word else 1.0
        elif ch in _FRENCH_UPPER:
            if prev.islower() and nxt.islower():
                score -= 1.0  # "rÉsultat": a capital inside a lowercase word
            else:
                score += 2.0 if in_word else 1.0
        elif ch in _COMMON_SIGNS:
            score += 1.0
        elif ch in _RARE_SIGNS:
            score -= 3.0
        elif ch.isalpha():
            # a letter French does not use (å, ì, Ö...): possible, not evidence
            score += 0.5 if in_word and not (prev.islower() and ch.isupper()) else -0.5
        else:
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cn", "Co", "Cs") or "\u2500" <= ch <= "\u259f":
                score -= 4.0  # control, unassigned or box-drawing: not text
            else:
                score -= 1.0
    return score


def _decode_latin(data: bytes, codec: str) -> str:
    if codec == "cp1252":
        return decode_windows_1252(data)
    return data.decode(codec)  # mac_roman and cp850 map all 256 bytes


def _guess_latin(data: bytes) -> tuple[str, str, float, bool]:
    """(text, codec, confidence, decisive) among Windows-1252, MacRoman and CP850."""
    scored = []
    for codec in _LATIN_CANDIDATES:
        text = _decode_latin(data, codec)
        scored.append((_french_score(text), codec, text))
    base_score = scored[0][0]
    best = scored[0]
    for entry in scored[1:]:
        # MacRoman / CP850 only where the bytes say so: clearly better than Windows-1252.
        if entry[0] > best[0] and entry[0] >= base_score + 2.0:
            best = entry
    others = [s for s in scored if s is not best]
    margin = best[0] - max(s[0] for s in others)
    high_bytes = min(len(data) - len(data.translate(None, _HIGH_BYTES)), MAX_SCORED_CHARS) or 1
    confidence = max(0.0, min(1.0, margin / (3.0 * high_bytes)))
    decisive = best[0] > 0 and margin > 0
    if not decisive:
        return scored[0][2], scored[0][1], 0.0, False
    return best[2], best[1], round(confidence, 3), True


_NON_LATIN_SCRIPTS = (
    "CYRILLIC",
    "GREEK",
    "HEBREW",
    "ARABIC",
    "CJK",
    "HIRAGANA",
    "KATAKANA",
    "HANGUL",
    "THAI",
    "ARMENIAN",
    "GEORGIAN",
)


def _non_latin_letters(text: str) -> bool:
    """Most non-ASCII letters of ``text`` belong to a non-Latin script."""
    latin = other = 0
    for count, match in enumerate(_NON_ASCII.finditer(text)):
        if count >= MAX_SCORED_CHARS:
            break
        ch = match.group()
        if not ch.isalpha():
            continue
        if unicodedata.name(ch, "").startswith(_NON_LATIN_SCRIPTS):
            other += 1
        else:
            latin += 1
    return other > 2 * latin


def _detect_non_latin(data: bytes) -> tuple[str, str, float] | None:
    """charset-normalizer's reading of long text, when it is in a non-Latin script."""
    sample = data[:DETECTION_SAMPLE]
    if len(data) > DETECTION_SAMPLE:
        cut = sample.rfind(b"\n")
        sample = sample[: cut + 1] if cut > 0 else sample
    try:
        best = charset_normalizer.from_bytes(
            sample,
            cp_exclusion=[
                "utf_16",
                "utf_16_le",
                "utf_16_be",
                "utf_32",
                "utf_32_le",
                "utf_32_be",
                "utf_7",
            ],
        ).best()
    except Exception:  # a detector bug must not stop a message: fall back to the Latin path
        return None
    if best is None:
        return None
    codec = _codec_name(best.encoding)
    if codec is None or codec.startswith(("utf_16", "utf_32", "utf_7")):
        return None
    try:
        text = data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None
    if not _non_latin_letters(text):
        return None
    return text, codec, round(max(0.0, 1.0 - float(best.chaos)), 3)


def _declared(data: bytes, codec: str) -> tuple[str, str] | None:
    if codec in ("latin_1", "iso8859_1", "cp1252"):
        # ISO-8859-1 has only C1 controls at 0x80-0x9F: a sender who used them meant 1252,
        # or wrote on a Mac (0x8E é, 0x88 à, 0x8F è... "RŽsultat ˆ contr™ler" in 1252): the
        # French-letter score decides, MacRoman only where it is clearly better
        if len(data.translate(None, _C1_BYTES)) != len(data):
            text, guessed, _, decisive = _guess_latin(data)
            return (text, guessed) if decisive else (decode_windows_1252(data), "cp1252")
        if codec == "cp1252":
            return decode_windows_1252(data), "cp1252"
        return data.decode("latin-1"), "latin_1"
    if codec.startswith(("utf_16", "utf_32")) and data and b"\x00" not in data:
        return None  # 8-bit text mislabelled as UTF-16/32 would decode to CJK noise
    try:
        return data.decode(codec), codec
    except (UnicodeDecodeError, LookupError, ValueError):
        return None


# What UTF-8 read as Windows-1252 / Latin-1 looks like: a lead byte C2-DF ("Ã", "Â", "Å"...)
# followed by a continuation byte 80-BF, or E2 80-84 ("â€", "â‚", "â„": quotes, dashes, €, ™).
_CONT = "\u0080-\u00bf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df][{_CONT}]|â[€‚„]")
# A superset of _MOJIBAKE that starts with one character class (which the regex engine scans
# fast): most texts fail it, and only those that pass pay for the alternation.
_MOJIBAKE_HINT = re.compile(f"[\u00c2-\u00df\u00e2][{_CONT}]")


def _stray_marks(text: str) -> bool:
    """Combining marks left after composition ("r" + U+032C): no French writer types those;
    they are what UTF-8 bytes of other text look like once read again as UTF-8."""
    if text.isascii():
        return False
    return _COMBINING.search(unicodedata.normalize("NFC", text)) is not None


_COMBINING = re.compile("[\u0300-\u036f]")


def _reread(data: bytes) -> tuple[str, str] | None:
    """Text decoded twice (UTF-8 read as Latin-1, then saved as MacRoman or Windows-1252):
    the legacy reading, repaired, when it leaves no stray combining mark."""
    for codec in ("mac_roman", "cp1252"):
        text, repaired = _repair(_decode_latin(data, codec))
        if repaired and not _stray_marks(text):
            return text, codec
    return None


def _repair(text: str) -> tuple[str, bool]:
    """Undo double-encoded UTF-8, and nothing else (ftfy's other fixes change real text)."""
    if (len(text) > MAX_REPAIR_CHARS or _MOJIBAKE_HINT.search(text) is None
            or _MOJIBAKE.search(text) is None):
        return text, False
    try:
        fixed = ftfy.fix_encoding(text)
    except Exception:  # a repair library failure leaves the text as decoded
        return text, False
    if not isinstance(fixed, str) or fixed == text:
        return text, False
    return fixed, True


def decode_text(data: bytes, declared: str | None = None) -> DecodedText:
    """Decode ``data`` (declared charset ``declared``, may be None); never raises."""
    data = bytes(data)
    method: Method
    bom = _from_bom(data)
    if bom is not None:
        text, codec = bom
        method, confidence = "bom", 1.0
    else:
        declared_codec = _codec_name(declared)
        got = _declared(data, declared_codec) if declared_codec else None
        if got is not None:
            text, codec = got
            # a declared Latin-1 that the bytes show was MacRoman or CP850 is a detection
            method = "detected" if codec in ("mac_roman", "cp850") else "declared"
            confidence = 1.0
        else:
            try:
                text = data.decode("utf-8")
                codec = "ascii" if data.isascii() else "utf_8"
                method, confidence = "utf-8", 1.0
            except UnicodeDecodeError:
                detected = _detect_non_latin(data) if len(data) >= MIN_DETECTION_BYTES else None
                if detected is not None:
                    text, codec, confidence = detected
                    method = "detected"
                else:
                    text, codec, confidence, decisive = _guess_latin(data)
                    method = "detected" if decisive else "fallback"
    if not text.isascii() and _SURROGATE.search(text):
        # utf-7, unicode_escape... decode to lone surrogates, which no charset can encode
        text = _SURROGATE.sub("\ufffd", text)
    before = text
    text, repaired = _repair(text)
    if _stray_marks(text) and not data.isascii():
        again = _reread(data)
        if again is not None:
            (text, codec), repaired, method = again, True, "detected"
        elif repaired:  # a repair that made stray marks made things worse
            text, repaired = before, False
    return DecodedText(
        text=normalise_newlines(text),
        charset=_mime_name(codec),
        method=method,
        confidence=confidence,
        repaired=repaired,
    )


# --- output toward apicrypt -------------------------------------------------------------------

_TRANSLIT = {
    "œ": "oe",
    "Œ": "OE",
    "’": "'",
    "‘": "'",
    "‚": ",",
    "‛": "'",
    "“": '"',
    "”": '"',
    "„": '"',
    "«": '"',
    "»": '"',
    "–": "-",
    "—": "-",
    "‐": "-",
    "‑": "-",
    "−": "-",
    "…": "...",
    "€": "EUR",
    "\u202f": " ",  # narrow no-break space (French typography before ; : ! ?)
    "\u2009": " ",
    "\u2007": " ",
    "\u00a0": " ",
    "•": "*",
    "™": "(TM)",
    "Ÿ": "Y",
    "ﬁ": "fi",
    "Ł": "L",
    "ł": "l",
    "Đ": "D",
    "đ": "d",
    "ı": "i",
    "ﬂ": "fl",
    "\u200b": "",
    "\ufeff": "",
}


@functools.lru_cache(maxsize=4096)
def _transliterate(ch: str, codec: str) -> str:
    sub = _TRANSLIT.get(ch)
    if sub is not None and _encodable(sub, codec):
        return sub
    decomposed = "".join(
        c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
    )
    if decomposed and decomposed != ch:
        out = []
        for c in decomposed:
            if _encodable(c, codec):
                out.append(c)
            else:
                rep = _TRANSLIT.get(c)
                out.append(rep if rep is not None and _encodable(rep, codec) else "?")
        return "".join(out)
    return "?"


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeError:
        return False
    return True


def _translit_handler(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    codec = error.encoding
    sub = "".join(_transliterate(ch, codec) for ch in error.object[error.start : error.end])
    return sub, error.end


codecs.register_error("passerelle-translit", _translit_handler)


def encode_for_apicrypt(text: str, charset: str = "iso-8859-1") -> bytes:
    """``text`` as bytes of ``charset`` with CRLF line endings; never raises for any ``str``.

    Characters the charset cannot hold are transliterated (œ -> oe, ’ -> ', € -> EUR, accents
    dropped by NFKD where the base letter fits), and become ``?`` where nothing fits. An
    unknown charset label falls back to ISO-8859-1, which every apicrypt client reads.
    """
    codec = _codec_name(charset) or "latin_1"
    text = normalise_newlines(text)
    try:
        return text.encode(codec, errors="passerelle-translit")
    except UnicodeError:
        # a codec that refused even the replacement (a stateful or exotic one): stay readable
        return text.encode("latin-1", errors="passerelle-translit")
