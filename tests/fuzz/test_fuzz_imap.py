"""Fuzz of the IMAP poller's own readers of server data (COPYUID, SEARCH, FETCH sizes and
literals, UIDVALIDITY, LIST names) and of its envelope reader: a server's odd answer is
``ImapError`` (the session reconnects), never another exception that would end the poller.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.fuzz import targets
from tests.fuzz.strategies import fuzz_bytes, fuzz_settings, mutated

LINES = st.lists(fuzz_bytes(list(targets.IMAP_SEEDS), max_size=120), min_size=1, max_size=4)


@fuzz_settings(600)
@given(LINES)
def test_server_responses_parsed_or_imap_error(lines: list[bytes]) -> None:
    targets.check_imap(lines)


@fuzz_settings(300)
@given(mutated(targets.mime_seeds()[:4] + list(targets.cms_world().messages), max_mutations=6))
def test_envelope_of_mailbox_messages(raw: bytes) -> None:
    targets.check_imap_message(raw)
