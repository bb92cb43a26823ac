"""Fixtures of the hostile corpus (one PKI, one gateway for the session) and its summary table.

Rule kept here: the PKI and the gateway are made once per session, whatever the number of
cases; the table (category x outcome, and how many passed, failed or are known bugs) is printed
at the end of every run that ran cases, -q included, so the figures appear in CI logs.
"""

from __future__ import annotations

import collections
from collections.abc import Generator, Iterator

import pytest

from gateway.devpki import init_pki
from tests.hostile import cert_cases
from tests.hostile.case import CATEGORIES, Case
from tests.hostile.rig import Rig
from tests.hostile.world import World
from tests.ports import port_map

# Bounds that keep the session fast without changing what is tested: a smaller message size
# limit (the same code path at 4 MiB as at 25 MiB), no per-sender rate limit (hundreds of
# cases from one sender in a few seconds), a short budget (a hang shows within seconds).
CONFIG_OVERRIDES = {
    "max_message_bytes": "max_message_bytes = 4194304",
    "max_recipients": "max_recipients = 50\nrate_limit_per_minute = 1000000\n"
                      "data_timeout_seconds = 10",
}


@pytest.fixture(scope="session")
def hostile_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    ports = port_map("a_in", "a_out", "m_in", "m_out")
    root = tmp_path_factory.mktemp("hostile") / "pki"
    init_pki(root, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    world = World(root, ports)
    config = world.pki.config
    lines = []
    for line in config.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(CONFIG_OVERRIDES.get(key, line))
    # Extra recipients whose directory certificates are unusable (certificate cases).
    config.write_text("\n".join(lines) + "\n" + cert_cases.prepare(world))
    return world


@pytest.fixture(scope="session")
def hostile_rig(hostile_world: World) -> Iterator[Rig]:
    rig = Rig(hostile_world)
    rig.start()
    try:
        yield rig
    finally:
        _CHECKS.update(canaries=rig.canaries_sent, probes=rig.probes, relayed=rig.relayed())
        rig.stop()


# --- the summary table ----------------------------------------------------------------------

_RESULTS: dict[str, tuple[Case, str]] = {}
_CHECKS: dict[str, int] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("case") if callspec is not None else None
    if isinstance(case, Case) and (report.when == "call" or report.failed):
        status: str = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        if report.when != "call" and report.failed:
            status = "error"
        _RESULTS[item.nodeid] = (case, status)
    return report


def summary_lines(results: list[tuple[Case, str]]) -> list[str]:
    """Outcome rows x category columns (counts of cases), then the verdicts."""
    cats = [c for c in CATEGORIES if any(case.category == c for case, _ in results)]
    table: collections.Counter[tuple[str, str]] = collections.Counter()
    verdicts: collections.Counter[tuple[str, str]] = collections.Counter()
    for case, status in results:
        table[(str(case.outcome), case.category)] += 1
        verdicts[(status, case.category)] += 1
    outcomes = sorted({o for o, _ in table}, key=lambda o: (o == "closed", o))
    width = max(9, *(len(c) for c in cats))
    head = f"{'outcome':<12}" + "".join(f"{c:>{width}}" for c in cats) + f"{'total':>{width}}"
    out = [f"hostile corpus: {len(results)} cases run", head, "-" * len(head)]
    for outcome in outcomes:
        row = [table[(outcome, c)] for c in cats]
        out.append(f"{outcome:<12}" + "".join(f"{n or '.':>{width}}" for n in row)
                   + f"{sum(row):>{width}}")
    out.append("-" * len(head))
    for status in ("passed", "xfailed", "failed", "error", "skipped"):
        row = [verdicts[(status, c)] for c in cats]
        if any(row):
            out.append(f"{status:<12}" + "".join(f"{n or '.':>{width}}" for n in row)
                       + f"{sum(row):>{width}}")
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("hostile corpus summary")
    for line in summary_lines(list(_RESULTS.values())):
        terminalreporter.write_line(line)
    if _CHECKS:
        terminalreporter.write_line(
            f"fresh-connection probes: {_CHECKS['probes']}; canaries relayed: "
            f"{_CHECKS['canaries']}; messages the next hops received in all: "
            f"{_CHECKS['relayed']}")
