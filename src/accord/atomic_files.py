"""Write files so that a reader sees the old file or the whole new one, never a part.

The one way Accord replaces a file (run summaries, metrics, plots, checkpoints,
``federation.json``, token and revocation lists, aligned tables): write a temporary file
in the destination's folder (``.NAME.RANDOM.tmp``), flush and fsync it, rename it over the
destination with :func:`os.replace`, then fsync the folder where the OS allows it, so the
rename survives a crash. On any exception the temporary file is removed and the
destination is left as it was. An :class:`OSError` becomes one
:class:`~accord.errors.ConfigurationError` naming the file.

:func:`atomic_output` hands the caller the temporary path (for writers that want a path,
such as pyarrow's); :func:`write_atomically` writes bytes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from accord.errors import ConfigurationError

__all__ = ["atomic_output", "write_atomically"]

StrPath = str | os.PathLike[str]


def _reason(error: OSError) -> str:
    """One line: the OS's reason, or the first line of the message (pyarrow's I/O errors
    are OSErrors without ``strerror``)."""
    if error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def atomic_output(path: StrPath, *, mode: int = 0o666) -> Iterator[Path]:
    """Yield a new, empty temporary path next to ``path``; on success fsync it and rename
    it over ``path``.

    The file is created with ``mode`` minus the umask (0666: the usual permissions; 0600
    for a private file). A missing destination folder, or any :class:`OSError` while
    writing, raises :class:`~accord.errors.ConfigurationError` naming ``path``; any other
    exception propagates unchanged. Either way the temporary file is gone and ``path`` is
    untouched.
    """
    final = Path(path)
    directory = final.parent
    if not directory.is_dir():
        raise ConfigurationError(f"{path}: the output directory {directory} does not exist")
    temporary = directory / f".{final.name}.{secrets.token_hex(6)}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write: {_reason(exc)}") from exc
    os.close(descriptor)
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(exc, OSError):
            raise ConfigurationError(f"{path}: cannot write: {_reason(exc)}") from exc
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        directory_descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_descriptor)
        finally:
            os.close(directory_descriptor)


def write_atomically(path: StrPath, data: bytes, *, mode: int = 0o666) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see :func:`atomic_output`)."""
    with atomic_output(path, mode=mode) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
