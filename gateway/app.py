"""The running gateway: configuration wired to listeners, the pipeline and delivery.

Rule kept here: a sender is answered only after the next hop answered (DESIGN §2). For each
message: route at the envelope (done by the listener through our callbacks), translate in a
worker thread (crypto releases the GIL; the event loop never runs it), deliver, and return the
downstream's verdict as the reply. Nothing is queued, nothing is written: if the process dies,
every message not yet answered ``250`` is still the sender's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway import errors
from gateway.config import Config, NetworkConfig, load_config
from gateway.obs import configure_logging, disable_core_dumps, pseudonymise, set_pseudonym_key
from gateway.translate import routing
from gateway.translate.context import NETWORKS, Runtime, build_runtime, other
from gateway.translate.pipeline import translate
from gateway.transport import tls
from gateway.transport.smtp_in import InboundMessage, ListenerSettings, start_listener
from gateway.transport.smtp_out import NextHop, deliver

log = structlog.get_logger("gateway.app")


@dataclass
class Stats:
    in_flight: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Gateway:
    """One gateway process: two listeners, one pipeline, one delivery path per network."""

    def __init__(self, config: Config, runtime: Runtime, *, workers: int | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self.stats = Stats()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers or max(2, os.cpu_count() or 2),
            thread_name_prefix="translate")
        self._servers: list[asyncio.AbstractServer] = []
        self._hops: dict[str, NextHop] = {name: self._next_hop(config.network(name))
                                          for name in NETWORKS}
        self._idle = asyncio.Event()
        self._idle.set()

    # --- wiring -----------------------------------------------------------------------------

    def _next_hop(self, net: NetworkConfig) -> NextHop:
        host, port = _split_hostport(net.relay)
        context = tls.client_context(
            ca_files=[net.relay_ca] if net.relay_ca else list(net.trust_anchors),
            client_cert=net.relay_tls_cert, client_key=net.relay_tls_key,
            check_hostname=net.relay_tls_verify,
        )
        budget = float(self.config.gateway.data_timeout_seconds)
        return NextHop(host=host, port=port, ssl_context=context,
                       timeout_seconds=max(1.0, budget * 0.8),
                       local_hostname=self.config.gateway.hostname)

    def _listener(self, net: NetworkConfig) -> ListenerSettings:
        host, port = _split_hostport(net.listen or "")
        g = self.config.gateway
        context = tls.server_context(net.tls_cert, net.tls_key,
                                     client_ca=net.client_ca)
        store = self.runtime.network(net.name).store

        def peer_cert_ok(der: bytes) -> bool:
            return tls.peer_certificate_trusted(der, store)

        return ListenerSettings(
            network=net.name, host=host, port=port, hostname=g.hostname,
            ssl_context=context, require_client_cert=net.require_client_cert,
            peer_cert_ok=peer_cert_ok, max_message_bytes=g.max_message_bytes,
            max_recipients=g.max_recipients, command_timeout=float(g.command_timeout_seconds),
            data_budget=float(g.data_timeout_seconds), max_sessions=g.max_sessions,
            max_sessions_per_ip=g.max_sessions_per_ip,
            rate_limit_per_minute=g.rate_limit_per_minute, pseudonymise=pseudonymise,
        )

    async def start(self) -> None:
        for name in NETWORKS:
            net = self.config.network(name)
            if not net.listen:
                continue
            table = self.runtime.routing
            server = await start_listener(
                self._listener(net),
                check_sender=functools.partial(routing.check_sender, table, name),
                route_recipient=functools.partial(routing.route_recipient, table, name),
                process=self.process,
            )
            self._servers.append(server)
            log.info("listener.started", network=name, address=net.listen)

    # --- the message path -------------------------------------------------------------------

    async def process(self, message: InboundMessage) -> errors.Reply:
        source = message.network
        destination = other(source)
        direction = f"{source}->{destination}"
        started = time.perf_counter()
        self.stats.in_flight += 1
        self._idle.clear()
        bound = log.bind(trace=message.trace_id, direction=direction)
        try:
            reply = await self._relay(message, source, destination, bound)
        except Exception as exc:  # fail closed: unexpected means "try again later"
            bound.error("message.failed", error=type(exc).__name__)
            reply = errors.reply_for(exc)
        finally:
            self.stats.in_flight -= 1
            if self.stats.in_flight == 0:
                self._idle.set()
        self.stats.count(f"{direction}:{reply.code}")
        bound.info("message.done", reply=reply.code, status=reply.status,
                   duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return reply

    async def _relay(self, message: InboundMessage, source: str, destination: str,
                     bound: structlog.typing.FilteringBoundLogger) -> errors.Reply:
        runtime = self.runtime  # one snapshot for the whole message (reload swaps it)
        table = runtime.routing
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            translation = await loop.run_in_executor(self._pool, functools.partial(
                translate, message.content,
                source=runtime.network(source), destination=runtime.network(destination),
                mail_from=routing.reverse_sender(table, source, message.mail_from),
                recipients=list(message.routed_rcpts),
                map_sender=functools.partial(routing.reverse_sender, table, source),
                at=dt.datetime.now(dt.UTC), hostname=self.config.gateway.hostname,
                trace_id=message.trace_id, received_from=message.peer,
                max_depth=self.config.gateway.max_depth,
            ))
        except errors.GatewayError as exc:
            bound.warning("translate.refused", error=exc.code, reason=exc.reason,
                          reply=exc.reply.code, size_in=len(message.content),
                          duration_ms=round((time.perf_counter() - t0) * 1000, 1))
            return exc.reply
        bound.info("translate.done", size_in=len(message.content),
                   size_out=len(translation.raw), layers=translation.facts.get("layers"),
                   signer_serial=translation.facts.get("signer_serial"),
                   recipients=len(translation.recipients),
                   duration_ms=round((time.perf_counter() - t0) * 1000, 1))
        t1 = time.perf_counter()
        reply = await deliver(self._hops[destination], translation.mail_from,
                              translation.recipients, translation.raw)
        bound.info("deliver.done", reply=reply.code, status=reply.status,
                   duration_ms=round((time.perf_counter() - t1) * 1000, 1))
        return reply

    # --- lifecycle --------------------------------------------------------------------------

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=0.1)

    async def drain(self, budget: float) -> bool:
        """Wait for in-flight messages to be answered; False if the budget ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=budget)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def serve(config: Config) -> int:
    runtime = build_runtime(config)
    gateway = Gateway(config, runtime)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:  # a second signal: leave now, senders keep what was not answered
            log.warning("gateway.exit_now", signal=signum)
            os._exit(1)
        log.info("gateway.stopping", signal=signum, in_flight=gateway.stats.in_flight)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info("gateway.ready", hostname=config.gateway.hostname, pid=os.getpid())
    await stop.wait()
    await gateway.stop_accepting()
    drained = await gateway.drain(float(config.gateway.drain_seconds))
    log.info("gateway.stopped", drained=drained, in_flight=gateway.stats.in_flight,
             outcomes=gateway.stats.outcomes)
    gateway.close()
    return 0


def run(config_path: Path) -> int:
    from gateway.errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}")
        return 2
    configure_logging(config.gateway.log_format, config.gateway.log_level)
    disable_core_dumps()
    if config.gateway.pseudonym_key_file is not None:
        set_pseudonym_key(config.gateway.pseudonym_key_file.read_bytes().strip())
    return asyncio.run(serve(config))
