"""Fuzz of MIME: the bounded scanner and parser (``formats.mime_limits``) and the S/MIME entity
reader (``smime.mime``: parse_entity, classify, split_signed, pkcs7_der, parse_params), on
mutations of real messages (the normalisation corpus, S/MIME messages made with a test PKI)
and on random bytes. Each either handles the input or raises ``gateway.errors`` types.
"""

from __future__ import annotations

from hypothesis import example, given

from bench.fuzz import targets
from tests.fuzz.strategies import fuzz_bytes, fuzz_settings

MIME_SEEDS = targets.mime_seeds()


@fuzz_settings(500)
@given(fuzz_bytes(MIME_SEEDS, max_size=2048))
@example(b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename*\r\n\r\nx")
def test_mime_limits_refuse_with_typed_errors(raw: bytes) -> None:
    targets.check_mime_limits(raw)


@fuzz_settings(600)
@given(fuzz_bytes(MIME_SEEDS + list(targets.cms_world().messages), max_size=2048))
def test_smime_entity_reader_refuses_with_typed_errors(raw: bytes) -> None:
    targets.check_mime_entity(raw)
