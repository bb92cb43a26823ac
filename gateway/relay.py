"""The message path: one inbound message translated, delivered, and answered with the verdict.

Rule kept here: a sender is answered only after the next hop answered (DESIGN §2), and nothing is
queued or written: if the process dies, every message not yet answered ``250`` is still the
sender's. Where the CPU work runs: a message up to ``translate_inline_bytes`` (64 KiB by
default: nearly all of them, a few ms of CPU) is translated on the event loop, because handing
it to a thread and back costs a fifth of the work and the cores are shared by processes
(``--workers``), not threads; a bigger one goes to the thread pool (crypto releases the GIL),
one at a time, so it neither stalls the other sessions nor multiplies its memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from gateway import errors
from gateway.config import Config, other
from gateway.metrics import Metrics
from gateway.translate.context import Runtime
from gateway.translate.normalise import normalise
from gateway.translate.pipeline import Translation, translate
from gateway.transport.inbound import InboundMessage
from gateway.transport.limits import RateLimiter
from gateway.transport.smtp_out import DeliveryPool, NextHop

log = structlog.get_logger("gateway.app")
_MAX_SUSPECTS = 10_000


@dataclass
class Stats:
    """Counters for the periodic summary line (and the final one at stop)."""

    in_flight: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, since the last summary

    def count(self, key: str, seconds: float) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if len(self.latencies) < 100_000:  # bounded even if summaries are rare
            self.latencies.append(seconds)

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)
        self.latencies = []

        def pct(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        return {"outcomes": dict(self.outcomes), "in_flight": self.in_flight,
                "messages": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


class MessagePath:
    """Route-checked messages in, replies out: translate, deliver, count.

    ``config``, ``runtime`` and ``hops`` are swapped whole by a reload; a message in flight
    keeps the runtime it started with.
    """

    def __init__(self, config: Config, runtime: Runtime, hops: dict[str, NextHop],
                 metrics: Metrics, *, workers: int | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self.hops = hops
        self.metrics = metrics
        self.stats = Stats()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers or max(2, os.cpu_count() or 2),
            thread_name_prefix="translate")
        # Reused TLS connections, one pool per next hop (see delivery_for).
        self._delivery: dict[str, DeliveryPool] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()  # set while no message is in flight
        self.idle.set()
        self._big_translation = asyncio.Semaphore(1)
        # Clients probing decrypted content (a padding oracle needs thousands of queries).
        self._refusals = RateLimiter(config.gateway.content_refusals_per_minute, time.monotonic)
        self._suspects: dict[str, float] = {}  # client -> held until (monotonic)

    async def process(self, message: InboundMessage) -> errors.Reply:
        source = message.network
        destination = other(source)
        direction = f"{source}->{destination}"
        started = time.perf_counter()
        self.stats.in_flight += 1
        self.metrics.in_flight.inc()
        self.idle.clear()
        bound = log.bind(trace=message.trace_id, direction=direction)
        try:
            reply = await self._relay(message, source, destination, bound)
        except Exception as exc:  # fail closed: unexpected means "try again later"
            bound.error("message.failed", error=type(exc).__name__)
            reply = errors.reply_for(exc)
        finally:
            self.stats.in_flight -= 1
            self.metrics.in_flight.dec()
            if self.stats.in_flight == 0:
                self.idle.set()
        elapsed = time.perf_counter() - started
        self.stats.count(f"{direction}:{reply.code}", elapsed)
        self.metrics.observe(direction, reply.code, elapsed)
        bound.info("message.done", reply=reply.code, status=reply.status,
                   duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return reply

    async def _relay(self, message: InboundMessage, source: str, destination: str,
                     bound: structlog.typing.FilteringBoundLogger) -> errors.Reply:
        runtime = self.runtime  # one snapshot for the whole message (reload swaps it)
        if self._held_off(message.peer):
            message.release()
            bound.warning("message.held_off", peer=message.peer,
                          reply=errors.SUSPECT_HELD_OFF.code)
            return errors.SUSPECT_HELD_OFF
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        at = dt.datetime.now(dt.UTC)
        size_in = len(message.content)
        job: Callable[[], Translation] | None = None
        try:
            # an LDAP directory is asked here, off the loop, before the pipeline reads it
            await runtime.prefetch(source, message.mail_from, message.routed_rcpts)
            job = functools.partial(
                translate, message.content,
                source=runtime.network(source), destination=runtime.network(destination),
                mail_from=runtime.reverse_sender(source, message.mail_from),
                recipients=list(message.routed_rcpts),
                map_sender=functools.partial(runtime.reverse_sender, source),
                map_recipient=functools.partial(runtime.route_recipient, source),
                at=at, hostname=self.config.gateway.hostname,
                trace_id=message.trace_id,
                normalise=functools.partial(normalise, at=at),
                max_depth=self.config.gateway.max_depth,
                max_signing_age=self.config.gateway.max_signing_age,
                known_names=runtime.names,
            )
            if size_in <= self.config.gateway.translate_inline_bytes:
                # A small message (a few ms of CPU) is translated right here: handing it to a
                # thread and back costs a fifth of the work (wake-ups, GIL hand-overs, a cold
                # cache), and the cores are shared by processes (--workers), not threads.
                translation = job()
            else:
                # Big messages go to the pool, so one of them does not stall the other
                # sessions, and one at a time: a translation holds several times the message
                # (decoded, decrypted, parsed, re-encoded); 32 of them at 5 MB would not fit
                # the memory bound.
                async with self._big_translation:
                    translation = await loop.run_in_executor(self._pool, job)
        except errors.GatewayError as exc:
            bound.warning("translate.refused", error=exc.code, reason=exc.reason,
                          reply=exc.reply.code, size_in=size_in,
                          duration_ms=round((time.perf_counter() - t0) * 1000, 1))
            self.metrics.refusals.labels(source, "translate", exc.reply.status, exc.code).inc()
            if isinstance(exc, errors.ContentRefused):
                self._count_refusal(message.peer, source, bound)
            return exc.reply
        finally:
            # the translation (or the refusal) is all that is needed now
            message.release()
            job = None
        self.metrics.stage(f"{source}->{destination}", "translate", time.perf_counter() - t0)
        # facts: sizes, layers, signer serial, the charset decisions (chosen charset, method,
        # confidence, repaired) and XDM/CDA codes: numbers and labels only, never text.
        bound.info("translate.done", recipients=len(translation.recipients),
                   duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                   **translation.facts)
        t1 = time.perf_counter()
        reply = await self._deliver_copies(translation, destination, message.trace_id, bound)
        self.metrics.stage(f"{source}->{destination}", "deliver", time.perf_counter() - t1)
        bound.info("deliver.done", reply=reply.code, status=reply.status,
                   duration_ms=round((time.perf_counter() - t1) * 1000, 1))
        return reply

    async def _deliver_copies(self, translation: Translation, destination: str, trace: str,
                              bound: structlog.typing.FilteringBoundLogger) -> errors.Reply:
        """Each sealed copy in turn (one for To/Cc, one per Bcc); the first failure is the
        answer. After a copy went through, a failure still answers as the next hop did: a
        4xx makes the sender retry the whole (a duplicate for the first readers, never a
        loss), and the partial delivery is logged."""
        reply = errors.LOCAL_ERROR  # (translate never returns no copy)
        for delivered, copy in enumerate(translation.copies):
            reply = await self.delivery_for(destination).deliver(
                translation.mail_from, copy.recipients, copy.raw, trace=trace)
            if reply.code != errors.OK.code:
                if delivered:
                    bound.warning("deliver.partial", copies=len(translation.copies),
                                  delivered=delivered, reply=reply.code, status=reply.status)
                return reply
        return reply

    def delivery_for(self, destination: str) -> DeliveryPool:
        """The connection pool of the current next hop (a reload that builds a new hop gets a
        new pool; the old one is closed: its in-flight messages finish, then it QUITs)."""
        hop = self.hops[destination]
        pool = self._delivery.get(destination)
        if pool is None or pool.hop is not hop:
            if pool is not None:
                task = asyncio.get_running_loop().create_task(pool.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            pool = self._delivery[destination] = DeliveryPool(
                hop, on_failure=functools.partial(self._next_hop_failed, destination))
        return pool

    def _next_hop_failed(self, destination: str, cause: str) -> None:
        self.metrics.next_hop_failures.labels(destination, cause).inc()

    async def close_delivery(self) -> None:
        """QUIT the idle next-hop connections."""
        await asyncio.gather(*(pool.close() for pool in self._delivery.values()),
                             *self._retiring, return_exceptions=True)

    # --- clients probing decrypted content -----------------------------------------------------

    def _held_off(self, peer: str) -> bool:
        until = self._suspects.get(peer)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._suspects[peer]
        return False

    def _count_refusal(self, peer: str, network: str,
                       bound: structlog.typing.FilteringBoundLogger) -> None:
        """Count a refusal after decryption; past the limit, hold the client off."""
        self.metrics.content_refused.labels(network).inc()
        g = self.config.gateway
        if g.content_refusals_per_minute <= 0 or self._refusals.allow(peer):
            return
        if len(self._suspects) >= _MAX_SUSPECTS:  # bounded: the oldest hold goes first
            self._suspects.pop(next(iter(self._suspects)))
        self._suspects[peer] = time.monotonic() + g.suspect_hold_seconds
        self.metrics.suspects.labels(network).inc()
        bound.warning("attack.suspected", peer=peer, network=network,
                      kind="content refused after decryption",
                      limit_per_minute=g.content_refusals_per_minute,
                      hold_s=g.suspect_hold_seconds)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
