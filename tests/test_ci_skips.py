"""tests/conftest.py: under CI a skipped test fails, unless its reason is on the allow-list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, body: str, ci: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_sample.py"
    test.write_text("import pytest\n" + body)
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


MISSING_PEER = ("@pytest.mark.skipif(True, reason='dovecot missing')\n"
                "def test_needs_peer():\n    pass\n")


def test_a_missing_peer_fails_under_ci(tmp_path: Path) -> None:
    run = _run(tmp_path, MISSING_PEER, "true")
    assert run.returncode == 1, run.stdout
    assert "skipped under CI" in run.stdout and "dovecot missing" in run.stdout
    assert "1 error" in run.stdout or "1 failed" in run.stdout  # a skip at setup: an error


def test_a_missing_peer_is_a_skip_elsewhere(tmp_path: Path) -> None:
    run = _run(tmp_path, MISSING_PEER, "")
    assert run.returncode == 0, run.stdout
    assert "1 skipped" in run.stdout


@pytest.mark.parametrize("ci", ["true", ""])
def test_allowed_skip_stays_a_skip(tmp_path: Path, ci: str) -> None:
    body = ("def test_compose():\n"
            "    pytest.skip('docker compose plugin missing')\n")
    run = _run(tmp_path, body, ci)
    assert run.returncode == 0, run.stdout
    assert "1 skipped" in run.stdout
