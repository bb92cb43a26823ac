"""What the SMTP listener writes on the wire, line by line.

Rule kept here: every reply line is one printable line of a named ``Reply`` of
``gateway.errors``. aiosmtpd's own command handlers write a few replies of their words
("500 Error: strict ASCII mode"): ``library_reply`` maps them to named replies, and any other
library line (greeting, EHLO, syntax help: protocol lines with no policy) goes out with its
unprintable characters replaced, so an echoed argument can never split a reply.
"""

from __future__ import annotations

import re

from gateway.errors import (
    CLIENT_CERT_REFUSED,
    COMMAND_TOO_LONG,
    COMMAND_UNRECOGNISED,
    LOCAL_ERROR,
    MALFORMED_ADDRESS,
    MESSAGE_TOO_BIG,
    NON_ASCII_COMMAND,
    STARTTLS_REQUIRED,
    Reply,
)

CRLF = b"\r\n"

# Replies aiosmtpd writes in its own command handlers (not ours to word) -> ours, exact
# matches (tests/test_replies.py lists the protocol lines left as they are).
LIBRARY_REPLIES: dict[str, Reply] = {
    "500 Error: strict ASCII mode": NON_ASCII_COMMAND,
    "500 Command line too long": COMMAND_TOO_LONG,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "530 Must issue a STARTTLS command first": STARTTLS_REQUIRED,
    "554 Command refused due to lack of security": CLIENT_CERT_REFUSED,
    "553 5.1.3 Error: malformed address": MALFORMED_ADDRESS,
}
# aiosmtpd echoes an unknown command (any ASCII, control characters included) in its reply.
_UNRECOGNISED = re.compile(r'500 Error: command (".*"|\'.*\') not recognized', re.DOTALL)
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_PRINTABLE_REPLY = re.compile(r"[2-5]\d\d [2-5]\.\d{1,3}\.\d{1,3} [\x20-\x7e]{1,400}")


def library_reply(status: str) -> tuple[str, Reply | None]:
    """The line to write for a reply aiosmtpd wrote, and the named reply it became (None:
    a protocol line, kept as written but printable)."""
    mapped = LIBRARY_REPLIES.get(status)
    if mapped is None and _UNRECOGNISED.fullmatch(status):
        mapped = COMMAND_UNRECOGNISED  # no echo: a bare CR in it would split the reply
    if mapped is not None:
        return str(mapped), mapped
    return _NOT_PRINTABLE.sub("?", status), None


def render(reply: object) -> str:
    """A reply as a wire line; anything not a well-formed reply becomes LOCAL_ERROR."""
    if isinstance(reply, Reply):
        line = str(reply)
        if _PRINTABLE_REPLY.fullmatch(line):
            return line
    return str(LOCAL_ERROR)


def has_bare_cr_or_lf(content: bytes) -> bool:
    """True if a CR is not followed by LF or a LF not preceded by CR.

    Every CRLF holds one CR and one LF, so there is none bare exactly when the three counts
    agree (``bytes.count`` is a C scan: ~50 times cheaper than a look-around regex).
    """
    pairs = content.count(CRLF)
    return content.count(b"\r") != pairs or content.count(b"\n") != pairs
