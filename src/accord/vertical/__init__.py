"""Split learning over aligned tables (vertical training): pure round logic and drivers.

After ``accord align`` every party holds its rows in the same shared order. Each party's
bottom model maps its own standardised columns to an embedding; the label party's top model
and loss see every embedding; each feature party receives only the gradient of its own
embedding. With linear bottoms and a ``sum`` top this is vertical logistic regression.

- :mod:`~accord.vertical.settings`: what the parties agree on, and the label protection.
- :mod:`~accord.vertical.batches`: splits and per-epoch batches from the shared seed.
- :mod:`~accord.vertical.models`: standardisation, bottoms, top, the composed network.
- :mod:`~accord.vertical.messages`, :mod:`~accord.vertical.parties`: the round logic.
- :mod:`~accord.vertical.simulation`: the in-process driver.
- :mod:`~accord.vertical.centralised`: the composed network trained on the joined table.
- :mod:`~accord.vertical.protection`, :mod:`~accord.vertical.attacks`: label leakage.
- :mod:`~accord.vertical.network`: the networked driver, one function per role, over
  :mod:`~accord.vertical.transport` (the label party's end of the gRPC streams) and
  :mod:`~accord.vertical.feature_transport` (a feature party's end); reconnection inside
  a run rolls every party back to the last epoch all hold (:mod:`~accord.vertical.checkpoints`).
"""

from __future__ import annotations

from accord.vertical.agreement import (
    PartyAnnouncement,
    check_announcements,
    settings_fingerprint,
)
from accord.vertical.attacks import direction_attack_scores, norm_attack_scores
from accord.vertical.batches import Splits, epoch_batches, split_positions
from accord.vertical.centralised import build_centralised, train_centralised, train_composed
from accord.vertical.messages import BatchRequest, Embedding, EmbeddingGradient, SplitEmbedding
from accord.vertical.metrics import binary_auc, log_loss
from accord.vertical.parties import FeatureParty, LabelParty, PartyTable, SplitMetrics, StepResult
from accord.vertical.results import DriverState, EpochMetrics, VerticalResult
from accord.vertical.settings import ModelSettings, ProtectionSettings, VerticalSettings
from accord.vertical.simulation import (
    FeaturePartyLink,
    build_parties,
    run_vertical,
    simulate_vertical,
)

__all__ = [
    "BatchRequest",
    "DriverState",
    "Embedding",
    "EmbeddingGradient",
    "EpochMetrics",
    "FeatureParty",
    "FeaturePartyLink",
    "LabelParty",
    "ModelSettings",
    "PartyAnnouncement",
    "PartyTable",
    "ProtectionSettings",
    "SplitEmbedding",
    "SplitMetrics",
    "Splits",
    "StepResult",
    "VerticalResult",
    "VerticalSettings",
    "binary_auc",
    "build_centralised",
    "build_parties",
    "check_announcements",
    "direction_attack_scores",
    "epoch_batches",
    "log_loss",
    "norm_attack_scores",
    "run_vertical",
    "settings_fingerprint",
    "simulate_vertical",
    "split_positions",
    "train_centralised",
    "train_composed",
]
