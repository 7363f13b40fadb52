"""One party's outputs: the row map, the aligned table and the summary, all or none.

Every output is written next to its destination under a staging name and renamed into
place only when all of them are complete (:func:`write_outputs`), so a failed run leaves
no partial file behind. A run that is killed (SIGKILL, power loss) cannot remove its
staging files; they carry the writer's process ID, and the next run writing the same
outputs removes those of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from accord.atomic_files import glob_escape, remove_files_of_killed_writers
from accord.errors import ConfigurationError
from accord.tee.runtime.bucketed_host import larger_than_memory
from accord.tee.runtime.settings import PartySettings, PartySummary, Progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = ["remove_stale_staging", "write_outputs"]


# A staging file, or (a leading dot more) the temporary file of the atomic write of one.
_STAGING = re.compile(r"^(\.?)\.accord-partial-(\d+)-[0-9a-f]{12}-(.+)$")


def _staging_path(final: Path) -> Path:
    return final.parent / f".accord-partial-{os.getpid()}-{secrets.token_hex(6)}-{final.name}"


def remove_stale_staging(finals: list[Path]) -> list[Path]:
    """Remove the staging files of ``finals`` left by killed runs (their writer's process is
    gone), and the temporary files of their writes; the files removed."""
    removed = []
    for final in finals:
        stale = []
        with contextlib.suppress(OSError):
            for candidate in final.parent.glob(f"*.accord-partial-*-{glob_escape(final.name)}*"):
                match = _STAGING.match(candidate.name)
                if match is not None and _stages(match.group(3), final.name):
                    stale.append((candidate, int(match.group(2))))
        removed += remove_files_of_killed_writers(stale, f"a partial output for {final.name}")
    return removed


def _stages(rest: str, name: str) -> bool:
    """Whether a staging file's name, after its prefix, is ``name`` or a temporary file of
    a write of it (``NAME.PID-RANDOM.tmp``)."""
    return rest == name or (rest.startswith(f"{name}.") and rest.endswith(".tmp"))


def write_outputs(
    settings: PartySettings,
    row_map: np.ndarray,
    source_rows: int,
    ids: pa.Table | None,
    summary_of: Callable[[dict[str, str]], PartySummary],
    progress: Progress,
) -> PartySummary:
    """Write every output next to its destination, then rename them all into place."""
    from accord.tables import write_aligned_table, write_row_map

    outputs: dict[str, str] = {}
    staged: list[tuple[Path, Path]] = []
    finals = [settings.output_map, settings.output_table, settings.summary]
    remove_stale_staging([final for final in finals if final is not None])
    try:
        if settings.output_map is not None:
            temporary = _staging_path(settings.output_map)
            staged.append((temporary, settings.output_map))
            write_row_map(temporary, row_map, ids=ids, source_rows=source_rows)
            outputs["row_map"] = str(settings.output_map)
        if settings.output_table is not None:
            temporary = _staging_path(settings.output_table)
            staged.append((temporary, settings.output_table))
            progress("write", 0)
            write_aligned_table(
                temporary,
                settings.input,
                row_map,
                source_rows=source_rows,
                progress=lambda rows: progress("write", rows),
                bounded=larger_than_memory(settings),
            )
            outputs["aligned_table"] = str(settings.output_table)
        if settings.summary is not None:
            outputs["summary"] = str(settings.summary)
        summary = summary_of(outputs)
        if settings.summary is not None:
            temporary = _staging_path(settings.summary)
            staged.append((temporary, settings.summary))
            temporary.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
        for temporary, final in staged:
            os.replace(temporary, final)
        return summary
    except OSError as error:
        raise ConfigurationError(f"cannot write the outputs: {error}") from error
    finally:
        for temporary, _ in staged:
            with contextlib.suppress(OSError):
                temporary.unlink()
