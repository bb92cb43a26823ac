"""Bounds shared by the sessions of one listener: concurrent sessions and MAIL per sender.

Rule kept here: every bound holds in bounded memory, whatever clients do: the session counters
shrink back as sessions close, and the rate limiter forgets the least recent senders first.
"""

from __future__ import annotations

import collections
import mmap
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.transport.inbound import ListenerSettings


class RateLimiter:
    """At most ``limit`` events per key in any 60 s window; bounded memory."""

    WINDOW = 60.0
    MAX_KEYS = 10_000

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.events: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())

    def allow(self, key: str) -> bool:
        if self.limit <= 0:
            return True
        now = self.clock()
        events = self.events.pop(key, None) or collections.deque()
        while events and now - events[0] >= self.WINDOW:
            events.popleft()
        allowed = len(events) < self.limit
        if allowed:
            events.append(now)
        self.events[key] = events  # most recent last
        while len(self.events) > self.MAX_KEYS:
            self.events.popitem(last=False)
        return allowed


class SharedCounts:
    """Sessions per client address, shared by the worker processes of one listener (an
    anonymous shared mapping made before they are forked), so ``max_sessions_per_ip`` holds
    for the host, not per process. Each worker writes only its own row; a client's count is
    the sum of the rows; the supervisor clears a dead worker's row before restarting it, so a
    killed worker leaks no slot. Addresses are hashed into buckets: two that share one are
    counted together (stricter, never looser)."""

    BUCKETS = 4096

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.row = 0  # this process's row; each worker sets its own after the fork
        self._map = mmap.mmap(-1, workers * self.BUCKETS * 4)
        self._cells = memoryview(self._map).cast("I")

    def _bucket(self, ip: str) -> int:
        return zlib.crc32(ip.encode("utf-8", "replace")) % self.BUCKETS

    def total(self, ip: str) -> int:
        bucket = self._bucket(ip)
        return sum(self._cells[w * self.BUCKETS + bucket] for w in range(self.workers))

    def add(self, ip: str, delta: int) -> None:
        cell = self.row * self.BUCKETS + self._bucket(ip)
        self._cells[cell] = max(0, self._cells[cell] + delta)

    def clear_row(self, row: int) -> None:
        start = row * self.BUCKETS
        for cell in range(start, start + self.BUCKETS):
            self._cells[cell] = 0


class Evictable(Protocol):
    """A session the listener may close to make room: idle, and not in TLS yet."""

    def evictable(self) -> bool: ...
    def evict(self) -> None: ...


class ListenerState:
    """Shared by the sessions of one listener: counters, the rate limiter, and the open
    sessions oldest first (when the listener is full, an idle plain one makes room)."""

    def __init__(self, settings: ListenerSettings) -> None:
        self.settings = settings
        self.sessions = 0
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.rate = RateLimiter(settings.rate_limit_per_minute, settings.clock)
        self.open: dict[Evictable, None] = {}  # insertion order: oldest first

    def admit(self, ip: str) -> bool:
        s = self.settings
        shared: SharedCounts | None = s.shared_ips
        held = shared.total(ip) if shared is not None else self.per_ip[ip]
        if held >= s.max_sessions_per_ip:
            return False
        if self.sessions >= s.max_sessions and not self._make_room():
            return False
        self.sessions += 1
        self.per_ip[ip] += 1
        if shared is not None:
            shared.add(ip, 1)
        return True

    def _make_room(self) -> bool:
        """Close the oldest idle session that has not started TLS; False if there is none."""
        victim = next((session for session in self.open if session.evictable()), None)
        if victim is None:
            return False
        victim.evict()  # releases its slot at once
        return self.sessions < self.settings.max_sessions

    def release(self, ip: str) -> None:
        self.sessions -= 1
        self.per_ip[ip] -= 1
        if self.settings.shared_ips is not None:
            self.settings.shared_ips.add(ip, -1)
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
