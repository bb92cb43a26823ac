"""The direct DER reading of EnvelopedData gives what asn1crypto gives, or steps aside.

Same contract as tests/test_signature_der.py, for ``enveloped_data._parse_der``: on envelopes
written by the gateway and by OpenSSL, every single-bit flip of one, and random mutations, the
direct reading either equals ``_parse_general`` (asn1crypto) or raises ``der.Unsupported``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.smime import certgen, der
from gateway.smime.envelope import encrypt
from gateway.smime.enveloped_data import Envelope, _parse_der, _parse_general

OPENSSL = shutil.which("openssl")
CONTENT = b"Content-Type: text/plain\r\n\r\nINR 3,2\r\n" * 4


def _key(envelope: Envelope) -> tuple[object, ...]:
    return (
        envelope.kind, envelope.recipient_count, envelope.content_algorithm, envelope.iv,
        envelope.ciphertext, envelope.mac, envelope.aad,
        [(r.method, r.rid_kind, r.issuer, r.serial, r.ski, r.algorithm.dump(),  # type: ignore[attr-defined]
          r.encrypted_key, r.originator, r.ukm) for r in envelope.recipients],
    )


def _same_or_aside(data: bytes) -> bool:
    try:
        fast = _parse_der(data)
    except der.Unsupported:
        return False
    assert _key(fast) == _key(_parse_general(data))
    return True


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("env-der")
    ca = certgen.make_ca("Env Root")
    alice = certgen.make_leaf(ca, "alice", emails=["alice@example.test"])
    bob = certgen.make_leaf(ca, "bob", emails=["bob@example.test"])
    ecc = certgen.make_leaf(ca, "ecc", emails=["ecc@example.test"], key_kind="p256")
    out = [encrypt(CONTENT, [alice.certificate]),
           encrypt(CONTENT, [alice.certificate, bob.certificate])]
    if OPENSSL is None:
        return out
    content = d / "content"
    content.write_bytes(CONTENT)
    for name, issued in (("alice", alice), ("bob", bob), ("ecc", ecc)):
        (d / f"{name}.pem").write_bytes(issued.certificate.public_bytes(
            serialization.Encoding.PEM))
    variants = [
        (["-aes256"], ["alice"]), (["-aes128"], ["alice", "bob"]), (["-aes256", "-keyid"], ["bob"]),
        (["-aes256", "-recip", str(d / "alice.pem"), "-keyopt", "rsa_padding_mode:oaep"], []),
        (["-aes256", "-stream"], ["alice"]), (["-aes-256-gcm"], ["alice"]),
        (["-aes256"], ["ecc"]), (["-des3"], ["alice"]),
    ]
    for options, names in variants:
        done = subprocess.run(
            [OPENSSL, "cms", "-encrypt", "-binary", "-in", str(content), "-outform", "DER",
             *options, *[str(d / f"{n}.pem") for n in names]], capture_output=True, check=True)
        out.append(done.stdout)
    return out


def test_genuine_envelopes_read_alike(samples: list[bytes]) -> None:
    answered = [_same_or_aside(s) for s in samples]
    assert answered[:2] == [True, True]  # the gateway's own
    assert sum(answered) >= 5  # and OpenSSL's plain RSA forms (not -stream, GCM, ECDH, 3DES)


def test_every_single_bit_flip_is_read_alike_or_left_to_asn1crypto(samples: list[bytes]) -> None:
    sample = samples[1]  # two recipients
    direct = 0
    for at in range(len(sample)):
        for bit in range(8):
            mutated = bytearray(sample)
            mutated[at] ^= 1 << bit
            try:
                direct += _same_or_aside(bytes(mutated))
            except GatewayError:
                pytest.fail(f"byte {at} bit {bit}: accepted directly, refused by asn1crypto")
    assert direct > len(sample) * 8 // 2


@settings(max_examples=1000, deadline=None)
@given(data=st.data())
def test_mutations_are_read_alike_or_left_to_asn1crypto(samples: list[bytes],
                                                        data: st.DataObject) -> None:
    sample = bytearray(data.draw(st.sampled_from(samples)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(sample) - 1))
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if kind == "flip":
            sample[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif kind == "set":
            sample[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif kind == "cut":
            del sample[at:]
        elif kind == "insert":
            sample[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del sample[at : at + data.draw(st.integers(min_value=1, max_value=8))]
        if not sample:
            return
    try:
        _same_or_aside(bytes(sample))
    except GatewayError:
        pytest.fail("direct DER reading accepted what asn1crypto refuses")
