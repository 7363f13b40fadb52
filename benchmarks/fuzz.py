"""The long fuzzing run: every parser that faces a peer or a file, 10,000 inputs each.

The targets and the property are those of ``tests/fuzz_targets.py`` (the CI test runs 500
inputs per target): every input parses or raises Accord's own error with a message, and a
file parser leaves nothing behind. A target that fails stops at its first failing input
(Hypothesis shrinks it) and the run goes on with the next target.

The address space is capped (``--memory-limit-gb``, default 8) so that an input which makes
a parser allocate without bound shows up as a failure (``MemoryError``) instead of a kill by
the kernel. Prints one JSON object: per target the inputs run, how many parsed and how
many were refused with an Accord error, the seconds, and the failure if any. Exit code 1 if
any target failed. Usage::

    python3 benchmarks/fuzz.py                      # 10,000 inputs per target
    python3 benchmarks/fuzz.py --examples 20000 --targets align.hello align.records
    ACCORD_FUZZ_EXAMPLES=2000 python3 benchmarks/fuzz.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from machine import cpu_model  # noqa: E402


def run_target(target: Any, examples: int, seed_value: int) -> dict[str, Any]:
    from fuzz_targets import check

    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(target.strategy)
    def fuzz(value: Any) -> None:
        check(target, value)

    started = time.perf_counter()
    failure = None
    try:
        fuzz()
    except Exception as error:  # a failing input: report it, go on with the next target
        failure = "".join(traceback.format_exception_only(type(error), error)).strip()[:2000]
    return {
        **target.counts,
        "seconds": round(time.perf_counter() - started, 2),
        "failure": failure,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=int(os.environ.get("ACCORD_FUZZ_EXAMPLES", "10000"))
    )
    parser.add_argument("--targets", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit-gb", type=float, default=8.0)
    args = parser.parse_args()

    limit = int(args.memory_limit_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    import logging

    logging.disable(logging.CRITICAL)  # the refused inputs' warnings; the counts say it all

    from fuzz_targets import TARGETS, close_loop, remove_workdirs

    names = args.targets or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    started = time.perf_counter()
    results = {name: run_target(TARGETS[name], args.examples, args.seed) for name in names}
    close_loop()
    remove_workdirs()
    summary = {
        "examples_per_target": args.examples,
        "seed": args.seed,
        "targets": results,
        "inputs": sum(result["inputs"] for result in results.values()),
        "failed": sorted(name for name, result in results.items() if result["failure"]),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpu": cpu_model(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "python": platform.python_version(),
        },
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
