"""The running gateway: configuration wired to listeners, pollers, the message path, metrics.

Rule kept here: this module wires and runs the lifecycle, and decides nothing about a message:
the listeners and pollers check envelopes through the runtime's routing (our callbacks), and
each accepted message goes to ``gateway.relay.MessagePath``, which answers with the next hop's
verdict. Start, readiness, SIGHUP reload (all or nothing: a bad configuration keeps the running
one), drain on SIGTERM, and ``--workers N`` supervision live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from gateway import errors
from gateway.config import Config, NetworkConfig, load_config, read_certificates, read_crls
from gateway.errors import ConfigError
from gateway.metrics import Metrics, Readiness, reachable, serve_http, worker_gone
from gateway.obs import (
    configure_logging,
    disable_core_dumps,
    lock_memory,
    pseudonymise,
    return_freed_memory,
    set_pseudonym_key,
    stop_with_parent,
)
from gateway.relay import MessagePath
from gateway.translate.context import NETWORKS, Runtime, build_runtime
from gateway.translate.pipeline import NetworkRuntime
from gateway.transport import tls
from gateway.transport.imap_in import Bouncer, ImapPoller
from gateway.transport.imap_session import ImapSettings
from gateway.transport.inbound import ListenerSettings
from gateway.transport.limits import SharedCounts
from gateway.transport.smtp_in import start_listener
from gateway.transport.smtp_out import NextHop

log = structlog.get_logger("gateway.app")


EXPIRY_WARNINGS = (30, 7)  # days before expiry at which a certificate gets a warning


def certificate_expiries(config: Config) -> dict[str, dt.datetime]:
    """The not-after date of every certificate the configuration names for the gateway."""
    out: dict[str, dt.datetime] = {}
    for name in NETWORKS:
        net = config.network(name)
        files = {"smime_cert": net.smime_cert, "tls_cert": net.tls_cert,
                 "relay_tls_cert": net.relay_tls_cert}
        for key, path in files.items():
            if path is None:
                continue
            try:
                cert = read_certificates(path)[0]
            except ConfigError:
                continue  # check-config reports unreadable files; nothing to add here
            out[f"networks.{name}.{key}"] = cert.not_valid_after_utc
    return out


def crl_next_updates(config: Config) -> dict[str, dt.datetime]:
    """The nextUpdate of every CRL the configuration loads, by file key and place in it."""
    out: dict[str, dt.datetime] = {}
    for name in NETWORKS:
        for index, path in enumerate(config.network(name).crls):
            try:
                crls = read_crls([path])
            except ConfigError:
                continue  # check-config reports unreadable files
            for place, crl in enumerate(crls):
                if crl.next_update_utc is not None:
                    out[f"networks.{name}.crls[{index}]#{place}"] = crl.next_update_utc
    return out


# Read when the process or its listeners start; a reload cannot change them.
_START_ONLY_GATEWAY = (
    "metrics_listen", "pseudonym_key_file", "log_format", "log_level", "mlockall",
    "max_message_bytes", "max_recipients", "max_sessions", "max_sessions_per_ip",
    "command_timeout_seconds", "data_timeout_seconds", "starttls_seconds", "session_seconds",
    "max_idle_commands", "rate_limit_per_minute", "translate_inline_bytes", "hostname")
_START_ONLY_NETWORK = ("listen", "require_starttls", "proxy_protocol", "client_ca",
                       "require_client_cert", "tls_cert", "tls_key", "imap")


def needs_restart(old: Config, new: Config) -> list[str]:
    """The configuration keys a reload changed but cannot apply (they need a restart).
    The listener's certificate (tls_cert, tls_key) is reloaded in place: not listed."""
    changed = [f"gateway.{key}" for key in _START_ONLY_GATEWAY
               if getattr(old.gateway, key, None) != getattr(new.gateway, key, None)]
    for name in NETWORKS:
        before, after = old.network(name), new.network(name)
        changed += [f"networks.{name}.{key}" for key in _START_ONLY_NETWORK
                    if key not in ("tls_cert", "tls_key")
                    and getattr(before, key, None) != getattr(after, key, None)]
    return changed


def check_certificates(config: Config, now: dt.datetime) -> list[tuple[str, int]]:
    """Warn about every configured certificate that expires within 30 (and 7) days."""
    found: list[tuple[str, int]] = []
    for key, not_after in certificate_expiries(config).items():
        days = (not_after - now).days
        if days <= EXPIRY_WARNINGS[0]:
            level = "error" if days <= EXPIRY_WARNINGS[1] else "warning"
            getattr(log, level)("cert.expiring", key=key, days_left=days)
            found.append((key, days))
    return found


def _split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Gateway:
    """One gateway process: two listeners, one pipeline, one delivery path per network."""

    def __init__(self, config: Config, runtime: Runtime, *, workers: int | None = None,
                 shared_ips: Mapping[str, SharedCounts] | None = None) -> None:
        self.metrics = Metrics()
        self._shared_ips = dict(shared_ips or {})  # per network, across --workers
        self.config = config  # also read by _next_hop
        self._started_with = config  # what the listeners and the process run with
        self.path = MessagePath(config, runtime, {}, self.metrics, workers=workers)
        self.path.hops = {name: self._next_hop(config.network(name)) for name in NETWORKS}
        self.stats = self.path.stats
        self.process = self.path.process
        self._servers: list[asyncio.AbstractServer] = []
        self._server_contexts: dict[str, ssl.SSLContext] = {}
        self._pollers: list[ImapPoller] = []
        self._poller_tasks: list[asyncio.Task[None]] = []
        self._publish_settings()

    @property
    def runtime(self) -> Runtime:
        return self.path.runtime

    @property
    def _hops(self) -> dict[str, NextHop]:
        return self.path.hops

    def _publish_settings(self) -> None:
        """Every configured limit as a gauge, and the days left of every certificate."""
        g = self.config.gateway
        for name in ("max_message_bytes", "max_recipients", "max_sessions",
                     "max_sessions_per_ip", "rate_limit_per_minute", "max_depth",
                     "data_timeout_seconds", "command_timeout_seconds", "drain_seconds"):
            self.metrics.limits.labels(name).set(float(getattr(g, name)))
        self.metrics.set_certificates(certificate_expiries(self.config),
                                      dt.datetime.now(dt.UTC))
        self.metrics.set_crls(crl_next_updates(self.config))

    async def readiness(self) -> Readiness:
        """Ready = listeners serving, our certificates valid now, next hops reachable."""
        now = dt.datetime.now(dt.UTC)
        checks = {"listeners": bool(self._servers) and all(
            s.is_serving() for s in self._servers)}
        checks["certificates"] = all(t > now for t in certificate_expiries(self.config).values())
        hops = await asyncio.gather(*(reachable(h.host, h.port) for h in self._hops.values()))
        checks.update({f"next_hop_{n}": ok for n, ok in zip(self._hops, hops, strict=True)})
        return Readiness(all(checks.values()), checks)

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
        self._server_contexts[net.name] = context
        name = net.name

        def peer_cert_ok(der: bytes) -> bool:  # the current store: a reload swaps CRLs in
            return tls.peer_certificate_trusted(der, self.runtime.network(name).store)

        return ListenerSettings(
            network=net.name, host=host, port=port, hostname=g.hostname,
            ssl_context=context, require_client_cert=net.require_client_cert,
            peer_cert_ok=peer_cert_ok, max_message_bytes=g.max_message_bytes,
            max_recipients=g.max_recipients, command_timeout=float(g.command_timeout_seconds),
            data_budget=float(g.data_timeout_seconds), max_sessions=g.max_sessions,
            max_sessions_per_ip=g.max_sessions_per_ip,
            starttls_seconds=g.starttls_seconds, session_seconds=g.session_seconds,
            max_idle_commands=g.max_idle_commands,
            shared_ips=self._shared_ips.get(net.name),
            rate_limit_per_minute=g.rate_limit_per_minute, pseudonymise=pseudonymise,
            proxy_protocol=net.proxy_protocol, require_starttls=net.require_starttls,
            on_refusal=lambda stage, error, reply: self.metrics.refusals.labels(
                net.name, stage, reply.status, error).inc(),
            on_tls_failure=lambda kind: self.metrics.tls_failures.labels(net.name, kind).inc(),
        )

    async def start(self, *, reuse_port: bool = False) -> None:
        for name in NETWORKS:
            net = self.config.network(name)
            if not net.listen:
                continue
            try:
                server = await start_listener(
                    self._listener(net),
                    check_sender=functools.partial(self._check_sender, name),
                    route_recipient=functools.partial(self._route_recipient_async, name),
                    process=self.process,
                    reuse_port=reuse_port,
                )
            except OSError as exc:  # port taken, address not local, privileged port
                log.error("listener.failed", network=name, address=net.listen,
                          error=exc.strerror or str(exc))
                raise
            self._servers.append(server)
            log.info("listener.started", network=name, address=net.listen)
        self._start_pollers()

    def _start_pollers(self) -> None:
        """One IMAP poller per configured mailbox: same routing, same pipeline, same delivery."""
        g = self.config.gateway
        for name in NETWORKS:
            net = self.config.network(name)
            if net.imap is None:
                continue
            poller = ImapPoller(
                ImapSettings.from_config(name, net.imap, max_message_bytes=g.max_message_bytes,
                                         process_budget=float(g.data_timeout_seconds)),
                check_sender=functools.partial(self._check_sender, name),
                route_recipient=functools.partial(self._route_recipient, name),
                prepare_recipient=functools.partial(self.runtime_prefetch_recipient, name),
                process=self.process,
                bounce=Bouncer(hostname=g.hostname,
                               runtime=functools.partial(self.runtime_of, name),
                               hop=functools.partial(self.hop_of, name)))
            self._pollers.append(poller)
            self._poller_tasks.append(asyncio.create_task(poller.run()))
            log.info("poller.started", network=name)

    def runtime_of(self, name: str) -> NetworkRuntime:
        return self.runtime.network(name)

    def hop_of(self, name: str) -> NextHop:
        return self._hops[name]

    # Routing reads the runtime of the moment, so a reload (SIGHUP) applies to the next command.
    def _check_sender(self, network: str, address: str) -> str:
        return self.runtime.check_sender(network, address, strict=False)

    def _route_recipient(self, network: str, address: str) -> str:
        # A user who has a certificate on the source network is reached on that network, not
        # through the gateway (a colleague in Cc of a mailbox message, a mistyped route).
        with contextlib.suppress(errors.DirectoryUnavailable):
            if self.runtime.network(network).directory.lookup(address):
                raise errors.RecipientRefused("recipient is a user of the source network")
        return self.runtime.route_recipient(network, address)

    async def runtime_prefetch_recipient(self, network: str, address: str) -> None:
        await self.runtime.prefetch_recipient(network, address)

    async def _route_recipient_async(self, network: str, address: str) -> str:
        # an alias only the destination's LDAP directory knows: asked here, off the loop
        await self.runtime.prefetch_recipient(network, address)
        return self._route_recipient(network, address)

    # --- reload and certificate lifecycle ---------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the configuration and every file it names; swap it in only if all is well.

        Sessions in progress are not dropped: a message already being translated keeps the
        runtime it started with, the next one gets the new one.
        """
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_config, self.config.path)
            runtime = await loop.run_in_executor(None, build_runtime, config)
            for name, context in self._server_contexts.items():
                net = config.network(name)
                if net.tls_cert is not None and net.tls_key is not None:
                    context.load_cert_chain(net.tls_cert, net.tls_key)
        except ConfigError as exc:
            log.error("reload.failed", problems=[str(p) for p in exc.problems])
            self.metrics.reloads.labels("failed").inc()
            return False
        except (OSError, ValueError, errors.GatewayError) as exc:
            log.error("reload.failed", error=type(exc).__name__)
            self.metrics.reloads.labels("failed").inc()
            return False
        self.path.config = config
        self.path.runtime = runtime
        self.path.hops = {name: self._next_hop(config.network(name)) for name in NETWORKS}
        self.config = config
        self._publish_settings()
        self.metrics.reloads.labels("done").inc()
        stale = needs_restart(self._started_with, config)
        if stale:  # read once, by the listeners or the process: the old values stay in force
            log.warning("reload.needs_restart", keys=stale)
        log.info("reload.done", warnings=len(config.warnings), needs_restart=len(stale))
        log_warnings(config)
        check_certificates(config, dt.datetime.now(dt.UTC))
        return True

    # --- lifecycle --------------------------------------------------------------------------

    async def stop_accepting(self) -> None:
        for poller in self._pollers:
            poller.stop()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=0.1)

    async def drain(self, budget: float) -> bool:
        """Wait for in-flight messages to be answered; False if the budget ran out."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.path.idle.wait(), timeout=budget)
        except TimeoutError:
            return False
        if self._poller_tasks:  # pollers finish the message they hold, then log out
            left = max(0.1, budget - (time.monotonic() - started))
            _, pending = await asyncio.wait(self._poller_tasks, timeout=left)
            for task in pending:
                task.cancel()
            return not pending
        return True

    async def close_delivery(self) -> None:
        """QUIT the idle next-hop connections."""
        await self.path.close_delivery()

    def close(self) -> None:
        self.path.close()


async def _serve_metrics(address: str, gateway: Gateway) -> asyncio.AbstractServer:
    host, port = _split_hostport(address)
    try:
        http = await serve_http(host, port, gateway.metrics, gateway.readiness)
    except OSError as exc:
        log.error("listener.failed", network="metrics", address=address,
                  error=exc.strerror or str(exc))
        raise
    log.info("metrics.started", address=address)
    return http


def log_warnings(config: Config) -> None:
    """What check-config would warn about (a CRL past its next update, a secret readable by
    others...), once at start and after each reload, so the operator's log says it; and the
    size and age of each domains file loaded."""
    for warning in config.warnings:
        log.warning("config.warning", warning=warning)
    for name in NETWORKS:
        net = config.network(name)
        if net.domains_file is None:
            continue
        with contextlib.suppress(OSError):
            age = (time.time() - net.domains_file.stat().st_mtime) / 86_400
            log.info("domains.loaded", network=name, file=net.domains_file.name,
                     domains=net.file_domains, age_days=round(age, 1))


async def serve(config: Config, *, reuse_port: bool = False,
                shared_ips: Mapping[str, SharedCounts] | None = None) -> int:
    runtime = build_runtime(config)
    gateway = Gateway(config, runtime, shared_ips=shared_ips)
    http = None
    try:
        await gateway.start(reuse_port=reuse_port)
        if config.gateway.metrics_listen:
            http = await _serve_metrics(config.gateway.metrics_listen, gateway)
    except OSError:  # logged as listener.failed: an operator's error, not a crash
        await gateway.stop_accepting()
        gateway.close()
        return 2
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
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def housekeeping() -> None:
        last_check = 0.0
        while True:
            await asyncio.sleep(gateway.config.gateway.summary_seconds)
            log.info("summary", **gateway.stats.summary())
            if time.monotonic() - last_check > 86_400:  # expiry warnings once a day
                last_check = time.monotonic()
                check_certificates(gateway.config, dt.datetime.now(dt.UTC))
                gateway._publish_settings()

    check_certificates(config, dt.datetime.now(dt.UTC))
    keeper = loop.create_task(housekeeping())
    log_warnings(config)
    log.info("gateway.ready", hostname=config.gateway.hostname, pid=os.getpid())
    await stop.wait()
    keeper.cancel()
    if http is not None:
        http.close()
    await gateway.stop_accepting()
    drained = await gateway.drain(float(config.gateway.drain_seconds))
    await gateway.close_delivery()
    log.info("gateway.stopped", drained=drained, **gateway.stats.summary())
    gateway.close()
    return 0


def run(config_path: Path, workers: int | None = None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        # Logging is not set up without a configuration: the same JSON lines, by hand.
        for problem in exc.problems:
            print(json.dumps({"event": "config.invalid", "level": "error", "problem": str(problem),
                              "timestamp": dt.datetime.now(dt.UTC).isoformat()}),
                  file=sys.stderr)
        return 2
    configure_logging(config.gateway.log_format, config.gateway.log_level)
    disable_core_dumps()
    return_freed_memory()
    if config.gateway.mlockall and not lock_memory():
        log.error("mlockall.failed", hint="raise RLIMIT_MEMLOCK (LimitMEMLOCK=infinity)")
        return 2
    if config.gateway.pseudonym_key_file is not None:
        set_pseudonym_key(config.gateway.pseudonym_key_file.read_bytes().strip())
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count <= 1:
        return asyncio.run(serve(config))
    return supervise(config, count)


def supervise(config: Config, count: int) -> int:
    """Run ``count`` worker processes on the same ports (SO_REUSEPORT), so one host uses all
    its cores: Python runs the pipeline on one core per process. The parent only forwards
    signals and restarts a worker that died while not stopping. Workers share one thing: the
    per-address session counts (``max_sessions_per_ip`` holds for the host); everything else
    is per worker, like several instances (rate limits, see docs/scale-out.md)."""
    children: dict[int, int] = {}  # pid -> worker slot
    stopping = False
    # max_sessions_per_ip holds for the host: counts shared by the workers (made before fork)
    shared: dict[str, SharedCounts] = {name: SharedCounts(count) for name in NETWORKS}

    def spawn(slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: its own loop, listeners, thread pool
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            # A supervisor that dies (SIGKILL, OOM) takes its workers along: they drain and
            # exit instead of serving on, orphaned and unmanaged, on the shared ports.
            stop_with_parent()
            if os.getppid() != parent:  # it died before the line above
                os._exit(0)
            structlog.contextvars.bind_contextvars(worker=slot)
            for table in shared.values():
                table.row = slot
            code = 1
            try:
                code = asyncio.run(serve(config, reuse_port=True, shared_ips=shared))
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for slot in range(count):
        spawn(slot)
    log.info("supervisor.ready", workers=count, pid=os.getpid())
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid)
        worker_gone(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code == 2 and not stopping:  # it could not start (a port taken): neither can others
            log.error("worker.failed_to_start", worker=slot)
            stopping = True
            status = 2
            forward(signal.SIGTERM, None)
            continue
        if not stopping:
            log.error("worker.died", worker=slot, code=code)
            time.sleep(0.5)  # no tight loop if a worker cannot start at all
            for table in shared.values():  # the dead worker's sessions are gone
                table.clear_row(slot)
            spawn(slot)
        elif code != 0 and status == 0:
            status = 1
    log.info("supervisor.stopped", status=status)
    return status
