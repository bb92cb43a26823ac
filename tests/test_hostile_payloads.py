"""Hostile payloads inside a genuinely signed and encrypted message, through the whole pipeline.

The signature is valid (a real user's key), so every bound below is the last line of defence:
each case must be refused with a precise reply — never relayed, never an unexpected exception.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import pytest

from gateway import errors
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from gateway.translate.offline import translate_file
from tests.messages import Pki, user_message, with_xdm

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    root = tmp_path_factory.mktemp("hostile") / "pki"
    init_pki(root)
    config = load_config(root / "gateway.toml")
    return root, config, build_runtime(config)


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1)) * 10
                                                        if i > 1 else b"&lol;" * 10)
                             for i in range(1, 10))
                  + b']><ClinicalDocument xmlns="urn:hl7-org:v3">&lol9;</ClinicalDocument>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<ClinicalDocument xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>')


CASES_FROM_MSSANTE = {
    "zip bomb (ratio)": with_xdm(_zip({"IHE_XDM/SUBSET01/DOC0001.XML": b"\0" * 60_000_000})),
    "billion laughs": with_xdm(_zip({
        "IHE_XDM/SUBSET01/METADATA.XML": BILLION_LAUGHS,
        "IHE_XDM/SUBSET01/DOC0001.XML": BILLION_LAUGHS})),
    "external entity": with_xdm(_zip({
        "IHE_XDM/SUBSET01/METADATA.XML": XXE, "IHE_XDM/SUBSET01/DOC0001.XML": XXE})),
    "path traversal": with_xdm(_zip({"../../etc/cron.d/x": b"* * * * * root true"})),
}


def _parts(n: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(n))
    return b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body + b"--b--\r\n"


def _nested(depth: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                    for i in range(depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return head + b"Content-Type: text/plain\r\n\r\nx" + tail


CASES_FROM_APICRYPT = {
    "10,000-part MIME": _parts(10_000),
    "2,000-deep nesting": _nested(2_000),
    "40,000-address To": (b"To: " + b", ".join(b"u%d@example.org" % i for i in range(40_000))
                          + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n"),
    "1 MB header line": (b"X-Long: " + b"a" * 1_000_000
                         + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n"),
}


def _sealed(root: Path, sender: str, to: str, entity: bytes) -> bytes:
    # Signed and encrypted by OpenSSL as the user: the gateway's own seal() would refuse to
    # wrap some of these entities at all.
    return user_message(Pki(root), sender, to, entity)


@pytest.mark.parametrize("case", sorted(CASES_FROM_APICRYPT) + sorted(CASES_FROM_MSSANTE))
def test_hostile_payload_is_refused_precisely(world: tuple[Path, object, object],
                                              case: str) -> None:
    root, config, runtime = world
    if case in CASES_FROM_APICRYPT:
        sender, to, entity = JEAN, MARIE_ON_APICRYPT, CASES_FROM_APICRYPT[case]
        source = "apicrypt"
    else:
        sender, to, entity = MARIE, JEAN_ON_MSSANTE, CASES_FROM_MSSANTE[case]
        source = "mssante"
    raw = _sealed(root, sender, to, entity)
    with pytest.raises(errors.GatewayError) as caught:
        translate_file(config, runtime, raw, source=source,  # type: ignore[arg-type]
                       at=dt.datetime.now(dt.UTC))
    reply = caught.value.reply
    assert reply.permanent, (case, reply)
    # Sealed with CBC, as peers do: the wire gets the one reply that follows any failure
    # after a CBC decryption (no padding oracle), and the precise cause is the reason's.
    assert reply == errors.CONTENT_REFUSED, (case, reply)
    assert isinstance(caught.value, errors.ContentRefused)
    assert caught.value.reason.split(":", 1)[0] in {
        "LimitExceeded", "MalformedError", "MessageTooBig"}, (case, caught.value.reason)
