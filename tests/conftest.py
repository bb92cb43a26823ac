"""Suite-wide rule: under CI, a test that skips because a peer is missing fails instead.

The suite's worth is its real peers (OpenSSL, NSS, gpgsm, Postfix, Dovecot, swaks, HAProxy,
the corpora in ../shared). On a developer's machine a missing one may be skipped; under CI
(``CI`` set, as ``.ci/run`` runs) a skip would hide that ``.ci/install-deps`` failed to bring
it, so it is reported as a failure. The only skips CI accepts are listed here, each with why.
"""

from __future__ import annotations

import os
from collections.abc import Generator

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
