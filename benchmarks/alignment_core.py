"""In-process stage timings of the alignment core and table I/O, against a bare set intersection.

Two parties, ``n`` IDs each, 32-character hex IDs, 50 % overlap, rows shuffled; each party's
table is a CSV file ``id,age,score``. Party A's path is timed stage by stage: streaming key
read → normalisation → keyed digests + duplicate check + canonical sort → wire form → intersection
→ shared order → row map and aligned CSV written atomically. Party B's digests are prepared
the same way (not timed). The baseline is ``set(a) & set(b)`` over Python lists of the same IDs
already in memory, timed in the same process. Digest alternatives are timed on a subsample:
per-ID keyed BLAKE2b and per-ID HMAC-SHA256 (both Python loops, extrapolated to ``n``).

Prints one JSON object. Usage::

    python3 benchmarks/alignment_core.py --sizes 1000000 10000000
    python3 benchmarks/alignment_core.py --sizes 1000000 --allocator default

``--allocator tuned`` (default) keeps freed memory in the process (glibc ``M_MMAP_MAX=0``,
no trimming; pyarrow keeps its own jemalloc pool): on this VM freshly mapped memory costs
0.2-2 ms per MB on first touch, which otherwise dominates several stages. ``default`` leaves
the allocator alone. ``kernel_per_stage`` shows kernel time and page faults per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import hmac
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep memory freed by numpy (glibc malloc) in the process for reuse."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


#: Per stage: kernel CPU seconds and minor page faults (first touches of fresh memory).
FAULTS: dict[str, dict[str, float]] = {}


@contextlib.contextmanager
def stopwatch(stages: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the ``with`` body under ``name`` (and its page faults)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - start, 4)
    after = resource.getrusage(resource.RUSAGE_SELF)
    FAULTS[name] = {
        "sys_s": round(after.ru_stime - usage.ru_stime, 3),
        "minor_faults": after.ru_minflt - usage.ru_minflt,
    }


def make_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random 32-character lowercase-hex IDs as an (count, 32) uint8 matrix."""
    alphabet = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    return alphabet[rng.integers(0, 16, size=(count, 32), dtype=np.uint8)]


def id_array(matrix: np.ndarray) -> Any:
    import pyarrow as pa

    n = len(matrix)
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int64)
    return pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix)]
    )


def write_party_csv(path: Path, ids: np.ndarray, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    n = len(ids)
    table = pa.table(
        {
            "id": id_array(ids),
            "age": rng.integers(18, 90, size=n),
            "score": np.round(rng.random(n), 4),
        }
    )
    pcsv.write_csv(table, path)


def digest_alternatives(ids: list[bytes], key: bytes, n: int) -> dict[str, float]:
    """Per-ID Python keyed hashes on a subsample, extrapolated to ``n`` IDs (seconds)."""
    import pyarrow as pa

    from accord.alignment import keyed_digests

    scale = n / len(ids)
    out: dict[str, float] = {"subsample": len(ids)}
    start = time.perf_counter()
    for value in ids:
        hashlib.blake2b(value, key=key, digest_size=16).digest()
    out["blake2b_keyed_per_id_extrapolated_s"] = round((time.perf_counter() - start) * scale, 3)
    start = time.perf_counter()
    for value in ids:
        hmac.new(key, value, hashlib.sha256).digest()
    out["hmac_sha256_per_id_extrapolated_s"] = round((time.perf_counter() - start) * scale, 3)
    sample = pa.array(ids, type=pa.binary())
    start = time.perf_counter()
    keyed_digests(sample, key)
    out["aes_cbc_mac_vectorised_extrapolated_s"] = round((time.perf_counter() - start) * scale, 3)
    return out


def run_size(n: int, seed: int, workdir: Path) -> dict[str, Any]:  # noqa: PLR0915 - its owner refactors it
    from accord import tables
    from accord.alignment import (
        align,
        digest_ids,
        digests_from_bytes,
        digests_to_bytes,
        intersect,
        keyed_digests,
        prepare_ids,
        shared_order,
        shared_seed,
    )

    rng = np.random.default_rng(seed)
    overlap = n // 2
    setup: dict[str, float] = {}
    common = make_ids(rng, overlap)
    a_ids = np.concatenate([common, make_ids(rng, n - overlap)])[rng.permutation(n)]
    b_ids = np.concatenate([common, make_ids(rng, n - overlap)])[rng.permutation(n)]
    del common
    a_path, b_path = workdir / f"a_{n}.csv", workdir / f"b_{n}.csv"
    with stopwatch(setup, "write_inputs_s"):
        write_party_csv(a_path, a_ids, rng)
        write_party_csv(b_path, b_ids, rng)
    key = rng.bytes(32)
    seed_bytes = shared_seed([rng.bytes(32), rng.bytes(32)])

    # Party B (not timed): its canonical digest set, in wire form.
    b_keys = tables.read_key_columns(b_path, ["id"])
    b_set = digest_ids(prepare_ids(b_keys.columns, names=["id"]), key)
    b_wire = digests_to_bytes(b_set.digests)
    del b_keys, b_set
    gc.collect()

    stages: dict[str, float] = {}
    rss: dict[str, float] = {"before_party_a_mib": round(current_rss_mib(), 1)}
    wall_start = time.perf_counter()
    with stopwatch(stages, "read_keys"):
        a_keys = tables.read_key_columns(a_path, ["id"])
    with stopwatch(stages, "prepare_ids"):
        prepared = prepare_ids(a_keys.columns, names=["id"])
    with stopwatch(stages, "digest_ids"):
        own = digest_ids(prepared, key)
    source_rows = a_keys.num_rows
    del prepared
    with stopwatch(stages, "to_wire"):
        wire = digests_to_bytes(own.digests)
    with stopwatch(stages, "from_wire"):
        peer = digests_from_bytes(b_wire)
    with stopwatch(stages, "align"):
        result = align(own, [peer], seed_bytes)
    rss["after_align_mib"] = round(current_rss_mib(), 1)
    with stopwatch(stages, "write_row_map"):
        tables.write_row_map(workdir / f"map_{n}.csv", result.row_map)
    with stopwatch(stages, "write_aligned_csv"):
        tables.write_aligned_table(
            workdir / f"aligned_{n}.csv", a_path, result.row_map, source_rows=source_rows
        )
    stages["party_total"] = round(time.perf_counter() - wall_start, 4)
    rss["after_write_mib"] = round(current_rss_mib(), 1)
    del wire

    # Sub-stages of digest_ids and align, timed separately (same inputs, repeated work).
    prepared = prepare_ids(a_keys.columns, names=["id"])
    detail: dict[str, float] = {}
    with stopwatch(detail, "keyed_digests_only"):
        keyed_digests(prepared.keys, key)
    del prepared
    with stopwatch(detail, "intersect"):
        positions = intersect(own.digests, [peer])
    common_digests = np.take(own.digests, positions, axis=0)
    with stopwatch(detail, "shared_order"):
        shared_order(common_digests, seed_bytes)
    del common_digests, positions

    # Correctness: the planted overlap is found and A's aligned rows hold IDs of B's table.
    assert result.intersection_size == overlap, (result.intersection_size, overlap)
    b_lookup = set(id_array(b_ids).to_pylist())
    sample = id_array(a_ids[result.row_map[:1000]]).to_pylist()
    assert all(value in b_lookup for value in sample)
    del b_lookup, sample

    # Baseline: bare set intersection of the same IDs, lists already in memory.
    del a_keys, own, peer, result
    gc.collect()
    a_list = id_array(a_ids).to_pylist()
    b_list = id_array(b_ids).to_pylist()
    baseline: dict[str, float] = {}
    with stopwatch(baseline, "set_intersection_s"):
        common_set = set(a_list) & set(b_list)
    assert len(common_set) == overlap
    del common_set
    alternatives = digest_alternatives([s.encode() for s in a_list[:200_000]], key, n)
    del a_list, b_list
    gc.collect()

    set_time = baseline["set_intersection_s"]
    core = sum(stages[k] for k in ("prepare_ids", "digest_ids", "to_wire", "from_wire", "align"))
    return {
        "n": n,
        "overlap": overlap,
        "input_csv_mib": round(a_path.stat().st_size / 2**20, 1),
        "stages_s": stages,
        "detail_s": detail,
        "core_total_s": round(core, 4),
        "baseline": baseline,
        "party_total_over_set_intersection": round(stages["party_total"] / set_time, 3),
        "core_over_set_intersection": round(core / set_time, 3),
        "digest_alternatives": alternatives,
        "rss": rss,
        "kernel_per_stage": {name: FAULTS.pop(name) for name in list(FAULTS)},
        "setup_s": setup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    args = parser.parse_args()
    tuned = tune_allocator() if args.allocator == "tuned" else False

    import cryptography
    import pyarrow as pa

    scratch = Path(tempfile.mkdtemp(prefix="accord-bench-", dir=args.workdir))
    try:
        runs = [run_size(n, args.seed + i, scratch) for i, n in enumerate(args.sizes)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            platform.processor(),
        )
    report = {
        "benchmark": "alignment_core",
        "ids": "32-char lowercase hex, 50% overlap, shuffled rows, CSV id,age,score",
        "seed": args.seed,
        "allocator": {"mode": args.allocator, "tuned": tuned},
        "runs": runs,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "cryptography": cryptography.__version__,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
