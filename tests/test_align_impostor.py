"""An impostor with its own trusted platform key runs as another party (issue 13 item 1).

Party ``c`` is trusted (its platform key is in the policy), but the policy binds the name
``b`` to ``b``'s platform key. When ``c`` runs as ``--party-name b``, the real party ``a``
refuses it during the handshake, before any ID digest is sent, in either direction (``a``
dialling or listening): exit 3, one line naming the party, the key presented and the keys
allowed, and no output file on either side. With the real ``b``, the summary shows who the
peer is: its name, that the name is bound, its platform key and its measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from align_support import (
    Party,
    make_ids,
    party_args,
    platform_fingerprint,
    write_policy,
    write_table,
)

from accord.commands.exit_codes import ExitCode
from accord.tee.runtime.measurement import enclave_measurement


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("impostor")
    universe = make_ids(120, seed=3)
    write_table(folder / "a.csv", universe[:80])
    write_table(folder / "b.csv", universe[40:])
    keys = {name: folder / f"{name}-platform.pem" for name in "abc"}
    policy = write_policy(
        folder / "policy.toml",
        platform_keys=list(keys.values()),
        bindings={"a": [keys["a"]], "b": [keys["b"]]},
    )
    return {
        "folder": folder,
        "a": folder / "a.csv",
        "b": folder / "b.csv",
        "policy": policy,
        **{f"{name}_key": key for name, key in keys.items()},
    }


def _pair(
    inputs: dict[str, Path], out: Path, b_key: Path, *, a_listens: bool
) -> tuple[Party, Party]:
    out.mkdir(parents=True)

    def args(name: str, key: Path, **where: object) -> list[str]:
        return party_args(inputs[name], inputs["policy"], key, out, name, **where)  # type: ignore[arg-type]

    if a_listens:
        a = Party("a", args("a", inputs["a_key"], listen=True))
        b = Party("b", args("b", b_key, peers=[a.address()]))
    else:
        b = Party("b", args("b", b_key, listen=True))
        a = Party("a", args("a", inputs["a_key"], peers=[b.address()]))
    return a, b


@pytest.mark.parametrize("a_listens", [True, False], ids=["a-listens", "a-dials"])
def test_a_trusted_key_running_under_another_name_is_refused(
    inputs: dict[str, Path], a_listens: bool
) -> None:
    out = inputs["folder"] / f"impostor-{a_listens}"
    a, impostor = _pair(inputs, out, inputs["c_key"], a_listens=a_listens)
    (code_a, stdout_a, stderr_a), (code_c, stdout_c, stderr_c) = a.wait(), impostor.wait()
    assert code_a == ExitCode.REFUSED, stderr_a
    errors = [line for line in stderr_a.splitlines() if "error" in line]
    assert errors == [
        "accord align: error: refused the enclave of peer 'b': party 'b' presented platform key "
        f"{platform_fingerprint(inputs['c_key'])}; the policy allows only "
        f"{platform_fingerprint(inputs['b_key'])} for 'b'"
    ], stderr_a
    # The impostor learns only that it was refused.
    assert code_c == ExitCode.REFUSED, stderr_c
    assert "peer 'a' refused the attestation" in stderr_c
    assert stdout_a == stdout_c == ""
    assert sorted(path.name for path in out.iterdir()) == []  # nothing written, by either


def test_the_real_peer_is_shown_with_its_bound_identity(inputs: dict[str, Path]) -> None:
    out = inputs["folder"] / "real"
    a, b = _pair(inputs, out, inputs["b_key"], a_listens=True)
    (code_a, stdout_a, stderr_a), (code_b, _, stderr_b) = a.wait(), b.wait()
    assert (code_a, code_b) == (0, 0), stderr_a + stderr_b
    summary = json.loads(stdout_a)
    assert summary["peer_enclaves"]["b"] == {
        "party": "b",
        "name_binding": "bound",
        "backend": "simulated",
        "platform_key": platform_fingerprint(inputs["b_key"]),
        "measurement": enclave_measurement().hex(),
        "security_version": 1,
        "debug": False,
    }
    assert json.loads((out / "b.summary.json").read_text())["peer_enclaves"]["a"][
        "platform_key"
    ] == platform_fingerprint(inputs["a_key"])
    assert "binds no party names" not in stderr_a
