"""Metrics and health over HTTP: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``.

Rule kept here: numbers only. Labels are directions, outcomes, reply codes, stages, networks
and configuration keys — never an address or anything of a message. The endpoint is a small
asyncio server on the application's loop (no thread), answering GET only, bounded in request
size and time; it is meant for a loopback or management interface.

With ``--workers N`` every worker writes its numbers to memory-mapped files of one directory
(prometheus-client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``, set by ``gateway run``
before anything imports the library, on a tmpfs) and any worker's ``/metrics`` answers the
sum over all workers (gauges: the live sum, or the min/max where a sum means nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_MAX_REQUEST = 8192


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, bool]


class Metrics:
    """Every metric of one gateway process, in its own registry (tests make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "passerelle_messages", "Messages answered, by direction, outcome and reply code",
            ["direction", "outcome", "code"], registry=r)
        self.stage_seconds = Histogram(
            "passerelle_stage_seconds", "Time per stage (translate, deliver, total)",
            ["direction", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("passerelle_in_flight", "Messages being processed", registry=r,
                               multiprocess_mode="livesum")
        self.limits = Gauge("passerelle_limit", "Configured limits", ["name"], registry=r,
                            multiprocess_mode="max")
        self.cert_days = Gauge("passerelle_certificate_days_left",
                               "Days until a configured certificate expires", ["key"], registry=r,
                               multiprocess_mode="min")
        self.crl_next_update = Gauge(
            "passerelle_crl_next_update_timestamp_seconds",
            "When a loaded CRL must be replaced (its nextUpdate, Unix time); key: the file's "
            "configuration key and the CRL's place in it", ["key"], registry=r,
            multiprocess_mode="min")
        self.refusals = Counter(
            "passerelle_refusals", "Refusals by stage (MAIL, RCPT, DATA, before STARTTLS, "
            "translate), enhanced status and error type", ["network", "stage", "status", "error"],
            registry=r)
        self.tls_failures = Counter(
            "passerelle_tls_failures", "Inbound TLS failures (handshake, client certificate)",
            ["network", "kind"], registry=r)
        self.next_hop_failures = Counter(
            "passerelle_next_hop_failures", "Deliveries the next hop did not accept, by cause",
            ["network", "cause"], registry=r)
        self.content_refused = Counter(
            "passerelle_content_refused", "Refusals after a CBC decryption (a padding-oracle "
            "probe looks like many of these)", ["network"], registry=r)
        self.suspects = Counter(
            "passerelle_suspected_attacks", "Clients held off after too many refusals of "
            "decrypted content", ["network"], registry=r)
        self.reloads = Counter("passerelle_reloads", "Configuration reloads", ["result"],
                               registry=r)

    def observe(self, direction: str, code: int, seconds: float) -> None:
        outcome = "relayed" if code < 300 else "deferred" if code < 500 else "refused"
        self.messages.labels(direction, outcome, str(code)).inc()
        self.stage_seconds.labels(direction, "total").observe(seconds)

    def stage(self, direction: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(direction, stage).observe(seconds)

    def set_certificates(self, expiries: dict[str, dt.datetime], now: dt.datetime) -> None:
        for key, not_after in expiries.items():
            self.cert_days.labels(key).set((not_after - now).total_seconds() / 86_400)

    def set_crls(self, next_updates: dict[str, dt.datetime]) -> None:
        for key, moment in next_updates.items():
            self.crl_next_update.labels(key).set(moment.timestamp())

    def render(self) -> bytes:
        if os.environ.get(MULTIPROCESS_DIR):  # every worker's numbers, summed
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


def worker_gone(pid: int) -> None:
    """A worker died or stopped: its live gauges (in flight) leave the sum; its counters stay
    (a sum that went down would read as a counter reset)."""
    if os.environ.get(MULTIPROCESS_DIR):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


ReadinessProbe = Callable[[], Awaitable[Readiness]]


async def serve_http(host: str, port: int, metrics: Metrics,
                     readiness: ReadinessProbe) -> asyncio.AbstractServer:
    """Start the endpoint on the running loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        request = head.split(b"\r\n", 1)[0].split()
        status, ctype, body = 404, "text/plain", b"not found\n"
        if len(request) != 3 or request[0] != b"GET":
            status, body = 405, b"GET only\n"
        elif request[1] == b"/metrics":
            status, ctype, body = 200, "text/plain; version=0.0.4", metrics.render()
        elif request[1] == b"/healthz":
            status, body = 200, b"alive\n"
        elif request[1] == b"/readyz":
            state = await readiness()
            lines = "".join(f"{k} {'ok' if v else 'FAIL'}\n" for k, v in state.checks.items())
            status, body = (200 if state.ready else 503), lines.encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    # reuse_port: with --workers N every worker serves its own /metrics on the shared port
    return await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST, reuse_port=True)


async def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """A TCP connection to a next hop can be opened (readiness, not a delivery)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
