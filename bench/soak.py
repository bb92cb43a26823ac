"""Soak with faults: a real gateway process, a faulty next hop, an MTA-like sender; no loss.

    python -m bench.soak [--messages 10000] [--concurrency 50] [--fault-rate 0.05]
                         [--kill-restarts 2] [--seed 1]

Rule kept here (DESIGN §2.1): a message the sender was told ``250`` for is at the next hop; a
message it was told ``5xx`` for is its own to bounce; anything else it keeps and retries. So
at the end every message is at the sink (matched by Message-ID, which the gateway carries) or
was bounced, and nothing is *lost*. Duplicates are allowed (better than loss) and counted.

Set-up: ``gateway run`` as a subprocess (``--workers 1`` by default) on a fresh development PKI
(``gateway pki init``'s ``init_pki``), its JSON logs captured to a file; ``bench.faultproxy``
on the next-hop address of the mssante network, in front of an aiosmtpd sink with STARTTLS;
the sender sends apicrypt → mssante S/MIME messages (HPRIM lab results of fixture patients),
each with its own Message-ID, keeps each until ``250`` (delivered) or ``5xx`` (bounced) and
retries on ``4xx`` or a connection error after a short backoff.

``--fault-rate`` is the probability of a fault per delivery attempt (cut, stall, the sink's
421/451/550 to DATA) and per new next-hop connection (reset, greeting 421, EHLO 451, STARTTLS
550): the gateway reuses its delivery connections, so the latter are fewer.

With ``--kill-restarts N`` the gateway is SIGKILLed N times (at random points of the run's
progress) and started again; the sender just retries. A kill that lands after the sink
accepted a message but before the sender read the gateway's ``250`` makes a duplicate.

Checks printed: zero lost, duplicates (and whether each is explained by a kill), each message
the sink answered ``550`` bounced to the sender and not delivered, nothing bounced otherwise,
and the gateway's logs free of the fixtures' patient names, subjects and clear addresses.
Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.header
import json
import logging
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiosmtplib
from aiosmtpd.smtp import SMTP
from cryptography import x509

from bench.faultproxy import ALL_KINDS, FaultPlan, FaultProxy, FaultySink
from gateway.devpki import alias_of, free_ports, init_pki, user_identity
from gateway.smime.unwrap import seal

SENDER = "jean.dupont@medical59.apicrypt.org"
RECIPIENT = "marie.curie@hopital-test.mssante.fr"
ALIAS = alias_of(RECIPIENT, "mssante")

# The fixtures: what must never reach a log (names, birth dates, NIR, subjects, addresses).
PATIENTS = (
    ("BERTHELOT", "Madeleine", "12/03/1941", "2 41 03 59 350 042 67"),
    ("LEFEBVRE-DUCHAMP", "Anatole", "30/11/1958", "1 58 11 62 193 117 08"),
    ("MARCHETTI", "Héloïse", "02/07/1987", "2 87 07 59 009 231 44"),
    ("KOWALCZYK", "Stanislas", "19/01/1975", "1 75 01 59 512 004 91"),
)
SUBJECTS = (
    "Resultats confidentiels bilan hepatique",
    "Kaliémie critique à contrôler",
    "Compte rendu hospitalisation cardiologie",
    "INR hors zone therapeutique",
)

# How the gateway logs each fault ("cause -> reply to our sender", its deliver.result event):
# every one is temporary (451) but the next hop's own 550, mirrored (DESIGN §6).
GATEWAY_VIEW = {
    "refuse": "connection failed -> 451",
    "greeting_421": "greeting 421 -> 451",
    "ehlo_451": "command refused 451 -> 451",
    "starttls_550": "command refused 550 -> 451",
    "cut": "disconnected -> 451",
    "stall": "timeout -> 451",
    "data_421": "DATA refused 421 -> 451",
    "data_451": "DATA refused 451 -> 451",
    "data_550": "DATA refused 550 -> 550",
}


def forbidden_strings() -> list[str]:
    """Every fixture string that would betray content or identity if logged."""
    out = [SENDER, RECIPIENT, ALIAS]
    out += [address.partition("@")[0] for address in out]
    for last, first, birth, nir in PATIENTS:
        out += [last, first, birth, nir, nir.replace(" ", "")]
    for subject in SUBJECTS:
        out += [subject, encoded_subject(subject)]
    return out


def encoded_subject(subject: str) -> str:
    return subject if subject.isascii() else email.header.Header(subject, "utf-8").encode()


def hprim_result(patient: tuple[str, str, str, str], n: int, size: int) -> bytes:
    """An HPRIM lab result (ISO-8859-1, CRLF) of about ``size`` bytes for a fixture patient."""
    last, first, birth, nir = patient
    header = [f"P{n:06d}", last, first, "12 rue des Tanneurs", "", "59000 LILLE", birth, nir,
              f"R{n:08d}", "28/11/2026", "LABO59    Laboratoire Biolille",
              "DUPONT    Dr Jean Dupont"]
    lab = ["****LAB****",
           "RES|Potassium|K|N|6,2|mmol/l|3,5|5,1|H|F",
           "RES|Créatinine|CREA|N|142|µmol/l|59|104|H|F",
           "RES|INR|INR|N|3,8||2,0|3,0|H|F",
           "TEX|Résultat contrôlé, à recontrôler sous 48 heures.",
           "****FIN****"]
    note = f"Patient {last} {first}, né(e) le {birth} : kaliémie élevée, avis néphrologique."
    lines = header + lab
    while sum(len(x) + 2 for x in lines) < size:
        lines.append(note)
    lines.append("****FINFICHIER****")
    text = "\r\n".join(lines) + "\r\n"
    return (b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode("iso-8859-1"))


def make_messages(root: Path, count: int, size: int, run: str,
                  distinct: int = 32) -> list[tuple[str, bytes]]:
    """``count`` (Message-ID, raw) pairs. ``distinct`` sealed bodies (the crypto is the costly
    part) cycle over the fixture patients and subjects; each message has its own Message-ID (an
    outer header, which the gateway carries over)."""
    user = user_identity(root, SENDER)
    cert = x509.load_pem_x509_certificate((root / "apicrypt" / "gateway.pem").read_bytes())
    bodies = []
    for i in range(min(distinct, count)):
        headers = [("From", SENDER), ("To", ALIAS),
                   ("Subject", encoded_subject(SUBJECTS[i % len(SUBJECTS)])),
                   ("Date", "Sat, 28 Nov 2026 10:00:00 +0000"), ("MIME-Version", "1.0")]
        bodies.append(seal(hprim_result(PATIENTS[i % len(PATIENTS)], i, size), user, [cert],
                           headers))
    out = []
    for i in range(count):
        ident = f"<soak-{run}-{i}@passerelle.test>"
        out.append((ident, f"Message-ID: {ident}\r\n".encode() + bodies[i % len(bodies)]))
    return out


# --- the gateway process ------------------------------------------------------------------


class GatewayProcess:
    """``gateway run`` in its own process group (a kill takes every process of it), stderr and
    stdout appended to one log file across restarts."""

    def __init__(self, config: Path, log_path: Path, workers: int) -> None:
        self.config = config
        self.log_path = log_path
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self._start_offset = 0  # where this start's lines begin in the log

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self._start_offset = self._log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--workers", str(self.workers),
             "--config", str(self.config)],
            stdout=self._log, stderr=self._log, start_new_session=True)
        self.starts += 1

    async def wait_listening(self, port: int, timeout: float = 30.0) -> None:
        """Until this start's ``gateway.ready`` is in the log and ``port`` answers: a port
        that answers is not proof enough, something else may hold it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early with {self.proc.returncode}:\n"
                                   + self.log_tail())
            with self.log_path.open("rb") as log:
                log.seek(self._start_offset)
                ready = b'"gateway.ready"' in log.read()
            if not ready:
                await asyncio.sleep(0.05)
                continue
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise RuntimeError("gateway did not listen:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self) -> None:
        """SIGKILL every process of the gateway (supervisor and workers alike)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self._close_log()

    def stop(self) -> int | None:
        """SIGTERM (drain, exit); the exit code, None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            code = None
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# --- the sender ---------------------------------------------------------------------------


@dataclass
class Attempt:
    started: float
    ended: float
    code: int  # the reply to the message, -1 for a connection error or timeout


@dataclass
class Sender:
    """An MTA's queue: each message is kept until 250 or 5xx, retried otherwise."""

    port: int
    cafile: Path
    messages: list[tuple[str, bytes]]
    concurrency: int
    seed: int = 1
    timeout: float = 30.0
    final: dict[str, int] = field(default_factory=dict)  # Message-ID -> 250 or the 5xx
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    retries: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._done = asyncio.Event()
        self._context = ssl.create_default_context(cafile=str(self.cafile))
        self._context.check_hostname = False

    @property
    def resolved(self) -> int:
        return len(self.final)

    def stop(self) -> None:
        """End the run now (what is not resolved stays held)."""
        self._done.set()

    async def run(self, deadline: float) -> bool:
        """Send everything; False if the deadline came first (messages still held)."""
        for i in range(len(self.messages)):
            self._queue.put_nowait(i)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), deadline)
            return len(self.final) == len(self.messages)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self) -> None:
        smtp: aiosmtplib.SMTP | None = None
        try:
            while True:
                index = await self._queue.get()
                ident, raw = self.messages[index]
                started = time.monotonic()
                code = -1
                try:
                    if smtp is None:
                        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port,
                                               start_tls=True, tls_context=self._context,
                                               timeout=self.timeout)
                        await smtp.connect()
                    await smtp.sendmail(SENDER, [ALIAS], raw)
                    code = 250
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    code = exc.recipients[0].code
                except aiosmtplib.SMTPResponseException as exc:
                    code = exc.code
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    self.errors[type(exc).__name__] += 1
                self.attempts.setdefault(ident, []).append(
                    Attempt(started, time.monotonic(), code))
                if code in (-1, 421) or (smtp is not None and not smtp.is_connected):
                    if smtp is not None:
                        smtp.close()
                    smtp = None
                if code == 250 or 500 <= code <= 599:
                    self.final[ident] = code
                    self.progress.set()
                    if len(self.final) == len(self.messages):
                        self._done.set()
                else:
                    self.retries += 1
                    tries = len(self.attempts[ident])
                    delay = min(2.0, 0.05 * 2 ** min(tries, 6)) * self._rng.uniform(0.5, 1.5)
                    asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, index)
        finally:
            if smtp is not None:
                smtp.close()


# --- the run ------------------------------------------------------------------------------


@dataclass
class Options:
    messages: int = 10_000
    concurrency: int = 50
    fault_rate: float = 0.05
    kill_restarts: int = 0
    seed: int = 1
    size: int = 4096
    workers: int = 1
    data_timeout: float = 5.0  # the gateway's data_timeout_seconds; its delivery gets 80 %
    stall_seconds: float = 0.0  # 0: data_timeout (longer than the delivery timeout)
    deadline: float = 1800.0
    verbose: bool = False  # a progress line on stderr every 10 s
    kinds: tuple[str, ...] = ALL_KINDS


@dataclass
class LogCheck:
    lines: int = 0
    not_json: int = 0
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # the gateway's account of failed deliveries: "cause -> reply to the sender"
    delivery: collections.Counter[str] = field(default_factory=collections.Counter)
    hits: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.hits


@dataclass
class Result:
    options: Options
    sent: int
    delivered: int  # sender got 250
    bounced: collections.Counter[int]  # sender got 5xx, by code
    lost: list[str]  # sender got 250, the sink has no copy
    held: int  # still with the sender at the deadline (neither 250 nor 5xx)
    duplicates: int  # copies beyond the first at the sink
    duplicated: dict[str, int]  # Message-ID -> copies, for those with more than one
    dup_by_kill: int  # duplicated messages with a failed attempt across a kill
    retries: int
    sender_errors: collections.Counter[str]
    faults: collections.Counter[str]
    connections: int
    largest_small_turn: int
    refused_550: list[str]  # messages the sink answered 550 (at least once)
    refused_550_not_bounced: list[str]  # of those, not bounced to the sender or delivered
    bounced_unexplained: list[str]  # bounced without any 550 from the sink
    bounced_and_delivered: list[str]
    by_kill: set[str]  # messages with an attempt that a kill cut short
    unknown_at_sink: int
    kill_times: list[float]
    restart_seconds: list[float]  # SIGKILL to listening again
    codes: collections.Counter[int]  # replies to every attempt (-1: connection error)
    elapsed: float
    finished: bool
    gateway_exit: int | None
    logs: LogCheck
    died: str = ""  # the log's tail if the gateway exited mid-run with no kill of ours

    @property
    def unexplained_550(self) -> list[str]:
        """Refused 550 but not bounced, and no kill to lose that 550 on the way back."""
        return [i for i in self.refused_550_not_bounced if i not in self.by_kill]

    @property
    def ok(self) -> bool:
        return (self.finished and not self.died and not self.lost and not self.held
                and not self.unknown_at_sink and self.logs.clean
                and not self.unexplained_550 and not self.bounced_unexplained
                and not [i for i in self.bounced_and_delivered if i not in self.by_kill])


def configure(root: Path, options: Options) -> dict[str, int]:
    names = ("a_in", "a_out", "m_in", "m_out", "sink")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    cfg = root / "gateway.toml"
    cfg.write_text(cfg.read_text().replace(
        # production log level; one client address opens all the sessions: limits raised
        'log_level = "info"',
        'log_level = "info"\nmax_sessions = 1000\nmax_sessions_per_ip = 1000\n'
        f"rate_limit_per_minute = 1000000\ndata_timeout_seconds = {options.data_timeout}\n"
        "summary_seconds = 10"))
    return ports


def check_logs(path: Path, forbidden: list[str]) -> LogCheck:
    """Every line of the gateway's output: JSON or not, error events, and any fixture string
    (in the raw bytes, and in the JSON values decoded, case-insensitively)."""
    check = LogCheck()
    raw = path.read_bytes().decode("utf-8", "replace")
    decoded: list[str] = []
    for line in raw.splitlines():
        check.lines += 1
        try:
            event = json.loads(line)
        except ValueError:
            check.not_json += 1
            continue
        if not isinstance(event, dict):
            check.not_json += 1
            continue
        name = str(event.get("event"))
        check.events[name] += 1
        if event.get("level") in ("error", "critical"):
            check.errors[name] += 1
        if name == "deliver.result" and event.get("reply") != 250:
            check.delivery[f"{event.get('cause')} -> {event.get('reply')}"] += 1
        decoded.append(json.dumps(event, ensure_ascii=False))
    haystack = (raw + "\n" + "\n".join(decoded)).casefold()
    check.hits = [s for s in forbidden if s.casefold() in haystack]
    return check


async def soak(options: Options, root: Path) -> Result:
    run_id = f"{options.seed}-{options.kill_restarts}-{os.getpid()}"
    ports = configure(root, options)
    messages = make_messages(root, options.messages, options.size, run_id)
    plan = FaultPlan(options.fault_rate, options.seed, kinds=options.kinds)
    sink = FaultySink(plan)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / "mssante" / "next-hop-tls.pem",
                        root / "mssante" / "next-hop-tls.key")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink.test"),
        "127.0.0.1", ports["sink"])
    proxy = FaultProxy(plan, ("127.0.0.1", ports["sink"]),
                       stall_seconds=options.stall_seconds or options.data_timeout)
    await proxy.start("127.0.0.1", ports["m_out"])
    gateway = GatewayProcess(root / "gateway.toml", root / "gateway.log", options.workers)
    sender = Sender(ports["a_in"], root / "apicrypt" / "ca.pem", messages,
                    options.concurrency, seed=options.seed)
    rng = random.Random(options.seed + 1)
    kill_at = sorted(rng.uniform(0.1, 0.9) for _ in range(options.kill_restarts))
    kill_times: list[float] = []
    restarts: list[float] = []
    restarting = False
    died: list[str] = []

    async def killer() -> None:
        nonlocal restarting
        for fraction in kill_at:
            while sender.resolved < fraction * len(messages):
                sender.progress.clear()
                await sender.progress.wait()
            kill_times.append(time.monotonic())
            restarting = True
            gateway.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # senders meet a closed port a while
            gateway.start()
            await gateway.wait_listening(ports["a_in"])
            restarting = False
            restarts.append(time.monotonic() - kill_times[-1])

    async def watchdog() -> None:
        # a gateway that exits on its own ends the run at once, its last words in the result
        while not (gateway.exited and not restarting):
            await asyncio.sleep(0.2)
        died.append(gateway.log_tail())
        sender.stop()

    async def reporter() -> None:
        while options.verbose:
            await asyncio.sleep(10)
            print(f"  ... {sender.resolved}/{len(messages)} resolved, {sender.retries} retries,"
                  f" {sum(plan.counts.values())} faults", file=sys.stderr, flush=True)

    # the sink's library logs each handshake a kill cut short with a traceback: not ours
    library_log = logging.getLogger("mail.log")
    library_level = library_log.level
    library_log.setLevel(logging.CRITICAL)
    gateway_exit: int | None = None
    try:
        gateway.start()
        await gateway.wait_listening(ports["a_in"])
        started = time.monotonic()
        kills = asyncio.create_task(killer())

        def on_killer_done(task: asyncio.Task[None]) -> None:
            # a gateway that does not come back ends the run, rather than retries to the deadline
            if not task.cancelled() and task.exception() is not None:
                sender.stop()

        kills.add_done_callback(on_killer_done)
        helpers = [kills, asyncio.create_task(reporter()), asyncio.create_task(watchdog())]
        try:
            finished = await sender.run(options.deadline)
        finally:
            elapsed = time.monotonic() - started
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        if not kills.cancelled() and kills.exception() is not None:
            raise RuntimeError("restart after SIGKILL failed") from kills.exception()
    finally:
        gateway_exit = await asyncio.to_thread(gateway.stop)
        await proxy.close()
        server.close()
        library_log.setLevel(library_level)
    return _result(options, messages, sender, sink, plan, proxy, kill_times, restarts, elapsed,
                   finished, gateway_exit, check_logs(root / "gateway.log", forbidden_strings()),
                   "".join(died))


def _result(options: Options, messages: list[tuple[str, bytes]], sender: Sender,
            sink: FaultySink, plan: FaultPlan, proxy: FaultProxy, kill_times: list[float],
            restarts: list[float], elapsed: float, finished: bool, gateway_exit: int | None,
            logs: LogCheck, died: str) -> Result:
    ours = {ident for ident, _ in messages}
    delivered = [i for i, code in sender.final.items() if code == 250]
    bounced = {i: code for i, code in sender.final.items() if code != 250}
    duplicated = {i: n for i, n in sink.received.items() if n > 1}

    by_kill = {ident for ident, tries in sender.attempts.items()
               if any(a.code == -1 and any(a.started <= k <= a.ended for k in kill_times)
                      for a in tries)}
    refused_550 = list(dict.fromkeys(i for i in plan.refused.get("data_550", []) if i))
    return Result(
        options=options, sent=len(messages), delivered=len(delivered),
        bounced=collections.Counter(bounced.values()),
        lost=[i for i in delivered if i not in sink.received],
        held=len(messages) - len(sender.final),
        duplicates=sum(n - 1 for n in duplicated.values()), duplicated=duplicated,
        dup_by_kill=sum(1 for i in duplicated if i in by_kill),
        retries=sender.retries, sender_errors=sender.errors, faults=plan.counts,
        connections=proxy.connections, largest_small_turn=proxy.largest_small_turn,
        refused_550=refused_550,
        refused_550_not_bounced=[i for i in refused_550
                                 if i not in bounced or i in sink.received],
        bounced_unexplained=[i for i in bounced if i not in set(refused_550)],
        bounced_and_delivered=[i for i in bounced if i in sink.received], by_kill=by_kill,
        unknown_at_sink=sum(1 for i in sink.received if i not in ours) + sink.without_id,
        kill_times=kill_times, restart_seconds=restarts,
        codes=collections.Counter(a.code for tries in sender.attempts.values() for a in tries),
        elapsed=elapsed, finished=finished, gateway_exit=gateway_exit,
        logs=logs, died=died)


def table(r: Result) -> str:
    o = r.options
    faults = ", ".join(f"{k} {r.faults.get(k, 0)}" for k in o.kinds)
    resolved = r.delivered + sum(r.bounced.values())
    rows = [
        ("messages / concurrency", f"{r.sent} / {o.concurrency}, {o.size} B of text,"
                                   f" gateway --workers {o.workers}"),
        ("fault rate / seed", f"{o.fault_rate} / {o.seed}"),
        ("kill-restarts", f"{len(r.kill_times)} of {o.kill_restarts}"
                          + (" (SIGKILL to listening: "
                             + ", ".join(f"{t:.1f} s" for t in r.restart_seconds) + ")"
                             if r.restart_seconds else "")),
        ("sent", str(r.sent)),
        ("delivered (250)", str(r.delivered)),
        ("bounced (5xx)", f"{sum(r.bounced.values())}"
                          + (f" ({', '.join(f'{c}: {n}' for c, n in sorted(r.bounced.items()))})"
                             if r.bounced else "")),
        ("lost (250, not at sink)", str(len(r.lost))),
        ("still held by sender", str(r.held)),
        ("duplicates at sink", f"{r.duplicates} copies of {len(r.duplicated)} messages,"
                               f" {r.dup_by_kill} of them with a failed attempt across a kill"),
        ("retries", f"{r.retries} (connection errors:"
                    f" {sum(r.sender_errors.values())})"),
        ("replies to attempts", ", ".join(
            f"{'conn. error' if c == -1 else c}: {n}" for c, n in sorted(r.codes.items()))),
        ("faults injected", f"{sum(r.faults.values())}: {faults}"),
        ("proxied connections", f"{r.connections} (largest non-content client turn"
                                f" {r.largest_small_turn} B)"),
        ("550 at sink → bounced", f"{len(r.refused_550) - len(r.refused_550_not_bounced)}"
                                  f" of {len(r.refused_550)} messages"
                                  + (f" (not bounced: {len(r.refused_550_not_bounced)},"
                                     f" {len(r.unexplained_550)} of them without a kill to"
                                     " lose that 550 on its way back)"
                                     if r.refused_550_not_bounced else "")),
        ("5xx and at sink", f"{len(r.bounced_and_delivered)}"),
        ("5xx not from a 550 fault", str(len(r.bounced_unexplained))),
        ("elapsed", f"{r.elapsed:.1f} s"),
        ("msg/s (resolved)", f"{resolved / r.elapsed:.1f}" if r.elapsed else "-"),
        ("gateway: failed deliveries", ", ".join(
            f"{k} {n}" for k, n in sorted(r.logs.delivery.items())) or "-"),
        ("gateway log", f"{r.logs.lines} lines, {r.logs.not_json} not JSON, error events"
                        f" {dict(r.logs.errors) or 0}"),
        ("log grep (fixture strings)", "clean" if r.logs.clean
         else f"FOUND {len(r.logs.hits)}: " + ", ".join(r.logs.hits[:5])),
        ("gateway exit on SIGTERM", str(r.gateway_exit)),
        ("gateway died mid-run", "yes, its log ends:" if r.died else "no"),
        ("verdict", "OK" if r.ok else "FAILED"),
    ]
    width = max(len(k) for k, _ in rows)
    out = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    return out + ("\n" + r.died if r.died else "")


def run(options: Options, workdir: Path | None = None) -> Result:
    root = Path(tempfile.mkdtemp(prefix="passerelle-soak-", dir=workdir))
    try:
        return asyncio.run(soak(options, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--kill-restarts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=4096, help="bytes of text per message")
    parser.add_argument("--workers", type=int, default=1, help="gateway run --workers")
    parser.add_argument("--data-timeout", type=float, default=5.0,
                        help="the gateway's data_timeout_seconds (delivery gets 80%%)")
    parser.add_argument("--deadline", type=float, default=1800.0,
                        help="seconds before the sender gives up (its messages count as held)")
    args = parser.parse_args()
    options = Options(messages=args.messages, concurrency=args.concurrency,
                      fault_rate=args.fault_rate, kill_restarts=args.kill_restarts,
                      seed=args.seed, size=args.size, workers=args.workers,
                      data_timeout=args.data_timeout, deadline=args.deadline, verbose=True)
    result = run(options)
    print(f"soak with faults  {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
          f" {os.cpu_count()} cores")
    print(table(result))
    if result.lost:
        print("  lost Message-IDs: " + ", ".join(result.lost[:10]))
    if result.duplicated:
        print("  duplicates: the sink accepted the message, then the sender did not get that"
              " 250 (the gateway was killed, or its delivery budget ran out, between the"
              " sink's reply and its own), so it sent the message again: allowed (DESIGN §2.1,"
              " duplicates over loss)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
