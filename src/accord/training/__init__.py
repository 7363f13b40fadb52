"""Models, a node's local training and evaluation (torch)."""

from __future__ import annotations

from accord.training.evaluation import make_validation_fn
from accord.training.local import LocalTrainer, LocalTrainingSettings
from accord.training.models import FlatModel, ModelSpec, build_model

__all__ = [
    "FlatModel",
    "LocalTrainer",
    "LocalTrainingSettings",
    "ModelSpec",
    "build_model",
    "make_validation_fn",
]
