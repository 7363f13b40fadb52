"""``accord vertical demo``: the whole vertical path on 127.0.0.1, on a real dataset.

Breast cancer (569 patients, 30 columns) split by columns: the label party ``clinic``
keeps a third of the columns and the diagnosis, the feature party ``lab`` the rest. Each
keeps a random share of the patients in its own order, so they overlap only in part.
``accord align`` aligns them (each party's host and enclave as processes, attested,
encrypted), ``accord certs --names`` issues their credentials, and ``accord vertical
label`` / ``feature`` train over 127.0.0.1 with mutual TLS. The demo prints the test AUC
beside the label party alone and centralised training of the same network on the joined
table, and checks that split learning equals the centralised run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_demo_parser", "run_demo"]

LABEL, FEATURE = "clinic", "lab"
#: The demo's settings, as `accord vertical` flags (both parties give the same).
SETTINGS_FLAGS = [
    "--bottom", "mlp", "--bottom-hidden", "16", "--embedding-dim", "8",
    "--top", "concat", "--top-hidden", "8", "--batch-size", "32",
    "--learning-rate", "0.005", "--patience", "5",
    "--validation-fraction", "0.15", "--test-fraction", "0.25",
]  # fmt: skip


def add_demo_parser(commands: Any) -> None:
    demo: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="breast cancer split by columns, aligned with `accord align`, trained on 127.0.0.1",
        description="Split the breast-cancer dataset by columns between a label party "
        f"({LABEL}: a third of the columns and the diagnosis) and a feature party ({FEATURE}), "
        "each holding part of the patients in its own order; align them with `accord align`, "
        "train over 127.0.0.1 with mutual TLS, and print the test AUC beside the label party "
        "alone and centralised training of the same network.",
    )
    demo.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep the files")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split and the run [0]")
    demo.add_argument("--epochs", type=int, default=40, help="at most this many epochs [40]")
    demo.add_argument(
        "--share", type=float, default=0.85, help="share of the patients each party holds [0.85]"
    )
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from accord.errors import ConfigurationError

    if not 0.2 <= args.share <= 1.0:
        raise ConfigurationError(f"--share: expected 0.2 to 1, got {args.share}")
    if args.epochs < 1 or args.seed < 0:
        raise ConfigurationError("--epochs, --seed: expected epochs >= 1 and seed >= 0")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return _run_in(args, args.keep)
    folder = Path(tempfile.mkdtemp(prefix="accord-vertical-demo-"))
    try:
        return _run_in(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        sys.stderr.write(f"demo: removed its temporary folder {folder} (keep it with --keep)\n")


def _write_tables(folder: Path, seed: int, share: float) -> tuple[int, int, int]:
    """Each party's table (``id`` + its columns) with its share of the patients, in its
    own order; (patients, label party's columns, feature party's columns)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    features, labels = data.data, data.target
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    rows, columns = features.shape
    own = columns // 3
    rng = np.random.default_rng([seed, 0x56455254])
    ids = np.array([f"patient-{i:04d}" for i in range(rows)], dtype=object)
    for party, chosen, with_label in (
        (LABEL, range(own), True),
        (FEATURE, range(own, columns), False),
    ):
        keep = rng.permutation(rows)[: round(share * rows)]
        table = {"id": pa.array(ids[keep], type=pa.string())}
        for column in chosen:
            table[names[column]] = pa.array(features[keep, column])
        if with_label:
            table["diagnosis"] = pa.array(labels[keep].astype(np.int64))
        pcsv.write_csv(pa.table(table), folder / f"{party}.csv")
    return rows, own, columns - own


def _run_in(args: argparse.Namespace, folder: Path) -> int:
    import datetime as dt
    import json

    from accord.commands.align_tools import demo_policy, run_align_parties
    from accord.credentials.issue import make_credentials

    patients, own, other = _write_tables(folder, args.seed, args.share)
    sys.stdout.write(
        f"breast cancer, {patients} patients: {LABEL} holds {own} columns and the diagnosis,"
        f" {FEATURE} {other} columns; each holds {args.share:.0%} of the patients, in its own"
        " order\n"
    )
    policy_path, key_path = demo_policy(folder)
    codes = run_align_parties(folder, [LABEL, FEATURE], policy_path, key_path, [])
    if any(codes):
        sys.stderr.write(f"demo: `accord align` failed (exit codes {codes}); see above\n")
        return 1
    summary = json.loads((folder / f"{LABEL}.summary.json").read_text())
    sys.stdout.write(
        f"aligned with `accord align`: {summary['intersection']} shared patients"
        f" (alignment fingerprint {summary['fingerprint'][:16]}…)\n"
    )
    make_credentials(
        folder / "creds", [LABEL, FEATURE], now=dt.datetime.now(dt.UTC), what="party name"
    )
    flags = [*SETTINGS_FLAGS, "--seed", str(args.seed), "--epochs", str(args.epochs)]
    codes = _train(folder, flags)
    if any(codes):
        sys.stderr.write(f"demo: a party failed (exit codes {codes}); see above\n")
        return 1
    return _report(folder, args)


def _train(folder: Path, flags: list[str]) -> list[int]:
    """Run the label and the feature party as processes; their exit codes."""
    import time

    from accord.commands.align_tools import ForwardedProcesses
    from accord.errors import AccordError
    from accord.vertical.run_files import ENDPOINT_FILE, read_endpoint

    def party(role: str, name: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "accord.cli", "--quiet", "vertical", role,
            "--table", str(folder / f"{name}.aligned.csv"),
            "--alignment", str(folder / f"{name}.summary.json"),
            "--ignore-columns", "id", *flags, *extra,
        ]  # fmt: skip

    run_dir = folder / "run"
    with ForwardedProcesses() as processes:
        label = processes.start(
            LABEL,
            party(
                "label", LABEL, "--label-column", "diagnosis", "--listen", "127.0.0.1:0",
                "--credentials", str(folder / "creds"), "--run-dir", str(run_dir),
            ),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (run_dir / ENDPOINT_FILE).exists():
            if label.poll() is not None or time.monotonic() > deadline:
                raise AccordError("demo: the label party did not start listening")
            time.sleep(0.05)
        port = read_endpoint(run_dir)["port"]
        processes.start(
            FEATURE,
            party(
                "feature", FEATURE, "--connect", f"127.0.0.1:{port}",
                "--credentials", str(folder / "creds" / FEATURE),
            ),
        )  # fmt: skip
        return processes.wait()


def _report(folder: Path, args: argparse.Namespace) -> int:
    """Print the split run's test AUC beside the two baselines; 0 if the checks pass."""
    import json

    from accord.settings_mapping import settings_from_mapping
    from accord.vertical.centralised import train_centralised
    from accord.vertical.inputs import read_party_table
    from accord.vertical.settings import VerticalSettings

    path = folder / "run" / "summary.json"
    summary = json.loads(path.read_text())
    # The baselines train with the settings the parties trained with.
    settings = settings_from_mapping(VerticalSettings, summary["settings"], source=str(path))
    label = read_party_table(
        folder / f"{LABEL}.aligned.csv", LABEL, label_column="diagnosis", ignore=["id"]
    )
    feature = read_party_table(folder / f"{FEATURE}.aligned.csv", FEATURE, ignore=["id"])
    central = train_centralised(label, [feature], settings).test
    alone = train_centralised(label, [], settings).test
    split = summary["test"]
    assert central is not None and alone is not None
    rows = split["rows"]
    width = 58
    sys.stdout.write(
        f"test AUC on the same {rows} test patients (best epoch {summary['best_epoch']} of"
        f" {summary['epochs_run']}):\n"
        f"  {'split learning (' + LABEL + ' + ' + FEATURE + ', 127.0.0.1, mutual TLS)':<{width}}"
        f" {split['auc']:.4f}\n"
        f"  {'centralised (same network, joined table)':<{width}} {central.auc:.4f}\n"
        f"  {LABEL + ' alone (its columns only)':<{width}} {alone.auc:.4f}\n"
    )
    same = central.auc is not None and abs(split["auc"] - central.auc) < 1e-4
    sys.stdout.write(
        f"checks:\n  [{'ok' if same else 'FAILED'}] split learning equals centralised training"
        " of the same network\n"
    )
    if args.keep is not None:
        sys.stdout.write(f"files kept in {folder} (the label party's run folder: run/)\n")
    return 0 if same else 1
