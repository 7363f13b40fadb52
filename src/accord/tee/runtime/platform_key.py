"""The simulated platform's signing key on disk (Ed25519, PKCS#8 PEM, mode 0600).

Where it lives, first match wins: the ``path`` argument (``--platform-key``), the
``ACCORD_PLATFORM_KEY`` environment variable, ``$ACCORD_HOME/platform-key.pem``, and
``~/.accord/platform-key.pem``. It is created on first use, written atomically (a temporary
file in the same folder, fsynced, then hard-linked into place so that two processes starting
at once end up with the same key), and refused if other users can read it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from accord.errors import ConfigurationError

__all__ = ["default_platform_key_path", "load_or_create_platform_key"]

logger = logging.getLogger(__name__)


def default_platform_key_path() -> Path:
    """The platform key's path when none is given (see the module docstring)."""
    explicit = os.environ.get("ACCORD_PLATFORM_KEY")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("ACCORD_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".accord"
    return base / "platform-key.pem"


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"platform key {path}: readable by other users (mode {mode:04o}); run: chmod 600 {path}"
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise ConfigurationError(
            f"platform key {path}: not an unencrypted PEM private key ({error})"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"platform key {path}: expected an Ed25519 key, found {type(key).__name__}"
        )
    return key


def load_or_create_platform_key(path: Path | None = None) -> Ed25519PrivateKey:
    """Load the platform key, creating it (mode 0600, atomically) if it does not exist."""
    target = path if path is not None else default_platform_key_path()
    try:
        if target.exists():
            return _load(target)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        temporary = target.parent / f".{target.name}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, target)  # fails if another process created it first
                logger.info("created platform key %s", target)
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return _load(target)
    except OSError as error:
        raise ConfigurationError(f"platform key {target}: {error.strerror or error}") from error
