"""Recipients' certificates from a network's LDAP directory (``[networks.X.ldap]``).

Rules kept here:
- The event loop never waits on LDAP: ``prefetch`` (awaited by the message path before the
  translation, for the recipients and the sender's counterpart) runs the queries in a small
  thread pool, each bounded by ``timeout_seconds``; ``lookup`` (what the pipeline calls, as for
  a folder) answers from what was fetched.
- Found certificates are kept ``cache_seconds`` (bounded by ``cache_size``), "no such user"
  ``negative_cache_seconds``. A directory that cannot be reached or answers an error raises
  ``DirectoryUnavailable`` (``451 4.4.3``: the sender retries): never a relay without a
  certificate check, never a bounce because a server was down. A certificate is kept only if
  it names the address it was found under; the trust store judges it as a folder's.
- The connection is TLS (``ldaps://``, or StartTLS on ``ldap://``; clear text only for a
  loopback directory, which ``check-config`` enforces), verified against ``ca_file``.

ldap3 (pure Python, synchronous) runs in the pool: the maintained asynchronous clients
(bonsai) need the C libldap at build time, which a fresh machine's ``pip install`` lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from cryptography import x509

from gateway.config.addresses import lookup_key
from gateway.config.settings import LdapConfig
from gateway.errors import DirectoryUnavailable, MalformedError
from gateway.memo import Memo
from gateway.smime.trust import email_addresses

log = structlog.get_logger("gateway.ldap")
T = TypeVar("T")

_POOL_THREADS = 4


def _escape(value: str) -> str:
    """RFC 4515 escaping of a value put into a filter (``*``, ``(``, ``)``, ``\\``, NUL)."""
    out = []
    for char in value:
        if char in "*()\\\x00":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _certificates(values: Iterable[Any]) -> list[x509.Certificate]:
    certs = []
    for value in values:
        if isinstance(value, bytes | bytearray):
            with contextlib.suppress(ValueError):
                certs.append(x509.load_der_x509_certificate(bytes(value)))
    return certs


class LdapDirectory:
    """A ``CertificateDirectory`` backed by LDAP, with a bounded TTL cache."""

    def __init__(self, config: LdapConfig, *, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.config = config
        self.clock = clock
        self._cache: Memo[str, tuple[float, tuple[x509.Certificate, ...]]] = Memo(
            config.cache_size)
        self._aliases: Memo[str, tuple[float, str | None]] = Memo(config.cache_size)
        self._pool = ThreadPoolExecutor(max_workers=_POOL_THREADS,
                                        thread_name_prefix="passerelle-ldap")
        self._connections: queue.LifoQueue[Any] = queue.LifoQueue()
        self._password: str | None = None
        if config.password_file is not None:
            self._password = config.password_file.read_text("utf-8").strip()
        self._lock = threading.Lock()
        self.queries = 0  # tests and metrics: the round trips made

    # --- what the pipeline calls --------------------------------------------------------------

    def lookup(self, address: str) -> list[x509.Certificate]:
        certs: tuple[x509.Certificate, ...] = self._known(self._cache, address, "recipient")
        return list(certs)

    async def prefetch(self, addresses: Iterable[str]) -> None:
        """Query the directory for every address not freshly known; one query per address,
        concurrently. Raises ``DirectoryUnavailable`` if one cannot be answered."""
        await self._ask(self._cache, addresses, lambda a: tuple(self._query(a)))

    # --- "address of alias" ------------------------------------------------------------------

    def resolve_alias(self, alias: str) -> str | None:
        """The user's own address for ``alias`` (what ``prefetch_aliases`` found), None when
        the directory knows no such alias or has no ``alias_filter``."""
        if self.config.alias_filter is None:
            return None
        return self._known(self._aliases, alias, "alias")

    async def prefetch_aliases(self, aliases: Iterable[str]) -> None:
        if self.config.alias_filter is not None:
            await self._ask(self._aliases, aliases, self._query_alias)

    # --- the cache and the pool ---------------------------------------------------------------

    def _known(self, cache: Memo[str, tuple[float, T]], key: str, what: str) -> T:
        entry = cache.get(lookup_key(key))
        if entry is None or entry[0] < self.clock():
            raise DirectoryUnavailable(f"{what} not looked up in the directory")
        return entry[1]

    async def _ask(self, cache: Memo[str, tuple[float, T]], keys: Iterable[str],
                   query: Callable[[str], T]) -> None:
        """``query`` each key not freshly in ``cache``, in the pool, concurrently, within
        ``timeout_seconds``; an answer is kept ``cache_seconds``, "nothing" (an empty
        answer) ``negative_cache_seconds``."""
        now = self.clock()
        wanted = [k for k in dict.fromkeys(lookup_key(k) for k in keys)
                  if (entry := cache.get(k)) is None or entry[0] < now]
        if not wanted:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                found = await asyncio.gather(*(
                    loop.run_in_executor(self._pool, query, key) for key in wanted))
        except TimeoutError:
            log.warning("ldap.unavailable", error="timeout",
                        timeout_s=self.config.timeout_seconds)
            raise DirectoryUnavailable("directory did not answer in time") from None
        except DirectoryUnavailable as exc:
            log.warning("ldap.unavailable", error=exc.reason)
            raise
        now = self.clock()
        for key, answer in zip(wanted, found, strict=True):
            ttl = self.config.cache_seconds if answer else self.config.negative_cache_seconds
            cache.put(key, (now + ttl, answer))

    def _query_alias(self, alias: str) -> str | None:
        """The entry found under ``alias``: its address that is not the alias itself (the
        routing then checks it is on this network)."""
        cfg = self.config
        search = (cfg.alias_filter or "").replace("{address}", _escape(alias))
        attribute = cfg.address_attribute
        for entry in self._search(search, [attribute]):
            for value in _values(entry, attribute):
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                candidate = lookup_key(text)
                if candidate != alias and "@" in candidate:
                    return candidate
        return None

    def close(self) -> None:
        while not self._connections.empty():
            with contextlib.suppress(Exception):
                self._connections.get_nowait().unbind()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- in the pool --------------------------------------------------------------------------

    def _connect(self) -> Any:
        import ldap3

        cfg = self.config
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                        ca_certs_file=str(cfg.ca_file) if cfg.ca_file else None)
        try:
            server = ldap3.Server(cfg.url, use_ssl=cfg.url.startswith("ldaps://"), tls=tls,
                                  connect_timeout=cfg.timeout_seconds, get_info=ldap3.NONE)
            connection = ldap3.Connection(
                server, user=cfg.bind_dn, password=self._password,
                authentication=ldap3.SIMPLE if cfg.bind_dn else ldap3.ANONYMOUS,
                receive_timeout=max(1, math.ceil(cfg.timeout_seconds)),  # an int (SO_RCVTIMEO)
                raise_exceptions=True)
            connection.open()
            if cfg.url.startswith("ldap://") and cfg.starttls:
                connection.start_tls()
            connection.bind()
        except Exception as exc:  # ldap3 raises more than its own types: fail closed (451)
            raise DirectoryUnavailable(f"directory unreachable: {type(exc).__name__}") from None
        return connection

    def _query(self, address: str) -> list[x509.Certificate]:
        cfg = self.config
        search = cfg.certificate_filter.replace("{address}", _escape(address))
        return [cert for entry in self._search(search, list(cfg.certificate_attributes))
                for name in cfg.certificate_attributes
                for cert in _certificates(_values(entry, name))
                if _names(cert, address)]

    def _search(self, search: str, attributes: list[str]) -> list[dict[str, Any]]:
        """The entries ``search`` finds under ``base_dn``, on a pooled connection."""
        cfg = self.config
        for attempt in (1, 2):  # a pooled connection the server closed: one fresh retry
            try:
                connection = self._connections.get_nowait()
            except queue.Empty:
                connection = self._connect()
            try:
                with self._lock:
                    self.queries += 1
                connection.search(cfg.base_dn, search, attributes=attributes, size_limit=50,
                                  time_limit=max(1, int(cfg.timeout_seconds)))
                entries = [entry for entry in connection.response or []
                           if entry.get("type") == "searchResEntry"]
            except Exception as exc:  # (ldap3 raises more than LDAPException)
                with contextlib.suppress(Exception):
                    connection.unbind()
                if attempt == 2:
                    raise DirectoryUnavailable(
                        f"directory query failed: {type(exc).__name__}") from None
                continue
            self._connections.put(connection)
            return entries
        raise DirectoryUnavailable("directory query failed")  # (not reached)


def _names(cert: x509.Certificate, address: str) -> bool:
    """The certificate is the address's own (its SAN, or its DN without one): an entry whose
    ``mail`` and certificate disagree (a copy error, or worse) never makes the gateway
    encrypt for someone else -- as a folder, indexed by the certificates' own addresses."""
    try:
        return address in email_addresses(cert, remember=False)
    except MalformedError:
        return False


def _values(entry: dict[str, Any], name: str) -> list[Any]:
    """An attribute's raw values, whatever the case and options the server answered with."""
    raw = entry.get("raw_attributes") or {}
    wanted = name.lower()
    for key, values in raw.items():
        if key.lower() == wanted or key.lower().split(";")[0] == wanted.split(";")[0]:
            return list(values)
    return []
