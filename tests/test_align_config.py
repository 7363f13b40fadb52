"""``accord align --config FILE.toml``: the file onto AlignConfig, the flags over it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from accord.cli import build_parser
from accord.commands.align_config import AlignConfig, load_config, settings_from_args
from accord.config import settings_from_mapping, settings_to_mapping, settings_to_toml
from accord.errors import ConfigurationError
from accord.tee.runtime.transport import Endpoint


def _settings(*argv: str):  # type: ignore[no-untyped-def]
    args = ["align", *argv]
    return settings_from_args(build_parser(args).parse_args(args))


def test_a_config_file_maps_onto_the_settings_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "party.toml"
    config.write_text(
        "input = 'data/b.csv'\nkey = 'id'\npolicy = '/etc/accord/policy.toml'\n"
        "peer = '127.0.0.1:9000'\noutput-map = 'out/b.map.csv'\nmemory_limit = '64MiB'\n"
        "connect_timeout = 5\nparty_name = 'b'\nsession = 's1'\n"
    )

    settings = _settings("--config", str(config), "--session", "s2", "--key", "id,region")

    assert settings.input == tmp_path / "data" / "b.csv"  # relative to the file
    assert settings.policy == Path("/etc/accord/policy.toml")
    assert settings.output_map == tmp_path / "out" / "b.map.csv"  # `-` spelled `_` too
    assert settings.peers == (Endpoint("127.0.0.1", 9000),)  # one string: a list of one
    assert settings.memory_limit == 64 << 20
    assert settings.connect_timeout == 5.0 and isinstance(settings.connect_timeout, float)
    assert settings.session == "s2"  # the flag wins
    assert settings.key_columns == ("id", "region")
    assert settings.party_name == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs = 'a.csv'\n", "unknown key 'inputs'; accepted keys in the top level: "),
        ("parties = 'two'\n", 'parties: expected an integer, got "two"'),
        ("include_ids = 1\n", "include_ids: expected true or false, got 1"),
        ("key = [1]\n", "key: expected a string, got 1"),
        ("memory_limit = true\n", 'memory_limit = true: expected a size like "2GiB"'),
        ("duplicates = 'last'\n", 'duplicates = "last": expected one of error, first'),
    ],
)
def test_a_bad_config_file_is_one_line_naming_file_key_expected_and_found(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "party.toml"
    config.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_config(config)
    assert str(caught.value).startswith(f"--config {config}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_or_unparsable_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"--config .*nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("input = \n")
    with pytest.raises(ConfigurationError, match=r"--config .*broken\.toml: cannot read"):
        load_config(broken)


def test_align_config_goes_through_the_one_settings_mapping_and_back() -> None:
    config = AlignConfig(
        input="a.csv",
        key=("id", "region"),
        peer=("127.0.0.1:1", "[::1]:2"),
        memory_limit="2GiB",
        connect_timeout=2.5,
        include_ids=True,
        buckets=4,
    )

    mapping = settings_to_mapping(config)
    text = settings_to_toml(config)

    assert mapping["key"] == ["id", "region"] and mapping["listen"] is None
    assert settings_from_mapping(AlignConfig, mapping, source="json") == config
    assert AlignConfig.from_mapping(tomllib.loads(text), "toml") == config
    assert set(AlignConfig.option_names()) == set(mapping)
