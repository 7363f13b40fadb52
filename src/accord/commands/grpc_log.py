"""gRPC's own (C-core) logging in the ``accord`` commands: quiet, or one clear line.

gRPC writes its log lines straight to file descriptor 2, bypassing Python's logging; a
TLS server that a plaintext client keeps dialling fills its log with ``Handshake failed
with error SSL_ERROR_SSL ... WRONG_VERSION_NUMBER`` lines. So:

- :func:`quiet_grpc_logging` sets ``GRPC_VERBOSITY=NONE`` (``accord node``, ``accord
  federate`` and a plaintext ``accord server``);
- :func:`watch_tls_handshakes` (a TLS ``accord server``) reads gRPC's lines through a pipe
  and turns each failed TLS handshake into one warning naming the likely cause
  (:class:`HandshakeLog`; the same cause at most once a minute), dropping gRPC's other
  lines; Python's own output keeps going to the real stderr.

Both must run before :mod:`grpc` is first imported, and both leave a ``GRPC_VERBOSITY``
set by the user alone: ``GRPC_VERBOSITY=INFO accord server ...`` shows gRPC's raw lines.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["HandshakeLog", "handshake_cause", "quiet_grpc_logging", "watch_tls_handshakes"]

logger = logging.getLogger("accord.commands.server")

#: A line of gRPC's C core: ``I1203 07:54:01.043274    9910 file.cc:2563] message``.
GRPC_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")

PLAINTEXT_CLIENT = (
    "a client spoke plaintext to this TLS port (a node started with --insecure? give it "
    "--credentials DIR, or --tls-ca with a token or client certificate)"
)
NO_CLIENT_CERTIFICATE = (
    "a client connected without a client certificate (give the node its --credentials "
    "folder, or run the server with --client-auth token)"
)
UNTRUSTED_CLIENT_CERTIFICATE = (
    "a client's certificate is not signed by this server's CA (is the node's --credentials "
    "folder from this server's `accord certs`?)"
)


def quiet_grpc_logging() -> None:
    """``GRPC_VERBOSITY=NONE`` unless the environment sets it; before :mod:`grpc` loads."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def handshake_cause(line: str) -> str | None:
    """The likely cause of a failed TLS handshake that gRPC logged, or ``None`` if ``line``
    is not about one."""
    if "Handshake failed" not in line:
        return None
    if "WRONG_VERSION_NUMBER" in line or "HTTP_REQUEST" in line:
        return PLAINTEXT_CLIENT
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in line:
        return NO_CLIENT_CERTIFICATE
    if "CERTIFICATE_VERIFY_FAILED" in line:
        return UNTRUSTED_CLIENT_CERTIFICATE
    reason = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", line)
    return (
        f"a client's TLS handshake failed ({reason.group(1) if reason else 'see GRPC_VERBOSITY'})"
    )


class HandshakeLog:
    """Turns gRPC's handshake lines into warnings: each cause at most once per ``quiet``
    seconds, and a missing client certificate right after a plaintext attempt not at all
    (a plaintext ``accord node`` checks whether the port speaks TLS, without a certificate,
    to name the cause on its side)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, quiet: float = 60.0) -> None:
        self.clock = clock
        self.quiet = quiet
        self._last: dict[str, float] = {}

    def feed(self, line: str) -> str | None:
        """The warning to log for ``line``, or ``None``."""
        cause = handshake_cause(line)
        if cause is None:
            return None
        now = self.clock()
        if cause == NO_CLIENT_CERTIFICATE:
            plaintext = self._last.get(PLAINTEXT_CLIENT)
            if plaintext is not None and now - plaintext < 10.0:
                return None
        last = self._last.get(cause)
        if last is not None and now - last < self.quiet:
            return None
        self._last[cause] = now
        return cause


@contextlib.contextmanager
def watch_tls_handshakes() -> Iterator[None]:
    """While the block runs, gRPC's lines on descriptor 2 are read by a thread: failed TLS
    handshakes become warnings (:class:`HandshakeLog`), gRPC's other lines are dropped,
    and anything else written there passes through. Python's ``sys.stderr`` (and the
    logging handlers on it) write to the real stderr directly. Does nothing when the user
    set ``GRPC_VERBOSITY``."""
    if "GRPC_VERBOSITY" in os.environ:
        yield
        return
    os.environ["GRPC_VERBOSITY"] = "INFO"  # gRPC logs failed handshakes at INFO
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    # A big pipe (1 MiB, Linux's default cap) so that a reader behind on a busy machine
    # loses no line: gRPC at INFO writes a few lines per connection.
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    # gRPC's C-core threads write here; should the reader thread fall behind (it needs the
    # GIL), a full pipe must drop their lines rather than block a thread that may hold a
    # lock the Python side waits for.
    os.set_blocking(2, False)
    old_stderr = sys.stderr
    new_stderr = open(  # noqa: SIM115 - closed in the finally below
        original, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
    )
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is old_stderr
    ]
    for handler in handlers:
        handler.setStream(new_stderr)
    sys.stderr = new_stderr
    handshakes = HandshakeLog()

    def pump() -> None:
        with open(read_fd, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if GRPC_LINE.match(line):
                    warning = handshakes.feed(line)
                    if warning is not None:
                        logger.warning("%s", warning)
                else:
                    new_stderr.write(line)

    reader = threading.Thread(target=pump, name="accord-grpc-log", daemon=True)
    reader.start()
    try:
        yield
    finally:
        os.dup2(original, 2)  # closes the pipe's write end: the reader sees its end
        # Let the reader drain what is buffered (a warning may be among it); it ends at
        # the pipe's end, so this waits only while it is behind.
        reader.join(timeout=15.0)
        sys.stderr = old_stderr
        for handler in handlers:
            handler.setStream(old_stderr)
        new_stderr.close()
        os.close(original)
