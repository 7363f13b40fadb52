"""``accord certs DIR --names bank,insurer``: one credentials folder per vertical party."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accord.cli import main
from accord.commands.exit_codes import ExitCode
from accord.credentials.auth import load_node_credentials, load_server_credentials


def _refusal(directory: Path, claimed: str, folder: str) -> str | None:
    """The server's verdict on ``folder``'s credentials presented as ``claimed``."""
    from accord.credentials.auth import Authenticator

    server = load_server_credentials(directory, "both")
    check = Authenticator(server.token_hashes, True, server.revoked_certificates)
    party = load_node_credentials(directory / folder)
    assert party.certificate_chain is not None and party.token is not None
    return check.refusal(
        claimed,
        [("authorization", f"Bearer {party.token}")],
        {"x509_pem_cert": [party.certificate_chain]},
    )


def test_names_issue_one_folder_per_party_that_authenticates_as_that_party(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "creds"
    assert main(["certs", str(directory), "--names", "bank, insurer"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"wrote credentials for 2 parties to {directory}"
    assert f"  insurer: {directory / 'insurer'}" in out
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["bank", "insurer"]
    tokens = json.loads((directory / "tokens.json").read_text())["nodes"]
    assert sorted(tokens) == ["bank", "insurer"]
    assert _refusal(directory, "insurer", "insurer") is None
    assert _refusal(directory, "bank", "bank") is None
    # insurer's folder cannot pass for bank (token and certificate are bank's own)
    assert _refusal(directory, "bank", "insurer") == "wrong token for node id 'bank'"


def test_renew_replaces_a_partys_folder_and_revokes_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "creds"
    assert main(["certs", str(directory), "--names", "bank,insurer"]) == ExitCode.OK
    old = load_node_credentials(directory / "insurer")
    assert main(["certs", str(directory), "--renew", "insurer"]) == ExitCode.OK
    assert "insurer: new certificate and token; the old certificate is revoked" in (
        capsys.readouterr().out
    )
    assert _refusal(directory, "insurer", "insurer") is None
    from accord.credentials.auth import Authenticator

    server = load_server_credentials(directory, "mtls")
    check = Authenticator(None, True, server.revoked_certificates)
    assert old.certificate_chain is not None
    refusal = check.refusal("insurer", [], {"x509_pem_cert": [old.certificate_chain]})
    assert refusal is not None and "revoked" in refusal


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("bank,in surer", "party name: expected 1-64 letters, digits, '.', '_' or '-'"),
        ("bank,bank", "party names: expected distinct party names, got ['bank', 'bank']"),
        (",", "party names: expected distinct party names, got []"),
    ],
)
def test_a_bad_name_is_one_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], names: str, message: str
) -> None:
    directory = tmp_path / "creds"
    assert main(["certs", str(directory), "--names", names]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err.startswith("accord certs: error: ") and message in err
    assert err.count("\n") == 1
    assert not directory.exists()
