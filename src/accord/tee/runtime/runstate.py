"""The host's side of a long alignment run: its run directory, manifest and input digests.

A bucketed run (:mod:`accord.tee.core.bucketed`) keeps everything it needs to continue after a
crash or a lost connection in one directory::

    RUN_DIR/
      manifest.json         what the host knows, plus the enclave's sealed state (base64)
      spill-00000.sealed    bucket 0 as it streamed in (sealed; deleted once sorted)
      sorted-00000.sealed   bucket 0 sorted (sealed; kept until the run is complete)
      result-00000.sealed   this party's rows of bucket 0's intersection (sealed)
      lock                  held (flock) by the process using the directory

``manifest.json`` (written atomically: temporary file, fsync, rename, fsync of the
directory) holds the settings of the run, the size and SHA-256 of every input file, the
stage, the bucket count, how many buckets are sorted and exchanged, and the enclave's
sealed state — the session secret, progress and per-bucket results, readable only by an
enclave of the same build on the same platform (:mod:`accord.tee.core.sealing`). Everything in
it except the sealed state is plaintext for the host's own use; none of it is an ID.

``accord align --resume RUN_DIR`` reads the manifest, refuses to continue if an input file
changed (its SHA-256 differs), and hands the sealed state back to a new enclave.

Bucket files are written without fsync (a crash of the process loses nothing; after a
power failure a damaged file fails its seal check and the resume stops with a clear error
rather than use it); the manifest is fsynced.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from accord.atomic_files import write_atomically
from accord.errors import ConfigurationError, InputDataError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "InputDigest",
    "RunDirectory",
    "RunManifest",
    "digest_file",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_LOCK_NAME = "lock"
_KINDS = ("spill", "sorted", "result")
_READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class InputDigest:
    """An input file as the run first saw it."""

    path: str
    size: int
    sha256: str


def digest_file(path: Path) -> InputDigest:
    """Size and SHA-256 of ``path`` (read in chunks; hashing releases the GIL)."""
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
            size = handle.tell()
    except OSError as error:
        raise InputDataError(f"{path}: cannot read: {error.strerror}") from error
    return InputDigest(path=str(path), size=size, sha256=digest.hexdigest())


@dataclass
class RunManifest:
    """What ``manifest.json`` holds (see the module docstring)."""

    party: str
    session: str
    #: The run's settings, as ``accord align`` flags map onto them (JSON values).
    settings: dict[str, Any]
    #: Input files by role (``input``, ``policy``).
    inputs: dict[str, InputDigest]
    stage: str = "start"
    buckets: int | None = None
    sorted: int = 0
    exchanged: int = 0
    run_id: str | None = None
    #: The enclave's sealed state (base64), ``None`` before the session secret exists.
    sealed_state: str | None = None
    #: Summary of a finished run.
    summary: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = MANIFEST_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> RunManifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ConfigurationError(
                f"{where}: not a run manifest (invalid JSON: {error})"
            ) from error
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where}: not a run manifest (expected a JSON object)")
        version = data.pop("version", None)
        if version != MANIFEST_VERSION:
            raise ConfigurationError(
                f"{where}: manifest version {version!r}, this Accord reads version "
                f"{MANIFEST_VERSION}"
            )
        try:
            data["inputs"] = {
                role: InputDigest(**value) for role, value in dict(data["inputs"]).items()
            }
            manifest = cls(**data)
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"{where}: malformed run manifest ({error})") from error
        problem = manifest._type_problem()
        if problem is not None:
            raise ConfigurationError(f"{where}: malformed run manifest ({problem})")
        return manifest

    def _type_problem(self) -> str | None:
        """The first field whose JSON value has the wrong type, or ``None``."""
        expected: dict[str, tuple[type, ...]] = {
            "party": (str,),
            "session": (str,),
            "settings": (dict,),
            "stage": (str,),
            "buckets": (int, type(None)),
            "sorted": (int,),
            "exchanged": (int,),
            "run_id": (str, type(None)),
            "sealed_state": (str, type(None)),
            "summary": (dict, type(None)),
            "notes": (dict,),
        }
        for name, types in expected.items():
            value = getattr(self, name)
            if not isinstance(value, types) or isinstance(value, bool):
                return f"{name}: expected {' or '.join(t.__name__ for t in types)}, got {value!r}"
        for role, digest in self.inputs.items():
            if not isinstance(digest.path, str) or not isinstance(digest.size, int):
                return f"inputs.{role}: expected a path and a size"
            if not isinstance(digest.sha256, str):
                return f"inputs.{role}.sha256: expected a hex string"
        return None

    def sealed_bytes(self) -> bytes | None:
        """The enclave's sealed state, decoded."""
        if self.sealed_state is None:
            return None
        try:
            return base64.b64decode(self.sealed_state, validate=True)
        except ValueError as error:  # binascii.Error
            raise ConfigurationError(
                f"run manifest: sealed_state is not base64 ({error})"
            ) from error

    def set_sealed(self, blob: bytes) -> None:
        self.sealed_state = base64.b64encode(blob).decode("ascii")

    def check_inputs(self, current: dict[str, InputDigest]) -> None:
        """Refuse to resume when an input file is not the one the run started with."""
        for role, first in sorted(self.inputs.items()):
            now = current.get(role)
            if now is None:
                raise ConfigurationError(f"resume: the run's {role} {first.path} is not given")
            if (now.size, now.sha256) != (first.size, first.sha256):
                raise InputDataError(
                    f"{now.path}: the {role} changed since the run started (SHA-256 "
                    f"{now.sha256[:16]}…, {now.size} bytes; the run started with "
                    f"{first.sha256[:16]}…, {first.size} bytes); refusing to resume — "
                    "restore the file or start a new run"
                )


class RunDirectory:
    """The files of one run (see the module docstring); used by one process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[bytes] | None = None
        self._appending: dict[int, IO[bytes]] = {}

    # -------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, path: Path) -> RunDirectory:
        """A new run directory (it may exist if empty)."""
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigurationError(
                f"run directory {path}: exists and is not empty (resume it with --resume "
                f"{path}, or pick another --run-dir)"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"run directory {path}: cannot create: {error}") from error
        directory = cls(path)
        directory.lock()
        return directory

    @classmethod
    def open(cls, path: Path) -> tuple[RunDirectory, RunManifest]:
        """An existing run directory and its manifest (for ``--resume``)."""
        if not (path / MANIFEST_NAME).is_file():
            raise ConfigurationError(
                f"--resume {path}: no {MANIFEST_NAME} there (not a run directory, or the run "
                "stopped before it had anything to resume)"
            )
        directory = cls(path)
        directory.lock()
        try:
            return directory, directory.load()
        except BaseException:
            directory.close()
            raise

    def lock(self) -> None:
        """Hold the directory's lock; fail if another process holds it."""
        try:
            handle = open(self.path / _LOCK_NAME, "ab")  # noqa: SIM115 - held until close
        except OSError as error:
            raise ConfigurationError(f"run directory {self.path}: {error.strerror}") from error
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            raise ConfigurationError(
                f"run directory {self.path}: another process is using it"
            ) from error
        self._lock = handle

    def close(self) -> None:
        """Close open files and release the lock."""
        self.close_appends()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- manifest

    def load(self) -> RunManifest:
        where = self.path / MANIFEST_NAME
        try:
            text = where.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigurationError(f"{where}: cannot read: {error}") from error
        return RunManifest.from_json(text, str(where))

    def save(self, manifest: RunManifest) -> None:
        """Write the manifest atomically and durably (:mod:`accord.atomic_files`)."""
        write_atomically(self.path / MANIFEST_NAME, manifest.to_json().encode("utf-8"))

    # -------------------------------------------------------------- bucket files

    def bucket_path(self, kind: str, bucket: int) -> Path:
        if kind not in _KINDS:
            raise ValueError(f"unknown bucket file kind {kind!r}")
        return self.path / f"{kind}-{bucket:05d}.sealed"

    def append_spill(self, bucket: int, data: bytes | bytearray | memoryview) -> None:
        """Append sealed bytes to bucket ``bucket``'s spill file (kept open while spilling)."""
        handle = self._appending.get(bucket)
        try:
            if handle is None:
                handle = open(self.bucket_path("spill", bucket), "wb")  # noqa: SIM115
                self._appending[bucket] = handle
            handle.write(data)
        except OSError as error:
            raise ConfigurationError(
                f"run directory {self.path}: cannot write a spill file: {error.strerror}"
            ) from error

    def close_appends(self) -> None:
        for handle in self._appending.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._appending.clear()

    def write(self, kind: str, bucket: int, data: bytes | bytearray | memoryview) -> None:
        """Write a whole bucket file (temporary file, then rename; no fsync, see above;
        :func:`accord.atomic_files.write_atomically`)."""
        write_atomically(self.bucket_path(kind, bucket), data, durable=False)

    def read(self, kind: str, bucket: int) -> bytearray:
        """A whole bucket file (missing: a clear error naming it)."""
        path = self.bucket_path(kind, bucket)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                data = bytearray(size)
                view = memoryview(data)
                at = 0
                while at < size:
                    count = handle.readinto(view[at : at + _READ_CHUNK])
                    if not count:
                        break
                    at += count
        except FileNotFoundError as error:
            raise ConfigurationError(
                f"{path}: missing from the run directory; the run cannot continue"
            ) from error
        except OSError as error:
            raise ConfigurationError(f"{path}: cannot read: {error.strerror}") from error
        del view
        if at != size:
            del data[at:]
        return data

    def remove(self, kind: str, bucket: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.bucket_path(kind, bucket).unlink()

    def remove_all(self, kind: str) -> None:
        for path in self.path.glob(f"{kind}-*.sealed"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def disk_usage(self) -> int:
        """Bytes of the files in the run directory now."""
        return sum(path.stat().st_size for path in self._files())

    def _files(self) -> Iterator[Path]:
        for path in self.path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():
                    yield path
