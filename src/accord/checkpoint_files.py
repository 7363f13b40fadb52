"""Checkpoints (of a federated or a vertical run): written atomically, read without pickle.

A checkpoint is one ``.npz`` file (a zip of ``.npy`` arrays, ``allow_pickle=False``): the
state tree (dicts, lists, tuples, strings, numbers, ``None``) as JSON in ``__tree__``, every
numpy array and ``bytes`` value as its own member. Loading a checkpoint therefore cannot run
code, whoever wrote the file. It is written with
:func:`accord.atomic_files.write_atomically` (a temporary file in the same folder, flushed,
fsync'ed and moved over the old one), so a crash leaves either the previous checkpoint or
the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from accord.atomic_files import write_atomically
from accord.errors import InputDataError

__all__ = [
    "decode_tree",
    "dumps_tree",
    "encode_tree",
    "loads_tree",
    "read_checkpoint",
    "write_checkpoint",
]

_TREE = "__tree__"
_MARK = "__accord__"


def encode_tree(tree: Any, arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    """A JSON-able copy of ``tree``; arrays and bytes move into ``arrays``."""
    if isinstance(tree, np.generic):  # before int/float: np.float64 subclasses float
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(tree)
        return {_MARK: "scalar", "key": key}
    if tree is None or isinstance(tree, bool | str | int | float):
        return tree
    if isinstance(tree, np.ndarray):
        if tree.dtype.hasobject:
            raise TypeError("checkpoint: arrays of Python objects cannot be stored")
        key = f"a{len(arrays)}"
        arrays[key] = tree
        return {_MARK: "array", "key": key}
    if isinstance(tree, bytes | bytearray):
        key = f"a{len(arrays)}"
        arrays[key] = np.frombuffer(bytes(tree), dtype=np.uint8)
        return {_MARK: "bytes", "key": key}
    if isinstance(tree, tuple):
        return {_MARK: "tuple", "items": [encode_tree(item, arrays) for item in tree]}
    if isinstance(tree, list):
        return [encode_tree(item, arrays) for item in tree]
    if isinstance(tree, Mapping):
        if all(isinstance(key, str) for key in tree) and _MARK not in tree:
            return {key: encode_tree(value, arrays) for key, value in tree.items()}
        return {
            _MARK: "dict",
            "items": [[encode_tree(k, arrays), encode_tree(v, arrays)] for k, v in tree.items()],
        }
    raise TypeError(f"checkpoint: cannot store a value of type {type(tree).__name__}")


def decode_tree(tree: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> Any:
    """The inverse of :func:`encode_tree`."""
    if isinstance(tree, list):
        return [decode_tree(item, arrays) for item in tree]
    if not isinstance(tree, dict):
        return tree
    mark = tree.get(_MARK)
    if mark is None:
        return {key: decode_tree(value, arrays) for key, value in tree.items()}
    if mark == "array":
        return np.array(arrays[tree["key"]])
    if mark == "scalar":
        return arrays[tree["key"]][()]
    if mark == "bytes":
        return arrays[tree["key"]].tobytes()
    if mark == "tuple":
        return tuple(decode_tree(item, arrays) for item in tree["items"])
    if mark == "dict":
        return {decode_tree(k, arrays): decode_tree(v, arrays) for k, v in tree["items"]}
    raise ValueError(f"unknown marker {mark!r}")


def dumps_tree(state: Mapping[str, Any]) -> bytes:
    """``state`` as the bytes of an ``.npz`` file (no pickle)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    tree = encode_tree(dict(state), arrays)
    arrays[_TREE] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def loads_tree(data: bytes | io.BufferedIOBase | Path, where: str = "state") -> dict[str, Any]:
    """The inverse of :func:`dumps_tree`; ``where`` names the source in errors."""
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(data, bytes):
                source: io.BufferedIOBase | io.BytesIO = io.BytesIO(data)
            elif isinstance(data, Path):
                # Opened here, not by numpy: np.load leaks its own handle when the file is
                # a zip that zipfile then refuses.
                source = stack.enter_context(data.open("rb"))
            else:
                source = data
            loaded = np.load(source, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy: one array
                raise InputDataError(
                    f"{where}: not an Accord checkpoint (one array, not an archive)"
                )
            with loaded as archive:
                arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError as error:
        raise InputDataError(f"{where}: no checkpoint there") from error
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        NotImplementedError,  # zipfile: a compression method or feature it does not read
        RuntimeError,  # zipfile: an encrypted member
        MemoryError,  # an array header claiming more memory than the machine has
    ) as error:
        raise InputDataError(f"{where}: not a readable checkpoint ({error})") from error
    if _TREE not in arrays:
        raise InputDataError(f"{where}: not an Accord checkpoint (no {_TREE} member)")
    try:
        tree = json.loads(arrays.pop(_TREE).tobytes())
        state = decode_tree(tree, arrays)
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        # RecursionError: a tree nested deeper than the JSON parser or decode_tree can go.
        raise InputDataError(f"{where}: corrupt checkpoint ({error})") from error
    if not isinstance(state, dict):
        raise InputDataError(f"{where}: corrupt checkpoint (the state is not a mapping)")
    return state


def write_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (see the module docstring)."""
    write_atomically(path, dumps_tree(state))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`write_checkpoint`."""
    return loads_tree(path, str(path))
