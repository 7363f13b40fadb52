"""The server's main loop (``accord server``) and what every federation process does first
(one torch thread, torch's lazy imports paid early). A local federation in one command
(``accord federate``) is :mod:`accord.federation.local`; the run folder
:mod:`accord.federation.run_files`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import resource
import secrets
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from accord.credentials.auth import Authenticator, ServerCredentials
from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.failpoints import SERVER_ACTIONS, failpoints_for
from accord.federation.run_files import (
    ADDRESS_FILE,
    CHECKPOINT_FILE,
    RUN_FILE,
    RUN_FORMAT,
    RUN_VERSION,
    STATS_FILE,
    RunReport,
    check_new_run_folder,
    default_run_dir,
    describe_run,
    read_run_file,
    saved_settings,
    write_json,
)
from accord.federation.settings import (
    ServerSettings,
)
from accord.settings_mapping import settings_to_mapping

__all__ = [
    "Progress",
    "ServedRun",
    "peak_rss_bytes",
    "prepare_process",
    "serve",
    "warm_up_in_background",
    "warm_up_torch",
]

logger = logging.getLogger(__name__)


def prepare_process() -> None:
    """One torch thread per process: nodes and server share few cores."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set, or torch already ran a job
        torch.set_num_interop_threads(1)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _crash_after(env: Mapping[str, str]) -> int | None:
    """The server failpoint for tests (``ACCORD_FAILPOINT=crash-after-round@3``): SIGKILL
    the server right after the checkpoint of that many rounds is written."""
    points = failpoints_for(SERVER_ACTIONS, env)
    return points[0].step if points else None


class Progress(Protocol):
    """What a command shows while a run goes on (``accord federate`` shows what ``accord
    simulate`` shows)."""

    def start(self, description: str, faulty_nodes: tuple[str, ...], address: str) -> None:
        """The run starts: one line about its data, its faulty nodes, where it listens."""

    def round(self, timed: Any) -> None: ...

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None: ...


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


def _prepare_app(
    settings: ServerSettings, run_id: str, device: str = "cpu"
) -> tuple[Any, Any, Any]:
    """The spec, engine factory and (empty) server data of a user app's run; the server
    factory's config has ``device`` too (the nodes get the config without it)."""
    import json

    import numpy as np

    from accord.federation.engine import ServerData, prepare_app_run
    from accord.fl.contracts import ServerAppFactory
    from accord.fl.loading import load_factory

    assert settings.app is not None
    config = json.loads(settings.app_config)
    server_factory: ServerAppFactory = load_factory(settings.app, "--app")
    try:
        app = server_factory({**config, "device": device})
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
    device: str = "cpu",
) -> ServedRun:
    """Run (or resume) a federated run with the server in this process.

    A new run's folder (``out``) is made only once the server listens, so a server that
    cannot start leaves nothing behind. ``scenario`` is the scenario already built, if
    any; ``stop_request`` a :class:`~accord.federation.driver.StopRequest` that signal
    handlers set: the run then finishes its round, writes its summary and plots, and its
    checkpoint stays resumable (``--resume``, which also continues a run stopped before
    its first round)."""

    from accord.federation.driver import FederatedRun, StopRequest
    from accord.federation.engine import load_server_data, prepare_run, standardisation_fit
    from accord.federation.server import GrpcGrid, format_address

    settings, run_dir, run_id, state, folder = _open_run(settings, out, resume, overrides)
    stop = stop_request if stop_request is not None else StopRequest()
    fit_standardisation = None  # a user app scales its own data
    if settings.app is not None:
        spec, factory, data = _prepare_app(settings, run_id, device)
    else:
        if scenario is None and settings.validation_data is None:
            from accord.scenario import build_scenario

            scenario = build_scenario(settings.run.scenario)
        data = load_server_data(settings, scenario)
        spec, factory = prepare_run(settings, data, run_id, device)
        fit_standardisation = standardisation_fit(settings, data)
    grid = GrpcGrid(spec, transport, credentials, authenticator)
    try:
        if resume is None:
            folder = _new_run_files(settings, transport.host, grid.port, run_dir, run_id)
        write_json(
            run_dir / ADDRESS_FILE,
            {"host": transport.host, "port": grid.port, "pid": os.getpid(), "run_id": run_id},
        )
    except BaseException:
        grid.shutdown(None)
        raise
    if on_listening is not None:
        on_listening(grid.port)
    warm_up_in_background()  # while the nodes register, not in the round that first learns
    report = RunReport(run_dir, run_id, settings.policy, folder)
    if progress is not None:
        address = format_address(transport.host, grid.port)
        progress.start(
            describe_run(scenario, settings),
            tuple(data.faulty_nodes),
            f"{address} ({'plaintext' if credentials is None else 'TLS'})",
        )
    if scenario is not None:
        report.faulty_in_round = scenario.faulty_in_round

    export = _model_export(settings, spec, data, run_dir)
    on_round, on_resume = _round_hooks(
        report, progress, export, settings.policy, lambda: run.engine
    )
    run = FederatedRun(
        grid,
        factory,
        settings.policy,
        settings.run.stop,
        settings.federation,
        expected_nodes=settings.expected_nodes,
        quorum=settings.quorum,
        run_id=run_id,
        checkpoint_path=run_dir / CHECKPOINT_FILE,
        resume=state,
        on_round=on_round,
        on_resume=on_resume,
        after_round=_after_round(_crash_after(os.environ)),
        stop_request=stop,
        end_nodes_when_interrupted=end_nodes_when_interrupted,
        fit_standardisation=fit_standardisation,
        sample_seed=settings.run.scenario.seed,
    )
    result = run.run()
    if not result.rounds:
        logger.info("run %s stopped before its first round: %s", run_id, result.stop_reason)
        return ServedRun(run_dir, 0, result.stop_reason)
    assert run.engine is not None
    _finish_export(export, run, settings.policy)
    command = "federate" if extra_stats is not None else "server"
    summary = report.summary(
        result,
        settings,
        run.engine,
        scenario,
        data.faulty_nodes,
        _run_facts(settings, run_id, command, result.resumed_at, credentials is None),
    )
    report.write_summary(summary)
    summary["plots"] = report.plots(result, data.faulty_nodes, describe_run(scenario, settings))
    report.write_summary(summary)
    _write_stats(run_dir / STATS_FILE, result, extra_stats)
    logger.info(
        "run %s finished after %d rounds: %s", run_id, len(result.rounds), result.stop_reason
    )
    if progress is not None:
        progress.finish(summary, run_dir)
    return ServedRun(run_dir, len(result.rounds), result.stop_reason)


def _finish_export(export: Any, run: Any, policy: str) -> None:
    """The final model's files, with the run's standardisation (if it has one)."""
    export.standardisation = run.standardisation
    engine = run.engine
    export.finish(policy, engine.round_index - 1, engine.global_weights, engine.global_buffers)


def _round_hooks(
    report: RunReport,
    progress: Progress | None,
    export: Any,
    policy: str,
    engine_of_run: Callable[[], Any],
) -> tuple[Callable[[Any], None], Callable[[tuple[Any, ...]], None]]:
    """The run's ``on_round`` (the report, the log line, the table, then the model files)
    and ``on_resume`` (the report's and the model files' rounds so far)."""
    round_done = _round_done(report, progress)

    def on_round(timed: Any) -> None:
        round_done(timed)
        engine = engine_of_run()
        export.round_done(
            policy,
            timed.record.round_index,
            engine.global_weights,
            timed.record.validation_accuracy_after,
            engine.global_buffers,
        )

    def on_resume(rounds: tuple[Any, ...]) -> None:
        report.restart(rounds)
        export.restart(
            policy, [(t.record.round_index, t.record.validation_accuracy_after) for t in rounds]
        )

    return on_round, on_resume


def _model_export(settings: ServerSettings, spec: Any, data: Any, run_dir: Path) -> Any:
    """The :class:`~accord.reporting.model_files.ModelExport` of a run: the final and best
    global model, and what rebuilding it takes (a user app's layout, or the built-in model's
    spec, features and labels)."""
    from accord.reporting.model_files import (
        FILE_INPUT_NOTE,
        SCENARIO_INPUT_NOTE,
        ModelExport,
        scenario_feature_names,
    )

    if settings.app is not None:
        return ModelExport(
            run_dir,
            policies=(settings.policy,),
            layout=spec.layout,
            app=settings.app,
            input_note="what the app's model takes",
        )
    return ModelExport(
        run_dir,
        policies=(settings.policy,),
        model=settings.run.model,
        n_features=data.n_features,
        n_classes=data.n_classes,
        feature_names=data.feature_names or scenario_feature_names(data.n_features),
        label_column=settings.label_column,
        input_note=SCENARIO_INPUT_NOTE if data.feature_names is None else FILE_INPUT_NOTE,
    )


def _after_round(crash_after: int | None) -> Callable[[int], None]:
    """The hook after each checkpoint: the ``crash-after-round@N`` failpoint, if set."""

    def after_round(rounds_done: int) -> None:
        if crash_after is not None and rounds_done >= crash_after:
            logger.warning("failpoint: killing the server after round %d", rounds_done)
            os.kill(os.getpid(), signal.SIGKILL)

    return after_round


def _round_done(report: RunReport, progress: Progress | None) -> Callable[[Any], None]:
    """What happens after each round: ``metrics.jsonl``, a log line, the progress table."""

    def round_done(timed: Any) -> None:
        record = timed.record
        report.append(timed)
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

    return round_done


def _open_run(
    settings: ServerSettings | None,
    out: str | None,
    resume: str | None,
    overrides: Mapping[str, Any] | None,
) -> tuple[ServerSettings, Path, str, dict[str, Any] | None, Any]:
    """(settings, run folder, run id, checkpoint state, reopened :class:`RunFolder`) of a
    new run, or of the run saved in ``resume`` with its federation ``overrides``."""
    from accord.federation.driver import load_run_checkpoint
    from accord.reporting import RunFolder

    if resume is None:
        if settings is None:
            raise ConfigurationError("settings: required for a new run")
        run_dir = Path(out) if out is not None else default_run_dir()
        check_new_run_folder(run_dir)
        return settings, run_dir, secrets.token_hex(6), None, None
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
        return settings, run_dir, run_id, state, None
    # Stopped before its first round: start it again with its settings.
    logger.info("%s: no round was finished; starting run %s afresh", run_dir, run_id)
    return settings, run_dir, run_id, None, RunFolder.reopen(run_dir, [])


def _new_run_files(
    settings: ServerSettings, host: str, port: int, run_dir: Path, run_id: str
) -> Any:
    """Once the server listens, a new run's folder with ``config.toml`` and
    ``federation.json``; returns the :class:`~accord.reporting.RunFolder`."""
    from accord.config import SimulateConfig, simulate_config_to_toml
    from accord.reporting import RunFolder

    folder = RunFolder(run_dir, option="--out")
    folder.write_config(
        simulate_config_to_toml(SimulateConfig(settings.run, policies=(settings.policy,)))
    )
    write_json(
        run_dir / RUN_FILE,
        {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "run_id": run_id,
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "settings": settings_to_mapping(settings),
            "transport": {"host": host, "port": port},
        },
    )
    return folder


def _run_facts(
    settings: ServerSettings, run_id: str, command: str, resumed_at: Any, plaintext: bool
) -> dict[str, Any]:
    """The ``federation`` entry of ``summary.json``."""
    federation = settings.federation
    return {
        "run_id": run_id,
        "command": command,
        "resumed_at": resumed_at,
        "evaluation": federation.evaluation,
        "quorum": settings.quorum,
        "round_deadline_seconds": federation.round_deadline,
        "transport": "plaintext" if plaintext else "TLS",
    }


def _write_stats(
    path: Path, result: Any, extra_stats: Callable[[], Mapping[str, Any]] | None
) -> None:
    """``federation_stats.json``: round times, traffic, peak memory and the caller's extras."""
    import numpy as np

    round_seconds = [t.round_seconds for t in result.rounds]
    write_json(
        path,
        {
            "rounds": len(result.rounds),
            "resumed_at": result.resumed_at,
            "round_seconds": round_seconds,
            "median_round_seconds": float(np.median(round_seconds)) if round_seconds else None,
            "bytes_sent": [t.sent for t in result.traffic],
            "bytes_received": [t.received for t in result.traffic],
            "first_round_done_at": result.first_round_done_at,
            # the rounds this process played: wall seconds per stage, and its CPU seconds
            "stage_seconds": [dict(stages) for stages in result.stage_seconds],
            "server_peak_rss_bytes": peak_rss_bytes(),
            **(dict(extra_stats()) if extra_stats is not None else {}),
        },
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_warming: list[threading.Thread] = []


def warm_up_in_background() -> None:
    """:func:`warm_up_torch` on a daemon thread, once per process: it is pure-Python import
    work that runs while this process waits for the scenario, for the nodes or for the
    network; a torch optimiser that needs it before it is done waits on the import lock."""
    if not _warming:
        thread = threading.Thread(target=warm_up_torch, name="accord-warm-up", daemon=True)
        _warming.append(thread)
        thread.start()
        # A short run can end while the thread is still inside torch's lazy imports; the
        # interpreter's shutdown then kills it mid-way and torch's C++ side aborts the
        # process ("terminate called without an active exception", exit -6). Let it
        # finish first.
        atexit.register(thread.join, 120.0)


def warm_up_torch() -> None:
    """Run one tiny SGD step: torch imports its compiler stack lazily on the first optimiser
    step (about a second); paying it before the first round keeps round 0 as fast as the
    others, and a forked node inherits it for free."""
    import torch

    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, foreach=True)
    module(torch.zeros(1, 2)).sum().backward()
    optimizer.step()
