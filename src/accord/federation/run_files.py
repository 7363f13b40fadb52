"""What a networked run leaves in its folder, and how it is read back.

::

    RUN_DIR/
      federation.json          the run's id, transport and settings (read to resume)
      server.json              where the server listens (host, port)
      checkpoint.npz           the state after the last finished round
      federation_stats.json    traffic, peak memory, exit codes
      metrics.jsonl, summary.json, config.toml, *.png   as ``accord simulate`` writes them

Every file is written atomically (:mod:`accord.atomic_files`).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.errors import ConfigurationError, InputDataError
from accord.federation.settings import (
    ServerSettings,
)
from accord.proc import process_age
from accord.settings_mapping import settings_from_mapping

__all__ = [
    "ADDRESS_FILE",
    "CHECKPOINT_FILE",
    "RUN_FILE",
    "RUN_FORMAT",
    "RUN_VERSION",
    "STATS_FILE",
    "RunReport",
    "check_new_run_folder",
    "default_run_dir",
    "describe_run",
    "read_run_file",
    "saved_settings",
    "write_json",
]

RUN_FILE = "federation.json"
CHECKPOINT_FILE = "checkpoint.npz"
ADDRESS_FILE = "server.json"
STATS_FILE = "federation_stats.json"
RUN_FORMAT = "accord-federation-run"
#: 2 since protocol version 2 (settings gained ``app`` and ``app_config``).
RUN_VERSION = 2


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())


class RunReport:
    """The run folder, written by the shared :class:`accord.reporting.RunFolder`: the same
    ``metrics.jsonl``, ``summary.json``, ``config.toml`` and plots as ``accord simulate``,
    plus ``federation.json`` (settings for ``--resume``), ``checkpoint.npz``,
    ``server.json`` and ``federation_stats.json``. A resumed run reopens the folder with
    ``metrics.jsonl`` rewritten from its checkpoint."""

    def __init__(self, run_dir: Path, run_id: str, policy: str, folder: Any | None) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.policy = policy
        self.folder = folder
        self.timing: dict[str, float | None] = {}
        #: The scenario's per-round truth (``ScenarioData.faulty_in_round``), when known.
        self.faulty_in_round: Callable[[int], frozenset[str]] | None = None

    def with_truth(self, timed: Any) -> Any:
        """``timed`` with ``faulty``, the nodes faulty in its round, when the scenario is known
        (each ``metrics.jsonl`` line records it, as ``accord simulate`` does)."""
        if self.faulty_in_round is None or getattr(timed, "faulty", None) is not None:
            return timed
        faulty = tuple(sorted(self.faulty_in_round(timed.record.round_index)))
        return replace(timed, faulty=faulty)

    def result_with_truth(self, result: Any) -> Any:
        return replace(result, rounds=tuple(self.with_truth(timed) for timed in result.rounds))

    def restart(self, rounds: Sequence[Any]) -> None:
        """A resumed run: the folder's ``metrics.jsonl`` becomes the checkpoint's rounds."""
        from accord.reporting import RunFolder
        from accord.reporting.writer import metrics_json

        lines = [metrics_json(self.policy, self.with_truth(timed)) for timed in rounds]
        self.folder = RunFolder.reopen(self.run_dir, lines)

    def append(self, timed: Any) -> None:
        if "process_to_first_round_done_seconds" not in self.timing:
            self.timing["process_to_first_round_done_seconds"] = process_age()
        assert self.folder is not None
        self.folder.append_round(self.policy, self.with_truth(timed))

    def summary(
        self,
        result: Any,
        settings: ServerSettings,
        engine: Any,
        scenario: Any,
        faulty_nodes: Sequence[str],
        federation: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``summary.json`` with the keys of ``accord simulate``'s, plus ``federation``."""
        import platform

        import torch

        from accord import __version__
        from accord.config import settings_to_mapping
        from accord.reporting import data_share, policy_summary

        counts = {
            node: float(count)
            for node, count in zip(engine.roster, engine.sample_counts, strict=True)
        }
        return {
            "format": "accord-simulate-run",
            "version": 1,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "accord_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "scenario": describe_run(scenario, settings),
            "policies": [result.policy],
            "roster": list(engine.roster),
            "faulty_nodes": list(faulty_nodes),
            "fault_groups": (
                []
                if scenario is None
                else [g.describe() for g in scenario.settings.fault_groups if g.count]
            ),
            "time_varying": False if scenario is None else scenario.time_varying,
            "diverged": [result.policy] if result.stop_reason.startswith("diverged") else [],
            "sample_counts": counts,
            "faulty_data_share": data_share(counts, faulty_nodes),
            "timing": dict(self.timing),
            "results": {
                result.policy: policy_summary(
                    self.result_with_truth(result),
                    faulty_nodes,
                    policy_settings=getattr(engine.aggregator, "settings", None),
                )
            },
            "settings": settings_to_mapping(settings.run),
            "federation": dict(federation),
        }

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        assert self.folder is not None
        self.folder.write_summary(summary)

    def plots(self, result: Any, faulty_nodes: Sequence[str], title: str) -> list[str]:
        if not result.rounds or self.folder is None:
            return []
        paths = self.folder.write_plots(
            [self.result_with_truth(result)], result.roster, faulty_nodes, title
        )
        return [path.name for path in paths]


def describe_run(scenario: Any, settings: ServerSettings) -> str:
    """One line about the data, as ``accord simulate`` prints it."""
    if settings.app is not None:
        return f"user app {settings.app}"
    if scenario is not None:
        from accord.scenario import describe_scenario

        return describe_scenario(scenario)
    return f"server data {settings.validation_data} (test: {settings.test_data or 'none'})"


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """``federation.json`` of a run folder, checked: the run id, its settings, and where
    its server listened (``transport``: host and port; absent in older run folders)."""
    run_file = run_dir / RUN_FILE
    try:
        saved = json.loads(run_file.read_text())
    except FileNotFoundError as error:
        raise InputDataError(f"{run_file}: not found; is {run_dir} a run folder?") from error
    except json.JSONDecodeError as error:
        raise InputDataError(f"{run_file}: not JSON: {error}") from error
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT:
        raise InputDataError(f"{run_file}: not an Accord federation run file")
    if saved.get("version") != RUN_VERSION:
        raise InputDataError(
            f"{run_file}: run file format version {saved.get('version')!r}; this Accord reads "
            f"version {RUN_VERSION} only (a run of an older Accord cannot be resumed)"
        )
    if not isinstance(saved.get("run_id"), str) or not isinstance(saved.get("settings"), dict):
        raise InputDataError(f"{run_file}: expected a run_id (text) and settings (a table)")
    transport = saved.get("transport")
    if transport is not None and not (
        isinstance(transport, dict)
        and isinstance(transport.get("host"), str)
        and isinstance(transport.get("port"), int)
    ):
        raise InputDataError(f"{run_file}: transport: expected a host (text) and a port (integer)")
    return saved


def saved_settings(saved: Mapping[str, Any]) -> ServerSettings:
    """The :class:`ServerSettings` stored in a run file read by :func:`read_run_file`."""
    return settings_from_mapping(ServerSettings, saved["settings"], source="settings")


def check_new_run_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before anything starts, a run folder that :class:`RunFolder` would refuse."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "is not a folder" if not path.is_dir() else "is not empty; choose another folder"
        raise ConfigurationError(f"{option}: {path} exists and {what}")


def default_run_dir() -> Path:
    """``runs/<date>-<time>-<random>``: a new run's folder when none is given."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
