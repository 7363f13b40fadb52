"""Where torch computes: ``cpu`` (the default) or ``cuda[:k]``, checked before anything
starts so that a machine without that device gets one line, not a CUDA traceback."""

from __future__ import annotations

import torch

from accord.errors import ConfigurationError

__all__ = ["DEVICES_HELP", "resolve_device"]

DEVICES_HELP = "cpu (default) or cuda[:k]"


def resolve_device(text: str, option: str = "--device") -> torch.device:
    """The torch device ``text`` names, if this machine has it."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise ConfigurationError(f"{option}: expected {DEVICES_HELP}, got {text!r}") from error
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigurationError(f"{option}: expected {DEVICES_HELP}, got {text!r}")
    if not torch.cuda.is_available():
        raise ConfigurationError(
            f"{option} {text}: this machine has no CUDA device (torch {torch.__version__}, "
            "torch.cuda.is_available() is False); use --device cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigurationError(
            f"{option} {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        )
    return device
