"""Rate limits on unauthenticated attempts (issue 13 item 4): the limiter, and real sockets.

A flood of bad registrations from one address is throttled (refused at once, without a
look at its credentials, once its failure budget is spent) and logged once, while a node
that registered still trains; too many half-open connections to an alignment listener are
dropped at once while the real peer gets through.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import grpc
import numpy as np
import pytest

from accord.errors import ConfigurationError
from accord.rate_limits import RateLimitSettings, SourceLimiter, source_address

LOG = logging.getLogger("accord.test_rate_limits")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **settings: Any) -> SourceLimiter:
    return SourceLimiter(RateLimitSettings(**settings), LOG, what="registration", clock=clock)


def test_failures_spend_the_budget_successes_do_not_and_it_refills() -> None:
    clock = Clock()
    limits = limiter(clock, failures_per_minute=3, max_wait=10.0)
    for _ in range(5):  # successes give their token back
        assert limits.admit("a") == 0.0
        limits.finish("a", None)
    for _ in range(3):
        assert limits.admit("a") == 0.0
        limits.finish("a", "refused")
    # Budget spent: the next attempt waits for a token (20 s at 3 a minute), beyond max_wait.
    assert limits.admit("a") is None
    assert limits.admit("b") == 0.0  # another address is not affected
    clock.now += 14.0  # 14/20 of a token back: 6 s to wait, within max_wait
    assert limits.admit("a") == pytest.approx(6.0)
    limits.finish("a", "refused")
    assert (limits.failures, limits.dropped) == (4, 1)


def test_pending_attempts_are_bounded_per_source_and_in_all() -> None:
    limits = limiter(Clock(), max_pending=3, max_pending_per_source=2)
    assert limits.admit("a") == 0.0 and limits.admit("a") == 0.0
    assert limits.admit("a") is None  # a third from one address
    assert limits.admit("b") == 0.0
    assert limits.admit("c") is None  # a fourth in all
    limits.finish("a", None)
    assert limits.admit("c") == 0.0


def test_one_warning_per_source_per_interval_counting_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limits = limiter(clock, failures_per_minute=100, warning_interval=60.0)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        for second in range(30):
            clock.now += 1.0
            for source in ("a", "b"):
                limits.admit(source)
                limits.finish(source, f"refused node from {source} at {second}")
        clock.now += 60.0
        limits.admit("a")
        limits.finish("a", "refused node from a, later")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "refused node from a at 0",
        "refused node from b at 0",
        "refused node from a, later (and 29 more refused or dropped from a since the last "
        "warning: at most one warning per source every 60 s)",
    ]
    assert sum(r.levelno == logging.INFO for r in caplog.records) == 58  # precise, bounded


def test_settings_are_validated_and_addresses_lose_their_port() -> None:
    with pytest.raises(ConfigurationError, match="max_pending_per_source: expected an integer"):
        RateLimitSettings(max_pending_per_source=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="failures_per_minute"):
        RateLimitSettings(failures_per_minute=0)
    assert source_address("ipv4:127.0.0.1:50123") == "ipv4:127.0.0.1"
    assert source_address("ipv6:[::1]:50123") == "ipv6:[::1]"
    assert source_address("ipv6:%5B::1%5D:7") == "ipv6:%5B::1%5D"
    assert source_address("10.0.0.7:9") == "10.0.0.7"
    assert source_address("unix:/tmp/socket") == "unix:/tmp/socket"


# ------------------------------------------------------------------ federation server


def test_a_flood_of_bad_registrations_is_throttled_while_a_good_node_trains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: a real server that checks tokens, at most 3 failed registrations a minute
    # from one address; a good node registers and holds its session.
    from accord.credentials.auth import Authenticator, NodeCredentials, hash_token
    from accord.federation.client import NodeClient, NodeSettings
    from accord.federation.engine import load_server_data, prepare_run
    from accord.federation.proto import federation_pb2 as pb
    from accord.federation.proto import federation_pb2_grpc as pb_grpc
    from accord.federation.server import GrpcGrid, TransportSettings
    from accord.federation.settings import ServerSettings
    from accord.federation.tensors import PROTOCOL_VERSION
    from accord.federation.worker import NodeWorker
    from accord.scenario import ScenarioSettings, build_scenario
    from accord.simulation.driver import SimulationSettings

    scenario = ScenarioSettings(nodes=2, seed=3)
    data = build_scenario(scenario)
    settings = ServerSettings(run=SimulationSettings(scenario=scenario))
    spec, factory = prepare_run(settings, load_server_data(settings, data), "run")
    good = data.nodes[0]
    grid = GrpcGrid(
        spec,
        TransportSettings(port=0, limits=RateLimitSettings(failures_per_minute=3, max_wait=0.5)),
        None,
        Authenticator({good.node_id: hash_token("good-token")}, require_client_cert=False),
    )
    client = NodeClient(
        NodeWorker(good.node_id, good.features, good.labels, seed=1),
        NodeSettings(server=f"127.0.0.1:{grid.port}", insecure=True),
        NodeCredentials(None, None, None, "good-token"),
        rng=np.random.default_rng(0),
    )
    shutdown: list[str] = []
    node = threading.Thread(target=lambda: shutdown.append(client.run()), daemon=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{grid.port}")
    try:
        with caplog.at_level(logging.WARNING, logger="accord.federation.server"):
            node.start()
            assert list(grid.wait_for_nodes(1, 60.0)) == [good.node_id]

            # Act: 12 registrations with a wrong token, one after the other
            codes = []
            for index in range(12):
                register = pb.NodeMessage(
                    register=pb.Register(
                        protocol_version=PROTOCOL_VERSION, node_id=f"guess-{index}"
                    )
                )
                stream = pb_grpc.FederationStub(channel).Session(
                    iter([register]), metadata=(("authorization", "Bearer wrong"),), timeout=30
                )
                with pytest.raises(grpc.RpcError) as refused:
                    next(stream)
                codes.append(refused.value.code())  # type: ignore[attr-defined]

            # ... while the good node trains two rounds
            weights = np.array(factory((good.node_id,), {good.node_id: 1.0}).global_weights)
            for round_index in range(2):
                replies = grid.collect_first_gradients(round_index, weights, (good.node_id,), 60.0)
                gradient = np.asarray(replies.values[good.node_id], dtype=np.float32)
                assert replies.failures == {} and np.isfinite(gradient).all()
                assert np.abs(gradient).sum() > 0  # it trained on its data
                grid.broadcast_second_gradient(
                    round_index, gradient, 1.0, weights, weights - gradient
                )
                weights = weights - gradient
    finally:
        channel.close()
        grid.shutdown("done")
        node.join(60)

    # Assert: 3 refusals looked at, then throttled at once; one warning for the address
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert codes == [unauthenticated] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 9
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    about_flood = [w for w in warnings if "guess-" in w or "dropped a registration" in w]
    assert len(about_flood) == 1, warnings
    assert about_flood[0].startswith("refused node 'guess-0' from ipv4:127.0.0.1:")
    assert shutdown == ["done"]


# ------------------------------------------------------------------ alignment listener


def test_half_open_connections_are_dropped_while_the_real_peer_gets_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: a listener that lets 3 connections from one address wait for their hello
    from align_support import listening_party

    from accord.tee.runtime.transport import Hello, connect_links

    async def scenario() -> tuple[list[str], int, int]:
        listener, endpoint = await listening_party(
            limits=RateLimitSettings(max_pending_per_source=3), hello_timeout=30
        )

        # Act: 20 connections from 127.0.0.2 that never say hello, then the real peer
        loop = asyncio.get_running_loop()
        half_open = []
        for _ in range(20):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", endpoint.port))
            half_open.append(sock)
        # A held connection gets the listener's hello; a dropped one is closed at once.
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(loop.sock_recv(sock, 4096), 30) for sock in half_open)
        )
        dialer = await connect_links(
            Hello("b", "s1", 2), listen=None, peers=[endpoint], connect_timeout=60, idle_timeout=60
        )
        links = await asyncio.wait_for(listener, 30)
        for link in [*links, *dialer]:
            await link.close()
        for sock in half_open:
            sock.close()
        held = sum(1 for data in outcomes if data)
        return [link.name for link in links], held, len(outcomes) - held

    with caplog.at_level(logging.WARNING, logger="accord.tee.runtime.transport"):
        names, held, dropped = asyncio.run(scenario())

    # Assert: the peer got through at once; 3 held, 17 dropped, one warning for the address
    assert names == ["b"]
    assert (held, dropped) == (3, 17)
    warnings = [r.getMessage() for r in caplog.records if "127.0.0.2" in r.getMessage()]
    assert warnings == [
        "dropped a connection from 127.0.0.2: 3 unauthenticated connections open from it"
    ]


# ------------------------------------------------------------------ settable from the CLI


def test_the_limits_are_settable_from_the_command_line(tmp_path: Any) -> None:
    import argparse

    from accord.commands.align_config import settings_from_args
    from accord.commands.server import rate_limits_from_args

    server = argparse.Namespace(failed_registrations_per_minute=5, max_pending_registrations=16)
    assert rate_limits_from_args(server) == RateLimitSettings(
        failures_per_minute=5, max_pending=16, max_pending_per_source=2
    )
    default = argparse.Namespace(
        failed_registrations_per_minute=None, max_pending_registrations=None
    )
    assert rate_limits_from_args(default) == RateLimitSettings()
    with pytest.raises(
        ConfigurationError, match="--max-pending-registrations: expected an integer"
    ):
        rate_limits_from_args(
            argparse.Namespace(failed_registrations_per_minute=None, max_pending_registrations=0)
        )

    table = tmp_path / "ids.csv"
    table.write_text("id\n1\n")
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    names = {"config": None, "debug_enclave": False, "input": str(table), "key": ["id"]}
    align = argparse.Namespace(
        **names, policy=str(policy), listen="127.0.0.1:0", max_pending_connections=3
    )
    assert settings_from_args(align).max_pending_connections == 3
    align.max_pending_connections = None
    assert settings_from_args(align).max_pending_connections == 8
