"""Hypothesis profiles of the fuzz tests.

Rule kept here: the default run (CI) stays short and the same from run to run -- ``fuzz``
gives each test the number of examples it names (``strategies.fuzz_settings``), derandomised,
no deadline (a CMS example may wait for an RSA operation on a shared core) -- and
``HYPOTHESIS_PROFILE=long`` explores: 50 times as many examples, a new random draw each run. The
profiles are applied per test, never loaded globally, so the other tests keep their settings.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.fuzz.strategies import DEFAULT_PROFILE, LONG_PROFILE, REFERENCE_EXAMPLES

_SLOW_INPUTS_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(DEFAULT_PROFILE, max_examples=REFERENCE_EXAMPLES, deadline=None,
                          suppress_health_check=_SLOW_INPUTS_OK, print_blob=True,
                          derandomize=True)
settings.register_profile(LONG_PROFILE, max_examples=REFERENCE_EXAMPLES * 50, deadline=None,
                          suppress_health_check=_SLOW_INPUTS_OK, print_blob=True)
