"""Folder names in the server's own hierarchy: delimiter and personal namespace as servers say
them (the responses below are those of Dovecot's default Maildir++ layout, Dovecot with "/",
Courier and Cyrus, from their documentation and RFC 2342's examples)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.transport.imap_responses import (
    FolderUnusable,
    ImapError,
    list_delimiter,
    personal_namespace,
    server_text,
)
from gateway.transport.imap_session import FolderNames


@pytest.mark.parametrize(("line", "delimiter"), [
    (b'(\\Noselect) "." ""', "."),            # Dovecot default (Maildir++), Courier, Cyrus
    (b'(\\Noselect) "/" ""', "/"),            # Dovecot with separator = /
    (b'(\\Noselect) "\\\\" ""', "\\"),        # a quoted backslash
    (b"(\\Noselect) NIL \"\"", None),          # a flat server
])
def test_list_delimiter(line: bytes, delimiter: str | None) -> None:
    assert list_delimiter([line, b"List completed."]) == delimiter


@pytest.mark.parametrize(("line", "prefix"), [
    (b'(("" ".")) NIL NIL', ""),                            # Dovecot
    (b'(("INBOX." ".")) NIL (("#shared." "."))', "INBOX."),  # Courier, Cyrus
    (b'NAMESPACE (("" "/")) (("~" "/")) NIL', ""),           # RFC 2342 example, keyword kept
    (b"NIL NIL NIL", ""),
])
def test_personal_namespace(line: bytes, prefix: str) -> None:
    assert personal_namespace([line, b"Namespace completed."]) == prefix


@pytest.mark.parametrize(("names", "configured", "server"), [
    (FolderNames(".", ""), "Passerelle/Processing", "Passerelle.Processing"),
    (FolderNames("/", ""), "Passerelle/Processing", "Passerelle/Processing"),
    (FolderNames(".", "INBOX."), "Passerelle/Rejected", "INBOX.Passerelle.Rejected"),
    (FolderNames(".", "INBOX."), "INBOX", "INBOX"),
    (FolderNames(".", "INBOX."), "INBOX/Passerelle", "INBOX.Passerelle"),  # not prefixed twice
    (FolderNames(None, ""), "Processing", "Processing"),
])
def test_configured_names_become_server_names(names: FolderNames, configured: str,
                                              server: str) -> None:
    assert names.of(configured) == server


def test_lock_folders_are_children_in_the_server_hierarchy() -> None:
    names = FolderNames(".", "INBOX.")
    lock = names.of("Passerelle/Locks")
    assert names.child(lock, "claim-1-2") == "INBOX.Passerelle.Locks.claim-1-2"


@pytest.mark.parametrize(("names", "configured"), [
    (FolderNames(".", ""), "Passerelle/Proc.essing"),
    (FolderNames(None, ""), "Passerelle/Processing"),
])
def test_names_the_server_cannot_hold(names: FolderNames, configured: str) -> None:
    with pytest.raises(FolderUnusable) as info:
        names.of(configured)
    assert info.value.folder == configured


def test_server_text_is_one_printable_bounded_line() -> None:
    assert server_text([b"NO [CANNOT] Invalid mailbox name\r\x07"]) == \
        "NO [CANNOT] Invalid mailbox name??"
    assert len(server_text([b"x" * 1000])) == 200
    assert server_text([]) == "no text"


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_response_readers_never_raise(lines: list[bytes]) -> None:
    try:
        list_delimiter(lines)
        personal_namespace(lines)
        server_text(lines)
    except ImapError:
        pass
