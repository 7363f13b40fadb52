"""Processes of a federation: the server's main loop (``accord server``) and a local
federation in one command (``accord federate``).

``accord federate`` imports torch once, builds the scenario in a helper process, then forks
one process per node (copy-on-write: a node starts in milliseconds instead of re-importing
torch for two seconds) and serves as the federation's server itself. The nodes are real
processes that speak gRPC over 127.0.0.1 with TLS, client certificates and tokens
generated for the run (or plaintext with ``--insecure``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.federation.auth import Authenticator, ServerCredentials
from accord.federation.checkpoint import write_atomically
from accord.federation.scenario_helper import read_all, write_all
from accord.federation.settings import (
    ServerSettings,
    settings_from_json,
    settings_to_json,
)

__all__ = [
    "RUN_FILE",
    "FederateSettings",
    "ServedRun",
    "check_new_run_folder",
    "federate",
    "free_port",
    "peak_rss_bytes",
    "prepare_process",
    "read_run_file",
    "saved_settings",
    "serve",
]

logger = logging.getLogger(__name__)

RUN_FILE = "federation.json"
CHECKPOINT_FILE = "checkpoint.npz"
ADDRESS_FILE = "server.json"
STATS_FILE = "federation_stats.json"
RUN_FORMAT = "accord-federation-run"
#: 2 since protocol version 2 (settings gained ``app`` and ``app_config``).
RUN_VERSION = 2

#: Server failpoint for tests (``ACCORD_FAILPOINT=crash-after-round@3``): SIGKILL the
#: server right after the checkpoint of that many rounds is written.
SERVER_FAILPOINT = "crash-after-round@"


def prepare_process() -> None:
    """One torch thread per process: nodes and server share few cores."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set, or torch already ran a job
        torch.set_num_interop_threads(1)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())


def _crash_after(env: Mapping[str, str]) -> int | None:
    text = env.get("ACCORD_FAILPOINT", "")
    for entry in text.split(","):
        if entry.strip().startswith(SERVER_FAILPOINT):
            try:
                return int(entry.strip()[len(SERVER_FAILPOINT) :])
            except ValueError as error:
                raise ConfigurationError(f"failpoint {entry!r}: expected a round count") from error
    return None


class Progress(Protocol):
    """What a command shows while a run goes on (``accord federate`` shows what ``accord
    simulate`` shows)."""

    def start(self, description: str, faulty_nodes: tuple[str, ...], address: str) -> None:
        """The run starts: one line about its data, its faulty nodes, where it listens."""

    def round(self, timed: Any) -> None: ...

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None: ...


class _Report:
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
            self.timing["process_to_first_round_done_seconds"] = _process_age()
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


def _prepare_app(settings: ServerSettings, run_id: str) -> tuple[Any, Any, Any]:
    """The spec, engine factory and (empty) server data of a user app's run."""
    import json

    import numpy as np

    from accord.federation.engine import ServerData, prepare_app_run
    from accord.fl.loading import load_factory

    assert settings.app is not None
    config = json.loads(settings.app_config)
    server_factory = load_factory(settings.app, "--app")
    try:
        app = server_factory(config)
    except AccordError:
        raise
    except Exception as error:  # user code
        raise ConfigurationError(
            f"--app {settings.app}: the server factory raised {type(error).__name__}: {error}"
        ) from error
    spec, factory = prepare_app_run(
        app,
        settings.policy,
        run_id,
        seed=settings.run.scenario.seed,
        rounds=settings.run.rounds,
        actor_critic=settings.run.actor_critic,
        hedge=settings.run.hedge,
        config=config,
        federated_evaluation=settings.federation.evaluation == "federated",
    )
    empty = (np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64))
    return spec, factory, ServerData(0, 0, empty, None)


def describe_run(scenario: Any, settings: ServerSettings) -> str:
    """One line about the data, as ``accord simulate`` prints it."""
    if settings.app is not None:
        return f"user app {settings.app}"
    if scenario is not None:
        from accord.commands.simulate import describe_scenario

        return describe_scenario(scenario, settings.run)
    return f"server data {settings.validation_data} (test: {settings.test_data or 'none'})"


def _process_age() -> float | None:
    from accord.commands.simulate import process_age

    return process_age()


@dataclass(frozen=True)
class ServedRun:
    """How :func:`serve` ended: the run folder, the rounds it holds, the stop reason
    (:data:`~accord.federation.driver.INTERRUPTED` after a :class:`StopRequest`)."""

    run_dir: Path
    rounds: int
    stop_reason: str

    @property
    def interrupted(self) -> bool:
        from accord.federation.driver import INTERRUPTED

        return self.stop_reason == INTERRUPTED

    @property
    def diverged(self) -> bool:
        from accord.federation.driver import DIVERGED

        return self.stop_reason.startswith(DIVERGED)


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
    return settings_from_json(ServerSettings, saved["settings"], "settings")


def check_new_run_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before anything starts, a run folder that :class:`RunFolder` would refuse."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "is not a folder" if not path.is_dir() else "is not empty; choose another folder"
        raise ConfigurationError(f"{option}: {path} exists and {what}")


def serve(
    settings: ServerSettings | None,
    transport: Any,
    credentials: ServerCredentials | None,
    authenticator: Authenticator,
    *,
    out: str | None,
    resume: str | None,
    overrides: Mapping[str, Any] | None = None,
    scenario: Any = None,
    progress: Progress | None = None,
    on_listening: Callable[[int], None] | None = None,
    extra_stats: Callable[[], Mapping[str, Any]] | None = None,
    stop_request: Any = None,
    end_nodes_when_interrupted: bool = False,
) -> ServedRun:
    """Run (or resume) a federated run with the server in this process.

    A new run's folder (``out``) is made only once the server listens, so a server that
    cannot start leaves nothing behind. ``scenario`` is the scenario already built, if
    any; ``stop_request`` a :class:`~accord.federation.driver.StopRequest` that signal
    handlers set: the run then finishes its round, writes its summary and plots, and its
    checkpoint stays resumable (``--resume``, which also continues a run stopped before
    its first round)."""
    import numpy as np

    from accord.config import SimulateConfig, simulate_config_to_toml
    from accord.federation.driver import FederatedRun, StopRequest, load_run_checkpoint
    from accord.federation.engine import load_server_data, prepare_run, standardisation_fit
    from accord.federation.server import GrpcGrid, format_address
    from accord.reporting import RunFolder

    state: dict[str, Any] | None = None
    folder: Any = None
    if resume is not None:
        run_dir = Path(resume)
        saved = read_run_file(run_dir)
        settings = saved_settings(saved)
        if overrides:
            if "evaluation" in overrides and overrides["evaluation"] != (
                settings.federation.evaluation
            ):
                raise ConfigurationError("--evaluation cannot change when a run is resumed")
            settings = replace(settings, federation=replace(settings.federation, **overrides))
        run_id = str(saved["run_id"])
        if (run_dir / CHECKPOINT_FILE).exists():
            state = load_run_checkpoint(run_dir / CHECKPOINT_FILE)
            if state.get("run_id") != run_id:
                raise InputDataError(f"{run_dir}: the checkpoint belongs to another run")
        else:  # stopped before its first round: start it again with its settings
            logger.info("%s: no round was finished; starting run %s afresh", run_dir, run_id)
            folder = RunFolder.reopen(run_dir, [])
    else:
        if settings is None:
            raise ConfigurationError("settings: required for a new run")
        run_id = secrets.token_hex(6)
        run_dir = Path(out) if out is not None else _default_out()
        check_new_run_folder(run_dir)
    assert settings is not None
    stop = stop_request if stop_request is not None else StopRequest()
    crash_after = _crash_after(os.environ)
    fit_standardisation = None  # a user app scales its own data
    if settings.app is not None:
        spec, factory, data = _prepare_app(settings, run_id)
    else:
        if scenario is None and settings.validation_data is None:
            from accord.scenario import build_scenario

            scenario = build_scenario(settings.run.scenario)
        data = load_server_data(settings, scenario)
        spec, factory = prepare_run(settings, data, run_id)
        fit_standardisation = standardisation_fit(settings, data)
    grid = GrpcGrid(spec, transport, credentials, authenticator)
    try:
        if resume is None:
            folder = RunFolder(run_dir, option="--out")
            folder.write_config(
                simulate_config_to_toml(SimulateConfig(settings.run, policies=(settings.policy,)))
            )
            _write_json(
                run_dir / RUN_FILE,
                {
                    "format": RUN_FORMAT,
                    "version": RUN_VERSION,
                    "run_id": run_id,
                    "created": dt.datetime.now(dt.UTC).isoformat(),
                    "settings": settings_to_json(settings),
                    "transport": {"host": transport.host, "port": grid.port},
                },
            )
        _write_json(
            run_dir / ADDRESS_FILE,
            {"host": transport.host, "port": grid.port, "pid": os.getpid(), "run_id": run_id},
        )
    except BaseException:
        grid.shutdown(None)
        raise
    if on_listening is not None:
        on_listening(grid.port)
    warm_up_in_background()  # while the nodes register, not in the round that first learns
    report = _Report(run_dir, run_id, settings.policy, folder)
    if progress is not None:
        address = format_address(transport.host, grid.port)
        progress.start(
            describe_run(scenario, settings),
            tuple(data.faulty_nodes),
            f"{address} ({'plaintext' if credentials is None else 'TLS'})",
        )
    if scenario is not None:
        report.faulty_in_round = scenario.faulty_in_round

    def after_round(rounds_done: int) -> None:
        if crash_after is not None and rounds_done >= crash_after:
            logger.warning("failpoint: killing the server after round %d", rounds_done)
            os.kill(os.getpid(), signal.SIGKILL)

    from accord.reporting.model_files import (
        FILE_INPUT_NOTE,
        SCENARIO_INPUT_NOTE,
        ModelExport,
        scenario_feature_names,
    )

    export = (
        ModelExport(
            run_dir,
            policies=(settings.policy,),
            layout=spec.layout,
            app=settings.app,
            input_note="what the app's model takes",
        )
        if settings.app is not None
        else ModelExport(
            run_dir,
            policies=(settings.policy,),
            model=settings.run.model,
            n_features=data.n_features,
            n_classes=data.n_classes,
            feature_names=data.feature_names or scenario_feature_names(data.n_features),
            label_column=settings.label_column,
            input_note=SCENARIO_INPUT_NOTE if data.feature_names is None else FILE_INPUT_NOTE,
        )
    )

    def restart(rounds: tuple[Any, ...]) -> None:
        report.restart(rounds)
        export.restart(
            settings.policy,
            [(t.record.round_index, t.record.validation_accuracy_after) for t in rounds],
        )

    def round_done(timed: Any) -> None:
        record = timed.record
        report.append(timed)
        assert run.engine is not None
        export.round_done(
            settings.policy,
            record.round_index,
            run.engine.global_weights,
            record.validation_accuracy_after,
            run.engine.global_buffers,
        )
        logger.log(
            logging.DEBUG if progress is not None else logging.INFO,  # else the table says it
            "round %d: validation accuracy %s, test accuracy %s, %d/%d nodes, %.3f s",
            record.round_index + 1,
            _fmt(record.validation_accuracy_after),
            _fmt(record.test_accuracy),
            len(record.present),
            len(record.probabilities),
            timed.round_seconds,
        )
        if progress is not None:
            progress.round(timed)

    federation = settings.federation
    run = FederatedRun(
        grid,
        factory,
        settings.policy,
        settings.run.stop,
        federation,
        expected_nodes=settings.expected_nodes,
        quorum=settings.quorum,
        run_id=run_id,
        checkpoint_path=run_dir / CHECKPOINT_FILE,
        resume=state,
        on_round=round_done,
        on_resume=restart,
        after_round=after_round,
        stop_request=stop,
        end_nodes_when_interrupted=end_nodes_when_interrupted,
        fit_standardisation=fit_standardisation,
    )
    result = run.run()
    if not result.rounds:
        logger.info("run %s stopped before its first round: %s", run_id, result.stop_reason)
        return ServedRun(run_dir, 0, result.stop_reason)
    assert run.engine is not None
    export.standardisation = run.standardisation
    export.finish(
        settings.policy,
        run.engine.round_index - 1,
        run.engine.global_weights,
        run.engine.global_buffers,
    )
    summary = report.summary(
        result,
        settings,
        run.engine,
        scenario,
        data.faulty_nodes,
        {
            "run_id": run_id,
            "command": "federate" if extra_stats is not None else "server",
            "resumed_at": result.resumed_at,
            "evaluation": federation.evaluation,
            "quorum": settings.quorum,
            "round_deadline_seconds": federation.round_deadline,
            "transport": "plaintext" if credentials is None else "TLS",
        },
    )
    report.write_summary(summary)
    summary["plots"] = report.plots(result, data.faulty_nodes, describe_run(scenario, settings))
    report.write_summary(summary)
    round_seconds = [t.round_seconds for t in result.rounds]
    _write_json(
        run_dir / STATS_FILE,
        {
            "rounds": len(result.rounds),
            "resumed_at": result.resumed_at,
            "round_seconds": round_seconds,
            "median_round_seconds": float(np.median(round_seconds)) if round_seconds else None,
            "bytes_sent": [t.sent for t in result.traffic],
            "bytes_received": [t.received for t in result.traffic],
            "first_round_done_at": result.first_round_done_at,
            "server_peak_rss_bytes": peak_rss_bytes(),
            **(dict(extra_stats()) if extra_stats is not None else {}),
        },
    )
    logger.info(
        "run %s finished after %d rounds: %s", run_id, len(result.rounds), result.stop_reason
    )
    if progress is not None:
        progress.finish(summary, run_dir)
    return ServedRun(run_dir, len(result.rounds), result.stop_reason)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------ accord federate


@dataclass(frozen=True)
class FederateSettings:
    """A local federation: ``insecure`` skips TLS and authentication; ``node_log_level``
    is the nodes' logging threshold (default WARNING)."""

    insecure: bool = False
    node_log_level: int = logging.WARNING


_warming: list[threading.Thread] = []


def warm_up_in_background() -> None:
    """:func:`warm_up_torch` on a daemon thread, once per process: it is pure-Python import
    work that runs while this process waits for the scenario, for the nodes or for the
    network; a torch optimiser that needs it before it is done waits on the import lock."""
    if not _warming:
        thread = threading.Thread(target=warm_up_torch, name="accord-warm-up", daemon=True)
        _warming.append(thread)
        thread.start()


def warm_up_torch() -> None:
    """Run one tiny SGD step: torch imports its compiler stack lazily on the first optimiser
    step (about a second); paying it before the first round keeps round 0 as fast as the
    others, and a forked node inherits it for free."""
    import torch

    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, foreach=True)
    module(torch.zeros(1, 2)).sum().backward()
    optimizer.step()


def _node_child(
    data_fd: int,
    settings: ServerSettings,
    port: int,
    credentials_dir: Path | None,
    parent_pid: int,
    log_level: int,
) -> int:
    """Body of a forked node process: wait for its partition from the parent, then serve."""
    import numpy as np

    from accord.federation.auth import load_node_credentials
    from accord.federation.checkpoint import loads_tree
    from accord.federation.client import NodeClient, NodeSettings
    from accord.federation.fingerprint import Fingerprint
    from accord.federation.node_data import split_validation
    from accord.federation.worker import NodeFault, NodeWorker
    from accord.scenario import node_seed

    logging.getLogger().setLevel(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the nodes
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's graceful stop
    try:
        node = loads_tree(read_all(data_fd), "node data from the launcher")
    finally:
        os.close(data_fd)
    scenario = settings.run.scenario
    index = int(node["index"])
    seed = node_seed(scenario.seed, index)
    features, labels = node["features"], node["labels"]
    validation = None
    if settings.federation.evaluation == "federated":
        features, labels, validation = split_validation(features, labels, 0.1, seed)
    worker = NodeWorker(
        str(node["node_id"]),
        features,
        labels,
        seed=seed,
        validation=validation,
        fault=(
            None
            if node["fault_group"] < 0
            else NodeFault(scenario.fault_groups[int(node["fault_group"])], scenario.seed, index)
        ),
    )
    credentials = (
        None if credentials_dir is None else load_node_credentials(credentials_dir / worker.node_id)
    )
    client = NodeClient(
        worker,
        NodeSettings(
            server=f"127.0.0.1:{port}",
            insecure=credentials_dir is None,
            give_up_after=60.0,
        ),
        credentials,
        rng=np.random.default_rng([seed, 5]),
        parent_pid=parent_pid,
        fingerprint=Fingerprint.of(scenario=scenario),
    )
    client.run()
    return 0


def federate(
    settings: ServerSettings | None,
    options: FederateSettings,
    *,
    out: str | None,
    resume: str | None = None,
    progress: Any = None,
    launched_at: float | None = None,
    scenario_helper: Any = None,
    stop_request: Any = None,
) -> ServedRun:
    """Fork one process per scenario node, then serve them from this process.

    ``resume`` continues the run saved in that folder (its settings come from there) with
    new node processes holding the same partitions. A ``stop_request`` (a signal) ends the
    nodes too, and leaves the run resumable.

    A :class:`~accord.federation.scenario_helper.ScenarioHelper` (forked before torch was
    imported, if the caller did so) builds the scenario; it alone imports scikit-learn. The
    node processes are forked right away; they hold torch and gRPC only and wait for their
    partition, which arrives through a pipe (``.npz`` bytes, no pickle) once the server
    listens. Meanwhile a thread of this process warms up the server's torch stack.
    """
    prepare_process()
    import accord.federation.client
    import accord.federation.worker  # noqa: F401 - imported once, before the forks
    from accord.federation.auth import (
        Authenticator,
        load_server_credentials,
        make_credentials,
    )
    from accord.federation.checkpoint import dumps_tree
    from accord.federation.server import TransportSettings
    from accord.scenario import node_id

    if resume is not None:
        run_dir = Path(resume)
        settings = saved_settings(read_run_file(run_dir))
        if settings.validation_data is not None:
            raise ConfigurationError(
                f"--resume: {run_dir} is a run of `accord server` with server data; "
                "resume it with `accord server --resume`"
            )
    else:
        if settings is None:
            raise ConfigurationError("settings: required for a new run")
        run_dir = Path(out) if out is not None else _default_out()
        check_new_run_folder(run_dir)
    count = settings.run.scenario.nodes
    node_ids = [node_id(index) for index in range(count)]
    if scenario_helper is None:
        from accord.federation.scenario_helper import ScenarioHelper

        scenario_helper = ScenarioHelper()
    scenario_helper.request(settings.run.scenario)
    credentials_dir: Path | None = None
    credentials: ServerCredentials | None = None
    if options.insecure:
        logger.warning("--insecure: the local federation runs in plaintext without authentication")
        authenticator = Authenticator(None, require_client_cert=False)
    else:
        # Throw-away credentials in a private temporary folder, removed at the end.
        credentials_dir = Path(tempfile.mkdtemp(prefix="accord-federate-"))
        make_credentials(
            credentials_dir, node_ids, now=dt.datetime.now(dt.UTC), days=7, overwrite=True
        )
        credentials = load_server_credentials(credentials_dir, "both")
        authenticator = Authenticator(credentials.token_hashes, require_client_cert=True)
    port = free_port()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, str] = {}
    data_pipes: dict[str, int] = {}
    node_rss: dict[str, int] = {}
    exit_codes: dict[str, int] = {}
    try:
        for name in node_ids:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    os.close(write_fd)
                    for inherited in data_pipes.values():
                        os.close(inherited)
                    code = _node_child(
                        read_fd, settings, port, credentials_dir, parent, options.node_log_level
                    )
                except BaseException as error:
                    logger.error("node %s failed: %s", name, error)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            os.close(read_fd)
            children[pid] = name
            data_pipes[name] = write_fd
        warm_up_in_background()  # the server's optimisers; the nodes (forked) do not need it
        scenario = scenario_helper.collect(settings.run.scenario)

        def release_nodes(listening_port: int) -> None:
            # The server listens: hand each node its partition, and it connects at once.
            for node in scenario.nodes:
                descriptor = data_pipes.pop(node.node_id)
                try:
                    write_all(
                        descriptor,
                        dumps_tree(
                            {
                                "node_id": node.node_id,
                                "index": node.index,
                                "faulty": node.faulty,
                                "fault_group": _fault_group(scenario, node),
                                "features": node.features,
                                "labels": node.labels,
                            }
                        ),
                    )
                finally:
                    os.close(descriptor)

        federation = replace(settings.federation, expected_nodes=count)
        return serve(
            replace(settings, federation=federation) if resume is None else None,
            TransportSettings(host="127.0.0.1", port=port),
            credentials,
            authenticator,
            out=str(run_dir),
            resume=resume,
            scenario=scenario,
            progress=progress,
            on_listening=release_nodes,
            stop_request=stop_request,
            end_nodes_when_interrupted=True,
            extra_stats=lambda: {
                "launched_at": launched_at,
                "nodes": count,
                "node_peak_rss_bytes": _reap(children, node_rss, exit_codes, 10.0),
                "node_exit_codes": exit_codes,
            },
        )
    finally:
        for descriptor in data_pipes.values():
            os.close(descriptor)
        _reap(children, node_rss, exit_codes, 5.0)
        if credentials_dir is not None:
            shutil.rmtree(credentials_dir, ignore_errors=True)


def _default_out() -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _reap(
    children: dict[int, str],
    rss: dict[str, int],
    codes: dict[str, int],
    timeout: float,
) -> dict[str, int]:
    """Wait for the node processes (killing stragglers after ``timeout``); record each
    one's peak RSS and exit code."""
    deadline = time.monotonic() + timeout
    signalled = False
    while children:
        for pid in list(children):
            try:
                done, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                children.pop(pid)
                continue
            if done:
                node = children.pop(pid)
                rss[node] = int(usage.ru_maxrss) * 1024
                codes[node] = os.waitstatus_to_exitcode(status)
        if not children:
            break
        if time.monotonic() > deadline:
            if signalled:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            else:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                signalled = True
                deadline = time.monotonic() + 2.0
        time.sleep(0.02)
    return dict(rss)


def _fault_group(scenario: Any, node: Any) -> int:
    """The index of ``node``'s fault group in the scenario settings' ``fault_groups``, or
    -1 for an honest node (the node process rebuilds its recipe from it)."""
    group = scenario.fault_group_of(node)
    return -1 if group is None else int(group)
