"""The "Johnny, you are fired!" S/MIME corpus (USENIX Security 2019) against our verification.

The genuine messages must verify, as of 2019-03-01, to a signer whose addresses hold the From
address. Every attack must either be refused (a ``SignatureError`` or ``MalformedError``) or
verify to a signer whose addresses do not hold the From address (a From with zero or several
addresses counts as a failure for the attacker: the gateway accepts exactly one).

The MIME layer lives elsewhere (gateway.smime.mime/unwrap); a minimal extractor here takes the
raw first part of a top-level ``multipart/signed`` (line endings made CRLF) or the body of an
``application/pkcs7-mime``; anything else is "not signed".
"""

from __future__ import annotations

import datetime as dt
import email
import email.utils
import re
from email.message import Message
from pathlib import Path

import pytest

from gateway.config import parse_certificates
from gateway.errors import MalformedError, NotSigned, SignatureError
from gateway.smime.model import Verified
from gateway.smime.signature import verify
from gateway.smime.trust import TrustStore

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "johnny-smime"
AT = dt.datetime(2019, 3, 1, tzinfo=dt.UTC)  # the signer certificates expired in 2022
GENUINE = {
    "assets/valid-signed/manager-smime.eml",
    "assets/valid-signed/eve-smime.eml",
    "01-cms/valid_email_from_manager.eml",
}
# Display-name tricks only: "From: The Manager <eve@...>" really is signed by eve, with eve's
# address. The signature layer tells the truth (eve signed); not trusting display names is the
# translate layer's business. For these we assert that the truth is what comes out.
DISPLAY_NAME_ONLY = {
    "04-id/i2-display-name-confusion/i2-from-contains-signer-smime.eml": "eve@bigcorporation.de",
    "04-id/i3-from-sender-confusion/i3-from-signer-others-sender-smime.eml":
        "eve@bigcorporation.de",
}
VICTIM = "manager@bigcorporation.de"


def _cases() -> list[object]:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"Johnny corpus not found at {CORPUS} (see ../shared/corpora/README.md)"))]
    return [pytest.param(path, id=str(path.relative_to(CORPUS)))
            for path in sorted(CORPUS.rglob("*.eml"))]


@pytest.fixture(scope="module")
def store() -> TrustStore:
    anchor = (CORPUS / "assets" / "certificates" / "intermediate_ca.crt").read_bytes()
    return TrustStore(tuple(parse_certificates(anchor)))


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def extract(raw: bytes) -> tuple[bytes | None, bytes]:
    """(detached content or None, CMS bytes) of a top-level signed message."""
    message = email.message_from_bytes(raw)
    content_type = message.get_content_type()
    if content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        cms = message.get_payload(decode=True)
        if not isinstance(cms, bytes):
            raise MalformedError("no pkcs7 body")
        return None, cms
    if content_type != "multipart/signed":
        raise NotSigned("top-level entity is not signed")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str):
        raise MalformedError("multipart/signed without a boundary")
    head_end = re.search(rb"\r?\n\r?\n", raw)
    if head_end is None:
        raise MalformedError("no body")
    body = raw[head_end.end():]
    delimiter = re.compile(rb"^--" + re.escape(boundary.encode()) + rb"(?:--)?[ \t]*\r?$", re.M)
    marks = list(delimiter.finditer(body))
    if len(marks) < 3:
        raise MalformedError("multipart/signed without two parts")
    # The part lies between the line break ending one delimiter and the one opening the next.
    first = body[marks[0].end():marks[1].start()]
    first = first.removeprefix(b"\n")
    first = first.removesuffix(b"\n").removesuffix(b"\r")
    signature_part = email.message_from_bytes(body[marks[1].end():marks[2].start()].lstrip())
    cms = signature_part.get_payload(decode=True)
    if not isinstance(cms, bytes):
        raise MalformedError("no signature part")
    return _crlf(first), cms


def from_addresses(raw: bytes) -> list[str]:
    message: Message = email.message_from_bytes(raw)
    values = [str(v) for v in message.get_all("From", [])]
    return [address.lower() for _, address in email.utils.getaddresses(values)]


def check(raw: bytes, store: TrustStore) -> Verified:
    content, cms = extract(raw)
    return verify(cms, store, AT, detached_content=content)


@pytest.mark.parametrize("path", _cases())
def test_johnny(path: Path, store: TrustStore) -> None:
    name = path.relative_to(CORPUS).as_posix()
    raw = path.read_bytes()
    sender = from_addresses(raw)
    if name in GENUINE:
        verified = check(raw, store)
        assert len(sender) == 1
        assert sender[0] in verified.signer.addresses
        assert verified.signer.chain[-1] == store.anchors[0]
        return
    try:
        verified = check(raw, store)
    except (SignatureError, MalformedError):
        return
    if name in DISPLAY_NAME_ONLY:
        assert sender == [DISPLAY_NAME_ONLY[name]]
        assert verified.signer.addresses == {DISPLAY_NAME_ONLY[name]}
        assert VICTIM not in verified.signer.addresses
        return
    assert len(sender) != 1 or sender[0] not in verified.signer.addresses


@pytest.mark.parametrize("path", _cases())
def test_corpus_through_the_gateway_unwrap(path: Path, store: TrustStore) -> None:
    """The same corpus through the code path the relay uses (``unwrap``, with the MIME layer
    and the From ↔ signer check; these messages are signed only, so encryption is not
    required here). A genuine message comes out signed by its From; an attack is refused, or
    (display-name tricks) comes out signed by the real signer, whose address is the From."""
    from gateway.errors import GatewayError
    from gateway.smime.unwrap import unwrap

    raw = path.read_bytes()
    rel = str(path.relative_to(CORPUS))
    try:
        result = unwrap(raw, [], store, AT, require_encrypted=False)
    except GatewayError:
        assert rel not in GENUINE, f"genuine message refused: {rel}"
        return
    assert result.signer is not None
    if rel in GENUINE:
        return
    # Only display-name tricks get here: the address of From *is* the real signer's.
    assert rel in DISPLAY_NAME_ONLY or rel in ADDRESS_IN_DISPLAY_NAME, f"attack accepted: {rel}"
    assert "eve@bigcorporation.de" in result.signer.addresses
    assert VICTIM not in result.signer.addresses
    if rel in ADDRESS_IN_DISPLAY_NAME:
        # "manager@bigcorporation.de <eve@...>": the relayed From drops such a display name
        from gateway.smime.mime import parse_entity
        from gateway.translate.names import display as _display
        from gateway.translate.names import display_name
        from gateway.translate.pipeline import _single_address

        value = parse_entity(raw).get("From") or ""
        name, address = display_name(value), _single_address(value)
        assert "@" in name
        assert address == "eve@bigcorporation.de"
        assert _display(name, address) == "<eve@bigcorporation.de>"


ADDRESS_IN_DISPLAY_NAME = {
    "04-id/i2-display-name-confusion/i2-from-is-sender-signer-a-smime.eml",
    "04-id/i2-display-name-confusion/i2-from-is-sender-signer-b-smime.eml",
}
