"""Soak with faults, small: nothing is lost whatever the next hop or a SIGKILL does.

The same code as ``python -m bench.soak`` (a real ``gateway run`` process, the fault proxy in
front of a STARTTLS sink, an MTA-like sender that retries until 250 or 5xx), with few messages
and a fault rate high enough that every fault kind comes up: at accept (reset, greeting 421,
EHLO 451, STARTTLS 550), mid-DATA (cut, stall beyond the delivery timeout) and the sink's own
421/451/550 to DATA. Duplicates are allowed (DESIGN §2.1) and only reported.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.faultproxy import ALL_KINDS
from bench.soak import (
    GATEWAY_VIEW,
    SENDER,
    Options,
    Result,
    check_logs,
    forbidden_strings,
    run,
    table,
)

pytestmark = pytest.mark.soak

# A short delivery timeout (80 % of 3 s) so that stalls end soon; a rate of 0.2 so that each
# of the nine kinds comes up several times. Kinds come from a shuffled deck (the first four
# connection faults are the four kinds, the first five delivery faults the five kinds) and
# each decision point has its own seeded stream: with seeds 6 and 8 every kind is drawn
# within the first 15 connections and 18 deliveries, far fewer than a run has.
# The deadline bounds a run that goes wrong (it takes 5 to 30 s here), not a time to meet.
SMALL = Options(messages=150, concurrency=20, fault_rate=0.2, data_timeout=3.0, seed=6,
                deadline=300.0)


def _common_checks(result: Result) -> None:
    print(table(result))
    assert not result.died, result.died
    assert result.finished and result.held == 0  # nothing still waiting at the deadline
    assert result.lost == []  # every 250 is at the sink
    assert result.delivered + sum(result.bounced.values()) == result.sent
    assert result.unknown_at_sink == 0
    missing = [k for k in ALL_KINDS if result.faults[k] == 0]
    assert not missing, f"fault kinds never injected: {missing}"
    assert result.logs.clean, result.logs.hits
    assert result.logs.lines > 0 and not result.logs.errors
    assert result.logs.not_json == 0  # a traceback is not an event
    assert result.ok


def test_faults_lose_nothing_and_a_550_is_bounced(tmp_path: Path) -> None:
    result = run(SMALL, tmp_path)
    _common_checks(result)
    # each message the sink refused with 550 was bounced to the sender and not delivered,
    # and no other message was bounced: every other fault is temporary
    assert result.refused_550
    assert result.refused_550_not_bounced == []
    assert result.bounced_unexplained == []
    assert result.bounced_and_delivered == []
    assert result.bounced.keys() == {550}
    assert result.logs.not_json == 0  # no traceback, no stray output
    # the gateway saw each fault for what it is, once per injection. A stall is the one that
    # may instead meet the listener's budget first on a loaded machine (no deliver.result).
    for kind, view in GATEWAY_VIEW.items():
        if kind == "stall":
            assert 1 <= result.logs.delivery[view] <= result.faults[kind]
        else:
            assert result.logs.delivery[view] == result.faults[kind], (kind, view)
    assert set(result.logs.delivery) == set(GATEWAY_VIEW.values())
    assert result.gateway_exit == 0


def test_a_sigkill_and_restart_mid_soak_loses_nothing(tmp_path: Path) -> None:
    options = dataclasses.replace(SMALL, kill_restarts=1, seed=8)
    result = run(options, tmp_path)
    _common_checks(result)
    assert len(result.kill_times) == 1
    # a 550 whose attempt the kill cut short may be retried and delivered: at least one other
    assert len(result.refused_550) > len(result.refused_550_not_bounced)
    assert result.unexplained_550 == []
    assert result.gateway_exit == 0


def test_the_log_check_finds_fixture_strings_even_json_escaped(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text(json.dumps({"event": "message.done", "level": "info", "trace": "t1"}) + "\n"
                   + json.dumps({"event": "x", "level": "error", "note": "Héloïse"}) + "\n"
                   + "Traceback (most recent call last):\n"
                   + json.dumps({"event": "y", "level": "info", "to": SENDER.upper()}) + "\n")
    check = check_logs(log, forbidden_strings())
    assert set(check.hits) == {"Héloïse", SENDER, SENDER.split("@")[0]}
    assert check.not_json == 1 and check.errors == {"x": 1} and not check.clean
    log.write_text(json.dumps({"event": "message.done", "level": "info"}) + "\n")
    assert check_logs(log, forbidden_strings()).clean
