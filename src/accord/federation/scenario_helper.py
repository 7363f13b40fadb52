"""Build a scenario in a helper process that never imports torch.

``accord federate`` forks this helper first thing, so the helper imports scikit-learn and
loads the dataset while the main process imports torch: about a second sooner to the first
round on two cores. The helper waits for the scenario settings (JSON through a pipe), builds
the scenario and sends it back as ``.npz`` bytes (no pickle). If the helper fails, the main
process builds the scenario itself, which raises the real error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["ScenarioHelper", "scenario_from_tree", "scenario_to_tree"]


def _read_all(descriptor: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(descriptor, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def scenario_to_tree(scenario: Any) -> dict[str, Any]:
    """A :class:`~accord.scenario.ScenarioData` as a tree of arrays (for ``dumps_tree``)."""

    def dataset(part: Any) -> dict[str, Any]:
        return {
            "name": part.name,
            "features": part.features,
            "labels": part.labels,
            "n_classes": part.n_classes,
        }

    holdout = scenario.holdout
    return {
        "holdout": {
            "train": dataset(holdout.train),
            "validation": dataset(holdout.validation),
            "test": dataset(holdout.test),
        },
        "nodes": [
            {
                "node_id": node.node_id,
                "index": node.index,
                "features": node.features,
                "labels": node.labels,
                "faulty": node.faulty,
            }
            for node in scenario.nodes
        ],
    }


def scenario_from_tree(tree: Mapping[str, Any], settings: Any) -> Any:
    """The inverse of :func:`scenario_to_tree`."""
    from accord.data.datasets import Dataset, HoldoutSplit
    from accord.scenario import NodeData, ScenarioData

    def dataset(part: Mapping[str, Any]) -> Dataset:
        return Dataset(str(part["name"]), part["features"], part["labels"], int(part["n_classes"]))

    holdout = tree["holdout"]
    return ScenarioData(
        settings=settings,
        holdout=HoldoutSplit(
            train=dataset(holdout["train"]),
            validation=dataset(holdout["validation"]),
            test=dataset(holdout["test"]),
        ),
        nodes=tuple(
            NodeData(
                node_id=str(node["node_id"]),
                index=int(node["index"]),
                features=node["features"],
                labels=node["labels"],
                faulty=bool(node["faulty"]),
            )
            for node in tree["nodes"]
        ),
    )


def _helper(settings_fd: int, data_fd: int) -> int:  # pragma: no cover - the helper process
    import sklearn.datasets  # noqa: F401 - the slow import, done while the parent imports torch

    from accord.federation.checkpoint import dumps_tree
    from accord.federation.dataclass_json import settings_from_json
    from accord.scenario import ScenarioSettings, build_scenario

    request = _read_all(settings_fd)
    if not request:  # cancelled
        return 0
    settings = settings_from_json(ScenarioSettings, json.loads(request), "scenario")
    _write_all(data_fd, dumps_tree(scenario_to_tree(build_scenario(settings))))
    return 0


class ScenarioHelper:
    """A forked process that builds one scenario on request."""

    def __init__(self) -> None:
        settings_read, self._settings_write = os.pipe()
        self._data_read, data_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the helper process
            code = 1
            try:
                os.close(self._settings_write)
                os.close(self._data_read)
                code = _helper(settings_read, data_write)
            except BaseException:  # the parent builds the scenario again and reports
                code = 1
            finally:
                os._exit(code)
        os.close(settings_read)
        os.close(data_write)
        self._requested = False
        self._done = False

    def request(self, settings: Any) -> None:
        """Ask for the scenario of these :class:`ScenarioSettings`."""
        from accord.federation.dataclass_json import settings_to_json

        _write_all(self._settings_write, json.dumps(settings_to_json(settings)).encode())
        os.close(self._settings_write)
        self._requested = True

    def collect(self, settings: Any) -> Any:
        """The requested :class:`ScenarioData` (built here if the helper failed)."""
        from accord.federation.checkpoint import loads_tree

        try:
            data = _read_all(self._data_read)
        finally:
            os.close(self._data_read)
            _, status = os.waitpid(self.pid, 0)
            self._done = True
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            from accord.scenario import build_scenario

            return build_scenario(settings)
        return scenario_from_tree(loads_tree(data, "scenario from the helper"), settings)

    def cancel(self) -> None:
        """End the helper if nothing was collected (an error before the run started)."""
        if self._done:
            return
        if not self._requested:
            os.close(self._settings_write)
        os.close(self._data_read)
        os.waitpid(self.pid, 0)
        self._done = True
