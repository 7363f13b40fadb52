"""``accord vertical demo``: breast cancer aligned by ``accord align`` and trained by the
label and feature parties as processes on 127.0.0.1; its check and its report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_aligns_trains_over_the_network_and_matches_centralised(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli", "vertical", "demo", "--epochs", "4", "--keep",
         str(kept)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "clinic holds 10 columns and the diagnosis, lab 20 columns" in out
    shared = int(re.search(r"aligned with `accord align`: (\d+) shared patients", out).group(1))  # type: ignore[union-attr]
    summaries = [json.loads((kept / f"{n}.summary.json").read_text()) for n in ("clinic", "lab")]
    assert {s["intersection"] for s in summaries} == {shared}
    assert len({s["fingerprint"] for s in summaries}) == 1
    assert 300 < shared < 569  # the parties overlap only in part
    aucs = dict(re.findall(r"^  (split learning|centralised|clinic alone).*? (0\.\d{4}|1\.0000)$",
                           out, flags=re.MULTILINE))  # fmt: skip
    assert set(aucs) == {"split learning", "centralised", "clinic alone"}
    assert aucs["split learning"] == aucs["centralised"]
    assert "[ok] split learning equals centralised training of the same network" in out
    run = json.loads((kept / "run" / "summary.json").read_text())
    assert run["alignment_fingerprint"] == summaries[0]["fingerprint"]
    assert run["rows"] == shared and run["epochs_run"] <= 4
    assert len((kept / "run" / "metrics.jsonl").read_text().splitlines()) == run["epochs_run"]
