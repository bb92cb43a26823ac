"""Every hostile case against the one gateway of the session.

For each case: the exact reply; the next hops received exactly the messages the case may relay
(none for a refusal); a fresh connection is still greeted and answers EHLO and NOOP; and at the
end of each category (and every 25 cases) a genuine message from each network is still relayed.
A known gateway bug is a strict xfail naming it: fixing the bug makes the run fail until the
mark goes.
"""

from __future__ import annotations

import collections

import pytest

from tests.hostile import (
    cert_cases,
    cms_cases,
    mime_cases,
    payload_cases,
    review_cases,
    smtp_cases,
)
from tests.hostile.case import CATEGORIES, REVIEW_FAMILIES, Case
from tests.hostile.rig import Rig

CASES: list[Case] = [*smtp_cases.CASES, *mime_cases.CASES, *cms_cases.CASES,
                     *cert_cases.CASES, *payload_cases.CASES, *review_cases.CASES]
LAST_OF_CATEGORY = {case.category: case.id for case in CASES}


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_the_corpus_is_big_and_well_formed() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i, n in collections.Counter(ids).items() if n > 1]
    per_category = collections.Counter(case.category for case in CASES)
    assert len(CASES) >= 200, per_category
    assert all(per_category[c] >= (10 if c in REVIEW_FAMILIES else 20)
               for c in CATEGORIES), per_category


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(hostile_rig: Rig, case: Case) -> None:
    hostile_rig.before_case(case)
    try:
        hostile_rig.run(case)
    finally:
        hostile_rig.after_case(case, LAST_OF_CATEGORY[case.category] == case.id)
