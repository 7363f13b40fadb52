"""The trained model in the run folder: PyTorch ``state_dict`` files and ``model.json``.

::

    RUN_DIR/
      model.pt          the final global model (torch.save of the module's state_dict)
      best_model.pt     the global model with the best validation accuracy so far
      model.json        what rebuilds them: model spec, n_features, n_classes, feature
                        names, label column, the standardisation transform, and per policy
                        the files, the round and the validation accuracy of the best one

A run of several policies (``accord simulate --policies a,b``) writes
``model-<policy>.pt`` and ``best_model-<policy>.pt`` per policy instead.

``best_model.pt`` is written each time a round's validation accuracy beats every earlier
round's (ties keep the earlier round), so a run that stops early, or is resumed, keeps it.
Files are written atomically. Rebuild a model with :func:`load_model`::

    module, info = load_model(Path("runs/x"), which="best")
    probabilities = torch.softmax(module(torch.from_numpy(features)), dim=-1)

(``features`` standardised with ``info.standardisation`` when it is not ``None``.)
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accord.aggregation.base import FloatArray
from accord.atomic_files import write_atomically
from accord.data.standardise import Standardisation
from accord.errors import InputDataError
from accord.training.models import ModelSpec, build_model
from accord.training.weights import WeightLayout, Weights

__all__ = [
    "FILE_INPUT_NOTE",
    "MODEL_INFO_FILE",
    "SCENARIO_INPUT_NOTE",
    "ModelExport",
    "ModelInfo",
    "load_model",
    "predict_probabilities",
    "read_model_info",
    "scenario_feature_names",
]

logger = logging.getLogger(__name__)

MODEL_INFO_FILE = "model.json"
MODEL_INFO_FORMAT = "accord-model"
MODEL_INFO_VERSION = 1


#: What a built-in scenario's model takes (``model.json``'s ``input``).
SCENARIO_INPUT_NOTE = (
    "the features of the built-in scenario as Accord builds them (already scaled: digits "
    "pixels / 16, other datasets standardised with the training pool's statistics), in "
    "columns x0, x1, ..."
)
#: What a model trained on files takes.
FILE_INPUT_NOTE = (
    "the feature columns of the training files, as read; `accord predict` applies the "
    "standardisation below (when not null) before the model"
)


def scenario_feature_names(n_features: int) -> tuple[str, ...]:
    """The column names of a built-in scenario's features: ``x0``, ``x1``, ..."""
    return tuple(f"x{index}" for index in range(n_features))


@dataclass
class _PolicyModel:
    final: str
    best: str
    best_round: int | None = None
    best_validation_accuracy: float | None = None
    final_round: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """``model.json`` read back."""

    model: ModelSpec
    n_features: int
    n_classes: int
    feature_names: tuple[str, ...]
    label_column: str
    standardisation: Standardisation | None
    input_note: str
    policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class ModelExport:
    """Writes one run's model files as its rounds finish (one per policy and round).

    A built-in model (``model`` given) is rebuilt by ``accord predict`` from ``model.json``;
    a user app's model (``layout`` and ``app`` given instead) is saved as the same kind of
    ``state_dict`` (its parameters and buffers by name), for the user's own module's
    ``load_state_dict``."""

    def __init__(
        self,
        folder: Path,
        *,
        policies: Sequence[str],
        model: ModelSpec | None = None,
        n_features: int = 0,
        n_classes: int = 0,
        feature_names: Sequence[str] = (),
        label_column: str = "label",
        standardisation: Standardisation | None = None,
        input_note: str = "",
        layout: WeightLayout | None = None,
        app: str | None = None,
    ) -> None:
        if model is not None:
            if len(feature_names) != n_features:
                raise InputDataError(
                    f"feature_names: expected {n_features} names, got {len(feature_names)}"
                )
            layout = WeightLayout.of_module(build_model(model, n_features, n_classes, 0))
        elif layout is None or app is None:
            raise InputDataError("a model export needs a built-in model, or an app's layout")
        self.folder = folder
        self.spec = model
        self.app = app
        self.n_features = n_features
        self.n_classes = n_classes
        self.feature_names = tuple(feature_names)
        self.label_column = label_column
        self.standardisation = standardisation
        self.input_note = input_note
        self.layout = layout
        single = len(policies) == 1
        self._models = {
            policy: _PolicyModel(
                final="model.pt" if single else f"model-{policy}.pt",
                best="best_model.pt" if single else f"best_model-{policy}.pt",
            )
            for policy in policies
        }

    def restart(self, policy: str, rounds: Sequence[tuple[int, float | None]]) -> None:
        """A resumed run: the (round, validation accuracy) of the rounds done before, whose
        best model is already on disk."""
        for round_index, accuracy in rounds:
            self._note_best(policy, round_index, accuracy)

    def _note_best(self, policy: str, round_index: int, accuracy: float | None) -> bool:
        entry = self._models[policy]
        if accuracy is None or not math.isfinite(accuracy):
            return False
        if (
            entry.best_validation_accuracy is not None
            and accuracy <= entry.best_validation_accuracy
        ):
            return False
        entry.best_round, entry.best_validation_accuracy = round_index, float(accuracy)
        return True

    def round_done(
        self,
        policy: str,
        round_index: int,
        weights: FloatArray,
        validation_accuracy: float | None,
        buffers: Weights | None = None,
    ) -> None:
        """After round ``round_index``: ``weights`` (w_{t+1}, flat trainable vector) and
        ``buffers`` scored ``validation_accuracy``."""
        if self._note_best(policy, round_index, validation_accuracy):
            self._save(self._models[policy].best, weights, buffers)

    def finish(
        self,
        policy: str,
        round_index: int | None,
        weights: FloatArray,
        buffers: Weights | None = None,
    ) -> None:
        """The final model of ``policy`` (after round ``round_index``), and ``model.json``."""
        entry = self._models[policy]
        if self._save(entry.final, weights, buffers):  # not when the model diverged
            entry.final_round = round_index
            if entry.best_round is None:  # no round scored: the final model is the best known
                self._save(entry.best, weights, buffers)
        self.write_info()

    def _save(self, name: str, weights: FloatArray, buffers: Weights | None) -> bool:
        import torch

        if not np.all(np.isfinite(weights)):
            logger.warning("%s not written: the weights are not finite", name)
            return False
        arrays = self.layout.join(np.asarray(weights, dtype=np.float32), buffers or {})
        state = {key: torch.from_numpy(np.array(value)) for key, value in arrays.items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomically(self.folder / name, buffer.getvalue())
        return True

    def write_info(self) -> Path:
        data = {
            "format": MODEL_INFO_FORMAT,
            "version": MODEL_INFO_VERSION,
            "app": self.app,
            "model": (
                None
                if self.spec is None
                else {"kind": self.spec.kind, "hidden": list(self.spec.hidden)}
            ),
            "arrays": [
                {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "trainable": e.trainable}
                for e in self.layout.entries
            ],
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "feature_names": list(self.feature_names),
            "label_column": self.label_column,
            "standardisation": (
                None if self.standardisation is None else self.standardisation.to_json()
            ),
            "input": self.input_note,
            "policies": {
                policy: {
                    "final": None if entry.final_round is None else entry.final,
                    "final_round": entry.final_round,
                    "best": entry.best,
                    "best_round": entry.best_round,
                    "best_validation_accuracy": entry.best_validation_accuracy,
                }
                for policy, entry in self._models.items()
                if entry.final_round is not None or entry.best_round is not None
            },
        }
        path = self.folder / MODEL_INFO_FILE
        write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
        return path


def read_model_info(run_dir: Path) -> ModelInfo:
    """``RUN_DIR/model.json``, checked; one clear error naming the file otherwise."""
    path = run_dir / MODEL_INFO_FILE
    if not run_dir.is_dir():
        raise InputDataError(f"--model {run_dir}: no such run folder")
    if not path.is_file():
        raise InputDataError(
            f"--model {run_dir}: no {MODEL_INFO_FILE} (not a run folder, or a run that "
            "finished no round)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MODEL_INFO_FORMAT:
            raise InputDataError(f"{path}: not an Accord model file")
        if data.get("version") != MODEL_INFO_VERSION:
            raise InputDataError(
                f"{path}: model file version {data.get('version')!r}; this Accord reads "
                f"version {MODEL_INFO_VERSION}"
            )
        if data.get("model") is None:
            raise InputDataError(
                f"{path}: a run of the user app {data.get('app')!r}: accord predict rebuilds "
                "built-in models only; load model.pt into your own module with "
                "module.load_state_dict(torch.load(path))"
            )
        saved = data.get("standardisation")
        return ModelInfo(
            model=ModelSpec(str(data["model"]["kind"]), tuple(data["model"]["hidden"])),
            n_features=int(data["n_features"]),
            n_classes=int(data["n_classes"]),
            feature_names=tuple(str(name) for name in data["feature_names"]),
            label_column=str(data["label_column"]),
            standardisation=None if saved is None else Standardisation.from_json(saved),
            input_note=str(data.get("input", "")),
            policies=dict(data["policies"]),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputDataError(f"{path}: malformed ({type(e).__name__}: {e})") from e


def load_model(
    run_dir: Path, *, which: str = "final", policy: str | None = None
) -> tuple[Any, ModelInfo]:
    """The trained module (eval mode) of ``run_dir`` and its :class:`ModelInfo`. ``which``
    is ``final`` or ``best``; ``policy`` is needed when the run trained several."""
    import torch

    info = read_model_info(run_dir)
    if which not in ("final", "best"):
        raise InputDataError(f"which: expected 'final' or 'best', got {which!r}")
    if not info.policies:
        raise InputDataError(f"--model {run_dir}: {MODEL_INFO_FILE} lists no trained model")
    if policy is None:
        if len(info.policies) > 1:
            raise InputDataError(
                f"--model {run_dir}: the run trained several policies "
                f"({', '.join(info.policies)}); choose one with --policy"
            )
        policy = next(iter(info.policies))
    if policy not in info.policies:
        raise InputDataError(
            f"--policy: expected one of {', '.join(info.policies)} (the run's policies), "
            f"got {policy!r}"
        )
    name = info.policies[policy][which]
    if name is None:
        raise InputDataError(
            f"--model {run_dir}: policy {policy} has no {which} model (its weights were not "
            "finite at the end); try --which best"
        )
    path = run_dir / str(name)
    if not path.is_file():
        raise InputDataError(f"--model {run_dir}: no {path.name} (the {which} model file)")
    module = build_model(info.model, info.n_features, info.n_classes, 0)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise InputDataError(f"{path}: not a state_dict of this run's model ({error})") from error
    module.eval()
    return module, info


def predict_probabilities(module: Any, info: ModelInfo, features: Any, *, batch: int = 4096) -> Any:
    """Class probabilities ``(n, n_classes)`` (float64) of ``features`` (``(n,
    n_features)``, columns in ``info.feature_names`` order, as read): the run's
    standardisation first, then the model, in batches."""
    import torch

    array = np.asarray(features, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != info.n_features:
        raise InputDataError(
            f"features: expected {info.n_features} columns, got shape {array.shape}"
        )
    if info.standardisation is not None:
        array = info.standardisation.apply(array)
    parts = []
    with torch.no_grad():
        for start in range(0, array.shape[0], batch):
            logits = module(torch.from_numpy(np.ascontiguousarray(array[start : start + batch])))
            parts.append(torch.softmax(logits.double(), dim=-1).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, info.n_classes))
