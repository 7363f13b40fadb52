"""The enclave process of the ``simulated`` backend.

Run as ``python -m accord.tee.runtime.enclave --fd N``.

The host starts this process with one end of a Unix socket pair as file descriptor ``N``;
that socket is the enclave's only channel to the world. Each request is one call frame
(:data:`accord.tee.core.wire.CALL_HEADER`: call code, JSON parameters, raw body) from the fixed
set in :class:`accord.tee.core.wire.Call`; each reply is one frame with status 0 (success:
parameters and body) or 1 (failure: the error's class, message and detail). Calls are
served one at a time, in order, until the host closes the socket. Before the first call the
enclave sends one unsolicited frame: its identity (status 0) or why it cannot start (1).

At start the process measures its own code (:mod:`accord.tee.runtime.measurement`), loads the
platform key, and refuses to run if it has loaded an Accord module that is not measured.
Error messages go back to the host (the same party) and to stderr; they never contain IDs
or keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from accord.errors import AccordError, PeerError, ProtocolError
from accord.tee.core.allocator import HUGEPAGE_VARIABLE, tune_allocator
from accord.tee.core.backend import SimulatedBackend
from accord.tee.core.session import EnclaveSession
from accord.tee.core.wire import CALL_HEADER, MAX_CALL_META, decode_meta, encode_meta
from accord.tee.runtime.measurement import SECURITY_VERSION, enclave_measurement, unmeasured_modules
from accord.tee.runtime.platform_key import load_or_create_platform_key

__all__ = ["main", "serve"]

logger = logging.getLogger(__name__)


def _receive_exactly(sock: socket.socket, size: int) -> memoryview | None:
    """``size`` bytes from ``sock``; ``None`` on a clean end of stream before the first.

    The buffer is not zeroed first (a body is up to 16 MiB, every call): every byte of it
    is written by the socket before it is returned.
    """
    view = np.empty(size, dtype=np.uint8).data.cast("B")
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            if received == 0:
                return None
            raise PeerError(f"the host closed the enclave socket mid-frame ({received}/{size})")
        received += count
    return view


def serve(sock: socket.socket, session: EnclaveSession) -> None:
    """Answer the host's calls on ``sock`` until it closes the socket."""
    while True:
        header = _receive_exactly(sock, CALL_HEADER.size)
        if header is None:
            return
        code, meta_size, body_size = CALL_HEADER.unpack(header)
        if meta_size > MAX_CALL_META:
            raise ProtocolError(f"call metadata of {meta_size} bytes is too large")
        meta_bytes = _receive_exactly(sock, meta_size) if meta_size else memoryview(b"")
        body = _receive_exactly(sock, body_size) if body_size else memoryview(b"")
        if meta_bytes is None or body is None:
            raise PeerError("the host closed the enclave socket mid-frame")
        try:
            reply, reply_body = session.call(
                code, decode_meta(bytes(meta_bytes), "enclave call"), body
            )
            status = 0
        except AccordError as error:
            # The host reports the error (once); here it is a detail for debugging.
            logger.debug("enclave call %d failed: %s", code, error)
            reply, reply_body = _error_reply(error), b""
            status = 1
        del body
        reply_meta = encode_meta(reply)
        sock.sendall(CALL_HEADER.pack(status, len(reply_meta), len(reply_body)) + reply_meta)
        if reply_body:
            sock.sendall(reply_body)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the enclave process."""
    parser = argparse.ArgumentParser(prog="python -m accord.tee.runtime.enclave")
    parser.add_argument("--fd", type=int, required=True, help="socket to the host")
    parser.add_argument("--platform-key", type=Path, default=None)
    parser.add_argument("--debug", action="store_true", help="run as a debug enclave")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    # Ctrl-C on a terminal reaches the whole process group: the host decides, and ends
    # this process (closing its socket or killing it); a traceback here would be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s enclave[%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The host starts this process with HUGEPAGE_VARIABLE set ("0" unless the user chose).
    tune_allocator(huge_pages=os.environ.get(HUGEPAGE_VARIABLE, "0") != "0")
    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as error:
        sys.stderr.write(f"enclave: file descriptor {args.fd} is not a socket: {error}\n")
        return 2
    with sock:
        outside = unmeasured_modules(sys.modules)
        if outside:
            sys.stderr.write(f"enclave: refusing to run: unmeasured modules loaded: {outside}\n")
            return 2
        try:
            backend = SimulatedBackend(
                load_or_create_platform_key(args.platform_key),
                measurement=enclave_measurement(),
                security_version=SECURITY_VERSION,
                debug=args.debug,
            )
        except AccordError as error:
            sock.sendall(_ready_frame(1, _error_reply(error)))
            return 2
        sock.sendall(_ready_frame(0, {"identity": asdict(backend.identity)}))
        try:
            serve(sock, EnclaveSession(backend, os.urandom))
        except (AccordError, OSError) as error:
            sys.stderr.write(f"enclave: stopped: {error}\n")
            return 1
    return 0


def _error_reply(error: AccordError) -> dict[str, Any]:
    return {"error": type(error).__name__, "message": str(error), "detail": error.detail}


def _ready_frame(status: int, reply: dict[str, Any]) -> bytes:
    """The frame the enclave sends once at start: its identity, or why it cannot run."""
    meta = encode_meta(reply)
    return CALL_HEADER.pack(status, len(meta), 0) + meta


def _exit(code: int) -> NoReturn:
    """End the process at once: its only channel is closed and it holds no file, so the
    interpreter's clean-up (freeing every module and array: ~50 ms of CPU at 1M rows,
    beside its host's writing) has nothing to save."""
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
