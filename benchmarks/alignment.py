"""End-to-end TEE alignment: two parties as real processes over TCP, against a bare set.

For each size ``n``: two CSV tables ``id,f1,f2`` of ``n`` rows each, 32-character IDs, 50 %
overlap, rows shuffled, generated to disk beforehand (not timed). Then, timed: both parties
run ``accord align`` at once on 127.0.0.1 (each a host process that starts its own enclave
process), CSV in → row map and aligned CSV out. Wall time is from launching both parties to
both exiting, with nothing watching the parties (each party's CPU, host and enclave, and
an upper bound on its largest process's peak come from ``wait4``; Linux counts this process's
RSS at the spawn in it). Memory comes from one more run of each size,
not timed: each party's peak RSS is its host and enclave processes together, sampled
every 10 ms (``combined_peak``), with each process's own high-water mark (``VmHWM``). The
sampler runs in this process and took about 0.09 s of CPU from a 1M run on two cores (whose
wall time is 0.8 s), which the bare set does not pay; figures before 2026-12-03 20:50 UTC
carry that cost.

In the same run, the baseline: ``set(a) & set(b)`` over Python lists of the same IDs already
in memory (a child process loads them untimed, then times the intersection). At the sizes
given by ``--psi-sizes`` (default 1M) also OpenMined PSI (``openmined-psi``, client and
server in one process, the protocol steps timed) as the cryptographic anchor — when it is
importable (see the README: it pins an older protobuf, so it is installed with --no-deps).

With ``--memory-limit SIZE`` every size in ``--sizes`` is also run bucketed (each party
given ``--memory-limit SIZE``), so in-memory and bucketed runs of the same tables compare.

**Large mode** (``--large N``): inputs larger than memory. Two CSV tables of ``N`` rows each
(``id,f1,f2``, 32-character IDs, 50 % overlap, shuffled) are generated straight to disk in
chunks (not timed; the features are a function of the ID, so both aligned tables must come
out byte for byte identical), then both parties run bucketed with ``--memory-limit``. It
reports wall time, each party's peak RSS (host and enclave; also without file-backed pages),
the run directory's peak size and the outputs' size; the check is that both aligned tables
are identical and hold exactly the shared rows.

Before timing, the bytecode of the Accord code under test (this checkout's, and the one of
``--compare-src``) is compiled (``compileall``), as ``pip install`` does for an installed
package: run from a checkout with ``PYTHONDONTWRITEBYTECODE=1`` (as on the project's VMs),
every one of a run's four processes would otherwise compile Accord's modules from source
at every start (about 30 ms each). ``--as-found`` measures the code as it is found instead.

The runs of a size alternate with the baseline's (bare set, this code, and with
``--compare-src DIR`` another checkout's code on the same tables, in turn), so a change in
the machine's load touches each alike; the medians and their ratios are reported, with the
load average and the CPU model, beside the committed results (``--committed``, default
``benchmarks/results_alignment.json``). One line per size goes to stderr.

Prints one JSON object. Usage::

    python3 benchmarks/alignment.py                       # 1M x 1M (+ OpenMined PSI)
    python3 benchmarks/alignment.py --sizes 1000000 10000000 --psi-sizes --repeat 5 3 --floor
    git worktree add /tmp/old COMMIT && python3 benchmarks/alignment.py --compare-src /tmp/old
    python3 benchmarks/alignment.py --sizes 10000000 --psi-sizes --memory-limit 2GiB \
        --large 100000000                                 # 10M in memory vs bucketed, 100M
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_model

_ALPHABET = np.frombuffer(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8
)


# ----------------------------------------------------------------------------- data


def generate(folder: Path, n: int, overlap: float, id_length: int, seed: int) -> dict[str, Any]:
    """Write a.csv and b.csv (id,f1,f2) once per (n, overlap, length, seed); return paths."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.json"
    if done.exists():
        return dict(json.loads(done.read_text()))
    rng = np.random.default_rng(seed)
    shared = round(n * overlap)
    total = shared + 2 * (n - shared)
    ids = np.empty(total, dtype=f"S{id_length}")
    step = 1 << 20
    for start in range(0, total, step):
        count = min(step, total - start)
        letters = _ALPHABET[
            rng.integers(0, len(_ALPHABET), size=(count, id_length), dtype=np.uint8)
        ]
        ids[start : start + count] = np.ascontiguousarray(letters).view(f"S{id_length}").ravel()
    if len(np.unique(ids)) != total:  # 62^32 makes this practically impossible
        raise RuntimeError("generated IDs collide; pick another seed")
    paths = {}
    for index, name in enumerate(("a", "b")):
        own = ids[shared + index * (n - shared) : shared + (index + 1) * (n - shared)]
        party = np.concatenate([ids[:shared], own])[rng.permutation(n)]
        table = pa.table(
            {
                "id": pa.array(party.astype(object), type=pa.binary()).cast(pa.string()),
                "f1": pa.array(rng.integers(0, 1000, size=n)),
                "f2": pa.array(rng.normal(size=n).round(5)),
            }
        )
        path = folder / f"{name}.csv"
        pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="none"))
        paths[name] = str(path)
    info = {**paths, "n": n, "shared": shared}
    done.write_text(json.dumps(info))
    return info


def _mix(values: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``values ^ salt`` (a bijection of uint64)."""
    z = values ^ np.uint64(salt)
    z += np.uint64(0x9E3779B97F4A7C15)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


_LARGE_ALPHABET = np.frombuffer(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_", np.uint8
)
_LARGE_LINE = 32 + 1 + 3 + 1 + 6 + 1  # id,f1,f2\n


def _large_lines(index: np.ndarray, seed: int) -> np.ndarray:
    """The CSV lines of the IDs numbered ``index`` (``(n, 44)`` bytes).

    The ID's 32 characters carry 192 pseudo-random bits of three independent splitmix64
    bijections of the index (collisions are practically impossible); the features are
    functions of the index too.
    """
    n = len(index)
    words = np.empty((n, 3), dtype=np.uint64)
    for column in range(3):
        words[:, column] = _mix(index, seed * 7919 + column)
    sixes = np.empty((n, 32), dtype=np.uint8)
    for position in range(32):
        word, bit = divmod(position * 6, 64)
        word = min(word, 2)
        values = (words[:, word] >> np.uint64(bit % 58)) & np.uint64(63)
        sixes[:, position] = values.astype(np.uint8)
    lines = np.empty((n, _LARGE_LINE), dtype=np.uint8)
    lines[:, :32] = _LARGE_ALPHABET[sixes]
    lines[:, 32] = ord(",")
    f1 = (words[:, 2] % np.uint64(1000)).astype(np.int64)
    for place, divisor in enumerate((100, 10, 1)):
        lines[:, 33 + place] = 48 + (f1 // divisor) % 10
    lines[:, 36] = ord(",")
    f2 = ((words[:, 1] >> np.uint64(7)) % np.uint64(10**6)).astype(np.int64)
    for place in range(6):
        lines[:, 37 + place] = 48 + (f2 // 10 ** (5 - place)) % 10
    lines[:, 43] = ord("\n")
    return lines


def generate_large(folder: Path, n: int, overlap: float, seed: int) -> dict[str, Any]:
    """Write a.csv and b.csv of ``n`` rows each, chunk by chunk (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.json"
    if done.exists():
        return dict(json.loads(done.read_text()))
    shared = round(n * overlap)
    started = time.perf_counter()
    paths = {}
    for party, name in enumerate(("a", "b")):
        rng = np.random.default_rng([seed, party])
        # Shared IDs are numbered 0..shared-1, party p's own ones after every shared one.
        first_own = shared + party * (n - shared)
        order = rng.permutation(n).astype(np.uint64)
        own = order >= np.uint64(shared)
        order[own] += np.uint64(first_own - shared)
        del own
        path = folder / f"{name}.csv"
        with open(path, "wb") as handle:
            handle.write(b"id,f1,f2\n")
            for start in range(0, n, 1 << 21):
                handle.write(_large_lines(order[start : start + (1 << 21)], seed).data)
        del order
        paths[name] = str(path)
    info = {
        **paths,
        "n": n,
        "shared": shared,
        "generate_seconds": round(time.perf_counter() - started, 1),
        "input_bytes": os.path.getsize(paths["a"]),
    }
    done.write_text(json.dumps(info))
    return info


# ----------------------------------------------------------------------------- measuring


class TreeSampler:
    """Samples the RSS of a process and its children every ``interval`` seconds.

    It reads only ``/proc`` files of the process tree itself (children from
    ``/proc/PID/task/TID/children``, memory from ``status``, CPU from ``stat``): listing every
    process of the machine a hundred times a second (psutil's ``children()``) cost the
    parties of a 1M run about a second of their two cores.
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._root = pid
        self._interval = interval
        self._ticks = os.sysconf("SC_CLK_TCK")
        self.combined_peak = 0
        self.combined_anon_peak = 0
        self.high_water: dict[int, int] = {}
        self.cpu: dict[int, tuple[float, float]] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, index = [self._root], 0
        while index < len(pids):
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pids[index]}/task"):
                    with open(f"/proc/{pids[index]}/task/{task}/children") as handle:
                        pids += [int(child) for child in handle.read().split()]
            index += 1
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = anon = 0
            alive = False
            for pid in self._tree():
                try:
                    fields = _status(pid)
                    with open(f"/proc/{pid}/stat") as handle:
                        stat = handle.read().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                alive = True
                total += fields.get("VmRSS", 0)
                anon += fields.get("RssAnon", 0) + fields.get("RssShmem", 0)
                self.cpu[pid] = (int(stat[11]) / self._ticks, int(stat[12]) / self._ticks)
                self.high_water[pid] = max(self.high_water.get(pid, 0), fields.get("VmHWM", 0))
                if pid not in self.names:
                    self.names[pid] = "host" if pid == self._root else "enclave"
            if not alive:
                return
            self.combined_peak = max(self.combined_peak, total)
            self.combined_anon_peak = max(self.combined_anon_peak, anon)
            time.sleep(self._interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        by_role: dict[str, int] = {}
        cpu: dict[str, list[float]] = {}
        for pid, peak in self.high_water.items():
            role = self.names.get(pid, "other")
            by_role[role] = by_role.get(role, 0) + peak
            user, system = self.cpu.get(pid, (0.0, 0.0))
            cpu[role] = [round(user, 2), round(system, 2)]
        return {
            "combined_peak_rss_bytes": self.combined_peak,
            # RSS without file-backed pages (the memory-mapped input and libraries).
            "combined_peak_anon_rss_bytes": self.combined_anon_peak,
            "host_peak_rss_bytes": by_role.get("host"),
            "enclave_peak_rss_bytes": by_role.get("enclave"),
            "sum_of_process_peaks_bytes": sum(by_role.values()),
            "cpu_user_system_seconds": cpu,
        }


def _status(pid: int) -> dict[str, int]:
    """The memory fields (bytes) of ``/proc/PID/status``."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("Vm", "Rss")):
                name, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    return fields


class MemoryCgroup:
    """A memory cgroup capped at ``limit`` bytes, page cache included (Linux, as root).

    The hard form of a memory limit: the kernel reclaims the group's page cache and
    file-backed pages to stay under it and kills the group's processes (OOM) if anonymous
    memory alone would exceed it. cgroup v2 (``memory.max``) or v1 (``limit_in_bytes``).
    """

    def __init__(self, name: str, limit: int) -> None:
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/memory")
        if (v2 / "cgroup.controllers").is_file():
            self.version, root = 2, v2
        elif v1.is_dir():
            self.version, root = 1, v1
        else:
            raise RuntimeError("--cgroup: no cgroup memory controller at /sys/fs/cgroup")
        self.path = root / f"accord-bench-{name}-{os.getpid()}"
        try:
            self.path.mkdir()
            limit_file = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
            (self.path / limit_file).write_text(str(limit))
        except OSError as error:
            raise RuntimeError(f"--cgroup: cannot create {self.path}: {error}") from error
        self.limit = limit

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` started inside the group (its children, the enclave, follow)."""
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *command]

    def report(self) -> dict[str, Any]:
        if self.version == 2:
            peak_file = self.path / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.is_file() else None
            events = dict(
                line.split() for line in (self.path / "memory.events").read_text().splitlines()
            )
            oom_kills = int(events.get("oom_kill", 0))
        else:
            peak = int((self.path / "memory.max_usage_in_bytes").read_text())
            control = dict(
                line.split() for line in (self.path / "memory.oom_control").read_text().splitlines()
            )
            oom_kills = int(control.get("oom_kill", 0))
        return {"limit_bytes": self.limit, "peak_bytes_page_cache_included": peak,
                "oom_kills": oom_kills}  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_pair(
    data: dict[str, Any],
    work: Path,
    key: Path,
    policy: Path,
    extra: list[str] | None = None,
    check: bool = True,
    cgroup_limit: int | None = None,
    environment: dict[str, str] | None = None,
    observe: bool = True,
) -> dict[str, Any]:
    """Both parties at once; wall time, per-party memory, stage times, correctness.

    ``observe``: sample each party's process tree every 10 ms (:class:`TreeSampler`: the
    combined peak RSS of host and enclave, and each one's CPU). The sampler is a thread of
    this process reading ``/proc`` a hundred times a second per party: on two cores that
    the parties keep busy it took about 0.09 s from a 1M run's 0.77 s, a cost the bare set
    does not pay. Timed runs are therefore unobserved (``observe=False``): each party's CPU
    (host and enclave together) and its largest single-process peak RSS come from
    ``wait4``, which the kernel keeps anyway. That peak is an upper bound only: Linux keeps
    the pre-exec high-water mark, so it includes this process's RSS when the party was
    started; the sampled ``observed_run`` gives the parties' own peaks.

    ``extra``: flags for both parties (e.g. ``--memory-limit 2GiB``; each party then gets
    its own ``--run-dir`` under ``work``). ``cgroup_limit``: each party (host and enclave)
    runs in its own memory cgroup capped at that many bytes. ``environment``: the parties'
    environment (``--compare-src`` runs another checkout's code through ``PYTHONPATH``).
    """
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("a", "b"):
        shutil.rmtree(work / f"run-{name}", ignore_errors=True)
    port = _free_port()
    common = ["--key", "id", "--policy", str(policy), "--platform-key", str(key)]
    common += ["--progress", "none", "--connect-timeout", "120"]
    commands = {}
    for name, where in (
        ("a", ["--listen", f"127.0.0.1:{port}"]),
        ("b", ["--peer", f"127.0.0.1:{port}"]),
    ):
        commands[name] = [
            sys.executable, "-m", "accord.cli", "--quiet", "align", *common, *where,
            "--input", data[name], "--party-name", name,
            "--output-table", str(out / f"{name}.aligned.csv"),
        ]  # fmt: skip
        if extra:
            commands[name] += [*extra, "--run-dir", str(work / f"run-{name}")]
    groups = {}
    if cgroup_limit is not None:
        groups = {name: MemoryCgroup(name, cgroup_limit) for name in commands}
        commands = {name: groups[name].wrap(command) for name, command in commands.items()}
    try:
        if observe:
            wall, outputs, returncodes, memory = _observed(commands, environment)
        else:
            wall, outputs, returncodes, memory = _unobserved(commands, environment)
        for name, group in groups.items():
            memory[name]["cgroup"] = group.report()
    finally:
        for group in groups.values():
            group.remove()
    parties: dict[str, Any] = {}
    for name, (stdout, stderr) in outputs.items():
        if returncodes[name] != 0:
            raise RuntimeError(f"party {name} failed ({returncodes[name]}):\n{stderr}")
        summary = json.loads(stdout)
        parties[name] = {
            **memory[name],
            "intersection": summary["intersection"],
            "stage_seconds": summary["seconds"],
            "buckets": summary.get("buckets"),
            "run_dir_peak_bytes": summary.get("disk_peak_bytes"),
            "output_bytes": (out / f"{name}.aligned.csv").stat().st_size,
        }
    correct = _check_in_child(data, out) if check else _check_identical(data, out, parties)
    return {"wall_seconds": round(wall, 3), "parties": parties, "correct": correct}


_Outputs = dict[str, tuple[str, str]]


def _observed(
    commands: dict[str, list[str]], environment: dict[str, str] | None
) -> tuple[float, _Outputs, dict[str, int], dict[str, Any]]:
    """Both parties, each process tree sampled every 10 ms (:class:`TreeSampler`)."""
    start = time.perf_counter()
    processes = {
        name: subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
        )
        for name, command in commands.items()
    }
    samplers = {name: TreeSampler(process.pid) for name, process in processes.items()}
    outputs = {name: process.communicate() for name, process in processes.items()}
    wall = time.perf_counter() - start
    memory = {name: sampler.stop() for name, sampler in samplers.items()}
    return wall, outputs, {name: p.returncode for name, p in processes.items()}, memory


def _unobserved(
    commands: dict[str, list[str]], environment: dict[str, str] | None
) -> tuple[float, _Outputs, dict[str, int], dict[str, Any]]:
    """Both parties with nothing watching them: output to files, CPU and peak from wait4
    (a host reaps its enclave, so its figures include the enclave's)."""
    with contextlib.ExitStack() as stack:
        files = {
            name: (stack.enter_context(tempfile.TemporaryFile("w+")),
                   stack.enter_context(tempfile.TemporaryFile("w+")))
            for name in commands
        }  # fmt: skip
        start = time.perf_counter()
        processes = {
            name: subprocess.Popen(
                command, stdout=files[name][0], stderr=files[name][1], text=True, env=environment
            )
            for name, command in commands.items()
        }
        finished: dict[str, tuple[int, Any]] = {}
        for name, process in processes.items():
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            finished[name] = (process.returncode, usage)
        wall = time.perf_counter() - start
        outputs = {}
        for name, (out, err) in files.items():
            out.seek(0)
            err.seek(0)
            outputs[name] = (out.read(), err.read())
    memory = {
        name: {
            "largest_process_peak_rss_bytes": usage.ru_maxrss * 1024,
            "cpu_user_system_seconds": {
                "host+enclave": [round(usage.ru_utime, 2), round(usage.ru_stime, 2)]
            },
        }
        for name, (_, usage) in finished.items()
    }
    return wall, outputs, {name: code for name, (code, _) in finished.items()}, memory


def _check_identical(data: dict[str, Any], out: Path, parties: dict[str, Any]) -> bool:
    """Large mode: both aligned tables are byte for byte identical with the shared count.

    The features are a function of the ID, so identical tables mean every position pairs
    the same ID; each party's own IDs are distinct from the other's, so a row present in
    both tables is shared, and ``shared`` distinct rows are all of them.
    """
    digests = []
    for name in ("a", "b"):
        with open(out / f"{name}.aligned.csv", "rb") as handle:
            digests.append(hashlib.file_digest(handle, "sha256").hexdigest())
    return digests[0] == digests[1] and all(
        party["intersection"] == data["shared"] for party in parties.values()
    )


# :func:`_check` in a child process (see :func:`_check_in_child`): argv is the two inputs,
# this folder, the outputs' folder and the shared count.
_CHECK = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from alignment import _check
data = {"a": sys.argv[1], "b": sys.argv[2], "shared": int(sys.argv[5])}
print(json.dumps({"correct": _check(data, Path(sys.argv[4]))}))
"""


def _check_in_child(data: dict[str, Any], out: Path) -> bool:
    """:func:`_check` in a child process. Run here, pyarrow's allocator handed the freed
    tables back to the kernel while the next pair ran: the pair after a check took
    0.89 s instead of 0.77 s (1M, medians of 5)."""
    here = str(Path(__file__).resolve().parent)
    extra = (here, str(out), str(data["shared"]))
    return bool(run_script(_CHECK, data, 3600, *extra)["correct"])


def _check(data: dict[str, Any], out: Path) -> bool:
    """Both aligned tables hold the same IDs in the same order, exactly the shared ones."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    options = pcsv.ConvertOptions(column_types={"id": pa.string()})
    a = pcsv.read_csv(out / "a.aligned.csv", convert_options=options).column("id")
    b = pcsv.read_csv(out / "b.aligned.csv", convert_options=options).column("id")
    if len(a) != data["shared"] or not a.equals(b):
        return False
    source = pcsv.read_csv(data["a"], convert_options=options).column("id")
    other = pcsv.read_csv(data["b"], convert_options=options).column("id")
    import pyarrow.compute as pc

    shared = pc.is_in(source, value_set=other.combine_chunks())
    return bool(pc.sum(shared).as_py() == len(a)) and bool(
        pc.all(pc.is_in(a, value_set=source.combine_chunks())).as_py()
    )


_BASELINE = r"""
import json, resource, sys, time
import pyarrow as pa, pyarrow.csv as pcsv
options = pcsv.ConvertOptions(include_columns=["id"], column_types={"id": pa.string()})
a = pcsv.read_csv(sys.argv[1], convert_options=options).column("id").to_pylist()
b = pcsv.read_csv(sys.argv[2], convert_options=options).column("id").to_pylist()
start = time.perf_counter()
common = set(a) & set(b)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "intersection": len(common),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_PSI = r"""
import json, sys, time
import pyarrow as pa, pyarrow.csv as pcsv
import private_set_intersection.python as psi
options = pcsv.ConvertOptions(include_columns=["id"], column_types={"id": pa.string()})
a = pcsv.read_csv(sys.argv[1], convert_options=options).column("id").to_pylist()
b = pcsv.read_csv(sys.argv[2], convert_options=options).column("id").to_pylist()
start = time.perf_counter()
client = psi.client.CreateWithNewKey(True)
server = psi.server.CreateWithNewKey(True)
setup = server.CreateSetupMessage(1e-9, len(a), b, psi.DataStructure.RAW)
response = server.ProcessRequest(client.CreateRequest(a))
common = client.GetIntersection(setup, response)
print(json.dumps({"seconds": time.perf_counter() - start, "intersection": len(common),
                  "version": getattr(psi, "__version__", None)}))
"""


# The start-up floor: two "hosts" that each start an "enclave" (a Python process), load
# modules and exit, doing no work. ``accord``: each loads what `accord align` loads before
# it works (the host its command and party modules, the enclave its own module: every
# module of the run is then loaded; until 2026-12-04 the host here also loaded
# ``pyarrow.compute``, which a run does not load, ~30 ms more); ``libraries``: only the
# third-party modules each needs (host: numpy, pyarrow's CSV reader, asyncio; enclave:
# numpy, the AEAD and X25519/Ed25519 of cryptography; since 2026-12-04 the enclave loads
# pyarrow only for key columns that are not plain ASCII bytes, and the benchmark's are).
# Both with one BLAS thread, as the run.
_FLOOR_HOST = r"""
import os, subprocess, sys
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
enclave = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
if sys.argv[1] == "accord":
    import accord.cli, accord.commands.align, accord.commands.align_config
    import accord.commands.align_display, accord.tee.runtime.party, accord.tee.runtime.outputs
    import accord.tables, accord.csv_lines, accord.alignment.normalise
    import concurrent.futures.thread, pyarrow._compute
else:
    import numpy, pyarrow, pyarrow.csv, asyncio
enclave.wait()
"""
_FLOOR_ENCLAVE = {
    "accord": "import accord.tee.runtime.enclave",
    "libraries": "import numpy; import cryptography.hazmat.primitives.ciphers.aead, "
    "cryptography.hazmat.primitives.asymmetric.x25519, "
    "cryptography.hazmat.primitives.asymmetric.ed25519",
}


def startup_floor(kind: str) -> float:
    """Wall seconds of the start-up floor ``kind`` (see ``_FLOOR_HOST``): two hosts at once,
    each with its enclave, from launching both to both exiting."""
    start = time.perf_counter()
    hosts = [
        subprocess.Popen([sys.executable, "-c", _FLOOR_HOST, kind, _FLOOR_ENCLAVE[kind]])
        for _ in range(2)
    ]
    if any(host.wait() != 0 for host in hosts):
        raise RuntimeError(f"start-up floor {kind}: a process failed")
    return time.perf_counter() - start


def _floor_entry(floors: dict[str, list[float]], baseline: float) -> dict[str, Any]:
    """The start-up floors' medians (and ratios to the bare set), if timed."""
    if not floors:
        return {}
    medians = {kind: float(np.median(walls)) for kind, walls in floors.items()}
    return {
        "startup_floor": {
            "what": "two hosts each starting an enclave, loading modules, no work (--floor)",
            **{f"{kind}_imports_seconds": round(value, 3) for kind, value in medians.items()},
            **{
                f"{kind}_imports_ratio_to_set_intersection": round(value / baseline, 3)
                for kind, value in medians.items()
            },
        }
    }


def run_script(script: str, data: dict[str, Any], timeout: float, *extra: str) -> dict[str, Any]:
    """``script`` in a child process, given the two inputs (then ``extra``); its JSON."""
    process = subprocess.run(
        [sys.executable, "-c", script, str(data["a"]), str(data["b"]), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if process.returncode != 0:
        raise RuntimeError(process.stderr.strip().splitlines()[-1] if process.stderr else "failed")
    return dict(json.loads(process.stdout))


def psi_available() -> str | None:
    """None if OpenMined PSI can be imported here, else why not."""
    probe = subprocess.run(
        [sys.executable, "-c", "import private_set_intersection.python"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode == 0:
        return None
    return (
        "openmined-psi is not importable here (install: pip install --no-deps "
        "openmined-psi==2.0.6; it pins protobuf==6.30.2, which conflicts with the protobuf "
        "pin of constraints.txt): " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    )


def _versions() -> dict[str, str]:
    import cryptography
    import pyarrow

    import accord

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "cryptography": cryptography.__version__,
        "accord": accord.__version__,
    }


def _machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


def _identity(key: Path, policy: Path, environment: dict[str, str] | None = None) -> None:
    """Write a policy that trusts this installation's enclave (or the enclave of the code
    ``environment`` selects) and the benchmark's key."""
    identity = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "accord.cli",
                "align",
                "identity",
                "--platform-key",
                str(key),
                "--json",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=environment,
        ).stdout
    )
    policy.write_text(identity["policy"])


def compile_bytecode(environment: dict[str, str] | None = None) -> str:
    """Compile the bytecode of the ``accord`` package that ``environment`` imports (as an
    installation does); the package's folder."""
    import compileall

    folder = subprocess.run(
        [sys.executable, "-c", "import accord, os; print(os.path.dirname(accord.__file__))"],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout.strip()
    if not compileall.compile_dir(folder, quiet=1):
        raise RuntimeError(f"cannot compile the bytecode of {folder}")
    return folder


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the upper one of an even count)."""
    ordered = sorted(runs, key=lambda run: run[key])
    return ordered[len(ordered) // 2]


class _Compare:
    """Another checkout of Accord (``--compare-src DIR``, its ``src`` folder or the checkout)
    run on the same tables, each pair right after this code's: a ``git worktree add`` of an
    older commit, say, to tell what the machine costs from what the code costs."""

    def __init__(self, source: Path, workdir: Path, *, as_found: bool = False) -> None:
        source = source.resolve()
        if (source / "src" / "accord").is_dir():
            source = source / "src"
        if not (source / "accord").is_dir():
            raise SystemExit(f"--compare-src {source}: expected a folder holding accord/")
        self.source = source
        self.environment = {**os.environ, "PYTHONPATH": str(source)}
        self.key = workdir / "platform-key.pem"
        self.policy = workdir / "policy-compared.toml"
        self.bytecode = None if as_found else compile_bytecode(self.environment)
        _identity(self.key, self.policy, self.environment)
        self.commit = _commit(source)

    def run(self, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        return run_pair(
            data,
            folder / "compared",
            self.key,
            self.policy,
            environment=self.environment,
            observe=False,
        )

    def summary(self, runs: list[dict[str, Any]], baseline: float) -> dict[str, Any]:
        median = _median(runs, "wall_seconds")
        return {
            "source": str(self.source),
            "commit": self.commit,
            "bytecode_compiled": self.bytecode is not None,
            "wall_seconds": median["wall_seconds"],
            "wall_seconds_all": [run["wall_seconds"] for run in runs],
            "correct": all(run["correct"] for run in runs),
            "ratio_to_set_intersection": round(median["wall_seconds"] / baseline, 3),
            "stage_seconds": {
                name: party["stage_seconds"] for name, party in median["parties"].items()
            },
            "cpu_user_system_seconds": {
                name: party["cpu_user_system_seconds"] for name, party in median["parties"].items()
            },
        }


def _commit(folder: Path) -> str | None:
    """The git commit checked out at ``folder`` (``None`` outside a checkout)."""
    probe = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() or None


def _committed(path: Path | None) -> dict[int, dict[str, Any]]:
    """The committed results by size (``--committed``; none when the file is absent)."""
    if path is None or not path.is_file():
        return {}
    report = json.loads(path.read_text())
    machine = report.get("machine", {})
    return {
        int(entry["n_per_party"]): {**entry, "machine": machine, "command": report.get("command")}
        for entry in report.get("results", [])
        if "wall_seconds" in entry and "baseline_set_intersection" in entry
    }


def _against_committed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """This run's figures beside the committed ones for the same size, and their ratio."""
    comparison = {
        "wall_seconds": old["wall_seconds"],
        "set_intersection_seconds": round(old["baseline_set_intersection"]["seconds"], 3),
        "ratio_to_set_intersection": old["ratio_to_set_intersection"],
        "cpu_model": old["machine"].get("cpu_model"),
        "load_average_before": old.get("load_average_before"),
        "this_wall_over_committed": round(new["wall_seconds"] / old["wall_seconds"], 3),
        "this_ratio_over_committed": round(
            new["ratio_to_set_intersection"] / old["ratio_to_set_intersection"], 3
        ),
    }
    return comparison


def _say(entry: dict[str, Any]) -> None:
    """One readable line per size on stderr: this run, the code compared, the committed."""
    n = entry["n_per_party"]
    line = (
        f"{n:,} x {n:,}: {entry['wall_seconds']:.2f} s (median of "
        f"{len(entry['wall_seconds_all'])}), {entry['ratio_to_set_intersection']:.2f} x the bare "
        f"set ({entry['baseline_set_intersection']['seconds']:.2f} s); connect "
        f"{entry['connect_seconds_max']:.3f} s; load {entry['load_average_before'][0]:.1f}"
    )
    if "startup_floor" in entry:
        floor = entry["startup_floor"]
        line += (
            f" | start-up floor {floor['accord_imports_seconds']:.2f} s "
            f"({floor['libraries_imports_seconds']:.2f} s with the libraries alone)"
        )
    if "compared" in entry:
        other = entry["compared"]
        line += (
            f" | {other['commit'] or other['source']}: {other['wall_seconds']:.2f} s, "
            f"{other['ratio_to_set_intersection']:.2f} x"
        )
    if "committed" in entry:
        old = entry["committed"]
        line += (
            f" | committed: {old['wall_seconds']:.2f} s, {old['ratio_to_set_intersection']:.2f} x"
            f" on {old['cpu_model']}; this/committed: wall {old['this_wall_over_committed']:.2f},"
            f" ratio {old['this_ratio_over_committed']:.2f}"
        )
    print(line, file=sys.stderr)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--psi-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--id-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        nargs="+",
        default=[1],
        help="timed runs per size, the median kept: one count for every size, or one per "
        "--sizes entry (e.g. --sizes 1000000 10000000 --repeat 5 3)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "accord-bench-alignment"
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="also run every size bucketed with this --memory-limit (e.g. 2GiB); large mode "
        "uses it (default there: 2GiB)",
    )
    parser.add_argument(
        "--large",
        type=int,
        nargs="*",
        default=[],
        help="large mode: sizes run bucketed only, inputs generated to disk beforehand",
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="no set(a) & set(b) baseline (large sizes)"
    )
    parser.add_argument(
        "--cgroup",
        action="store_true",
        help="large mode: run each party in a memory cgroup capped at --memory-limit, page "
        "cache included (Linux, as root): the limit enforced by the kernel, not only sampled",
    )
    parser.add_argument(
        "--compare-src",
        type=Path,
        default=None,
        help="also run another checkout's code (its folder or its src/) on the same tables, "
        "each time right after this code's (e.g. git worktree add /tmp/old COMMIT)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the start-up floor with each run: the four processes starting and "
        "loading their modules, doing no work (Accord's modules, and the libraries alone)",
    )
    parser.add_argument(
        "--as-found",
        action="store_true",
        help="do not compile the bytecode of the code under test first (see above)",
    )
    parser.add_argument(
        "--committed",
        type=Path,
        default=Path(__file__).resolve().parent / "results_alignment.json",
        help="committed results to print beside this run's, with the ratios "
        "[benchmarks/results_alignment.json]",
    )
    args = parser.parse_args()
    if len(args.repeat) not in (1, len(args.sizes or [0])):
        parser.error(f"--repeat: expected 1 count or {len(args.sizes)}, got {len(args.repeat)}")
    return args


class _Setup:
    """What every size's in-memory runs share: the key, the policies, the PSI status."""

    def __init__(self, args: argparse.Namespace) -> None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.key, self.policy = args.workdir / "platform-key.pem", args.workdir / "policy.toml"
        self.bytecode = None if args.as_found else compile_bytecode()
        _identity(self.key, self.policy)
        self.compare = (
            None
            if args.compare_src is None
            else _Compare(args.compare_src, args.workdir, as_found=args.as_found)
        )
        self.committed = _committed(args.committed)
        self.psi_status = psi_available()


def _in_memory(n: int, setup: _Setup) -> dict[str, Any]:
    """Every run of one size in memory (and bucketed with --memory-limit), one entry."""
    args, key, policy, compare = setup.args, setup.key, setup.policy, setup.compare
    folder = args.workdir / f"n{n}-o{args.overlap}-l{args.id_length}-s{args.seed}"
    data = generate(folder, n, args.overlap, args.id_length, args.seed)
    load_before = os.getloadavg()
    # Interleaved, so that a change in the machine's load touches each the same way:
    # the bare set, this code, and the code compared with (if any), in turn.
    runs, baselines, compared = [], [], []
    floors: dict[str, list[float]] = {kind: [] for kind in _FLOOR_ENCLAVE if args.floor}
    repeat = args.repeat[0] if len(args.repeat) == 1 else args.repeat[args.sizes.index(n)]
    for _ in range(repeat):
        baselines.append(run_script(_BASELINE, data, timeout=3600))
        runs.append(run_pair(data, folder, key, policy, observe=False))
        if compare is not None:
            compared.append(compare.run(data, folder))
        for kind, walls in floors.items():
            walls.append(startup_floor(kind))
    median = _median(runs, "wall_seconds")
    # Memory from one more run, sampled (not timed: the sampler costs the parties CPU).
    observed = run_pair(data, folder, key, policy)
    bucketed = None
    if args.memory_limit is not None:
        extra = ["--memory-limit", args.memory_limit]
        bucketed_runs = [run_pair(data, folder, key, policy, extra) for _ in range(repeat)]
        bucketed = _median(bucketed_runs, "wall_seconds")
        bucketed["memory_limit"] = args.memory_limit
        bucketed["max_party_peak_rss_bytes"] = max(
            party["combined_peak_rss_bytes"] for party in bucketed["parties"].values()
        )
    baseline = dict(_median(baselines, "seconds"))
    baseline["seconds_all"] = [round(run["seconds"], 3) for run in baselines]
    entry: dict[str, Any] = {
        "n_per_party": n,
        "shared": data["shared"],
        "wall_seconds": median["wall_seconds"],
        "wall_seconds_all": [run["wall_seconds"] for run in runs],
        "correct": all(run["correct"] for run in runs),
        "connect_seconds_max": max(
            party["stage_seconds"].get("connect", 0.0) for party in median["parties"].values()
        ),
        "connect_seconds_max_all": [
            max(party["stage_seconds"].get("connect", 0.0) for party in run["parties"].values())
            for run in runs
        ],
        "parties": median["parties"],
        "observed_run": {
            "what": "one more run, each party's processes sampled every 10 ms (memory)",
            "wall_seconds": observed["wall_seconds"],
            "parties": {
                name: {key: value for key, value in party.items() if key.endswith("_bytes")}
                for name, party in observed["parties"].items()
            },
        },
        "max_party_peak_rss_bytes": max(
            party["combined_peak_rss_bytes"] for party in observed["parties"].values()
        ),
        "baseline_set_intersection": baseline,
        "ratio_to_set_intersection": round(median["wall_seconds"] / baseline["seconds"], 3),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }
    entry.update(_floor_entry(floors, baseline["seconds"]))
    if compare is not None:
        entry["compared"] = compare.summary(compared, baseline["seconds"])
    if n in setup.committed:
        entry["committed"] = _against_committed(setup.committed[n], entry)
    if bucketed is not None:
        entry["bucketed"] = bucketed
    if n in (args.psi_sizes or []):
        if setup.psi_status is None:
            try:
                entry["openmined_psi"] = run_script(_PSI, data, timeout=7200)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                entry["openmined_psi"] = {"status": f"failed: {error}"}
        else:
            entry["openmined_psi"] = {"status": setup.psi_status}
    return entry


def main() -> None:
    args = _arguments()
    setup = _Setup(args)
    results = []
    for n in args.sizes:
        entry = _in_memory(n, setup)
        results.append(entry)
        _say(entry)
    for n in args.large:
        limit = args.memory_limit or "2GiB"
        folder = args.workdir / f"large-n{n}-o{args.overlap}-s{args.seed}"
        data = generate_large(folder, n, args.overlap, args.seed)
        from accord.tee.runtime.bucketed_host import parse_size

        run = run_pair(
            data,
            folder,
            setup.key,
            setup.policy,
            ["--memory-limit", limit],
            check=False,
            cgroup_limit=parse_size(limit) if args.cgroup else None,
        )
        large: dict[str, Any] = {
            "mode": "large (bucketed, generated to disk beforehand, not timed)",
            "n_per_party": n,
            "shared": data["shared"],
            "input_bytes_per_party": data["input_bytes"],
            "generate_seconds": data["generate_seconds"],
            "memory_limit": limit,
            "enforced_by_cgroup": bool(args.cgroup),
            "max_party_peak_rss_bytes": max(
                party["combined_peak_rss_bytes"] for party in run["parties"].values()
            ),
            "max_party_peak_anon_rss_bytes": max(
                party["combined_peak_anon_rss_bytes"] for party in run["parties"].values()
            ),
            **run,
        }
        if not args.skip_baseline:
            large["baseline_set_intersection"] = run_script(_BASELINE, data, timeout=7200)
        results.append(large)
        print(json.dumps(large), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "alignment (two parties, hosts and enclaves as processes, TCP)",
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                "commit": _commit(Path(__file__).resolve().parent),
                "seed": args.seed,
                "bytecode_compiled_first": not args.as_found,
                "overlap": args.overlap,
                "id_length": args.id_length,
                "machine": _machine(),
                "versions": _versions(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
