"""Fuzz of the payload formats: HPRIM (detection, parsing, and the conversion to CDA/XDM and
back that a lab result goes through), IHE XDM archives, hardened XML and CDA, and charsets.
Seeds are the HPRIM test files, archives the gateway writes, and their XML documents.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from bench.fuzz import targets
from tests.fuzz.strategies import fuzz_bytes, fuzz_settings, fuzz_text

HPRIM_TEXT = targets.HPRIM_SAMPLE


@fuzz_settings(250)
@given(fuzz_bytes(targets.hprim_seeds(), max_size=1024))
def test_hprim_bytes_decode_parse_and_convert(data: bytes) -> None:
    targets.check_hprim(data)


@fuzz_settings(200)
@given(fuzz_text([HPRIM_TEXT], surrogates=False))
@example(HPRIM_TEXT.replace("DURAND", "DUR\x01AND"))
def test_hprim_text_parse_and_convert(text: str) -> None:
    """On text as ``decode_text`` gives it (never a lone surrogate)."""
    targets.check_hprim_text(text)


@fuzz_settings(400)
@given(fuzz_bytes(targets.xdm_seeds(), max_size=2048))
def test_xdm_archives_refused_with_typed_errors(data: bytes) -> None:
    targets.check_xdm(data)


@fuzz_settings(400)
@given(fuzz_bytes(targets.xml_seeds(), max_size=1024))
def test_xml_and_cda_refused_with_typed_errors(data: bytes) -> None:
    targets.check_xml(data)


@fuzz_settings(300)
@given(fuzz_bytes([*targets.hprim_seeds(), b"caf\xc3\xa9 cr\xe8me \x81\x8d"], max_size=1024),
       st.sampled_from(targets.CHARSET_LABELS))
@example(b"\\N{", "unicode_escape")
@example(b"\xff", "idna")
def test_charset_decoding_and_encoding_never_raise(data: bytes, label: str | None) -> None:
    targets.check_charset(data, label)
