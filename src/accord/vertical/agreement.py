"""What the parties check before a vertical run: same alignment, same rows, same settings.

Each party announces itself (:class:`PartyAnnouncement`): its name, its aligned row count,
the alignment's fingerprint (``AlignmentResult.fingerprint``, once ``accord align`` hands
it to the hosts) and the fingerprint of its :class:`VerticalSettings`. The label party
refuses to start, with one line, unless every announcement agrees with its own: a table
from another alignment, or a party with other settings (another seed would give other
batches), is never trained on silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from accord.errors import ConfigurationError, InputDataError
from accord.settings_mapping import settings_to_mapping
from accord.vertical.settings import VerticalSettings

__all__ = ["PartyAnnouncement", "check_announcements", "settings_fingerprint"]


def settings_fingerprint(settings: VerticalSettings) -> str:
    """SHA-256 (hex) of the settings' canonical JSON: equal exactly when the settings are."""
    canonical = json.dumps(settings_to_mapping(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PartyAnnouncement:
    """What one party tells the others before training."""

    party: str
    row_count: int
    settings_fingerprint: str
    #: The alignment's fingerprint; ``None`` when the aligned table came without one.
    alignment_fingerprint: str | None = None


def check_announcements(label: PartyAnnouncement, others: Sequence[PartyAnnouncement]) -> None:
    """Refuse, with one line naming the party and both values, any disagreement with the
    label party's own announcement (and a repeated party name)."""
    seen = {label.party}
    for other in others:
        if other.party in seen:
            raise ConfigurationError(f"party {other.party!r}: announced twice")
        seen.add(other.party)
        if other.alignment_fingerprint != label.alignment_fingerprint:
            raise InputDataError(
                f"party {other.party!r}: alignment fingerprint {other.alignment_fingerprint}"
                f" differs from {label.party!r}'s {label.alignment_fingerprint}"
                " (tables from different alignments)"
            )
        if other.row_count != label.row_count:
            raise InputDataError(
                f"party {other.party!r}: expected {label.row_count} aligned rows like"
                f" {label.party!r}, got {other.row_count}"
            )
        if other.settings_fingerprint != label.settings_fingerprint:
            raise ConfigurationError(
                f"party {other.party!r}: vertical settings differ from {label.party!r}'s"
                f" (fingerprint {other.settings_fingerprint[:12]} against"
                f" {label.settings_fingerprint[:12]})"
            )
