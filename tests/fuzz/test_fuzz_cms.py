"""Fuzz of CMS: ``envelope.decrypt``, ``signature.verify`` and ``unwrap.unwrap`` on random bytes
and on mutations (bit flips, truncations, cut and repeated runs, length-octet changes found by
a DER walk) of genuine CMS made with a throw-away test PKI: the gateway's own envelopes and
signatures, and OpenSSL's BER, OAEP, AES-GCM, ECDH, key-identifier and PSS variants. Whole
messages are fuzzed at the MIME level and with a mutated DER inside a well-formed message,
before and after the encryption layer. Every input ends in a result or a ``SenderError``.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import targets
from gateway.smime import envelope, mime
from tests.fuzz.strategies import fuzz_bytes, fuzz_settings, mutated

WORLD = targets.cms_world()
HEADERS = [("From", targets.ALICE), ("To", "x@y.mssante.fr"), ("Subject", "s")]
DER_SEEDS = targets.cms_seeds()


@fuzz_settings(500)
@given(fuzz_bytes(list(WORLD.enveloped) + list(WORLD.refused), der=True))
def test_decrypt_refuses_with_typed_errors(der: bytes) -> None:
    targets.check_decrypt(der)


@fuzz_settings(500)
@given(fuzz_bytes(list(WORLD.signed) + [sig for sig, _ in WORLD.detached], der=True),
       st.sampled_from([None, targets.CONTENT, b""]))
def test_verify_refuses_with_typed_errors(der: bytes, content: bytes | None) -> None:
    targets.check_verify(der, content)


def _message(inner: bytes, wrap: str) -> bytes:
    if wrap == "enveloped":
        entity = mime.enveloped_entity(inner)
    elif wrap == "opaque":
        entity = mime.signed_opaque_entity(inner)
    else:
        entity = mime.signed_detached_entity(targets.CONTENT, inner)
    return mime.prepend_headers(entity, HEADERS)


MUTATED_DER_MESSAGES = st.one_of(
    mutated(list(WORLD.enveloped), der=True).map(lambda d: _message(d, "enveloped")),
    mutated(list(WORLD.signed), der=True).map(lambda d: _message(d, "opaque")),
    mutated([sig for sig, _ in WORLD.detached], der=True).map(lambda d: _message(d, "detached")),
)


@st.composite
def _inside_encryption(draw: st.DrawFn) -> bytes:
    """A mutated signed entity, encrypted for the gateway: fuzzes what follows decryption."""
    signed = [mime.signed_detached_entity(targets.CONTENT, sig) for sig, _ in WORLD.detached]
    signed += [mime.signed_opaque_entity(der) for der in WORLD.signed]
    inner = draw(mutated(signed, max_mutations=3))
    return _message(envelope.encrypt(inner, [WORLD.identities[0].certificate]), "enveloped")


@fuzz_settings(400)
@given(st.one_of(fuzz_bytes(list(WORLD.messages), max_size=1024), MUTATED_DER_MESSAGES,
                 _inside_encryption()))
def test_unwrap_refuses_with_typed_errors(raw: bytes) -> None:
    targets.check_unwrap(raw)
