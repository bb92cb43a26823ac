"""Suite-wide rules: under CI a missing peer fails; every SMTP reply comes from errors.py.

Under CI, a test that skips because a peer is missing fails instead.

The suite's worth is its real peers (OpenSSL, NSS, gpgsm, Postfix, Dovecot, swaks, HAProxy,
the corpora in ../shared). On a developer's machine a missing one may be skipped; under CI
(``CI`` set, as ``.ci/run`` runs) a skip would hide that ``.ci/install-deps`` failed to bring
it, so it is reported as a failure. The only skips CI accepts are listed here, each with why.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

# Skips that stay skips under CI: no engine of that kind can run on the CI machine.
ALLOWED_UNDER_CI = (
    "docker compose plugin missing",  # no container engine on this kind of machine
    "docker CLI missing",
)


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and _under_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(allowed in reason for allowed in ALLOWED_UNDER_CI):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI ({reason}): a peer or corpus the suite needs is "
                       "missing; .ci/install-deps must install it")


# --- every reply on the wire comes from gateway/errors.py -------------------------------------

# Lines aiosmtpd writes itself that carry no policy: the greeting, EHLO/HELO, HELP, the TLS
# go-ahead, QUIT, NOOP/RSET and its syntax and sequence errors. Anything else a session sends
# must be a named reply of gateway.errors (or one built by its functions from a named text).
PROTOCOL_LINES = re.compile("|".join((
    r"220 \S+ .*",                        # greeting: our hostname and the server's ident
    r"220 Ready to start TLS",
    r"250[- ][^ ]+",                      # EHLO / HELO: hostname, then one extension a line
    r"250[- ](SIZE \d+|8BITMIME|SMTPUTF8|STARTTLS|ENHANCEDSTATUSCODES|HELP)",
    r"250 OK",                            # NOOP, RSET
    r"221 Bye",
    r"25[02] .*VRFY.*|502 .*VRFY.*",
    r"(250|501) Supported commands: .*",   # HELP
    r"501 Syntax: .*",                    # aiosmtpd's syntax help for a malformed command
    r"503 Error: .*",                     # aiosmtpd's sequence errors (MAIL before HELO...)
    r"502 .*",                            # not implemented (TURN, AUTH without mechanism)
)))


def replies_of_errors() -> frozenset[str]:
    from gateway import errors
    return frozenset(str(v) for v in vars(errors).values() if isinstance(v, errors.Reply))


def foreign_replies(lines: list[str]) -> list[str]:
    """The lines that neither come from gateway.errors nor are aiosmtpd protocol lines."""
    from gateway import errors
    named = replies_of_errors()
    refused = re.compile(rf"5\d\d 5\.\d{{1,3}}\.\d{{1,3}} {re.escape(errors.NEXT_HOP_REFUSED_TEXT)}"
                         r"( .*)?")
    relayed = re.compile(re.escape(str(errors.OK)) + r"( \(.*\))?")
    untraced = [_TRACE_SUFFIX.sub("", line) for line in lines]
    return [line for line in untraced
            if line not in named and not PROTOCOL_LINES.fullmatch(line)
            and not refused.fullmatch(line) and not relayed.fullmatch(line)]


# errors.traced: a reply to a message ends with the gateway's trace id
_TRACE_SUFFIX = re.compile(r" \[trace [0-9a-f]{16}\]$")


def untraced(line: str) -> str:
    """A reply line without the trace id that errors.traced adds to replies to messages."""
    return _TRACE_SUFFIX.sub("", line)


@pytest.fixture
def reply_audit(monkeypatch: pytest.MonkeyPatch) -> Generator[list[str], None, None]:
    """Records every reply line the SMTP listener pushes during a test, then checks each one
    came from gateway.errors (``foreign_replies``)."""
    from aiosmtpd.smtp import SMTP

    pushed: list[str] = []
    original = SMTP.push

    async def push(self: SMTP, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        pushed.extend(text.split("\r\n"))
        await original(self, status)

    monkeypatch.setattr(SMTP, "push", push)
    yield pushed
    assert foreign_replies(pushed) == [], "replies not written in gateway/errors.py"
