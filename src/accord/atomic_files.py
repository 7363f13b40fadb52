"""Write files so that a reader sees the old file or the whole new one, never a part.

The one way Accord replaces a file (run summaries, metrics, plots, checkpoints,
``federation.json``, token and revocation lists, aligned tables): write a temporary file
in the destination's folder (``.NAME.PID-RANDOM.tmp``), flush and fsync it, rename it over
the destination with :func:`os.replace`, then fsync the folder where the OS allows it, so
the rename survives a crash. On any exception the temporary file is removed and the
destination is left as it was. A process that is killed (SIGKILL) cannot remove its
temporary file; the next write of the same destination removes those whose writer process
no longer exists. An :class:`OSError` becomes one
:class:`~accord.errors.ConfigurationError` naming the file.

:func:`atomic_output` hands the caller the temporary path (for writers that want a path,
such as pyarrow's); :func:`write_atomically` writes bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from accord.errors import ConfigurationError

__all__ = [
    "atomic_output",
    "glob_escape",
    "process_exists",
    "remove_files_of_killed_writers",
    "remove_stale_temporaries",
    "write_atomically",
]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

_TEMPORARY = re.compile(r"\.(\d+)-[0-9a-f]{12}\.tmp$")


def process_exists(pid: int) -> bool:
    """Whether a process with this ID exists (another user's counts: it is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_files_of_killed_writers(files: Iterable[tuple[Path, int]], what: str) -> list[Path]:
    """Remove each ``(file, writer's process ID)`` whose writer no longer exists, logging
    each as ``what`` (a write killed before it could clean up); the files removed."""
    removed = []
    for path, pid in files:
        if process_exists(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
            logger.warning("removed %s, %s (process %s was killed)", path, what, pid)
    return removed


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporary files of writes of ``final`` whose writer was killed; the files
    removed."""
    prefix = f".{final.name}."
    stale = []
    with contextlib.suppress(OSError):
        for candidate in final.parent.glob(f".{glob_escape(final.name)}.*.tmp"):
            match = _TEMPORARY.search(candidate.name)
            if match is not None and candidate.name[: match.start() + 1] == prefix:
                stale.append((candidate, int(match.group(1))))
    return remove_files_of_killed_writers(stale, f"a partial write of {final.name}")


def glob_escape(name: str) -> str:
    """``name`` with the glob characters ``*?[`` matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _reason(error: OSError) -> str:
    """One line: the OS's reason, or the first line of the message (pyarrow's I/O errors
    are OSErrors without ``strerror``)."""
    if error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def atomic_output(path: StrPath, *, mode: int = 0o666, durable: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary path next to ``path``; on success fsync it and rename
    it over ``path``.

    The file is created with ``mode`` minus the umask (0666: the usual permissions; 0600
    for a private file). ``durable=False`` skips both fsyncs: still atomic, not crash-safe
    (for scratch files that a crash makes worthless anyway). A missing destination
    folder, or any :class:`OSError` while writing, raises
    :class:`~accord.errors.ConfigurationError` naming ``path``; any other exception
    propagates unchanged. Either way the temporary file is gone and ``path`` is untouched.
    """
    final = Path(path)
    directory = final.parent
    if not directory.is_dir():
        raise ConfigurationError(f"{path}: the output directory {directory} does not exist")
    remove_stale_temporaries(final)
    temporary = directory / f".{final.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write: {_reason(exc)}") from exc
    os.close(descriptor)
    try:
        yield temporary
        if durable:
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
    if not durable:
        return
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        directory_descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_descriptor)
        finally:
            os.close(directory_descriptor)


def write_atomically(
    path: StrPath,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o666,
    durable: bool = True,
) -> None:
    """Replace ``path`` by ``data`` atomically (and durably, unless told otherwise; see
    :func:`atomic_output`)."""
    with (
        atomic_output(path, mode=mode, durable=durable) as temporary,
        open(temporary, "wb") as handle,
    ):
        handle.write(data)
