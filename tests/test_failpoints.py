"""The one failpoint parser: every process reads its own entries of ACCORD_FAILPOINT."""

from __future__ import annotations

import pytest

from accord.errors import ConfigurationError
from accord.failpoints import (
    ALIGN_ACTIONS,
    NODE_ACTIONS,
    SERVER_ACTIONS,
    Failpoint,
    failpoints_for,
    parse_failpoints,
)

MIXED = {"ACCORD_FAILPOINT": "exit@2, stall@3:1.5,crash-after-round@4,align-pause@done"}


def test_each_process_sees_only_its_own_entries() -> None:
    assert failpoints_for(NODE_ACTIONS, MIXED) == (
        Failpoint("exit", 2),
        Failpoint("stall", 3, 1.5),
    )
    assert failpoints_for(SERVER_ACTIONS, MIXED) == (Failpoint("crash-after-round", 4),)
    assert failpoints_for(ALIGN_ACTIONS, MIXED) == (Failpoint("align-pause", None),)
    assert failpoints_for(NODE_ACTIONS, {}) == ()


def test_the_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCORD_FAILPOINT", "align-pause@7")

    assert failpoints_for(ALIGN_ACTIONS) == (Failpoint("align-pause", 7),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode@1", r"'explode@1': expected one of exit, nan, shape, stall, crash-after"),
        ("exit@two", r"'exit@two': expected exit@STEP\[:SECONDS\]"),
        ("exit", r"'exit': expected exit@STEP\[:SECONDS\]"),
        ("exit@done", r"'exit@done': expected exit@STEP\[:SECONDS\]"),
        ("align-pause@x", r"'align-pause@x': expected align-pause@STEP\|done\[:SECONDS\]"),
        ("stall@1:soon", r"'stall@1:soon': expected stall@STEP\[:SECONDS\]"),
        ("stall@1:-2", r"'stall@1:-2': expected a step and seconds >= 0"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match="^ACCORD_FAILPOINT: failpoint " + message):
        parse_failpoints(text)


def test_a_bad_entry_for_another_process_is_refused_too() -> None:
    with pytest.raises(ConfigurationError, match="crash-after-round@soon"):
        failpoints_for(NODE_ACTIONS, {"ACCORD_FAILPOINT": "exit@1,crash-after-round@soon"})
