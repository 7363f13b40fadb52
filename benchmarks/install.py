"""How long a new user waits: a cold install of Accord into a fresh virtual environment,
then the main job (issue 13, item 10: set-up and main job ≤ 90 s cold on a quiet machine).

Each install runs in its own new venv with pip's cache off (``--no-cache-dir``), so every
wheel is fetched again from the package index; the operating system's file cache is not
flushed. Measured, in one run:

- ``base``: ``pip install -c constraints.txt -e .``, the README's set-up command, then
  ``accord simulate`` in that venv (the README's first line, end to end);
- ``dev``, ``dev+flower``: the extras the test command adds; ``dev+flower`` was the set-up
  command before this benchmark existed, so it is the baseline;
- ``torch``, ``pyarrow``, ``ray`` alone, to show what dominates.

    python benchmarks/install.py            # about 4 minutes; prints one JSON object

Nothing here is imported from Accord: the benchmark must run before Accord is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 90.0

# name -> what pip installs (a path or requirement), beside the constraints file.
INSTALLS: dict[str, list[str]] = {
    "base": ["-e", "."],
    "dev": ["-e", ".[dev]"],
    "dev+flower": ["-e", ".[dev,flower]"],
    "torch": ["torch"],
    "pyarrow": ["pyarrow"],
    "ray": ["ray"],
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fresh_venv(where: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return where / "bin", time.perf_counter() - start


def timed_install(bin_dir: Path, what: list[str]) -> tuple[float, int]:
    """Seconds for one cold pip install, and how many distributions it installed."""
    command = [
        str(bin_dir / "pip"),
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "-c",
        "constraints.txt",
        *what,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"install.py: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    installed = next(
        (line for line in done.stdout.splitlines() if line.startswith("Successfully installed")),
        "",
    )
    return seconds, len(installed.split()) - 2


def timed_main_job(bin_dir: Path, workdir: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [str(bin_dir / "accord"), "simulate"],
        check=False,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"install.py: accord simulate failed:\n{done.stderr[-2000:]}")
    return seconds


def site_size_mb(venv: Path) -> float:
    total = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    return round(total / 2**20, 1)


def measure(names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="accord-install-") as tmp:
        for name in names:
            venv = Path(tmp) / name
            load_before = load()
            bin_dir, venv_seconds = fresh_venv(venv)
            install_seconds, count = timed_install(bin_dir, INSTALLS[name])
            entry: dict[str, Any] = {
                "pip_install": INSTALLS[name],
                "venv_seconds": round(venv_seconds, 2),
                "install_seconds": round(install_seconds, 2),
                "distributions": count,
                "venv_mb": site_size_mb(venv),
                "load_before": load_before,
            }
            if name == "base":
                workdir = Path(tmp) / "job"
                workdir.mkdir()
                main_job = timed_main_job(bin_dir, workdir)
                entry["main_job_seconds"] = round(main_job, 2)
                entry["setup_and_main_job_seconds"] = round(install_seconds + main_job, 2)
            results[name] = entry
            # A venv of several GB is not kept longer than its measurement needs.
            subprocess.run(["rm", "-rf", str(venv)], check=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=sorted(INSTALLS), help="measure only these installs"
    )
    args = parser.parse_args()
    names = args.only or list(INSTALLS)
    report: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_start": load(),
        "installs": measure(names),
        "load_end": load(),
        "target_seconds": TARGET_SECONDS,
    }
    installs = report["installs"]
    if "base" in installs:
        total = installs["base"]["setup_and_main_job_seconds"]
        report["setup_and_main_job_seconds"] = total
        report["target_met"] = total <= TARGET_SECONDS
        if "dev+flower" in installs:
            report["baseline_setup_seconds"] = installs["dev+flower"]["install_seconds"]
            report["speedup_over_baseline"] = round(
                installs["dev+flower"]["install_seconds"] / installs["base"]["install_seconds"], 2
            )
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
