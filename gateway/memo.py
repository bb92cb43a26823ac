"""Bounded memo tables: a dict that is emptied whole when it is full.

Rule kept here: a cache on the message path never grows past its size, whatever the input,
and remembers only what its caller decides to keep (successes, short keys). Emptying the
whole table when full costs nothing per hit and needs no bookkeeping; the same few values
(a sender's certificate, an address, a content type) recur all day, so it refills at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` entries; ``put`` on a full table empties it first."""

    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a memo table holds at least one entry")
        self.size = size
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> None:
        data = self._data
        if len(data) >= self.size and key not in data:
            data.clear()
        data[key] = value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)
