"""Process-wide logging set-up: every line the gateway writes is one JSON event."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from gateway.obs import configure_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json", "info", stream)
    try:
        yield stream
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def test_library_warnings_are_json_events(captured: io.StringIO) -> None:
    """cryptography warns on a certificate with a negative serial number: that warning must
    not be raw text among the JSON lines an operator's collector parses."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Parsed a serial number which wasn't positive", UserWarning, stacklevel=1)
    structlog.get_logger().info("after")
    lines = captured.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert [e["event"] for e in events][-1] == "after"
    assert any("serial number" in e["event"] and e["level"] == "warning" for e in events)


def test_library_loggers_are_json_too(captured: io.StringIO) -> None:
    logging.getLogger("mail.log").warning("peer reset")
    event = json.loads(captured.getvalue().splitlines()[-1])
    assert event["event"] == "peer reset" and event["level"] == "warning"
