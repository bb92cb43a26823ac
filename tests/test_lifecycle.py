"""``gateway run`` as an operator runs it: a process, its signals, its logs, its limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.devpki import init_pki
from tests.messages import Pki, open_as_recipient, text_entity, text_of, user_message
from tests.ports import port_map

JEAN = "jean.dupont@medical59.apicrypt.org"
MARIE = "marie.curie@hopital-test.mssante.fr"
MARIE_ON_APICRYPT = "marie.curie.mssante@passerelle.apicrypt.org"
PATIENT = "BERTHELOT"
SECRET_TEXT = "Hyperkaliémie sévère"
SUBJECT = "Résultat confidentiel Berthelot"


@dataclass
class SlowSink:
    delay: float = 0.0
    received: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        await asyncio.sleep(self.delay)
        self.received.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 ok"


@dataclass
class Running:
    pki: Pki
    port: int
    proc: subprocess.Popen[bytes]
    sink: SlowSink
    log_path: Path
    sink_port: int = 0


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not listen")


@pytest.fixture
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    running_workers = request.node.callspec.params.get("workers", 1) if hasattr(
        request.node, "callspec") else 1
    ports = port_map("a_in", "a_out", "m_in", "m_out", "metrics")
    init_pki(tmp_path / "pki", apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    pki = Pki(tmp_path / "pki")
    pki.config.write_text(pki.config.read_text().replace(
        'log_level = "info"', f'log_level = "info"\nsummary_seconds = 0.5\n'
                              f'metrics_listen = "127.0.0.1:{ports["metrics"]}"'))
    sink = SlowSink()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.root / "mssante/next-hop-tls.pem",
                        pki.root / "mssante/next-hop-tls.key")
    controller = Controller(sink, hostname="127.0.0.1", port=ports["m_out"],
                            tls_context=ctx, require_starttls=True)
    controller.start()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--workers",
                                 str(running_workers), "--config",
                                 str(pki.config)], stderr=log, stdout=log)
    try:
        _wait_port(ports["a_in"], proc)
        yield Running(pki, ports["a_in"], proc, sink, log_path, ports["m_out"])
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        controller.stop()


def _send(run: Running, raw: bytes, result: list[tuple[int, bytes]]) -> None:
    ctx = ssl.create_default_context(cafile=str(run.pki.ca_file("apicrypt")))
    ctx.check_hostname = False
    try:
        with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as client:
            client.starttls(context=ctx)
            client.ehlo("client.test")
            assert client.mail(JEAN)[0] == 250
            assert client.rcpt(MARIE_ON_APICRYPT)[0] == 250
            result.append(client.data(raw))
    except (smtplib.SMTPException, OSError) as exc:
        result.append((-1, str(exc).encode()))


def _message(run: Running, n: int) -> bytes:
    return user_message(run.pki, JEAN, MARIE_ON_APICRYPT,
                        text_entity(f"Patient {PATIENT}: {SECRET_TEXT} (K+ 6,{n})\n"),
                        subject=SUBJECT, message_id=f"<life-{n}@test>")


def test_sigterm_drains_in_flight_then_exits_zero(running: Running) -> None:
    running.sink.delay = 1.5  # the next hop is slow: the message is in flight when we stop
    result: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=_send, args=(running, _message(running, 1), result))
    sender.start()
    time.sleep(0.8)
    running.proc.send_signal(signal.SIGTERM)
    sender.join(30)
    assert running.proc.wait(30) == 0
    assert result == [(250, result[0][1])]  # answered 250 only after the sink accepted it
    assert len(running.sink.received) == 1
    opened = open_as_recipient(running.pki, MARIE, running.sink.received[0])
    assert PATIENT in text_of(opened.content)
    # it no longer accepts
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", running.port), 1):
        pass


def test_second_signal_exits_at_once_without_reporting_delivery(running: Running) -> None:
    running.sink.delay = 20
    result: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=_send, args=(running, _message(running, 2), result))
    sender.start()
    time.sleep(0.8)
    running.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(10) != 0
    sender.join(30)
    assert result and result[0][0] != 250  # the sender keeps the message and will retry


def test_logs_are_json_traces_without_message_content(running: Running) -> None:
    for n in range(3):
        result: list[tuple[int, bytes]] = []
        _send(running, _message(running, n), result)
        assert result[0][0] == 250
    _wait_event(running.log_path, "summary")
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(30) == 0
    text = running.log_path.read_text("utf-8")
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.count("translate.done") == 3
    assert names.count("deliver.done") == 3
    done = [e for e in events if e["event"] == "message.done"]
    assert len(done) == 3
    assert all(e["reply"] == 250 and e["direction"] == "apicrypt->mssante" for e in done)
    assert len({e["trace"] for e in done}) == 3
    summaries = [e for e in events if e["event"] == "summary"]
    assert summaries  # the periodic line, every summary_seconds
    stopped = next(e for e in events if e["event"] == "gateway.stopped")
    assert stopped["outcomes"] == {"apicrypt->mssante:250": 3}
    for forbidden in (PATIENT, "Berthelot", SECRET_TEXT, "Hyperkali", "confidentiel",
                      JEAN, MARIE, MARIE_ON_APICRYPT, "jean.dupont", "marie.curie"):
        assert forbidden not in text, forbidden


def test_core_dumps_are_disabled_in_the_running_process(running: Running) -> None:
    limits = Path(f"/proc/{running.proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max core file size"))
    assert line.split()[4:6] == ["0", "0"]
    status = Path(f"/proc/{running.proc.pid}/status").read_text()
    assert os.path.exists(f"/proc/{running.proc.pid}")
    assert "State:" in status


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()
            if line.startswith("{")]


def _wait_event(path: Path, name: str, count: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for e in _events(path) if e["event"] == name) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {name} event")


def _send_to(run: Running, rcpt: str, raw: bytes) -> int:
    ctx = ssl.create_default_context(cafile=str(run.pki.ca_file("apicrypt")))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("client.test")
        client.mail(JEAN)
        code, _ = client.rcpt(rcpt)
        if code != 250:
            return code
        return client.data(raw)[0]


def test_sighup_reloads_directory_and_address_book_without_restart(running: Running) -> None:
    from cryptography.hazmat.primitives import serialization

    from gateway.config import parse_certificates, parse_private_key
    from gateway.smime.certgen import Issued, make_leaf

    new_user, alias = "nouveau@clinique-test.mssante.fr", "nouveau.mssante@passerelle.apicrypt.org"
    raw = user_message(running.pki, JEAN, alias, text_entity("bienvenue\n"))
    assert _send_to(running, alias, raw) == 550  # not known yet

    mss = running.pki.root / "mssante"
    issuer = Issued(parse_certificates((mss / "intermediate.pem").read_bytes())[0],
                    parse_private_key((mss / "intermediate.key").read_bytes()))
    user = make_leaf(issuer, "Nouveau", emails=[new_user])
    (mss / "users" / f"{new_user}.pem").write_bytes(
        user.certificate.public_bytes(serialization.Encoding.PEM))
    good = running.pki.config.read_text()
    running.pki.config.write_text(
        good + f'\n[[address_book]]\napicrypt = "{alias}"\nmssante = "{new_user}"\n')
    running.proc.send_signal(signal.SIGHUP)
    _wait_event(running.log_path, "reload.done")
    assert _send_to(running, alias, raw) == 250
    assert len(running.sink.received) == 1

    # a bad configuration is refused: the old one stays, and says why
    running.pki.config.write_text(good.replace('smime_key = "mssante/gateway.key"',
                                               'smime_key = "mssante/absent.key"'))
    running.proc.send_signal(signal.SIGHUP)
    _wait_event(running.log_path, "reload.failed")
    failed = next(e for e in _events(running.log_path) if e["event"] == "reload.failed")
    assert "networks.mssante.smime_key" in str(failed["problems"])
    assert _send_to(running, alias, raw) == 250  # still the reloaded, good configuration
    assert running.proc.poll() is None


def test_certificate_expiry_warnings(tmp_path: Path) -> None:
    import datetime as dt

    from gateway.app import check_certificates
    from gateway.config import load_config, read_certificates

    init_pki(tmp_path / "pki")
    config = load_config(tmp_path / "pki" / "gateway.toml")
    expiry = read_certificates(config.network("apicrypt").smime_cert)[0].not_valid_after_utc
    assert check_certificates(config, expiry - dt.timedelta(days=400)) == []
    soon = dict(check_certificates(config, expiry - dt.timedelta(days=20)))
    assert 19 <= soon["networks.apicrypt.smime_cert"] <= 20
    very_soon = dict(check_certificates(config, expiry - dt.timedelta(days=3)))
    assert very_soon["networks.apicrypt.smime_cert"] <= 7


@pytest.mark.parametrize("workers", [2])
def test_workers_share_the_port_and_stop_together(running: Running, workers: int) -> None:
    """``--workers 2``: two processes accept on the same port (SO_REUSEPORT); SIGTERM to the
    supervisor stops both, after their in-flight messages, with exit 0."""
    assert running.proc.pid
    for n in range(6):
        result: list[tuple[int, bytes]] = []
        _send(running, _message(running, n), result)
        assert result[0][0] == 250
    _wait_event(running.log_path, "gateway.ready", count=workers)
    pids = {e["pid"] for e in _events(running.log_path) if e["event"] == "gateway.ready"}
    assert len(pids) == workers and running.proc.pid not in pids
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(30) == 0
    stopped = [e for e in _events(running.log_path) if e["event"] == "gateway.stopped"]
    assert len(stopped) == workers
    assert sum(sum(e["outcomes"].values()) for e in stopped) == 6  # type: ignore[union-attr]


def test_mlockall_locks_the_process_memory() -> None:
    code = ("from gateway.obs import lock_memory; ok = lock_memory(); "
            "import pathlib; s = pathlib.Path('/proc/self/status').read_text(); "
            "print(ok, [l for l in s.splitlines() if l.startswith('VmLck')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("mlockall not permitted here (no CAP_IPC_LOCK, low RLIMIT_MEMLOCK)")
    assert int(out[1]) > 0  # kB locked


@pytest.mark.parametrize("workers", [2])
def test_workers_share_the_metrics_port(running: Running, workers: int) -> None:
    """Each worker binds metrics_listen with SO_REUSEPORT: none dies in a restart loop."""
    assert workers == 2
    _wait_event(running.log_path, "gateway.ready", count=2)
    time.sleep(1.0)
    events = _events(running.log_path)
    assert not [e for e in events if e["event"] == "worker.died"]
    started = [e for e in events if e["event"] == "metrics.started"]
    assert len(started) == 2


@pytest.mark.parametrize("workers", [2])
def test_one_scrape_sums_the_workers(running: Running, workers: int) -> None:
    """With --workers 2 one scrape answers for the host: the messages both workers relayed,
    counted once each, whichever worker answers the scrape."""
    _wait_event(running.log_path, "gateway.ready", count=2)
    sent = 0
    while sent < 40:
        result: list[tuple[int, bytes]] = []
        _send(running, _message(running, sent), result)
        assert result[0][0] == 250
        sent += 1
        _wait_event(running.log_path, "message.done", count=sent)
        by_worker = {e.get("worker") for e in _events(running.log_path)
                     if e["event"] == "message.done"}
        if sent >= 4 and len(by_worker) == 2:
            break
    assert len(by_worker) == 2, "the kernel gave every connection to one worker"
    port = int(running.pki.config.read_text().split("metrics_listen = \"127.0.0.1:")[1]
               .split('"')[0])
    for _ in range(3):  # whichever worker answers, the same sum
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        relayed = [line for line in text.splitlines() if line.startswith(
            'passerelle_messages_total{code="250",direction="apicrypt->mssante"')]
        assert relayed and float(relayed[0].rsplit(" ", 1)[1]) == sent, relayed


def _exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has exited: only its parent's reaping is left


@pytest.mark.parametrize("workers", [2])
def test_workers_leave_when_the_supervisor_is_killed(running: Running, workers: int) -> None:
    """A SIGKILLed supervisor takes its workers along (PR_SET_PDEATHSIG): none serves on."""
    _wait_event(running.log_path, "gateway.ready", count=workers)
    pid = running.proc.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) == workers
    running.proc.kill()
    running.proc.wait()
    deadline = time.monotonic() + 30
    while not all(_exited(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_exited(c) for c in children)



@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("taken", ["a_in", "metrics"])
def test_a_port_already_taken_is_a_clear_error_not_a_crash(tmp_path: Path, workers: int,
                                                            taken: str) -> None:
    """Another process on a listen address: exit 2 at once with one listener.failed event
    naming it; no traceback, and no supervisor respawning workers that cannot start."""
    ports = port_map("a_in", "a_out", "m_in", "m_out", "metrics")
    init_pki(tmp_path / "pki", apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    config = tmp_path / "pki" / "gateway.toml"
    config.write_text(config.read_text().replace(
        'log_level = "info"',
        f'log_level = "info"\nmetrics_listen = "127.0.0.1:{ports["metrics"]}"'))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[taken]))
        squatter.listen()
        proc = subprocess.run([sys.executable, "-m", "gateway", "run", "--workers", str(workers),
                               "--config", str(config)], check=False, capture_output=True,
                              timeout=60)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert b"Traceback" not in output
    events = [json.loads(line) for line in output.splitlines()]
    failed = [e for e in events if e["event"] == "listener.failed"]
    assert failed and all(e["address"] == f"127.0.0.1:{ports[taken]}" for e in failed)
    assert not [e for e in events if e["event"] == "worker.died"]  # not respawned


def test_gateway_trace_tells_where_a_message_went(running: Running) -> None:
    """The operator's question, from the log alone: was it delivered, and where? The log
    holds only keyed tokens; `gateway trace` recomputes them with the key file."""
    result: list[tuple[int, bytes]] = []
    _send(running, _message(running, 7), result)
    assert result[0][0] == 250
    _wait_event(running.log_path, "message.done")
    trace_in_reply = result[0][1].decode().rsplit("[trace ", 1)[1].rstrip("]")

    def trace(query: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "trace", "--config",
                               str(running.pki.config), str(running.log_path), query],
                              capture_output=True, text=True, timeout=60, check=False)

    next_hop = f"127.0.0.1:{running.sink_port}"
    for query in (MARIE, MARIE_ON_APICRYPT, JEAN, "<life-7@test>", "life-7@test"):
        found = trace(query)
        assert found.returncode == 0, found.stderr
        assert f"trace {trace_in_reply}" in found.stdout, query
        assert f"=> delivered to {next_hop}" in found.stdout, found.stdout
        assert "answered 250 2.0.0" in found.stdout
    missing = trace("nobody@hopital-test.mssante.fr")
    assert missing.returncode == 1 and "no message found" in missing.stderr


async def test_a_reload_says_which_changes_need_a_restart(tmp_path: Path) -> None:
    """Keys read only at start (the listen address, STARTTLS and PROXY policy, the client CA)
    changed by a reload: the log names them, instead of a bare reload.done."""
    import structlog

    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.translate.context import build_runtime

    ports = port_map("a_in", "a_out", "m_in", "m_out", "new")
    init_pki(tmp_path / "pki", apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    pki = Pki(tmp_path / "pki")
    config = load_config(pki.config)
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    try:
        text = pki.config.read_text()
        pki.config.write_text(text.replace(f'"127.0.0.1:{ports["a_in"]}"',
                                           f'"127.0.0.1:{ports["new"]}"').replace(
            "[networks.mssante]\n", "[networks.mssante]\nproxy_protocol = true\n"))
        with structlog.testing.capture_logs() as logs:
            assert await gateway.reload()
        [event] = [e for e in logs if e["event"] == "reload.needs_restart"]
        assert event["keys"] == ["networks.apicrypt.listen", "networks.mssante.proxy_protocol"]
        assert [e["needs_restart"] for e in logs if e["event"] == "reload.done"] == [2]
        pki.config.write_text(text.replace('log_level = "info"', 'log_level = "info"\n'
                                           'max_depth = 5'))
        with structlog.testing.capture_logs() as logs:
            assert await gateway.reload()  # back to the start's listeners; max_depth applies
        assert not [e for e in logs if e["event"] == "reload.needs_restart"]
    finally:
        await gateway.stop_accepting()
        gateway.close()


def test_a_configuration_error_at_start_is_json_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.toml"
    bad.write_text('[gateway]\nhostname = "x"\ncolour = "blue"\n')
    proc = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events and all(e["event"] == "config.invalid" and e["level"] == "error"
                          for e in events)
    assert any("gateway.colour" in e["problem"] for e in events)


async def test_a_reloaded_domains_file_routes_its_new_domains(tmp_path: Path) -> None:
    """The operators' list grows: after SIGHUP (reload) a domain it added is routed, and the
    log says how many domains the file held."""
    import smtplib as _smtp

    import structlog

    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.translate.context import build_runtime

    ports = port_map("a_in", "a_out", "m_in", "m_out")
    init_pki(tmp_path / "pki", apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    pki = Pki(tmp_path / "pki")
    listing = pki.root / "mssante-domains.txt"
    listing.write_text("hopital-test.mssante.fr\nchu-test.mssante.fr\npasserelle.mssante.fr\n")
    text = pki.config.read_text().replace('domains = ["*.mssante.fr"]',
                                          'domains_file = "mssante-domains.txt"')
    pki.config.write_text(text + '\n[networks.apicrypt.rewrite]\ndomain = '
                                 '"passerelle.apicrypt.org"\n')
    config = load_config(pki.config)
    gateway = Gateway(config, build_runtime(config))
    await gateway.start()
    rcpt = "nouveau=clinique-nouvelle.mssante.fr@passerelle.apicrypt.org"

    def rcpt_code() -> int:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file("apicrypt")))
        ctx.check_hostname = False
        with _smtp.SMTP("127.0.0.1", ports["a_in"], timeout=30) as client:
            client.starttls(context=ctx)
            client.ehlo("client.test")
            client.mail(JEAN)
            return client.rcpt(rcpt)[0]

    try:
        assert await asyncio.to_thread(rcpt_code) == 550
        listing.write_text(listing.read_text() + "clinique-nouvelle.mssante.fr\n")
        with structlog.testing.capture_logs() as logs:
            assert await gateway.reload()
        [loaded] = [e for e in logs if e["event"] == "domains.loaded"]
        assert (loaded["network"], loaded["domains"]) == ("mssante", 4)
        assert await asyncio.to_thread(rcpt_code) == 250
    finally:
        await gateway.stop_accepting()
        gateway.close()
