"""Memory bounds: peak RSS of a running gateway under big messages.

    python -m bench.memory [--concurrent 32] [--size-mb 5] [--big-mb 25] [--over-mb 40]

Each phase starts its own ``gateway run --workers 1`` (so each peak is its own) on a fresh
development PKI, with a next-hop sink in this process, and prints the gateway's peak RSS
(VmHWM from /proc) next to the outcome:

1. ``--concurrent`` messages of ``--size-mb`` MB each (on the wire), sent at the same time;
   target: every one relayed and the peak under 400 MB;
2. one message of ``--big-mb`` MB (just under the default 25 MiB limit): relayed;
3. one message of ``--over-mb`` MB sent without a SIZE declaration, so the gateway only learns
   its size while reading it: refused with 552, and the peak grows by far less than the
   message (it is counted, not kept, once over the limit). Then the same message with SIZE:
   refused at MAIL, before any content is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP
from cryptography import x509

from bench.relay import RECIPIENT, SENDER, Sink, rss_mb
from gateway.devpki import alias_of, free_ports, init_pki, user_identity
from gateway.smime.unwrap import seal

MB = 1_000_000
TARGET_PEAK_MB = 400


def make_message(root: Path, wire_bytes: int, tag: str) -> bytes:
    """A signed and encrypted message of about ``wire_bytes``: a short text and a PDF-like
    attachment of random bytes (incompressible), base64 twice on the wire (part, envelope)."""
    user = user_identity(root, SENDER)
    cert = x509.load_pem_x509_certificate((root / "apicrypt" / "gateway.pem").read_bytes())
    attachment = b"%PDF-1.4\n" + os.urandom(max(0, int(wire_bytes / 1.88) - 9))
    b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    boundary = b"bench-" + tag.encode()
    entity = (b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n"
              b"--" + boundary + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
              b"Compte rendu joint.\r\n"
              b"--" + boundary + b"\r\nContent-Type: application/pdf; name=\"cr.pdf\"\r\n"
              b"Content-Disposition: attachment; filename=\"cr.pdf\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 +
              b"--" + boundary + b"--\r\n")
    headers = [("From", SENDER), ("To", alias_of(RECIPIENT, "mssante")),
               ("Subject", "bench"), ("MIME-Version", "1.0")]
    return f"Message-ID: <mem-{tag}@passerelle.test>\r\n".encode() + seal(
        entity, user, [cert], headers)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    cafile: Path
    sink: Sink
    server: asyncio.AbstractServer

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0]) if children.split() else self.proc.pid

    def peak_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def current_mb(self) -> float:
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


async def start(root: Path) -> Running:
    shutil.rmtree(root, ignore_errors=True)
    ports = dict(zip(("a_in", "a_out", "m_in", "m_out"), free_ports(4), strict=True))
    init_pki(root, force=True, apicrypt_port=ports["a_in"], apicrypt_relay_port=ports["a_out"],
             mssante_port=ports["m_in"], mssante_relay_port=ports["m_out"])
    cfg = root / "gateway.toml"
    cfg.write_text(cfg.read_text().replace(
        'log_level = "info"',
        'log_level = "warning"\nmax_sessions = 500\nmax_sessions_per_ip = 500\n'
        "rate_limit_per_minute = 1000000"))
    sink = Sink()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(root / "mssante" / "next-hop-tls.pem",
                        root / "mssante" / "next-hop-tls.key")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, tls_context=ctx, require_starttls=True, hostname="sink",
                     data_size_limit=None),
        "127.0.0.1", ports["m_out"])
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--workers", "1",
                             "--config", str(cfg)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", ports["a_in"]), timeout=0.2):
                break
        except OSError:
            await asyncio.sleep(0.05)
    return Running(proc, ports["a_in"], root / "apicrypt" / "ca.pem", sink, server)


async def stop(run: Running) -> None:
    run.proc.send_signal(signal.SIGTERM)
    run.proc.wait(timeout=60)
    run.server.close()


async def send(run: Running, raw: bytes, *, declare_size: bool = True) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(run.cafile))
    context.check_hostname = False
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=run.port, start_tls=True,
                           tls_context=context, timeout=300)
    await smtp.connect()
    try:
        alias = alias_of(RECIPIENT, "mssante")
        if declare_size:
            _, message = await smtp.sendmail(SENDER, [alias], raw)
            return 250, message
        await smtp.mail(SENDER)
        await smtp.rcpt(alias)
        response = await smtp.data(raw)
        return response.code, response.message
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        smtp.close()


async def phase_concurrent(root: Path, count: int, size_mb: float) -> dict[str, float]:
    run = await start(root / "pki")
    try:
        messages = [make_message(root / "pki", int(size_mb * MB), f"c{i}")
                    for i in range(count)]
        idle = run.peak_mb()
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(send(run, m) for m in messages))
        wall = time.perf_counter() - t0
        peak = run.peak_mb()
    finally:
        await stop(run)
    return {"sent": count, "wire_mb": len(messages[0]) / MB,
            "relayed": sum(1 for code, _ in replies if code == 250),
            "delivered": run.sink.count, "idle_mb": idle, "peak_mb": peak, "seconds": wall}


async def phase_single(root: Path, size_mb: float, *, declare_size: bool) -> dict[str, float]:
    run = await start(root / "pki")
    try:
        raw = make_message(root / "pki", int(size_mb * MB), "one")
        idle = run.peak_mb()
        t0 = time.perf_counter()
        code, _ = await send(run, raw, declare_size=declare_size)
        wall = time.perf_counter() - t0
        peak = run.peak_mb()
    finally:
        await stop(run)
    return {"wire_mb": len(raw) / MB, "code": code, "delivered": run.sink.count,
            "idle_mb": idle, "peak_mb": peak, "seconds": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--size-mb", type=float, default=5.0)
    parser.add_argument("--big-mb", type=float, default=25.0)
    parser.add_argument("--over-mb", type=float, default=40.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="passerelle-memory-"))
    try:
        conc = asyncio.run(phase_concurrent(root, args.concurrent, args.size_mb))
        big = asyncio.run(phase_single(root, args.big_mb, declare_size=True))
        over = asyncio.run(phase_single(root, args.over_mb, declare_size=False))
        over_sized = asyncio.run(phase_single(root, args.over_mb, declare_size=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"memory bounds  {os.cpu_count()} cores, gateway --workers 1, peak RSS = VmHWM")
    print("  phase                                   wire MB  outcome               "
          "idle MB  peak MB  seconds")
    print(f"  {conc['sent']:.0f} concurrent messages                 {conc['wire_mb']:7.1f}"
          f"  {conc['relayed']:.0f}/{conc['sent']:.0f} relayed, "
          f"{conc['delivered']:.0f} at sink"
          f"  {conc['idle_mb']:7.0f}  {conc['peak_mb']:7.0f}  {conc['seconds']:7.1f}")
    print(f"  one big message                         {big['wire_mb']:7.1f}"
          f"  reply {big['code']:.0f}, {big['delivered']:.0f} at sink      "
          f"  {big['idle_mb']:7.0f}  {big['peak_mb']:7.0f}  {big['seconds']:7.1f}")
    print(f"  over the limit, no SIZE declared        {over['wire_mb']:7.1f}"
          f"  reply {over['code']:.0f}, {over['delivered']:.0f} at sink      "
          f"  {over['idle_mb']:7.0f}  {over['peak_mb']:7.0f}  {over['seconds']:7.1f}")
    print(f"  over the limit, SIZE declared           {over_sized['wire_mb']:7.1f}"
          f"  reply {over_sized['code']:.0f}, {over_sized['delivered']:.0f} at sink      "
          f"  {over_sized['idle_mb']:7.0f}  {over_sized['peak_mb']:7.0f}"
          f"  {over_sized['seconds']:7.1f}")
    ok = (conc["relayed"] == conc["sent"] and conc["peak_mb"] < TARGET_PEAK_MB
          and big["code"] == 250 and over["code"] == 552 and over_sized["code"] == 552
          and over["peak_mb"] - over["idle_mb"] < 0.8 * over["wire_mb"])
    print(f"  target: all relayed, peak < {TARGET_PEAK_MB} MB, 25 MB relayed, over-limit refused"
          f" without being kept: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
