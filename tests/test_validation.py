from __future__ import annotations

import math

import pytest

from accord import AccordError, ConfigurationError
from accord._validation import require_choice, require_int, require_number


def test_number_bounds_name_the_field_and_the_value() -> None:
    with pytest.raises(ConfigurationError, match=r"reward_base: expected a number >= 1.*0.5"):
        require_number("reward_base", 0.5, minimum=1.0)
    require_number("reward_base", 1.0, minimum=1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, "3", True])
def test_number_rejects_non_finite_and_non_numbers(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="expected a finite number"):
        require_number("x", bad, minimum=0.0)  # type: ignore[arg-type]


def test_exclusive_minimum() -> None:
    with pytest.raises(ConfigurationError, match="> 0"):
        require_number("lr", 0.0, minimum=0.0, exclusive_minimum=True)


def test_int_and_choice() -> None:
    with pytest.raises(ConfigurationError, match="rounds: expected an integer >= 1, got 0"):
        require_int("rounds", 0, minimum=1)
    with pytest.raises(ConfigurationError, match="policy: expected one of a, b; got 'c'"):
        require_choice("policy", "c", ("b", "a"))


def test_every_accord_error_is_catchable_at_the_root() -> None:
    with pytest.raises(AccordError):
        require_int("n", 1.5)  # type: ignore[arg-type]
