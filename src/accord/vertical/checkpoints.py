"""Checkpoint files of a networked vertical run, one per party, read without pickle.

After every epoch the label party asks each feature party to save its state and waits for
the answer, then saves its own (:func:`write_label_checkpoint`: its weights, optimiser,
protection noise and the driver's state). A feature party keeps its last two states
(:class:`FeatureCheckpoints`), so whichever of the two the label party saved last, both
can continue from it: ``--resume`` on both sides restarts at the label party's epoch, and
the run equals an uninterrupted one (batches and splits depend on the seed only).

Each file records the party, its settings fingerprint and the alignment fingerprint; a
checkpoint of another party, run or alignment is refused with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accord.checkpoint_files import read_checkpoint, write_checkpoint
from accord.errors import InputDataError
from accord.vertical.agreement import PartyAnnouncement
from accord.vertical.parties import FeatureParty, LabelParty, SplitMetrics
from accord.vertical.results import DriverState, EpochMetrics

__all__ = [
    "FeatureCheckpoints",
    "LabelSnapshot",
    "read_label_checkpoint",
    "write_label_checkpoint",
]

LABEL_FORMAT = "accord-vertical-label-checkpoint"
FEATURE_FORMAT = "accord-vertical-feature-checkpoint"


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy().copy()
    if isinstance(tree, Mapping):
        return {key: _to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_numpy(item) for item in tree)
    return tree


def _to_torch(tree: Any) -> Any:
    """Every array back to a tensor (a party's state holds tensors only)."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree.copy())
    if isinstance(tree, Mapping):
        return {key: _to_torch(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_torch(item) for item in tree)
    return tree


def _identity(announcement: PartyAnnouncement) -> dict[str, Any]:
    return {
        "party": announcement.party,
        "settings_fingerprint": announcement.settings_fingerprint,
        "alignment_fingerprint": announcement.alignment_fingerprint,
    }


def _checked(path: Path, format_name: str, announcement: PartyAnnouncement) -> dict[str, Any]:
    state = read_checkpoint(path)
    if state.get("format") != format_name:
        raise InputDataError(f"{path}: not a {format_name} file")
    for key, expected in _identity(announcement).items():
        if state.get(key) != expected:
            raise InputDataError(
                f"{path}: checkpoint of another run ({key} {state.get(key)!r}, this run"
                f" {expected!r})"
            )
    return state


def _split(tree: Any) -> SplitMetrics | None:
    return None if tree is None else SplitMetrics(**tree)


def _driver_state(tree: Mapping[str, Any]) -> DriverState:
    history = tuple(
        EpochMetrics(
            epoch=line["epoch"],
            train_loss=line["train_loss"],
            validation=_split(line["validation"]),
            test=_split(line["test"]),
            train_seconds=line["train_seconds"],
        )
        for line in tree["history"]
    )
    return DriverState(
        next_epoch=tree["next_epoch"],
        history=history,
        best_loss=tree["best_loss"],
        best_epoch=tree["best_epoch"],
        epochs_without_improvement=tree["epochs_without_improvement"],
    )


def write_label_checkpoint(
    path: Path, label: LabelParty, announcement: PartyAnnouncement, state: DriverState
) -> None:
    """The label party's state after ``state.next_epoch`` epochs (atomically)."""
    driver = asdict(state)
    driver["history"] = list(driver["history"])
    tree = {
        "format": LABEL_FORMAT,
        **_identity(announcement),
        "driver": driver,
        "party_state": _to_numpy(label.checkpoint()),
    }
    write_checkpoint(path, tree)


def read_label_checkpoint(
    path: Path, label: LabelParty, announcement: PartyAnnouncement
) -> DriverState:
    """Restore ``label`` from ``path``; the driver's state to resume from."""
    state = _checked(path, LABEL_FORMAT, announcement)
    label.restore(_to_torch(state["party_state"]))
    return _driver_state(state["driver"])


class FeatureCheckpoints:
    """A feature party's states after the last two epochs saved, in memory and (with a
    ``path``) in its checkpoint file: the label party continues from either."""

    def __init__(
        self, path: Path | None, party: FeatureParty, announcement: PartyAnnouncement
    ) -> None:
        self.path = path
        self.party = party
        self.announcement = announcement
        self._states: dict[str, Any] = {}

    def load(self) -> int:
        """Read the file (``--resume``); the latest epoch it can resume at."""
        if self.path is None:
            raise InputDataError("--resume: give the --checkpoint FILE to resume from")
        state = _checked(self.path, FEATURE_FORMAT, self.announcement)
        self._states = dict(state["states"])
        if not self._states:
            raise InputDataError(f"{self.path}: holds no saved epoch")
        return max(self.held())

    def held(self) -> list[int]:
        """The epochs this party holds a state after (empty: none saved yet)."""
        return sorted(int(epoch) for epoch in self._states)

    def save(self, next_epoch: int) -> None:
        """Save the party's state after ``next_epoch`` epochs; keep the one before."""
        states = {str(next_epoch): _to_numpy(self.party.checkpoint())}
        previous = str(next_epoch - 1)
        if previous in self._states:
            states[previous] = self._states[previous]
        self._states = states
        if self.path is not None:
            tree = {"format": FEATURE_FORMAT, **_identity(self.announcement), "states": states}
            write_checkpoint(self.path, tree)

    def restore(self, next_epoch: int) -> None:
        """Continue from the state after ``next_epoch`` epochs (the label party's choice)."""
        state = self._states.get(str(next_epoch))
        if state is None:
            where = "memory" if self.path is None else str(self.path)
            raise InputDataError(
                f"{where}: no state after epoch {next_epoch} to continue from (it holds"
                f" {', '.join(sorted(self._states)) or 'none'})"
            )
        self.party.restore(_to_torch(state))


class LabelSnapshot:
    """The label party's state after the last epoch every party holds, in memory: where
    a run continues after a feature party rejoins (every party rolls back to it and the
    epoch in progress is replayed, as the batches depend on the seed only)."""

    def __init__(self, label: LabelParty, state: DriverState | None) -> None:
        self._tree: Any = None
        self.state = state
        self.take(label, state)

    @property
    def next_epoch(self) -> int:
        return 0 if self.state is None else self.state.next_epoch

    def take(self, label: LabelParty, state: DriverState | None) -> None:
        self._tree, self.state = _to_numpy(label.checkpoint()), state

    def restore(self, label: LabelParty) -> DriverState | None:
        """Roll ``label`` back to the snapshot; the driver's state to continue from."""
        label.restore(_to_torch(self._tree))
        return self.state
