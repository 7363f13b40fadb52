"""The one settings mapping: TOML and JSON data to frozen settings dataclasses and back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from accord.errors import ConfigurationError
from accord.settings_mapping import settings_from_mapping, settings_to_mapping, settings_to_toml


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    name: str = "x"


@dataclass(frozen=True)
class Outer:
    count: int = 1
    on: bool = False
    limit: float | None = None
    widths: tuple[int, ...] = (4,)
    groups: tuple[Inner, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_json_round_trip_with_nested_tables_arrays_and_null() -> None:
    settings = Outer(3, True, 2.5, (1, 2), (Inner(1.0, "a"), Inner()), Inner(0.25, "b"))

    data = json.loads(json.dumps(settings_to_mapping(settings)))

    assert data["widths"] == [1, 2]
    assert settings_from_mapping(Outer, data, source="s.json") == settings
    assert settings_from_mapping(Outer, {"limit": None}, source="s.json") == Outer()
    assert settings_from_mapping(Outer, {"inner": {"rate": 2}}, source="s").inner.rate == 2.0


def test_toml_text_reads_back_equal() -> None:
    import tomllib

    settings = Outer(count=2, widths=(8, 8), inner=Inner(0.1, "q"))

    text = settings_to_toml(settings)

    assert "# limit = (not set)" in text
    assert settings_from_mapping(Outer, tomllib.loads(text), source="t") == settings


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 1.5}, "count: expected an integer, got 1.5"),
        ({"count": True}, "count: expected an integer, got true"),
        ({"on": 1}, "on: expected true or false, got 1"),
        ({"inner": {"rate": "fast"}}, 'inner.rate: expected a number, got "fast"'),
        ({"inner": {"rate": False}}, "inner.rate: expected a number, got false"),
        ({"inner": {"name": 3}}, "inner.name: expected a string, got 3"),
        ({"widths": 4}, "widths: expected an array of an integer, got 4"),
        ({"widths": [4, "a"]}, 'widths: expected an integer, got "a"'),
        ({"inner": 2}, r"inner: expected a table \[inner\], got 2"),
        ({"groups": [{"bogus": 1}]}, r"unknown key 'groups.bogus'; accepted keys in \[groups\]"),
        ({"nope": 1}, "unknown key 'nope'; accepted keys in the top level: count, groups"),
    ],
)
def test_a_bad_value_is_one_line_naming_source_and_key(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match="^run.toml: " + message):
        settings_from_mapping(Outer, data, source="run.toml")
