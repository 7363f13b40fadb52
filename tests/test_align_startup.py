"""What ``accord align`` loads before it starts its enclave, and what the enclave loads.

A 1M-row run is mostly start-up on a 2-core machine (four Python processes), so these pin
the start-up work that was cut: the host starts its enclave before it loads asyncio, numpy,
pyarrow or the crypto; neither process starts BLAS threads; ASCII IDs never load
``pyarrow.compute``. Each check runs in a fresh interpreter, as the commands do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from accord.tee.core.allocator import THREAD_VARIABLES, single_threaded_blas


def _loaded(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    probe = (
        code
        + "\nimport json, sys\n"
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        + "{'asyncio', 'cryptography', 'numpy', 'pyarrow'}) + sorted({'pyarrow.compute', "
        + "'numpy.ma'} & set(sys.modules))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(done.stdout))


def test_the_host_launches_its_enclave_before_loading_anything_heavy() -> None:
    loaded = _loaded(
        "from accord.cli import build_parser\n"
        "from accord.commands.align_config import settings_from_args\n"
        "argv = ['align', '--input', 'a.csv', '--key', 'id', '--policy', 'p.toml',"
        " '--listen', '127.0.0.1:0']\n"
        "settings = settings_from_args(build_parser(argv).parse_args(argv))\n"
        "from accord.tee.runtime.launch import launch_enclave, tune_host_memory\n"
        "import accord.tee\n"
    )
    assert loaded == []


def test_ascii_ids_are_normalised_and_digested_without_pyarrow_compute() -> None:
    loaded = _loaded(
        "import pyarrow as pa\n"
        "import accord.tee.runtime.enclave\n"
        "from accord.alignment import check_words, keyed_digests, prepare_ids\n"
        "ids = prepare_ids([pa.array([b'a1', b'b2 x', b'c3'])])\n"
        "assert ids.keys.to_pylist() == [b'a1', b'b2 x', b'c3']\n"
        "keyed_digests(ids.keys, bytes(32)); check_words(ids.keys, 1)\n"
    )
    assert "pyarrow.compute" not in loaded
    # Non-ASCII IDs need it (NFC), and get it.
    assert "pyarrow.compute" in _loaded(
        "import pyarrow as pa\n"
        "from accord.alignment import prepare_ids\n"
        "assert prepare_ids([pa.array(['e\\u0301'])]).keys.to_pylist() == ['\\u00e9'.encode()]\n"
    )


def test_blas_threads_are_one_unless_the_user_chose() -> None:
    environment = {"OPENBLAS_NUM_THREADS": "3"}
    single_threaded_blas(environment)
    assert environment == {
        "OPENBLAS_NUM_THREADS": "3",
        **{name: "1" for name in THREAD_VARIABLES if name != "OPENBLAS_NUM_THREADS"},
    }
    without = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    threads = _tuned_host(
        "import numpy\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))",
        without,
    ).split()
    assert threads == ["1", "1"]


def _tuned_host(code: str, environment: dict[str, str]) -> str:
    """What ``code`` prints in a fresh interpreter after the host's tune_host_memory()."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import os\nfrom accord.tee.runtime.launch import tune_host_memory\n"
            "tune_host_memory()\n" + code,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=environment,
    ).stdout


def test_the_aligned_csv_copy_loads_neither_pyarrow_compute_nor_numpy_ma(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,x\na,1\nb,2\nc,3\n")
    loaded = _loaded(
        "import numpy as np\n"
        "from accord.tables import write_aligned_table\n"
        f"write_aligned_table({str(tmp_path / 'out.csv')!r}, {str(source)!r},"
        " np.array([2, 0]), source_rows=3)\n"
    )
    assert (tmp_path / "out.csv").read_text() == "id,x\nc,3\na,1\n"
    assert "pyarrow.compute" not in loaded
    assert "numpy.ma" not in loaded


def _host_pool(environment: dict[str, str]) -> str:
    """The backend of pyarrow's default pool in a fresh host tuned by tune_host_memory()."""
    code = "import pyarrow as pa\nprint(pa.default_memory_pool().backend_name)"
    return _tuned_host(code, environment).strip()


def test_the_host_gives_pyarrow_malloc_unless_the_user_chose_a_pool() -> None:
    without = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _host_pool(without) == "system"
    assert _host_pool({**without, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
