"""Timing of refusals after a CBC decryption: is there a padding oracle in the clock?

    python -m bench.oracle_timing [--rounds 400]

A genuine message is sealed for the gateway by the OpenSSL CLI on a fresh development PKI,
then changed the way a padding oracle attack changes it (bytes/blocks of the EnvelopedData,
the RSA-wrapped key kept). Each class is translated ``--rounds`` times by the pipeline
(``translate_file``, what the listener runs after DATA), interleaved so that drift of the
machine hits every class alike. Printed per class: the reply, then the median, p10 and p90
of the time to the refusal, and the median's distance to the bad-padding class in units of
the bad-padding class's own spread (p90 - p10). The reply is the same for every class; the
time may differ only by what decrypting more or less data costs.

Classes:
- ``bad padding``: the last block's padding byte made > 16;
- ``one block, valid padding``: the attack's own query (one block under its real IV):
  decrypts, garbage MIME;
- ``garbled block, valid padding``: a whole message with a garbled block: decrypts, the
  signature does not verify;
- ``unsigned``: decrypts to text with no signature;
- ``another signer``: decrypts and verifies, but the signer is not the From.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from asn1crypto import cms

from gateway import errors
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from gateway.translate.offline import translate_file
from tests.hostile.cms_cases import pkcs7_entity
from tests.messages import Pki, openssl, text_entity

JEAN = "jean.dupont@medical59.apicrypt.org"
LABO = "labo.biolille@labo59.apicrypt.org"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"


def _head() -> bytes:
    return (f"From: {JEAN}\r\nTo: {MARIE_ON_APICRYPT}\r\nSubject: x\r\n"
            "Message-ID: <t@example.test>\r\n").encode()


def _sign(pki: Pki, entity: bytes, signer: str = JEAN) -> bytes:
    return openssl("cms", "-sign", "-md", "sha256", "-binary", "-outform", "SMIME",
                   "-signer", pki.user_cert(signer), "-inkey", pki.user_key(signer),
                   data=entity).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _envelope(pki: Pki, entity: bytes) -> cms.ContentInfo:
    der = openssl("cms", "-encrypt", "-aes-256-cbc", "-binary", "-outform", "DER",
                  pki.gateway_cert("apicrypt"), data=entity)
    return cms.ContentInfo.load(der)


def _message(info: cms.ContentInfo) -> bytes:
    return _head() + pkcs7_entity(info.dump(force=True))


def _changed(info: cms.ContentInfo, change: Callable[[bytes, bytes], tuple[bytes, bytes]]
             ) -> bytes:
    copy = cms.ContentInfo.load(info.dump())
    eci = copy["content"]["encrypted_content_info"]
    iv = eci["content_encryption_algorithm"]["parameters"].native
    new_iv, new_ct = change(iv, eci["encrypted_content"].native)
    eci["content_encryption_algorithm"]["parameters"] = new_iv
    eci["encrypted_content"] = new_ct
    return _message(copy)


def _xor(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pki"
        init_pki(root)
        pki = Pki(root)
        config = load_config(pki.config)
        runtime = build_runtime(config)
        text = text_entity("Compte rendu: INR 2,4. Patient stable.\n" * 20)
        genuine = _envelope(pki, _sign(pki, text))
        classes = {
            "bad padding": _changed(genuine, lambda iv, c: (iv, _xor(c, len(c) - 17, 0x80))),
            "one block, valid padding": _changed(genuine, lambda iv, c: (c[-32:-16], c[-16:])),
            "garbled block, valid padding": _changed(genuine, lambda iv, c: (
                iv, _xor(c, len(c) - 49, 0x01))),
            "unsigned": _message(_envelope(pki, text)),
            "another signer": _message(_envelope(pki, _sign(pki, text, LABO))),
        }
        at = dt.datetime.now(dt.UTC)
        times: dict[str, list[float]] = {name: [] for name in classes}
        replies: dict[str, set[str]] = {name: set() for name in classes}
        for _ in range(args.rounds):
            for name, raw in classes.items():
                started = time.perf_counter()
                try:
                    translate_file(config, runtime, raw, source="apicrypt", at=at)
                    reply = "250 relayed"
                except errors.GatewayError as exc:
                    reply = str(exc.reply)
                times[name].append((time.perf_counter() - started) * 1000)
                replies[name].add(reply)
        base = times["bad padding"]
        q = statistics.quantiles(base, n=10)
        spread = q[-1] - q[0]
        print(f"{'class':<30} {'reply':<45} {'median ms':>9} {'p10':>6} {'p90':>6} "
              f"{'vs bad padding':>15}")
        for name, values in times.items():
            deciles = statistics.quantiles(values, n=10)
            median = statistics.median(values)
            distance = (median - statistics.median(base)) / spread if spread else 0.0
            print(f"{name:<30} {' | '.join(sorted(replies[name]))[:45]:<45} {median:9.3f} "
                  f"{deciles[0]:6.3f} {deciles[-1]:6.3f} {distance:+13.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
