"""The compose demo's MX stand-ins (deploy/container/postfix/) run by the real Postfix.

Each stand-in's main.cf and master.cf are used as shipped; a test instance changes only its
addresses (the smtpd's loopback port, the LMTP mailstore's port, the /pki mount becomes this
test's PKI) and what a private instance needs (its own queue and data directories). Postfix
runs as the container runs it (``postfix start-fg``, logging to stdout). The gateway relays
to each stand-in over STARTTLS (mutual TLS toward mssante), and the stand-in delivers by LMTP
to a mailstore sink: a message crossing the gateway in each direction must arrive there,
opened by its recipient.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiosmtpd.lmtp import LMTP

from gateway.app import Gateway
from gateway.config import load_config
from gateway.devpki import init_pki
from gateway.translate.context import build_runtime
from tests.messages import Pki, open_as_recipient, text_entity, user_message
from tests.ports import port_map
from tests.sinks import Sink

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = ROOT / "deploy" / "container" / "postfix"
JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
JEAN_ON_MSSANTE = "jean.dupont.apicrypt@passerelle.mssante.fr"

pytestmark = pytest.mark.skipif(shutil.which("postfix") is None, reason="postfix missing")


def shipped_with_addresses(network: str, conf: Path, *, smtpd_port: int, lmtp_port: int,
                           pki: Path, private: Path) -> tuple[int, int]:
    """Write the stand-in's files into ``conf`` with their addresses changed; returns the
    shipped smtpd and LMTP ports (to show what was changed)."""
    main = (STAND_INS / network / "main.cf").read_text()
    master = (STAND_INS / network / "master.cf").read_text()
    [shipped_smtpd] = re.findall(r"(?m)^127\.0\.0\.1:(\d+)\s+inet", master)
    [shipped_lmtp] = re.findall(r"lmtp:inet:127\.0\.0\.1:(\d+)", main)
    main = main.replace(f"lmtp:inet:127.0.0.1:{shipped_lmtp}", f"lmtp:inet:127.0.0.1:{lmtp_port}")
    main = main.replace("/pki/", f"{pki}/")
    # a private instance: its own queue and data directory (the container has the host's)
    main += (f"\nqueue_directory = {private / 'queue'}\ndata_directory = {private / 'data'}\n")
    master = re.sub(rf"(?m)^127\.0\.0\.1:{shipped_smtpd}(\s+inet)", rf"127.0.0.1:{smtpd_port}\1",
                    master)
    (conf / "main.cf").write_text(main)
    (conf / "master.cf").write_text(master)
    return int(shipped_smtpd), int(shipped_lmtp)


@contextmanager
def stand_in(network: str, smtpd_port: int, lmtp_port: int, pki: Path) -> Iterator[Path]:
    private = Path(tempfile.mkdtemp(prefix=f"passerelle-mx-{network}-"))
    private.chmod(0o755)  # the postfix user walks to its queue
    conf = private / "conf"
    conf.mkdir()
    (private / "queue").mkdir()
    (private / "data").mkdir()
    user = pwd.getpwnam("postfix")
    os.chown(private / "data", user.pw_uid, user.pw_gid)
    shipped_with_addresses(network, conf, smtpd_port=smtpd_port, lmtp_port=lmtp_port,
                           pki=pki, private=private)
    env = {**os.environ, "MAIL_CONFIG": str(conf)}
    check = subprocess.run(["postfix", "-c", str(conf), "set-permissions"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    log = private / "stdout"
    with log.open("wb") as out:
        master = subprocess.Popen(["postfix", "-c", str(conf), "start-fg"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"daemon started" not in log.read_bytes():
            assert master.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        yield log
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], env=env, capture_output=True,
                       timeout=60, check=False)
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            master.kill()
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Pki, dict[str, int], Sink,
                                                       dict[str, Path]]]:
    ports = port_map("a_in", "a_out", "m_in", "m_out", "lmtp")
    pki_root = tmp_path / "pki"
    init_pki(pki_root, force=True, apicrypt_port=ports["a_in"],
             apicrypt_relay_port=ports["a_out"], mssante_port=ports["m_in"],
             mssante_relay_port=ports["m_out"])
    pki_root.chmod(0o755)
    for path in pki_root.rglob("*"):  # the postfix daemons read the TLS files
        path.chmod(0o755 if path.is_dir() else 0o644)
    store = Sink("250 2.0.0 delivered")  # the LMTP side of the demo's Dovecot
    server = await asyncio.get_running_loop().create_server(
        lambda: LMTP(store), "127.0.0.1", ports["lmtp"])
    config = load_config(pki_root / "gateway.toml")
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    try:
        with stand_in("apicrypt", ports["a_out"], ports["lmtp"], pki_root) as a_log, \
                stand_in("mssante", ports["m_out"], ports["lmtp"], pki_root) as m_log:
            yield Pki(pki_root), ports, store, {"apicrypt": a_log, "mssante": m_log}
    finally:
        await gateway.stop_accepting()
        await gateway.close_delivery()
        gateway.close()
        server.close()


def _send(pki: Pki, port: int, network: str, sender: str, rcpt: str, raw: bytes) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file(network)))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        client.mail(sender)
        client.rcpt(rcpt)
        code, _ = client.data(raw)
        return code


async def _delivered(store: Sink, count: int, logs: dict[str, Path]) -> None:
    for _ in range(300):
        if len(store.received) >= count:
            return
        await asyncio.sleep(0.1)
    pytest.fail("not delivered to the mailstore:\n" + "\n".join(
        p.read_text(errors="replace")[-3000:] for p in logs.values()))


async def test_the_compose_stand_ins_relay_what_the_gateway_sends(
        world: tuple[Pki, dict[str, int], Sink, dict[str, Path]]) -> None:
    pki, ports, store, logs = world
    to_mssante = user_message(pki, JEAN, MARIE_ON_APICRYPT, text_entity("INR 2,7\n"))
    code = await asyncio.to_thread(_send, pki, ports["a_in"], "apicrypt", JEAN,
                                   MARIE_ON_APICRYPT, to_mssante)
    assert code == 250, logs["mssante"].read_text(errors="replace")[-3000:]
    await _delivered(store, 1, logs)
    to_apicrypt = user_message(pki, MARIE, JEAN_ON_MSSANTE, text_entity("Bien recu\n"))
    code = await asyncio.to_thread(_send, pki, ports["m_in"], "mssante", MARIE,
                                   JEAN_ON_MSSANTE, to_apicrypt)
    assert code == 250, logs["apicrypt"].read_text(errors="replace")[-3000:]
    await _delivered(store, 2, logs)
    (rcpts_m, raw_m), (rcpts_a, raw_a) = store.received
    assert rcpts_m == [MARIE] and rcpts_a == [JEAN]
    assert b"INR 2,7" in open_as_recipient(pki, MARIE, raw_m).content
    assert b"Bien recu" in open_as_recipient(pki, JEAN, raw_a).content
    mssante_log = logs["mssante"].read_text(errors="replace")
    # the gateway presented its client certificate to the mutual-TLS stand-in
    assert "Relay access denied" not in mssante_log
    assert re.search(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]",
                     mssante_log), mssante_log[-3000:]


def test_only_addresses_change(tmp_path: Path) -> None:
    """What the test instance changes in the shipped files: addresses and paths, no policy."""
    for network in ("apicrypt", "mssante"):
        conf = tmp_path / network
        conf.mkdir()
        shipped_with_addresses(network, conf, smtpd_port=1, lmtp_port=2, pki=Path("/x"),
                               private=tmp_path)
        for name in ("main.cf", "master.cf"):
            ours = (conf / name).read_text().splitlines()
            theirs = (STAND_INS / network / name).read_text().splitlines()
            changed = [a for a, b in zip(ours, theirs, strict=False) if a != b]
            assert all(re.search(r"127\.0\.0\.1:\d|/x/", line) for line in changed), changed
