"""Build a scenario in a helper process that never imports torch.

``accord federate`` forks this helper first thing, so the helper imports scikit-learn and
loads the dataset while the main process imports torch: about a second sooner to the first
round on two cores. The helper waits for the scenario settings (JSON through a pipe), builds
the scenario and sends it back as ``.npz`` bytes (no pickle; the format of ``accord
simulate``'s helper, :func:`accord.scenario_codec.scenario_to_npz`). If the helper
fails, the main process builds the scenario itself, which raises the real error.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["ScenarioHelper", "read_all", "write_all"]


def read_all(descriptor: int) -> bytes:
    """Everything up to end of file from a pipe."""
    chunks: list[bytes] = []
    while True:
        chunk = os.read(descriptor, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def write_all(descriptor: int, data: bytes) -> None:
    """All of ``data`` into a pipe (``os.write`` may take less at a time)."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _helper(settings_fd: int, data_fd: int) -> int:  # pragma: no cover - the helper process
    import sklearn.datasets  # noqa: F401 - the slow import, done while the parent imports torch

    from accord.scenario import ScenarioSettings, build_scenario
    from accord.scenario_codec import scenario_to_npz
    from accord.settings_mapping import settings_from_mapping

    request = read_all(settings_fd)
    if not request:  # cancelled
        return 0
    settings = settings_from_mapping(ScenarioSettings, json.loads(request), source="scenario")
    write_all(data_fd, scenario_to_npz(build_scenario(settings)))
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
        from accord.settings_mapping import settings_to_mapping

        write_all(self._settings_write, json.dumps(settings_to_mapping(settings)).encode())
        os.close(self._settings_write)
        self._requested = True

    def collect(self, settings: Any) -> Any:
        """The requested :class:`ScenarioData` (built here if the helper failed)."""
        from accord.scenario_codec import scenario_from_npz

        try:
            data = read_all(self._data_read)
        finally:
            os.close(self._data_read)
            _, status = os.waitpid(self.pid, 0)
            self._done = True
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            from accord.scenario import build_scenario

            return build_scenario(settings)
        try:
            return scenario_from_npz(data, settings)
        except (OSError, ValueError, KeyError):
            from accord.scenario import build_scenario

            return build_scenario(settings)

    def cancel(self) -> None:
        """End the helper if nothing was collected (an error before the run started)."""
        if self._done:
            return
        if not self._requested:
            os.close(self._settings_write)
        os.close(self._data_read)
        os.waitpid(self.pid, 0)
        self._done = True
