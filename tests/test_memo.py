"""gateway.memo: the bounded table every cache on the message path uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.memo import Memo


def test_get_put_and_miss() -> None:
    memo: Memo[str, int] = Memo(4)
    assert memo.get("a") is None
    memo.put("a", 1)
    assert memo.get("a") == 1 and "a" in memo and len(memo) == 1


def test_full_table_is_emptied_before_a_new_key() -> None:
    memo: Memo[int, int] = Memo(3)
    for i in range(3):
        memo.put(i, i)
    memo.put(1, 10)  # an existing key replaces, nothing is dropped
    assert len(memo) == 3 and memo.get(1) == 10
    memo.put(99, 99)
    assert len(memo) == 1 and memo.get(0) is None and memo.get(99) == 99


@given(st.lists(st.integers(0, 50)), st.integers(1, 8))
def test_never_grows_past_its_size(keys: list[int], size: int) -> None:
    memo: Memo[int, int] = Memo(size)
    for k in keys:
        memo.put(k, k)
        assert len(memo) <= size and memo.get(k) == k


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Memo(0)
