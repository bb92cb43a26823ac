"""Every reply the SMTP listener sends comes from gateway/errors.py (DESIGN §6, one place).

``reply_audit`` (tests/conftest.py) records the lines aiosmtpd pushes on the wire; it is used
by tests/test_smtp_in.py and tests/test_smuggling.py, so every path they drive is checked.
These tests show the audit itself works: it sees what was sent, and it would catch a reply
written anywhere else.
"""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.transport import wire
from tests.conftest import foreign_replies, replies_of_errors, untraced
from tests.test_smtp_in import (
    RCPT,
    SENDER,
    Recorder,
    TlsFiles,
    client_tls,
    code_of,
    connect,
    listener,
    settings_for,
)
from tests.test_smtp_out import make_tls_files

pytestmark = pytest.mark.usefixtures("reply_audit")


@pytest.fixture(scope="module")
def tls_in(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-replies"))


async def test_the_audit_sees_the_replies_of_a_session(reply_audit: list[str],
                                                       tls_in: TlsFiles) -> None:
    async with listener(settings_for(tls_in), Recorder()) as port:
        smtp = await connect(port, tls_in, starttls=False)
        await smtp.ehlo()
        assert (await code_of(smtp.mail(SENDER)))[0] == 530  # before STARTTLS
        await smtp.starttls(server_hostname="localhost",
                            tls_context=client_tls(tls_in))
        await smtp.ehlo()
        await smtp.mail(SENDER)
        await smtp.rcpt(RCPT)
        assert (await code_of(smtp.data(b"Subject: x\r\n\r\nbody\r\n")))[0] == 250
        await smtp.quit()
    for reply in (errors.STARTTLS_REQUIRED, errors.SENDER_OK, errors.RECIPIENT_OK,
                  errors.START_DATA, errors.OK):
        assert str(reply) in [untraced(line) for line in reply_audit]


def test_a_reply_written_elsewhere_is_caught() -> None:
    assert foreign_replies(["550 5.7.1 Go away", "421 Service not available"]) == [
        "550 5.7.1 Go away", "421 Service not available"]
    assert foreign_replies([str(errors.MESSAGE_TOO_BIG), "250 OK", "221 Bye"]) == []


def test_library_replies_map_onto_named_replies() -> None:
    named = replies_of_errors()
    assert {str(r) for r in wire.LIBRARY_REPLIES.values()} <= named


def test_mirrored_and_relayed_replies_are_built_from_named_text() -> None:
    refused = errors.next_hop_refused(554, "5.7.1", "policy")
    assert foreign_replies([str(refused), str(errors.relayed("queued as 4F2"))]) == []
    assert str(refused).startswith(f"554 5.7.1 {errors.NEXT_HOP_REFUSED_TEXT}")
