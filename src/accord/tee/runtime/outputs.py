"""One party's outputs: the row map, the aligned table and the summary, all or none.

Every output is written next to its destination under a staging name and renamed into
place only when all of them are complete (:func:`write_outputs`), so a failed run leaves
no partial file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from accord.errors import ConfigurationError
from accord.tee.runtime.bucketed_host import larger_than_memory
from accord.tee.runtime.settings import PartySettings, PartySummary, Progress

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = ["write_outputs"]


def _staging_path(final: Path) -> Path:
    return final.parent / f".accord-{secrets.token_hex(6)}-{final.name}"


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
