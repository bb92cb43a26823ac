"""``gateway demo`` as a newcomer runs it: a subprocess that must exit 0 with both trips shown."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def test_demo_relays_both_ways_and_leaves_nothing_behind() -> None:
    before = set(Path(tempfile.gettempdir()).glob("passerelle-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True,
                          timeout=120, check=False, env={"PATH": "/usr/bin:/bin",
                                                          "NO_COLOR": "1"})
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    # both directions arrived, opened with the recipients' keys, signatures checked
    assert "mssante mailbox received for marie.curie@hopital-test.mssante.fr" in out
    assert "apicrypt mailbox received for jean.dupont@medical59.apicrypt.org" in out
    assert out.count("signature valid") == 2
    assert "decrypted with marie.curie@hopital-test.mssante.fr's key" in out
    assert "INR" in out and "Next steps" in out
    # apicrypt -> mssante: HPRIM became UTF-8 text + IHE_XDM.ZIP with a structured INR (H)
    assert "X-MSS-INS: O" in out and "X-MSS-CODECDA:" in out
    assert "urn:ihe:lab:xd-lab:2008" in out and "INR 3.2  [H]" in out
    # mssante -> apicrypt: the XDM report became HPRIM in ISO-8859-1, transliterated
    assert "text (iso-8859-1)" in out and "Coeur : rythme" in out
    assert "****FINFICHIER****" in out
    assert "\033[" not in out  # no colour when not on a terminal
    assert set(Path(tempfile.gettempdir()).glob("passerelle-demo-*")) == before
