"""Property-based fuzzing of every parser that faces a peer or a file (issue 13 item 5).

Each target of :mod:`fuzz_targets` runs 500 inputs here (random bytes and text, valid
messages and files mutated, fields drawn at random). The property: every input either
parses or raises Accord's own error with a message — never another exception — and a file
parser leaves nothing behind. ``benchmarks/fuzz.py`` runs the same targets much longer and
prints how many inputs each ran; the defects found are pinned in ``test_fuzz_regressions.py``.

``ACCORD_FUZZ_EXAMPLES`` sets the number of inputs per target (default 500). The suite
draws the same inputs every run (Hypothesis's ``derandomize``), so that CI's verdict does
not depend on luck: a random draw once turned a run red with a defect that 500 inputs hit
rarely (pinned since). ``ACCORD_FUZZ_RANDOM=1`` draws new inputs each run, as the long run
does with its ``--seed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fuzz_targets import TARGETS, Target, check, close_loop, remove_workdirs
from hypothesis import HealthCheck, given, settings

EXAMPLES = int(os.environ.get("ACCORD_FUZZ_EXAMPLES", "500"))
RANDOM = bool(os.environ.get("ACCORD_FUZZ_RANDOM"))


@pytest.fixture(scope="module", autouse=True)
def _clean_up() -> Iterator[None]:
    yield
    close_loop()
    remove_workdirs()


def _fuzz_test(target: Target) -> Callable[[], None]:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(target.strategy)
    def test(value: Any) -> None:
        check(target, value)

    test.__name__ = f"test_fuzz_{target.name.replace('.', '_')}"
    test.__doc__ = f"Any input to {target.name} parses or raises an AccordError."
    return test


for _target in TARGETS.values():
    _test = _fuzz_test(_target)
    globals()[_test.__name__] = _test


def test_every_target_ran_its_inputs() -> None:
    """Runs last in this file (pytest keeps definition order): each target's count."""
    ran = {name: target.counts["inputs"] for name, target in TARGETS.items()}
    if any(count == 0 for count in ran.values()):
        pytest.skip("not every fuzz target ran in this session (a -k selection)")
    assert all(count >= min(EXAMPLES, 100) for count in ran.values()), ran
