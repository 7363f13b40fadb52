"""Registration fingerprints: what a node and its server must agree on before it joins.

A :class:`Fingerprint` is a few named parts, each the SHA-256 (hex) of a canonical JSON
text (keys sorted, no spaces, no NaN), so that equal settings give equal parts on any
machine and in any process:

- ``scenario``: the built-in scenario's settings (dataset, node count, partition, faulty
  nodes, fractions, seed), held by a node that trains on a partition of it
  (``accord node --scenario-node K``) and by a server that runs it;
- ``model``: the model's parameters in order, each as (name, shape, dtype);
- ``features``: the feature columns, in order, of a node's own ``--data`` file and of the
  server's ``--validation-data`` file (standardisation and the model take the columns by
  position, so names and order must agree).

The server compares every part that both sides have (:meth:`Fingerprint.mismatches`); a
part only one side has is not compared (a node with its own ``--data`` file has no
scenario part, and a built-in node does not know the model before the server's Welcome).
New parts are added the same way; a server ignores the parts it does not know, so older
and newer peers still agree on the parts they share. Pure: no files, no network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accord.config import settings_to_mapping
from accord.errors import ConfigurationError
from accord.scenario import ScenarioSettings

__all__ = [
    "FEATURES",
    "MODEL",
    "SCENARIO",
    "Fingerprint",
    "canonical_digest",
    "features_part",
    "model_part",
    "scenario_part",
    "scenario_summary",
]

SCENARIO = "scenario"
MODEL = "model"
FEATURES = "features"

_HEX_DIGITS = frozenset("0123456789abcdef")


def canonical_digest(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"fingerprint: value is not canonical JSON: {error}") from error
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scenario_part(settings: ScenarioSettings) -> str:
    """The ``scenario`` part: every field of the scenario's settings."""
    return canonical_digest(settings_to_mapping(settings))


def model_part(parameters: Iterable[tuple[str, Iterable[int], str]]) -> str:
    """The ``model`` part: the parameters in order, as (name, shape, dtype)."""
    return canonical_digest(
        [[name, [int(size) for size in shape], str(dtype)] for name, shape, dtype in parameters]
    )


def features_part(feature_names: Iterable[str]) -> str:
    """The ``features`` part: the feature column names, in order."""
    return canonical_digest([str(name) for name in feature_names])


def scenario_summary(settings: ScenarioSettings) -> str:
    """The scenario's settings as one short line (``dataset digits, nodes 3, ...``), to
    tell a refused node what the server runs."""

    def flatten(prefix: str, value: Any) -> list[str]:
        if isinstance(value, Mapping):
            return [
                item for key, inner in value.items() for item in flatten(f"{prefix}{key} ", inner)
            ]
        return [f"{prefix.strip()} {value}"]

    return ", ".join(flatten("", settings_to_mapping(settings)))


@dataclass(frozen=True)
class Fingerprint:
    """Named parts (name -> SHA-256 hex); empty when nothing is known."""

    parts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, digest in self.parts.items():
            if not (isinstance(name, str) and name and len(name) <= 64):
                raise ConfigurationError(f"fingerprint: part name {name!r} is not a short name")
            if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX_DIGITS):
                raise ConfigurationError(
                    f"fingerprint: part {name!r}: expected 64 hex digits, got {digest!r:.80}"
                )

    @classmethod
    def of(
        cls,
        *,
        scenario: ScenarioSettings | None = None,
        model: Iterable[tuple[str, Iterable[int], str]] | None = None,
        features: Iterable[str] | None = None,
    ) -> Fingerprint:
        """The fingerprint of what is known: a scenario, a model's parameters, the feature
        columns of a data file."""
        parts: dict[str, str] = {}
        if scenario is not None:
            parts[SCENARIO] = scenario_part(scenario)
        if model is not None:
            parts[MODEL] = model_part(model)
        if features is not None:
            parts[FEATURES] = features_part(features)
        return cls(parts)

    def mismatches(self, other: Fingerprint) -> tuple[str, ...]:
        """The parts both fingerprints have and that differ, sorted by name."""
        return tuple(
            sorted(
                name
                for name, digest in self.parts.items()
                if name in other.parts and other.parts[name] != digest
            )
        )
