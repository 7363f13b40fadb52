"""Test-wide set-up.

One torch thread, as every ``accord`` process runs (``accord.federation.launcher.
prepare_process``, ``accord simulate``): in-process references then compute exactly what the
processes compute, and a busy 2-core machine does not stall in torch's spinning worker
threads (a small CNN's round took 30 times longer with two threads at load 8).

SIGINT is delivered: a test suite started as a background job (``... &`` in a script) has
SIGINT ignored, every process it starts inherits that, and the tests of Ctrl-C would wait
for their deadlines instead.

``GRPC_VERBOSITY`` as the user's environment has it: importing Flower (the flower tests do,
at collection) sets it to ``error``, and the ``accord`` processes the tests start would then
inherit it and switch off the server's TLS handshake warnings that tests check.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_GRPC_VERBOSITY = os.environ.get("GRPC_VERBOSITY")


@pytest.fixture(autouse=True, scope="session")
def _grpc_verbosity_of_the_user() -> Iterator[None]:
    changed = os.environ.get("GRPC_VERBOSITY")
    if _GRPC_VERBOSITY is None:
        os.environ.pop("GRPC_VERBOSITY", None)
    else:
        os.environ["GRPC_VERBOSITY"] = _GRPC_VERBOSITY
    yield
    if changed is not None:
        os.environ["GRPC_VERBOSITY"] = changed
