"""Relay benchmark: encrypted messages through a running gateway, with peers measured alongside.

    python -m bench.relay [--messages 2000] [--concurrency 32] [--size 10240]

Starts ``gateway run`` as a subprocess on a fresh development PKI, a next-hop sink (STARTTLS)
and a load generator in this process, pushes the messages (signed by a user, encrypted for the
gateway, RSA-2048, ~size bytes) and prints:

* messages/s end to end, p50/p99 latency (sender's DATA to the gateway's 250), peak RSS;
* the gateway's CPU time per message: user+sys of the gateway process from /proc, divided by
  the messages — the figure that does not depend on the load generator sharing the machine;
* next to it, measured in the same run: the CPU per message of an OpenSSL-CLI pipeline
  (``openssl smime`` decrypt | verify | sign | encrypt) and the physical floor (two RSA-2048
  private-key operations, from ``openssl speed``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.devpki import alias_of, free_ports, init_pki, user_identity
from gateway.smime.unwrap import seal

SENDER = "jean.dupont@medical59.apicrypt.org"
RECIPIENT = "marie.curie@hopital-test.mssante.fr"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (the workers of ``gateway run --workers N``)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += process_tree(int(child))
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, sys) seconds of a process tree (live workers included), from /proc."""
    user = system = 0.0
    for proc in process_tree(pid):
        fields = Path(f"/proc/{proc}/stat").read_text().rpartition(")")[2].split()
        user += (int(fields[11]) + int(fields[13])) / CLK_TCK
        system += (int(fields[12]) + int(fields[14])) / CLK_TCK
    return user, system


def main_thread_seconds(pid: int) -> float:
    """user+sys of the event-loop threads (each process's main thread) of a process tree."""
    total = 0.0
    for proc in process_tree(pid):
        fields = Path(f"/proc/{proc}/task/{proc}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_mb(pid: int) -> float:
    """The highest peak RSS among the gateway's processes."""
    peak = 0.0
    for proc in process_tree(pid):
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()
        return "250 2.0.0 ok"


def make_messages(root: Path, count: int, size: int, distinct: int = 64) -> list[bytes]:
    """``distinct`` sealed messages (the crypto is the costly part), each sent with its own
    Message-ID so every one is a different message to the gateway."""
    user = user_identity(root, SENDER)
    gateway_cert = (root / "apicrypt" / "gateway.pem").read_bytes()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(gateway_cert)
    alias = alias_of(RECIPIENT, "mssante")
    line = "Résultat INR 3,2 - contrôle - 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
    text = (line * (size // len(line) + 1))[:size]
    entity = (b"Content-Type: text/plain; charset=ISO-8859-1\r\n"
              b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode("iso-8859-1"))
    bodies = [seal(entity, user, [cert], [("From", SENDER), ("To", alias),
                                          ("Subject", "bench"), ("MIME-Version", "1.0")])
              for _ in range(distinct)]
    return [f"Message-ID: <bench-{i}@passerelle.test>\r\n".encode() + bodies[i % distinct]
            for i in range(count)]


async def load(port: int, cafile: Path, messages: list[bytes], concurrency: int,
               latencies: list[float], failures: list[str]) -> None:
    alias = alias_of(RECIPIENT, "mssante")
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True,
                               tls_context=context, timeout=60)
        await smtp.connect()
        try:
            while not queue.empty():
                raw = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    await smtp.sendmail(SENDER, [alias], raw)
                except aiosmtplib.SMTPException as exc:
                    failures.append(str(exc)[:80])
                    continue
                latencies.append(time.perf_counter() - t0)
        finally:
            smtp.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def openssl_pipeline_cpu(root: Path, message: bytes, rounds: int) -> float:
    """CPU seconds per message of decrypt | verify | sign | encrypt with the OpenSSL CLI."""
    keys = root / "apicrypt"
    m_users = root / "mssante" / "users"
    bundle = root / "bench-ca.pem"
    bundle.write_bytes((keys / "ca.pem").read_bytes())
    cmd = (
        f"openssl smime -decrypt -recip {keys}/gateway.pem -inkey {keys}/gateway.key"
        f" | openssl smime -verify -CAfile {bundle} -purpose any 2>/dev/null"
        f" | openssl smime -sign -signer {root}/mssante/gateway.pem"
        f" -inkey {root}/mssante/gateway.key -md sha256"
        f" | openssl smime -encrypt -aes256 {m_users}/{RECIPIENT}.pem > /dev/null"
    )
    # getrusage: microseconds (os.times counts clock ticks, 10 ms, too coarse for one round)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(rounds):
        subprocess.run(cmd, shell=True, input=message, check=True)  # noqa: S602
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / rounds


def rsa_floor_ms() -> float:
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "rsa2048"], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r"rsa\s+2048 bits\s+([\d.]+)s", out)
    if match is None:
        return float("nan")
    return 2 * float(match.group(1)) * 1000


async def bench(args: argparse.Namespace, root: Path, workers: int) -> dict[str, float]:
    ports = dict(zip(("a_in", "a_out", "m_in", "m_out"), free_ports(4), strict=True))
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    cfg = root / "gateway.toml"
    cfg.write_text(cfg.read_text().replace(
        # the production log level (info: JSON lines, written to /dev/null here); the limits
        # are raised so the generator's 32 sessions from one address are all admitted
        'log_level = "info"',
        'log_level = "info"\nmax_sessions = 500\nmax_sessions_per_ip = 500\n'
        "rate_limit_per_minute = 1000000"))
    messages = make_messages(root, args.messages, args.size)
    sink = Sink()
    sink.expected = args.messages
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / "mssante" / "next-hop-tls.pem",
                        root / "mssante" / "next-hop-tls.key")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink"),
        "127.0.0.1", ports["m_out"])
    cmd = [sys.executable, "-m", "gateway", "run", "--workers", str(workers),
           "--config", str(cfg)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # wait for the listener
            try:
                with socket.create_connection(("127.0.0.1", ports["a_in"]), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        # warm-up, not counted
        await load(ports["a_in"], root / "apicrypt" / "ca.pem", messages[:32], 8, [], [])
        spy = None
        if args.profile:  # py-spy, sampling the gateway's processes for the measured run only
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--subprocesses",
                                    "--threads", "--gil", "--format", "raw", "--rate", "250",
                                    "--output", args.profile], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.0)
        cpu0 = cpu_seconds(proc.pid)
        loop0 = main_thread_seconds(proc.pid)
        sink.count = 0
        latencies: list[float] = []
        failures: list[str] = []
        t0 = time.perf_counter()
        await load(ports["a_in"], root / "apicrypt" / "ca.pem", messages, args.concurrency,
                   latencies, failures)
        wall = time.perf_counter() - t0
        user1, sys1 = cpu_seconds(proc.pid)
        user, system = user1 - cpu0[0], sys1 - cpu0[1]
        event_loop = main_thread_seconds(proc.pid) - loop0
        peak = rss_mb(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        server.close()
    latencies.sort()
    done = len(latencies)
    return {
        "messages": float(done), "failures": float(len(failures)),
        "delivered": float(sink.count), "msg_per_s": done / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (done - 1))] if latencies else float("nan"),
        "gateway_cpu_ms": 1000 * (user + system) / max(done, 1),
        "user_ms": 1000 * user / max(done, 1), "sys_ms": 1000 * system / max(done, 1),
        "loop_ms": 1000 * event_loop / max(done, 1), "peak_rss_mb": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--workers", default="1",
                        help="comma-separated worker counts, each measured in turn (e.g. 1,2)")
    parser.add_argument("--openssl-rounds", type=int, default=40)
    parser.add_argument("--profile", metavar="FILE",
                        help="write a py-spy profile (collapsed stacks) of the measured run")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="passerelle-bench-"))
    runs: list[tuple[int, dict[str, float]]] = []
    openssl_blocks: list[float] = []  # ms per message, one block before each run and at the end
    counts = [int(w) for w in args.workers.split(",")]
    block = max(1, args.openssl_rounds // (len(counts) + 1))
    try:
        (root / "pki").mkdir()
        init_pki(root / "pki", force=True)
        sample = make_messages(root / "pki", 1, args.size, distinct=1)[0]
        # The machine's speed drifts (shared host): the peer is measured between the runs too,
        # and the ratio uses the median of its blocks.
        for workers in counts:
            openssl_blocks.append(1000 * openssl_pipeline_cpu(root / "pki", sample, block))
            shutil.rmtree(root / "run", ignore_errors=True)
            runs.append((workers, asyncio.run(bench(args, root / "run", workers))))
        openssl_blocks.append(1000 * openssl_pipeline_cpu(root / "pki", sample, block))
        floor_ms = rsa_floor_ms()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    openssl_ms = statistics.median(openssl_blocks)
    print(f"relay benchmark  {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores,"
          f" {args.messages} messages of {args.size} bytes, concurrency {args.concurrency}")
    print("  workers  relayed  failures  at sink   msg/s   p50 ms   p99 ms  peak RSS MB"
          "  gateway CPU ms/msg (user + sys; event loop)  vs OpenSSL CLI")
    for workers, f in runs:
        print(f"  {workers:7d}  {f['messages']:7.0f}  {f['failures']:8.0f}  {f['delivered']:7.0f}"
              f"  {f['msg_per_s']:6.1f}  {f['p50_ms']:7.1f}  {f['p99_ms']:7.1f}"
              f"  {f['peak_rss_mb']:11.0f}  {f['gateway_cpu_ms']:18.2f}"
              f" ({f['user_ms']:.2f} + {f['sys_ms']:.2f}; {f['loop_ms']:.2f})"
              f"  {openssl_ms / f['gateway_cpu_ms']:8.1f}x less")
    best = min(f["gateway_cpu_ms"] for _, f in runs)
    print(f"  openssl CLI pipeline CPU     {openssl_ms:.2f} ms per message (median of"
          f" {len(openssl_blocks)} blocks of {block} rounds:"
          f" {', '.join(f'{b:.1f}' for b in openssl_blocks)})")
    print(f"  physical floor (2 RSA ops)   {floor_ms:.2f} ms per message"
          f"  (gateway is {best / floor_ms:.1f}x the floor)")
    own = resource.getrusage(resource.RUSAGE_SELF)
    print(f"  load generator + sink CPU    {own.ru_utime + own.ru_stime:.1f} s (not counted)")
    return 0 if all(f["failures"] == 0 for _, f in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
