"""``accord federate``: a whole federation on this machine, in one command.

``accord federate`` imports torch once, builds the scenario in a helper process, then forks
one process per node (copy-on-write: a node starts in milliseconds instead of re-importing
torch for two seconds) and serves as the federation's server itself. The nodes are real
processes that speak gRPC over 127.0.0.1 with TLS, client certificates and tokens
generated for the run (or plaintext with ``--insecure``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from accord.checkpoint_files import dumps_tree
from accord.credentials.auth import Authenticator, ServerCredentials
from accord.errors import ConfigurationError
from accord.federation.launcher import (
    ServedRun,
    prepare_process,
    serve,
    warm_up_in_background,
)
from accord.federation.run_files import (
    check_new_run_folder,
    default_run_dir,
    read_run_file,
    saved_settings,
)
from accord.federation.scenario_helper import read_all, write_all
from accord.federation.settings import (
    ServerSettings,
)

__all__ = ["FederateSettings", "federate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederateSettings:
    """A local federation: ``insecure`` skips TLS and authentication; ``node_log_level``
    is the nodes' logging threshold (default WARNING)."""

    insecure: bool = False
    node_log_level: int = logging.WARNING


def _node_child(
    data_fd: int,
    settings: ServerSettings,
    credentials_dir: Path | None,
    parent_pid: int,
    log_level: int,
) -> int:
    """Body of a forked node process: wait for its partition and the server's port from the
    parent (sent once the server listens), then serve."""
    import numpy as np

    from accord.checkpoint_files import loads_tree
    from accord.credentials.auth import load_node_credentials
    from accord.failpoints import NODE_ACTIONS, failpoints_for
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
    port = int(node["port"])
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
            failpoints=failpoints_for(NODE_ACTIONS),  # as `accord node` (tests)
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
    from accord.federation.server import TransportSettings
    from accord.scenario import node_id

    settings, run_dir = _settings_and_folder(settings, out, resume)
    count = settings.run.scenario.nodes
    node_ids = [node_id(index) for index in range(count)]
    if scenario_helper is None:
        from accord.federation.scenario_helper import ScenarioHelper

        scenario_helper = ScenarioHelper()
    scenario_helper.request(settings.run.scenario)
    credentials_dir, credentials, authenticator = _run_credentials(options, node_ids)
    if credentials_dir is not None and stop_request is not None:
        folder = credentials_dir
        stop_request.on_stop_at_once(lambda: shutil.rmtree(folder, ignore_errors=True))
    children: dict[int, str] = {}
    data_pipes: dict[str, int] = {}
    node_rss: dict[str, int] = {}
    exit_codes: dict[str, int] = {}
    try:
        _fork_nodes(node_ids, settings, credentials_dir, options, children, data_pipes)
        warm_up_in_background()  # the server's optimisers; the nodes (forked) do not need it
        scenario = scenario_helper.collect(settings.run.scenario)
        federation = replace(settings.federation, expected_nodes=count)
        return serve(
            replace(settings, federation=federation) if resume is None else None,
            # Port 0: the system picks a free port as the server binds, and the nodes learn
            # it with their partition (no window in which another process can take it).
            TransportSettings(host="127.0.0.1", port=0),
            credentials,
            authenticator,
            out=str(run_dir),
            resume=resume,
            scenario=scenario,
            progress=progress,
            on_listening=lambda port: _release_nodes(scenario, data_pipes, port),
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


def _settings_and_folder(
    settings: ServerSettings | None, out: str | None, resume: str | None
) -> tuple[ServerSettings, Path]:
    """A new run's settings and (checked) folder, or a resumed run's, read from there."""
    if resume is not None:
        run_dir = Path(resume)
        saved = saved_settings(read_run_file(run_dir))
        if saved.validation_data is not None:
            raise ConfigurationError(
                f"--resume: {run_dir} is a run of `accord server` with server data; "
                "resume it with `accord server --resume`"
            )
        return saved, run_dir
    if settings is None:
        raise ConfigurationError("settings: required for a new run")
    run_dir = Path(out) if out is not None else default_run_dir()
    check_new_run_folder(run_dir)
    return settings, run_dir


def _run_credentials(
    options: FederateSettings, node_ids: Sequence[str]
) -> tuple[Path | None, ServerCredentials | None, Authenticator]:
    """Throw-away credentials in a private temporary folder (removed at the end of the
    run), or none with ``--insecure``: (their folder, the server's, its authenticator)."""
    from accord.credentials.auth import load_server_credentials
    from accord.credentials.issue import make_credentials

    if options.insecure:
        logger.warning("--insecure: the local federation runs in plaintext without authentication")
        return None, None, Authenticator(None, require_client_cert=False)
    credentials_dir = Path(tempfile.mkdtemp(prefix="accord-federate-"))
    make_credentials(credentials_dir, node_ids, now=dt.datetime.now(dt.UTC), days=7, overwrite=True)
    credentials = load_server_credentials(credentials_dir, "both")
    return (
        credentials_dir,
        credentials,
        Authenticator(credentials.token_hashes, require_client_cert=True),
    )


def _fork_nodes(
    node_ids: Sequence[str],
    settings: ServerSettings,
    credentials_dir: Path | None,
    options: FederateSettings,
    children: dict[int, str],
    data_pipes: dict[str, int],
) -> None:
    """Fork one process per node; each waits on its pipe for its partition. Records each
    child's pid in ``children`` and the pipe's write end in ``data_pipes``."""
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
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
                    read_fd, settings, credentials_dir, parent, options.node_log_level
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


def _release_nodes(scenario: Any, data_pipes: dict[str, int], port: int) -> None:
    """The server listens on ``port``: hand each node its partition and the port, and it
    connects at once."""
    for node in scenario.nodes:
        descriptor = data_pipes.pop(node.node_id)
        try:
            write_all(
                descriptor,
                dumps_tree(
                    {
                        "node_id": node.node_id,
                        "port": port,
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
