"""Regression tests: one per bug the fuzzing found, each on the smallest input that showed it.

Each names the input and the rule it broke; the fix is in the module under test.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bench.fuzz import targets
from bench.fuzz.targets import SmtpRig
from gateway.formats import charset, hprim, xdm
from gateway.formats.convert import hprim_to_xdm
from gateway.transport import imap_responses

MAIL = (b"EHLO x\r\nMAIL FROM:<" + targets.SENDER.encode() + b">\r\nRCPT TO:<"
        + targets.RCPT.encode() + b">\r\n")


def _session(stream: bytes, *, proxy: bool = False) -> tuple[bytes, SmtpRig]:
    rig = SmtpRig(proxy_protocol=proxy)

    async def go() -> bytes:
        await rig.start()
        try:
            return await rig.session(stream)  # Finding on a malformed reply or a held session
        finally:
            await rig.stop()

    return asyncio.run(go()), rig


def test_unknown_command_with_a_bare_cr_is_not_echoed() -> None:
    """``A<CR>B C``: aiosmtpd echoed the command, bare CR included, splitting the reply."""
    received, _ = _session(b"EHLO x\r\nA\rB C\r\n")
    assert received.endswith(b"\r\n500 5.5.1 Command not recognized\r\n")


def test_client_closing_after_a_message_ends_the_session() -> None:
    """A whole message then the client's EOF: the cancel aiosmtpd sends on EOF was lost in
    ``asyncio.wait_for`` and the listener answered ``451`` to the same EOF without end."""
    received, rig = _session(MAIL + b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert rig.messages == 1
    assert b"250 2.0.0 OK: relayed [trace " in received
    assert b"451" not in received
    assert rig.open_sessions() == 0


def test_eof_inside_a_proxy_header_closes_the_connection() -> None:
    """``PROXY TCP4 1.2`` then EOF: the connection (and its session slot) was held until the
    PROXY timeout (30 s here); ``SmtpRig.session`` waits at most 2 s for the release."""
    received, rig = _session(b"PROXY TCP4 1.2", proxy=True)
    assert received == b""
    assert rig.open_sessions() == 0


@pytest.mark.parametrize("argument", [b"<a@", b"<@", b'<"a"@'])
def test_unparseable_recipient_is_553_not_451(argument: bytes) -> None:
    """``RCPT TO:<a@``: email's address parser raised IndexError, answered 451 4.3.0."""
    received, _ = _session(MAIL.replace(b"\r\nRCPT", b"\r\nNOOP") + b"RCPT TO:" + argument
                           + b"\r\nQUIT\r\n")
    assert b"553 5.1.3" in received
    assert b"451" not in received


@pytest.mark.parametrize("line", [
    b"OK [COPYUID 1 3:5,9 100:102:,103] Moved",  # "102:" is no number
    b"OK [COPYUID 1 1:4294967295 1:4294967295] Moved",  # four billion UIDs
    b"OK [COPYUID 1 " + b"9" * 5000 + b" 1] Moved",  # int() refuses over 4300 digits
])
def test_malformed_copyuid_is_an_imap_error(line: bytes) -> None:
    with pytest.raises(imap_responses.ImapError):
        imap_responses.copyuid([line], 7)


def test_reversed_uid_range_maps_in_order() -> None:
    assert imap_responses.copyuid([b"OK [COPYUID 1 5:3 12:10] Moved"], 4) == 11


@pytest.mark.parametrize("line", [
    b"* 1 FETCH (UID " + b"9" * 5000 + b" RFC822.SIZE 1)",
    b"* 1 FETCH (UID 42 RFC822.SIZE " + b"9" * 5000 + b")",
])
def test_overlong_numbers_in_fetch_responses_are_imap_errors(line: bytes) -> None:
    with pytest.raises(imap_responses.ImapError):
        imap_responses.fetched_size([line, b"done"], 42)


def test_overlong_number_in_a_search_response_is_an_imap_error() -> None:
    with pytest.raises(imap_responses.ImapError):
        imap_responses.search_uids([b"SEARCH 1 " + b"9" * 5000, b"done"])


def test_control_characters_in_an_hprim_header_reach_the_xdm_metadata_safely() -> None:
    """A patient name with U+0001 (line 2 of the header): lxml refused it in METADATA.XML
    with a ValueError out of ``hprim_to_xdm``."""
    doc = hprim.parse_hprim(targets.HPRIM_SAMPLE.replace("DURAND", "DUR\x01AND"))
    _, archive = hprim_to_xdm(doc, effective_time=targets.NOW, submission_time=targets.NOW)
    content = xdm.read_xdm(archive)
    assert content.entries and content.patient_id is not None
    assert content.entries[0].cda is not None
    assert content.entries[0].cda.patient.last_name == "DUR\ufffdAND"


@pytest.mark.parametrize(("data", "label"), [(b"+2AA-", "utf-7"), (b"a+3/8-b", "utf-7")])
def test_decoded_text_holds_no_lone_surrogate(data: bytes, label: str) -> None:
    """Declared utf-7 decoded to lone surrogates: any later encoding (UTF-8 of an XDM
    document) raised UnicodeEncodeError. (The escape codecs that did the same are no longer
    taken as charsets at all.)"""
    decoded = charset.decode_text(data, label)
    decoded.text.encode("utf-8")
    assert "\ufffd" in decoded.text
    assert dataclasses.replace(decoded, text="").method == "declared"
