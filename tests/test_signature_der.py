"""The direct DER reading of SignedData gives what asn1crypto gives, or steps aside.

``signature._parse_der`` reads the common shape without asn1crypto; on anything else it raises
``der.Unsupported`` and ``_parse_general`` (asn1crypto) decides. Here, on signatures written by
the gateway and by OpenSSL in many forms, and on thousands of mutations of them: whenever the
direct reading answers, asn1crypto answers the same; whenever asn1crypto refuses, the direct
reading has stepped aside.
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
from gateway.smime.model import Identity
from gateway.smime.signature import _parse_der, _parse_general, _Signed, sign

CONTENT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nR\xc3\xa9sultat\r\n" * 10
OPENSSL = shutil.which("openssl")


def _key(signed: _Signed) -> tuple[object, ...]:
    s = signed.signer
    return (
        signed.content_type, signed.econtent,
        [(c.dump(), x) for c, x in signed.certificates],
        None if s.issuer_serial is None else (s.issuer_serial[0].dump(), s.issuer_serial[1]),
        s.key_identifier, s.digest_oid, s.signature_oid, s.pss, s.signed_attrs,
        s.signed_attrs_der, s.signature,
    )


def _same_or_aside(data: bytes) -> bool:
    """True if the direct reading answered (and agreed); False if it stepped aside."""
    try:
        fast = _parse_der(data)
    except der.Unsupported:
        return False
    general = _parse_general(data)  # must not raise: the direct reading accepted it
    assert _key(fast) == _key(general)
    return True


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("der")
    root = certgen.make_ca("Der Root")
    inter = certgen.make_ca("Der Inter", issuer=root)
    rsa = certgen.make_leaf(inter, "alice", emails=["alice@example.test"])
    ec = certgen.make_leaf(inter, "ecc", emails=["ecc@example.test"], key_kind="p256")
    out = [
        sign(CONTENT, Identity(rsa.certificate, rsa.key)),
        sign(CONTENT, Identity(rsa.certificate, rsa.key), detached=False),
        sign(CONTENT, Identity(ec.certificate, ec.key), extra_certs=[inter.certificate]),
    ]
    if OPENSSL is None:
        return out
    content = d / "content"
    content.write_bytes(CONTENT)
    for name, issued in (("rsa", rsa), ("ec", ec)):
        (d / f"{name}.pem").write_bytes(issued.certificate.public_bytes(
            serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    (d / "inter.pem").write_bytes(inter.certificate.public_bytes(serialization.Encoding.PEM))
    variants = [
        ["-binary"], ["-binary", "-nodetach"], ["-binary", "-noattr"],
        ["-binary", "-keyid"], ["-binary", "-certfile", str(d / "inter.pem")],
        ["-binary", "-nocerts"], ["-binary", "-nosmimecap"], ["-binary", "-stream"],
        ["-binary", "-nodetach", "-stream"],
        ["-binary", "-keyopt", "rsa_padding_mode:pss"],
    ]
    for name in ("rsa", "ec"):
        for options in variants:
            if name == "ec" and "rsa_padding_mode:pss" in options:
                continue
            done = subprocess.run(
                [OPENSSL, "cms", "-sign", "-in", str(content), "-signer", str(d / f"{name}.pem"),
                 "-inkey", str(d / f"{name}.key"), "-md", "sha256", "-outform", "DER",
                 *options], capture_output=True, check=True)
            out.append(done.stdout)
    return out


def test_genuine_signatures_read_alike(samples: list[bytes]) -> None:
    answered = [_same_or_aside(s) for s in samples]
    # the gateway's own and OpenSSL's plain DER forms take the direct path; BER (-stream) and
    # PSS step aside
    assert answered[:3] == [True, True, True]
    assert sum(answered) >= len(samples) - 6


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_mutations_are_read_alike_or_left_to_asn1crypto(samples: list[bytes],
                                                        data: st.DataObject) -> None:
    sample = bytearray(data.draw(st.sampled_from(samples)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = data.draw(st.integers(min_value=0, max_value=len(sample) - 1))
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
    blob = bytes(sample)
    try:
        _same_or_aside(blob)
    except GatewayError:
        # asn1crypto refused what the direct reading accepted: a disagreement
        pytest.fail("direct DER reading accepted what asn1crypto refuses")


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_every_single_bit_flip_is_read_alike_or_left_to_asn1crypto(samples: list[bytes]) -> None:
    sample = samples[2]  # EC signer with an intermediate: every part of the shape is present
    direct = 0
    for at in range(len(sample)):
        for bit in range(8):
            mutated = bytearray(sample)
            mutated[at] ^= 1 << bit
            try:
                direct += _same_or_aside(bytes(mutated))
            except GatewayError:
                pytest.fail(f"byte {at} bit {bit}: accepted directly, refused by asn1crypto")
    assert direct > len(sample) * 8 // 2  # most flips stay in values: the direct path is used
