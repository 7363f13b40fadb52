"""Before training, every party must announce the same alignment, rows and settings."""

from __future__ import annotations

import pytest

from accord.errors import ConfigurationError, InputDataError
from accord.settings_mapping import settings_from_mapping, settings_to_mapping
from accord.vertical import (
    ModelSettings,
    PartyAnnouncement,
    VerticalSettings,
    check_announcements,
    settings_fingerprint,
)

SETTINGS = VerticalSettings(model=ModelSettings(bottom="mlp", bottom_hidden=(8, 4)), seed=3)
FINGERPRINT = settings_fingerprint(SETTINGS)
BANK = PartyAnnouncement("bank", 1000, FINGERPRINT, "a1b2")


def test_the_settings_round_trip_and_fingerprint_as_a_whole() -> None:
    again = settings_from_mapping(VerticalSettings, settings_to_mapping(SETTINGS), source="test")

    assert again == SETTINGS
    assert settings_fingerprint(again) == FINGERPRINT
    assert settings_fingerprint(VerticalSettings(model=SETTINGS.model, seed=4)) != FINGERPRINT
    other_model = ModelSettings(bottom="mlp", bottom_hidden=(8, 5))
    assert settings_fingerprint(VerticalSettings(model=other_model, seed=3)) != FINGERPRINT


def test_agreeing_parties_pass() -> None:
    check_announcements(BANK, [PartyAnnouncement("insurer", 1000, FINGERPRINT, "a1b2")])


@pytest.mark.parametrize(
    ("other", "error", "message"),
    [
        (
            PartyAnnouncement("insurer", 1000, FINGERPRINT, "ffff"),
            InputDataError,
            "party 'insurer': alignment fingerprint ffff differs from 'bank''s a1b2"
            " (tables from different alignments)",
        ),
        (
            PartyAnnouncement("insurer", 999, FINGERPRINT, "a1b2"),
            InputDataError,
            "party 'insurer': expected 1000 aligned rows like 'bank', got 999",
        ),
        (
            PartyAnnouncement("insurer", 1000, "0" * 64, "a1b2"),
            ConfigurationError,
            f"party 'insurer': vertical settings differ from 'bank''s (fingerprint"
            f" 000000000000 against {FINGERPRINT[:12]})",
        ),
        (
            PartyAnnouncement("bank", 1000, FINGERPRINT, "a1b2"),
            ConfigurationError,
            "party 'bank': announced twice",
        ),
    ],
)
def test_a_disagreeing_party_is_refused_with_one_line(
    other: PartyAnnouncement, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        check_announcements(BANK, [other])
    assert str(raised.value) == message
