"""Settings of a networked run. Their JSON form (kept in the run folder for resume) is
:func:`accord.settings_mapping.settings_to_mapping`, read back by
:func:`~accord.settings_mapping.settings_from_mapping`."""

from __future__ import annotations

from dataclasses import dataclass, field

from accord._validation import require_choice, require_int, require_number
from accord.aggregation.registry import POLICIES
from accord.errors import ConfigurationError
from accord.run import SimulationSettings

__all__ = [
    "EVALUATIONS",
    "FederationSettings",
    "ServerSettings",
]

#: Where the reward's accuracy comes from: the server's validation set, or the nodes'.
EVALUATIONS = ("federated", "server")


@dataclass(frozen=True)
class FederationSettings:
    """How the server runs rounds over the network.

    - ``expected_nodes``: roster size the server waits for before round 0 (default: the
      scenario's node count).
    - ``quorum``: nodes that must be connected to start the run and each round (default:
      ``expected_nodes``).
    - ``registration_timeout``: seconds to wait for every expected node before starting with
      a quorum (default 60); a resumed run waits as long for every node of its saved roster
      before its first round (nodes retry at most 2 s apart, so they are back in time).
    - ``quorum_timeout``: seconds to wait for a quorum before a round; then the run stops and
      can be resumed (default 300).
    - ``round_deadline``: seconds the nodes have to send a first gradient or an evaluation
      (default 60); a node later than that is left out of the round.
    - ``evaluation``: ``server`` (default: the server's validation set) or ``federated``
      (sample-weighted mean of the nodes' validation accuracies).
    - ``max_failed_rounds``: consecutive attempts without one usable first gradient before
      the run stops (default 3).
    """

    expected_nodes: int | None = None
    quorum: int | None = None
    registration_timeout: float = 60.0
    quorum_timeout: float = 300.0
    round_deadline: float = 60.0
    evaluation: str = "server"
    max_failed_rounds: int = 3

    def __post_init__(self) -> None:
        if self.expected_nodes is not None:
            require_int("expected_nodes", self.expected_nodes, minimum=1)
        if self.quorum is not None:
            require_int("quorum", self.quorum, minimum=1)
            if self.expected_nodes is not None and self.quorum > self.expected_nodes:
                raise ConfigurationError(
                    f"quorum: expected at most {self.expected_nodes} (the expected nodes), "
                    f"got {self.quorum}"
                )
        require_number("registration_timeout", self.registration_timeout, minimum=0.0)
        require_number("quorum_timeout", self.quorum_timeout, minimum=0.0)
        require_number("round_deadline", self.round_deadline, minimum=0.0, exclusive_minimum=True)
        require_choice("evaluation", self.evaluation, EVALUATIONS)
        require_int("max_failed_rounds", self.max_failed_rounds, minimum=1)


@dataclass(frozen=True)
class ServerSettings:
    """Everything that decides a networked run's results (saved with its checkpoints).

    ``run`` holds the same scenario, model, local-training, round, stop and policy settings
    as ``accord simulate``; ``policy`` names the weighting policy; ``validation_data`` and
    ``test_data`` are CSV/Parquet files (with ``label_column``) the server scores on instead
    of the scenario's held-out sets; ``standardise_from`` (with ``validation_data``) a
    saved transform (``.json``) or a CSV/Parquet file whose statistics standardise every
    node's and the server's data, instead of the nodes' combined statistics. ``app``
    (``package.module:factory``) runs a user's :class:`~accord.fl.ServerApp` instead of a
    scenario; ``app_config`` is the JSON object its factory and every node receive.
    """

    run: SimulationSettings = field(default_factory=SimulationSettings)
    policy: str = "actor-critic"
    federation: FederationSettings = field(default_factory=FederationSettings)
    validation_data: str | None = None
    test_data: str | None = None
    label_column: str = "label"
    standardise_from: str | None = None
    app: str | None = None
    app_config: str = "{}"

    def __post_init__(self) -> None:
        require_choice("policy", self.policy, POLICIES)
        if self.app is not None and self.validation_data is not None:
            raise ConfigurationError(
                "validation_data: a user app (--app) scores on its own validation data"
            )
        if self.test_data is not None and self.validation_data is None:
            raise ConfigurationError("test_data: give validation_data as well")
        if self.standardise_from is not None and self.validation_data is None:
            raise ConfigurationError(
                "standardise_from: give validation_data as well (a built-in scenario's data "
                "is already scaled)"
            )

    @property
    def expected_nodes(self) -> int:
        expected = self.federation.expected_nodes
        return self.run.scenario.nodes if expected is None else expected

    @property
    def quorum(self) -> int:
        quorum = self.federation.quorum
        return self.expected_nodes if quorum is None else min(quorum, self.expected_nodes)
