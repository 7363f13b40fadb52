"""Test-wide set-up.

One torch thread, as every ``accord`` process runs (``accord.federation.launcher.
prepare_process``, ``accord simulate``): in-process references then compute exactly what the
processes compute, and a busy 2-core machine does not stall in torch's spinning worker
threads (a small CNN's round took 30 times longer with two threads at load 8).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
