"""Text decoding and repair: the declared / BOM / UTF-8 / detection / fallback order, the French
MacRoman and CP850 heuristics, mojibake repair, and ISO-8859-1 output that never fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.formats.charset import (
    decode_text,
    decode_windows_1252,
    encode_for_apicrypt,
    normalise_newlines,
)

FRENCH = (
    "Résultat de l'analyse : hémoglobine très basse, à contrôler dès réception.\n"
    "Reçu à l'hôpital, œdème des membres inférieurs. Élevé, ça dépend.\n"
)
FRENCH_NO_OE = FRENCH.replace("œ", "oe")


def test_declared_charset_wins_when_it_decodes() -> None:
    d = decode_text(FRENCH.encode("utf-8"), "UTF-8")
    assert (d.text, d.charset, d.method, d.repaired) == (
        normalise_newlines(FRENCH),
        "utf-8",
        "declared",
        False,
    )
    d = decode_text(FRENCH_NO_OE.encode("latin-1"), "iso-8859-1")
    assert (d.charset, d.method) == ("iso-8859-1", "declared")
    assert d.text == normalise_newlines(FRENCH_NO_OE)


def test_declared_latin1_with_c1_bytes_is_windows_1252() -> None:
    d = decode_text("Cœur – 5 € …".encode("cp1252"), "ISO-8859-1")
    assert (d.text, d.charset, d.method) == ("Cœur – 5 € …", "windows-1252", "declared")


def test_declared_ascii_with_8bit_falls_through() -> None:
    d = decode_text("Hémoglobine".encode(), "us-ascii")
    assert (d.text, d.method, d.charset) == ("Hémoglobine", "utf-8", "utf-8")
    d = decode_text("Hémoglobine".encode("cp1252"), "us-ascii")
    assert (d.text, d.method, d.charset) == ("Hémoglobine", "detected", "windows-1252")


@pytest.mark.parametrize("label", ["x-unknown", "base64", "zlib", "rot13", "", "a" * 200, "é"])
def test_unknown_or_non_text_declared_labels_are_ignored(label: str) -> None:
    d = decode_text("Noël".encode(), label)
    assert (d.text, d.method) == ("Noël", "utf-8")


def test_bom() -> None:
    for codec in ("utf-8-sig", "utf-16", "utf-16-be", "utf-32"):
        data = FRENCH.encode(codec)
        if codec == "utf-16-be":
            data = b"\xfe\xff" + data
        d = decode_text(data, "iso-8859-1")  # the BOM wins over a wrong label
        assert d.method == "bom", codec
        assert d.text == normalise_newlines(FRENCH)


def test_utf16_without_bom_is_never_detected() -> None:
    data = FRENCH.encode("utf-16-le")
    d = decode_text(data, None)
    assert not d.charset.startswith("utf-16")
    assert d.method in ("detected", "fallback")


def test_short_latin1_is_not_utf16() -> None:
    d = decode_text(b"M\xfcller", None)
    assert (d.text, d.charset) == ("Müller", "windows-1252")


@pytest.mark.parametrize(("codec", "charset"), [("mac_roman", "macintosh"), ("cp850", "ibm850")])
def test_macroman_and_cp850_recognised_from_french_letters(codec: str, charset: str) -> None:
    d = decode_text(FRENCH_NO_OE.encode(codec), None)
    assert (d.text, d.charset, d.method) == (normalise_newlines(FRENCH_NO_OE), charset, "detected")
    assert d.confidence > 0
    for word in ("Crème brûlée", "Hémoglobine", "à contrôler", "Reçu", "Müller"):
        got = decode_text(word.encode(codec), None)
        assert (got.text, got.charset) == (word, charset), word


def test_windows_1252_preferred_for_french_and_on_ties() -> None:
    for word in ("Hémoglobine", "à contrôler", "Reçu", "Müller", "Cœur", "l’hôpital"):
        got = decode_text(word.encode("cp1252"), None)
        assert (got.text, got.charset) == (word, "windows-1252"), word
    # no evidence either way: Windows-1252 fallback
    d = decode_text(b"\x81\x8d", None)
    assert (d.charset, d.method, d.confidence) == ("windows-1252", "fallback", 0.0)


def test_long_non_latin_text_detected() -> None:
    text = "Результат анализа: гемоглобин очень низкий, нужно проверить снова завтра утром."
    d = decode_text(text.encode("cp1251"), None)
    # charset-normalizer may pick a sibling Cyrillic code page: the words must read right
    assert d.method == "detected"
    assert "гемоглобин очень низкий" in d.text


def test_mojibake_repaired() -> None:
    d = decode_text("RÃ©sultat Ã  contrÃ´ler".encode(), None)
    assert (d.text, d.repaired) == ("Résultat à contrôler", True)
    # UTF-8 mislabelled as ISO-8859-1: declared decodes, then repair
    d = decode_text("Élevé à l'hôpital".encode(), "iso-8859-1")
    assert (d.text, d.repaired) == ("Élevé à l'hôpital", True)
    assert decode_text("Résultat".encode(), None).repaired is False
    # French text that merely contains odd pairs is left alone
    for text in ("»Ç", "Ça «Ça»", "Noël 2°C"):
        assert decode_text(text.encode("latin-1"), "iso-8859-1").text == text


def test_newlines_become_crlf() -> None:
    assert normalise_newlines("a\nb\r\nc\rd\r\n\n") == "a\r\nb\r\nc\r\nd\r\n\r\n"
    assert decode_text(b"a\nb\rc\r\n", None).text == "a\r\nb\r\nc\r\n"


def test_windows_1252_never_fails() -> None:
    every = bytes(range(256))
    text = decode_windows_1252(every)
    assert len(text) == 256
    assert text[0x80] == "€" and text[0x81] == "\x81" and text[0x9D] == "\x9d"


def test_encode_for_apicrypt_transliterates() -> None:
    out = encode_for_apicrypt("Œuvre, cœur – “oui” ‘non’ — 5 € … 12\u202f% Łódź\nfin")
    assert out == b"OEuvre, coeur - \"oui\" 'non' - 5 EUR ... 12 % L\xf3dz\r\nfin"
    assert encode_for_apicrypt("Hémoglobine à 9,8 g/dl") == "Hémoglobine à 9,8 g/dl".encode(
        "latin-1"
    )
    assert encode_for_apicrypt("日本 \ud800") == b"?? ?"
    assert encode_for_apicrypt("ǅ ﬁ") == b"Dz fi"
    assert encode_for_apicrypt("Noël €", "utf-8") == "Noël €".encode()
    assert encode_for_apicrypt("Noël €", "no-such-charset") == b"No\xebl EUR"


# --- properties ------------------------------------------------------------------------------

LABELS = st.sampled_from(
    [
        None,
        "utf-8",
        "iso-8859-1",
        "us-ascii",
        "utf-16",
        "utf-16le",
        "utf-32",
        "windows-1252",
        "macintosh",
        "cp850",
        "utf-7",
        "base64",
        "bogus",
        "",
        "shift_jis",
        "iso-2022-jp",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), LABELS)
def test_decode_any_bytes_never_raises(data: bytes, label: str | None) -> None:
    d = decode_text(data, label)
    assert isinstance(d.text, str)
    assert "\r" not in d.text.replace("\r\n", "")
    assert "\n" not in d.text.replace("\r\n", "")
    assert 0.0 <= d.confidence <= 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())), LABELS)
def test_encode_any_str_never_raises(text: str, label: str | None) -> None:
    out = encode_for_apicrypt(text, label or "iso-8859-1")
    assert isinstance(out, bytes)
    if label in (None, "iso-8859-1"):
        decoded = out.decode("latin-1")
        assert "\n" not in decoded.replace("\r\n", "")


FRENCH_ALPHABET = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'()-/\n"
    "éèêëàâçôûùîïÉÈÊÀÇÔ",
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(FRENCH_ALPHABET)
def test_latin1_round_trip(text: str) -> None:
    wire = encode_for_apicrypt(text)
    assert decode_text(wire, "iso-8859-1").text == normalise_newlines(text)
    assert decode_text(text.encode("utf-8"), None).text == normalise_newlines(text)


@pytest.mark.parametrize("label", ["unicode_escape", "raw-unicode-escape", "idna", "punycode",
                                   "undefined", "base64", "rot13"])
def test_python_codecs_that_are_no_charsets_are_not_honoured(label: str) -> None:
    """A label naming an escape decoder would turn ``\\x41`` or ``\\N{...}`` in the sender's text
    into other characters (found by the long fuzz profile): such a label counts as none."""
    data = b"Kaliemie \\x41 \\N{BULLET} 6,2 mmol/l"
    decoded = decode_text(data, label)
    assert decoded.text == data.decode("ascii")
    assert decoded.method != "declared"


def test_macroman_labelled_latin1_is_read_as_macroman() -> None:
    """A Mac lab's export declared ISO-8859-1: 0x8E, 0x88, 0x99 are C1 controls in Latin-1,
    "é", "à", "ô" in MacRoman (the field showed "RŽsultat ˆ contr™ler")."""
    data = "Résultat à contrôler. Cher confrère, bien à vous.".encode("mac_roman")
    got = decode_text(data, "iso-8859-1")
    assert got.text == "Résultat à contrôler. Cher confrère, bien à vous."
    assert (got.charset, got.method) == ("macintosh", "detected")


def test_windows_1252_labelled_latin1_stays_windows_1252() -> None:
    got = decode_text("Cher confrère, coût 25 € – « urgent »".encode("cp1252"), "iso-8859-1")
    assert got.text == "Cher confrère, coût 25 € – « urgent »" and got.charset == "windows-1252"


@pytest.mark.parametrize("saved_as", ["mac_roman"])
def test_text_decoded_twice_is_repaired_not_turned_into_combining_marks(saved_as: str) -> None:
    """UTF-8 read as Latin-1 and saved again (a real file): "Confrère" became bytes that are
    valid UTF-8 for "Confr" + U+032C + "re"."""
    data = "Confrère, à bientôt".encode().decode("latin-1").encode(saved_as)
    for declared in (None, "iso-8859-1"):
        got = decode_text(data, declared)
        assert got.text == "Confrère, à bientôt", (declared, got)
        assert got.repaired


def test_genuine_decomposed_accents_are_kept() -> None:
    """macOS writes "é" as "e" + U+0301: composable, not a sign of double decoding."""
    assert decode_text("e\u0301te\u0301".encode()).text in ("e\u0301te\u0301", "été")
