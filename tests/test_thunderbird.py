"""Thunderbird's own S/MIME corpus (../shared/corpora/thunderbird-smime, made by the NSS test
suite, see its ORIGIN.md): every message gets the verdict it should, and OpenSSL is asked the
same question in the same run.

The corpus's certificates are as in the field: end-entity certificates v3 without any extension
(no AKI, no SAN: the address is in the subject DN) under a CA whose basicConstraints is not
critical. The gateway opens the messages with Bob's key (the ``*.env`` ones are encrypted for
him) and trusts TestCA.pem and TestCA-ec.pem.

Each verdict, and why it agrees or differs with OpenSSL's ``cms -verify -purpose smimesign``:

* signed with SHA-256/384/512 (clear or opaque, html, "future", then encrypted): relayed,
  signer Alice; OpenSSL verifies. RFC 5280/8550 chains: the same verdict.
* SHA-1: ``WeakAlgorithm``; OpenSSL verifies. The gateway refuses SHA-1 by policy.
* ``*.bad``: ``BadSignature``; OpenSSL fails. The signature does not match.
* ``*.mismatch-econtent``: ``MalformedError`` (eContent confusion); OpenSSL fails.
* ``alice.env.dsig.*`` (encrypted, then clear-signed): ``BadSignature``; OpenSSL fails too:
  the signature does not cover the entity as it was sent.
* ``alice.env.sig.*.opaque`` (encrypted, then opaque-signed): ``NotSigned``; OpenSSL verifies.
  A signature over the ciphertext proves who sent the envelope, not who wrote the message.
* ``alice.env.eml``: ``NotSigned``; there is no signature for OpenSSL to verify.
* ``alice.plain.*.dave.*`` (Dave signs Alice's signed message): ``SignerMismatch``, the reason
  naming Alice's certificate; OpenSSL verifies Dave's outer signature. The author is the
  innermost signer (Alice), and From says Dave.
"""

from __future__ import annotations

import collections
import datetime as dt
import email
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import errors
from gateway.config import parse_certificates
from gateway.smime.model import Identity
from gateway.smime.trust import TrustStore, describe
from gateway.smime.unwrap import unwrap

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "thunderbird-smime"
AT = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # inside the certificates' validity
MESSAGES = sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []

pytestmark = pytest.mark.skipif(
    not MESSAGES or shutil.which("openssl") is None,
    reason=f"Thunderbird corpus not found at {CORPUS} (see ../shared/corpora/README.md)")


def expected(name: str) -> tuple[str, bool | None]:
    """(the gateway's verdict: "relayed" or an error type, OpenSSL's verdict on the outermost
    signature: True verifies, False fails, None no signature), from the family of the name."""
    broken = ("mismatch-econtent" in name or ".bad." in name
              or (name.startswith("alice.env.dsig.") and ".dave." not in name))
    openssl: bool | None = None if name == "alice.env.eml" else not broken
    if "mismatch-econtent" in name:
        return "MalformedError", openssl
    if "SHA1" in name:  # refused before the signature is even looked at
        return "WeakAlgorithm", openssl
    if ".bad." in name or name.startswith("alice.env.dsig."):
        return "BadSignature", openssl
    if name == "alice.env.eml" or name.startswith("alice.env.sig."):
        return "NotSigned", openssl
    if ".dave." in name:
        return "SignerMismatch", openssl
    return "relayed", openssl


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity(
        certificate=x509.load_pem_x509_certificate((CORPUS / "Bob.crt").read_bytes()),
        private_key=serialization.load_pem_private_key(  # type: ignore[arg-type]
            (CORPUS / "Bob.key").read_bytes(), None))


@pytest.fixture(scope="module")
def store() -> TrustStore:
    anchors = [c for name in ("TestCA.pem", "TestCA-ec.pem")
               for c in parse_certificates((CORPUS / name).read_bytes())]
    return TrustStore(anchors=tuple(anchors))


def gateway_verdict(path: Path, bob: Identity, store: TrustStore) -> tuple[str, str]:
    try:
        result = unwrap(path.read_bytes(), [bob], store, AT, require_encrypted=False)
    except errors.GatewayError as error:
        return type(error).__name__, error.reason
    assert result.signer is not None
    return "relayed", ",".join(sorted(result.signer.addresses))


def openssl_verdict(path: Path, tmp: Path) -> bool | None:
    """OpenSSL on the outermost signature (decrypting with Bob's key first if need be)."""
    message = path
    outer = email.message_from_bytes(path.read_bytes().split(b"\r\n\r\n", 1)[0])
    if outer.get_param("smime-type") == "enveloped-data":
        message = tmp / "decrypted.eml"
        run = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(path), "-recip",
                              str(CORPUS / "Bob.crt"), "-inkey", str(CORPUS / "Bob.key"),
                              "-out", str(message)], capture_output=True, timeout=30,
                             check=False)
        if run.returncode != 0:
            return None
        if b"signed" not in message.read_bytes()[:2000].lower():
            return None
    run = subprocess.run(["openssl", "cms", "-verify", "-in", str(message), "-CAfile",
                          str(CORPUS / "TestCA.pem"), "-purpose", "smimesign", "-out",
                          "/dev/null"], capture_output=True, timeout=30, check=False)
    return run.returncode == 0


@pytest.mark.parametrize("path", MESSAGES, ids=[p.name for p in MESSAGES])
def test_verdict(path: Path, bob: Identity, store: TrustStore, tmp_path: Path) -> None:
    want, openssl_ok = expected(path.name)
    verdict, detail = gateway_verdict(path, bob, store)
    assert verdict == want, detail
    if verdict == "relayed":
        assert detail == "alice@example.com"
    assert openssl_verdict(path, tmp_path) is openssl_ok


def test_the_signer_who_counts_is_named(bob: Identity, store: TrustStore) -> None:
    """Dave wrapping Alice: refused, and the reason names the innermost signer (Alice's
    certificate, by serial and issuer: never by name)."""
    alice = x509.load_pem_x509_certificate((CORPUS / "Alice.crt").read_bytes())
    path = CORPUS / "alice.plain.sig.SHA256.opaque.dave.sig.SHA256.opaque.eml"
    verdict, reason = gateway_verdict(path, bob, store)
    assert verdict == "SignerMismatch"
    assert describe(alice) in reason and "innermost" in reason
    assert "Alice" not in reason.replace("Alice@", "")  # the CA's name only, no person's


def test_counts(bob: Identity, store: TrustStore) -> None:
    """The corpus as a whole: every message judged, the tally printed for the record."""
    tally = collections.Counter(gateway_verdict(p, bob, store)[0] for p in MESSAGES)
    print("thunderbird corpus:", dict(sorted(tally.items())))
    assert sum(tally.values()) == len(MESSAGES) == 66
    assert tally["relayed"] == 19
