"""``accord align identity`` and ``accord align demo``.

``identity`` starts this installation's enclave and prints its measurement, the
fingerprint of the platform key that signs its quotes, and a policy a peer can use to trust
it. ``demo`` generates the parties' tables with a known overlap, runs every party (hosts and
enclaves as separate processes) on 127.0.0.1, and checks what each received.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from accord.commands.align_config import bucket_count, memory_limit

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from accord.tee.core.backend import EnclaveIdentity

__all__ = [
    "demo_policy",
    "enclave_identity",
    "run_align_parties",
    "run_demo",
    "run_identity",
]


async def enclave_identity(platform_key: Path | None) -> EnclaveIdentity:
    """Start an enclave process, read its identity, stop it."""
    from accord.tee.runtime.host import EnclaveProcess

    enclave = EnclaveProcess.spawn(platform_key=platform_key)
    identity = await enclave.ready()
    await enclave.close()
    return identity


def _platform_keys(identity: EnclaveIdentity) -> frozenset[str]:
    """The platform key a policy must trust for this enclave (none for a backend without)."""
    return frozenset() if identity.platform_key is None else frozenset({identity.platform_key})


def run_identity(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from dataclasses import asdict

    from accord.tee.core.attestation import AttestationPolicy, policy_toml
    from accord.tee.runtime.platform_key import default_platform_key_path

    identity = asyncio.run(enclave_identity(args.platform_key))
    key_path = args.platform_key or default_platform_key_path()
    policy = policy_toml(
        AttestationPolicy(
            allowed_measurements=frozenset({identity.measurement}),
            trusted_platform_keys=_platform_keys(identity),
            min_security_version=identity.security_version,
            allow_debug=False,
            allow_simulated=identity.backend == "simulated",
        )
    )
    if args.json:
        document = {**asdict(identity), "platform_key_path": str(key_path), "policy": policy}
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return 0
    sys.stdout.write(
        f"backend:          {identity.backend}\n"
        f"measurement:      {identity.measurement}\n"
        f"security version: {identity.security_version}\n"
        f"platform key:     {identity.platform_key}  ({key_path})\n"
        "\n# A policy that trusts this installation. Give it to your peers; to trust theirs,\n"
        "# add their measurement and platform key to your own policy.\n"
        f"{policy}"
        + (
            "\n# To bind a party name to this installation (peers then refuse any other\n"
            "# enclave that claims it), add to each policy, with the name you run as:\n"
            f'# [parties.<your --party-name>]\n# platform_keys = ["{identity.platform_key}"]\n'
            if identity.platform_key is not None
            else ""
        )
    )
    return 0


_DEMO_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def demo_tables(folder: Path, names: list[str], rows: int, overlap: float, seed: int) -> set[str]:
    """Write one CSV per party (id + two features); return the IDs common to all."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    shared = round(rows * overlap)
    total = shared + len(names) * (rows - shared)
    alphabet = np.frombuffer(_ALPHABET, dtype=np.uint8)
    chunks = []
    with tqdm(total=total, desc="generate IDs", unit=" IDs", unit_scale=True, disable=None) as bar:
        for start in range(0, total, 1 << 20):
            count = min(1 << 20, total - start)
            letters = alphabet[rng.integers(0, len(alphabet), size=(count, 32), dtype=np.uint8)]
            chunks.append(np.ascontiguousarray(letters).view("S32").ravel())
            bar.update(count)
    ids = np.concatenate(chunks)
    common = ids[:shared]
    for index, name in enumerate(tqdm(names, desc="write tables", disable=None)):
        own = ids[shared + index * (rows - shared) : shared + (index + 1) * (rows - shared)]
        party_ids = np.concatenate([common, own])[rng.permutation(rows)]
        table = pa.table(
            {
                "id": pa.array(party_ids.astype(object), type=pa.binary()).cast(pa.string()),
                f"{name}_score": pa.array(rng.normal(size=rows).round(4)),
                f"{name}_count": pa.array(rng.integers(0, 100, size=rows)),
            }
        )
        pcsv.write_csv(table, folder / f"{name}.csv")
    return {value.decode() for value in common.tolist()}


def run_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from accord.errors import ConfigurationError

    if not 2 <= args.parties <= len(_DEMO_NAMES):
        raise ConfigurationError(f"--parties: expected 2 to {len(_DEMO_NAMES)}, got {args.parties}")
    if args.rows < 1:
        raise ConfigurationError(f"--rows: expected at least 1, got {args.rows}")
    if not 0.0 <= args.overlap <= 1.0:
        raise ConfigurationError(f"--overlap: expected 0 to 1, got {args.overlap}")
    bucketing: list[str] = []
    if args.memory_limit is not None:
        bucketing += ["--memory-limit", str(memory_limit(args.memory_limit))]
    if args.buckets is not None:
        bucketing += ["--buckets", str(bucket_count(args.buckets))]
    names = list(_DEMO_NAMES[: args.parties])
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _run_demo_in(args, args.keep, names, bucketing)
    folder = Path(tempfile.mkdtemp(prefix="accord-align-demo-"))
    try:
        return _run_demo_in(args, folder, names, bucketing)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        sys.stderr.write(
            f"demo: removed its temporary folder {folder} (keep the files with --keep DIR)\n"
        )


def demo_policy(folder: Path) -> tuple[Path, Path]:
    """A platform key and a policy that trusts this installation's enclave, in ``folder``:
    ``(policy path, platform key path)``."""
    import asyncio

    from accord.tee.core.attestation import AttestationPolicy, policy_toml

    key_path = folder / "platform-key.pem"
    identity = asyncio.run(enclave_identity(key_path))
    policy_path = folder / "policy.toml"
    policy_path.write_text(
        policy_toml(
            AttestationPolicy(
                allowed_measurements=frozenset({identity.measurement}),
                trusted_platform_keys=_platform_keys(identity),
                allow_simulated=True,
            )
        )
    )
    return policy_path, key_path


def _align_command(
    folder: Path,
    name: str,
    parties: int,
    trust: tuple[Path, Path],
    bucketing: list[str],
    peers: list[str],
    listen: bool,
) -> list[str]:
    """One party's ``accord align`` command line (see :func:`run_align_parties`)."""
    policy_path, key_path = trust
    command = [
        sys.executable, "-m", "accord.cli", "--quiet", "align",
        "--input", str(folder / f"{name}.csv"), "--key", "id",
        "--party-name", name, "--parties", str(parties),
        "--policy", str(policy_path), "--platform-key", str(key_path),
        "--output-map", str(folder / f"{name}.map.csv"),
        "--output-table", str(folder / f"{name}.aligned.csv"),
        "--summary", str(folder / f"{name}.summary.json"),
        "--progress", "log", "--connect-timeout", "60",
    ]  # fmt: skip
    if bucketing:
        command += [*bucketing, "--run-dir", str(folder / f"run-{name}")]
    for address in peers:
        command += ["--peer", address]
    if listen:
        command += ["--listen", "127.0.0.1:0"]
    return command


class ForwardedProcesses:
    """A demo's party processes: each one's stderr forwarded line by line with its name
    (``on_line`` sees each line first, then ``None`` at the end); any still running on
    leaving is killed."""

    def __init__(self) -> None:
        import threading

        self.processes: list[subprocess.Popen[str]] = []
        self.threads: list[threading.Thread] = []

    def start(
        self, name: str, command: list[str], on_line: Callable[[str | None], None] | None = None
    ) -> subprocess.Popen[str]:
        import subprocess
        import threading

        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.processes.append(process)

        def forward() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                if on_line is not None:
                    on_line(line.rstrip())
                sys.stderr.write(f"[{name}] {line}")
            if on_line is not None:
                on_line(None)  # the end: a waiting caller stops waiting

        thread = threading.Thread(target=forward, daemon=True)
        thread.start()
        self.threads.append(thread)
        return process

    def wait(self) -> list[int]:
        """Every process's exit code, once all have ended."""
        codes = [process.wait() for process in self.processes]
        for thread in self.threads:
            thread.join(5)
        return codes

    def __enter__(self) -> ForwardedProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_align_parties(
    folder: Path, names: list[str], policy_path: Path, key_path: Path, bucketing: list[str]
) -> list[int]:
    """Run ``accord align`` for every party on 127.0.0.1, each a process (its enclave
    another): ``folder/<name>.csv`` keyed by ``id`` in; ``<name>.map.csv``,
    ``<name>.aligned.csv`` and ``<name>.summary.json`` out. Each party's stderr is
    forwarded with its name; the exit codes."""
    import re
    import threading

    from accord.errors import AccordError

    listening = re.compile(r"listening on (\S+)$")
    addresses: list[str] = []
    with ForwardedProcesses() as processes:
        for index, name in enumerate(names):
            last = index == len(names) - 1
            command = _align_command(
                folder, name, len(names), (policy_path, key_path), bucketing, addresses, not last
            )
            ready = threading.Event()

            def on_line(line: str | None, ready: threading.Event = ready) -> None:
                match = None if line is None else listening.search(line)
                if match and not ready.is_set():
                    addresses.append(match.group(1))
                if match or line is None:
                    ready.set()

            processes.start(name, command, on_line)
            if not last:
                ready.wait(120)
                if len(addresses) != index + 1:
                    raise AccordError(f"demo: party {name!r} did not start listening")
        return processes.wait()


def _run_demo_in(
    args: argparse.Namespace, folder: Path, names: list[str], bucketing: list[str]
) -> int:
    import json

    import pyarrow.csv as pcsv

    if args.keep is not None:
        sys.stderr.write(f"demo: writing into {folder} (kept)\n")
    expected = demo_tables(folder, names, args.rows, args.overlap, args.seed)
    policy_path, key_path = demo_policy(folder)
    codes = run_align_parties(folder, names, policy_path, key_path, bucketing)
    if any(codes):
        sys.stderr.write(f"demo: a party failed (exit codes {codes}); see its lines above\n")
        return 1

    aligned = {}
    fingerprints = {}
    for name in names:
        summary = json.loads((folder / f"{name}.summary.json").read_text())
        fingerprints[name] = summary["fingerprint"]
        table = pcsv.read_csv(folder / f"{name}.aligned.csv")
        aligned[name] = table.column("id").to_pylist()
        peers = ", ".join(
            f"{peer}: {'hidden' if size is None else size}"
            for peer, size in summary["peer_ids"].items()
        )
        buckets = summary.get("buckets")
        sys.stdout.write(
            f"\n{name} received: |own IDs| = {summary['own_ids']}, peers' IDs: {peers}, "
            f"|I| = {summary['intersection']}" + (f" ({buckets} buckets)" if buckets else "") + "\n"
            f"  peer enclaves attested: {', '.join(sorted(summary['peer_enclaves']))}\n"
            f"  alignment fingerprint: {summary['fingerprint']}\n"
            + (
                f"  row map {folder / f'{name}.map.csv'}, aligned table "
                f"{folder / f'{name}.aligned.csv'}; first rows:\n"
                if args.keep is not None
                else "  aligned table, first rows:\n"
            )
        )
        for row in table.slice(0, 3).to_pylist():
            sys.stdout.write(f"    {row}\n")
    first = aligned[names[0]]
    checks = {
        "every party holds the same alignment fingerprint": len(set(fingerprints.values())) == 1
        and None not in fingerprints.values(),
        "every party's aligned table lines up position by position": all(
            ids == first for ids in aligned.values()
        ),
        f"the shared IDs are exactly the {len(expected)} generated in common": set(first)
        == expected
        and len(first) == len(expected),
        "the shared order is not sorted order": len(first) < 3 or first != sorted(first),
    }
    sys.stdout.write("\nchecks:\n")
    for label, passed in checks.items():
        sys.stdout.write(f"  [{'ok' if passed else 'FAILED'}] {label}\n")
    if args.keep is not None:
        sys.stdout.write(f"\nfiles kept in {folder}\n")
    return 0 if all(checks.values()) else 1
