"""The ClientApp: node ``partition-id`` of the scenario in the run config trains on its own
digits (a label flipper on flipped labels) and replies with its trained weights."""

from __future__ import annotations

from accord.flower import scenario_client_app

app = scenario_client_app()
