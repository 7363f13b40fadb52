"""End-to-end TEE alignment: two parties as real processes over TCP, against a bare set.

For each size ``n``: two CSV tables ``id,f1,f2`` of ``n`` rows each, 32-character IDs, 50 %
overlap, rows shuffled, generated to disk beforehand (not timed). Then, timed: both parties
run ``accord align`` at once on 127.0.0.1 (each a host process that starts its own enclave
process), CSV in → row map and aligned CSV out. Wall time is from launching both parties to
both exiting; each party's peak RSS is its host and enclave processes together, sampled
every 10 ms (``combined_peak``), with each process's own high-water mark (``VmHWM``).

In the same run, the baseline: ``set(a) & set(b)`` over Python lists of the same IDs already
in memory (a child process loads them untimed, then times the intersection). At the sizes
given by ``--psi-sizes`` (default 1M) also OpenMined PSI (``openmined-psi``, client and
server in one process, the protocol steps timed) as the cryptographic anchor — when it is
importable (see the README: it pins an older protobuf, so it is installed with --no-deps).

Prints one JSON object. Usage::

    python3 benchmarks/alignment.py                       # 1M x 1M (+ OpenMined PSI)
    python3 benchmarks/alignment.py --sizes 1000000 10000000 --repeat 3
"""

from __future__ import annotations

import argparse
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


# ----------------------------------------------------------------------------- measuring


class TreeSampler:
    """Samples the RSS of a process and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self.combined_peak = 0
        self.high_water: dict[int, int] = {}
        self.cpu: dict[int, tuple[float, float]] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                    times = process.cpu_times()
                    self.cpu[process.pid] = (times.user, times.system)
                    self.high_water[process.pid] = max(
                        self.high_water.get(process.pid, 0), _vm_hwm(process.pid)
                    )
                    if process.pid not in self.names:
                        self.names[process.pid] = (
                            "host" if process.pid == self._root.pid else "enclave"
                        )
                except (psutil.Error, OSError):
                    continue
            self.combined_peak = max(self.combined_peak, total)
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
            "host_peak_rss_bytes": by_role.get("host"),
            "enclave_peak_rss_bytes": by_role.get("enclave"),
            "sum_of_process_peaks_bytes": sum(by_role.values()),
            "cpu_user_system_seconds": cpu,
        }


def _vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_pair(data: dict[str, Any], work: Path, key: Path, policy: Path) -> dict[str, Any]:
    """Both parties at once; wall time, per-party memory, stage times, correctness."""
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
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
    start = time.perf_counter()
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    samplers = {name: TreeSampler(process.pid) for name, process in processes.items()}
    outputs = {name: process.communicate() for name, process in processes.items()}
    wall = time.perf_counter() - start
    memory = {name: sampler.stop() for name, sampler in samplers.items()}
    parties: dict[str, Any] = {}
    for name, process in processes.items():
        stdout, stderr = outputs[name]
        if process.returncode != 0:
            raise RuntimeError(f"party {name} failed ({process.returncode}):\n{stderr}")
        summary = json.loads(stdout)
        parties[name] = {
            **memory[name],
            "intersection": summary["intersection"],
            "stage_seconds": summary["seconds"],
        }
    return {"wall_seconds": round(wall, 3), "parties": parties, "correct": _check(data, out)}


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


def run_script(script: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
    process = subprocess.run(
        [sys.executable, "-c", script, data["a"], data["b"]],
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
        "openmined-psi==2.0.6; it pins protobuf==6.30.2, which conflicts with the protobuf>=7 "
        "Accord's gRPC code needs): " + (probe.stderr.strip().splitlines() or ["?"])[-1]
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
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if "model name" in line), ""
            )
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "platform": platform.platform(),
    }


def _identity(key: Path, policy: Path) -> None:
    """Write a policy that trusts this installation's enclave and the benchmark's key."""
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
        ).stdout
    )
    policy.write_text(identity["policy"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--psi-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--id-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per size (median kept)")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "accord-bench-alignment"
    )
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    key, policy = args.workdir / "platform-key.pem", args.workdir / "policy.toml"
    _identity(key, policy)
    psi_status = psi_available()
    results = []
    for n in args.sizes:
        folder = args.workdir / f"n{n}-o{args.overlap}-l{args.id_length}-s{args.seed}"
        data = generate(folder, n, args.overlap, args.id_length, args.seed)
        runs = [run_pair(data, folder, key, policy) for _ in range(args.repeat)]
        runs.sort(key=lambda run: run["wall_seconds"])
        median = runs[len(runs) // 2]
        baseline = run_script(_BASELINE, data, timeout=3600)
        entry: dict[str, Any] = {
            "n_per_party": n,
            "shared": data["shared"],
            "wall_seconds": median["wall_seconds"],
            "wall_seconds_all": [run["wall_seconds"] for run in runs],
            "correct": all(run["correct"] for run in runs),
            "parties": median["parties"],
            "max_party_peak_rss_bytes": max(
                party["combined_peak_rss_bytes"] for party in median["parties"].values()
            ),
            "baseline_set_intersection": baseline,
            "ratio_to_set_intersection": round(median["wall_seconds"] / baseline["seconds"], 3),
        }
        if n in (args.psi_sizes or []):
            if psi_status is None:
                try:
                    entry["openmined_psi"] = run_script(_PSI, data, timeout=7200)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    entry["openmined_psi"] = {"status": f"failed: {error}"}
            else:
                entry["openmined_psi"] = {"status": psi_status}
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "alignment (two parties, hosts and enclaves as processes, TCP)",
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                "seed": args.seed,
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
