"""The vertical transport in one process (real gRPC on 127.0.0.1, mutual TLS and tokens):
agreement refusals on both sides, a label party gone or silent, a silent feature party;
and the command's refusals of bad inputs, before anything is written."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from accord.cli import main
from accord.commands.exit_codes import ExitCode
from accord.credentials.auth import Authenticator, load_server_credentials
from accord.credentials.issue import make_credentials
from accord.errors import ConfigurationError, PeerError
from accord.vertical import BatchRequest, FeatureParty, PartyTable, VerticalSettings
from accord.vertical.feature_transport import DialSettings, feature_hello
from accord.vertical.network import (
    abort_reason,
    announce,
    feature_credentials,
    run_feature_party,
)
from accord.vertical.transport import LabelServer, RemoteFeatureParty, _Session

SETTINGS = VerticalSettings(batch_size=32, epochs=2, validation_fraction=0.2, test_fraction=0.2)
FINGERPRINT = "cd" * 32


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("creds")
    make_credentials(directory, ["bank", "insurer"], now=dt.datetime.now(dt.UTC), what="party name")
    return directory


def _table(name: str, rows: int, labels: bool = False) -> PartyTable:
    rng = np.random.default_rng(len(name))
    features = rng.normal(size=(rows, 3)).astype(np.float32)
    label = (features[:, 0] > 0).astype(np.float32) if labels else None
    return PartyTable(name, features, ("a", "b", "c"), label)


def _server(
    creds: Path,
    fingerprint: str | None = FINGERPRINT,
    hello_timeout: float = 30.0,
    first_epoch: int = 0,
    parties: tuple[str, ...] = ("insurer",),
) -> LabelServer:
    from accord.vertical import LabelParty

    label = LabelParty(_table("bank", 200, labels=True), SETTINGS, list(parties))
    credentials = load_server_credentials(creds, "both")
    check = Authenticator(credentials.token_hashes, True, credentials.revoked_certificates)
    server = LabelServer(
        announce(label, fingerprint),
        list(parties),
        credentials,
        check,
        hello_timeout=hello_timeout,
        first_epoch=first_epoch,
    )
    server.start("127.0.0.1", 0)
    return server


def _dial(
    server: LabelServer, creds: Path, party: FeatureParty, fingerprint: str | None, **dial: Any
) -> tuple[threading.Thread, list[BaseException | str]]:
    """The feature party in a thread; its outcome (a finish reason or an error) appended."""
    outcome: list[BaseException | str] = []
    settings = DialSettings(f"127.0.0.1:{server.port}", connect_timeout=30, **dial)

    def serve() -> None:
        try:
            outcome.append(run_feature_party(party, fingerprint, creds / "insurer", settings))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(
    ("rows", "fingerprint", "message"),
    [
        (200, "ef" * 32, f"alignment fingerprint {'ef' * 32} differs from 'bank''s"),
        (199, FINGERPRINT, "party 'insurer': expected 200 aligned rows like 'bank', got 199"),
    ],
    ids=["fingerprint", "rows"],
)
def test_a_disagreement_is_refused_on_both_sides(
    creds: Path, rows: int, fingerprint: str, message: str
) -> None:
    error = _refused(_server(creds), creds, rows, fingerprint, message)
    assert str(error).startswith("the label party refused this party: ") and message in str(error)


def test_a_new_party_is_refused_by_a_label_party_that_continues_a_run(creds: Path) -> None:
    server = _server(creds, first_epoch=3)  # a label party resumed after 3 epochs
    message = "party 'insurer' holds the state after epoch 0, the label party continues"
    error = _refused(server, creds, 200, FINGERPRINT, message)  # it holds no saved epoch
    assert "needs --resume and its --checkpoint" in str(error)


def _refused(
    server: LabelServer, creds: Path, rows: int, fingerprint: str, message: str
) -> PeerError:
    """A new insurer party of ``rows`` rows dials ``server``: both sides must end with a
    :class:`PeerError` matching ``message``; the party's error."""
    try:
        party = FeatureParty(_table("insurer", rows), SETTINGS)
        thread, outcome = _dial(server, creds, party, fingerprint)
        with pytest.raises(PeerError, match=message):
            server.wait_for_parties(60)
        thread.join(60)
    finally:
        server.stop()
    (error,) = outcome
    assert isinstance(error, PeerError)
    return error


def test_a_party_redialling_after_epochs_ended_is_checked_against_the_latest_epoch(
    creds: Path,
) -> None:
    # A feature party whose connection broke redials at once; the label party's loop has
    # not noticed the loss yet, but the epochs it finished must count.
    server = _server(creds)
    try:
        announcement = announce(FeatureParty(_table("insurer", 200), SETTINGS), FINGERPRINT)
        assert isinstance(server.join(feature_hello(announcement), "first"), _Session)
        server.wait_for_parties(10)
        server.advance(5)  # five epochs ended, every party saved them
        again = server.join(feature_hello(announcement, held=(4, 5)), "again")
        assert isinstance(again, _Session), again
        stale = server.join(feature_hello(announcement, held=(2, 3)), "stale")
        assert isinstance(stale, str) and "continues after epoch 5" in stale
    finally:
        server.stop()


def test_two_parties_lost_together_are_waited_for_in_one_window(creds: Path) -> None:
    from accord.vertical.transport import PartyLostError

    parties = ("insurer", "merchant")
    server = _server(creds, parties=parties)
    try:
        hellos = {
            name: feature_hello(announce(FeatureParty(_table(name, 200), SETTINGS), FINGERPRINT))
            for name in parties
        }
        ended = {name: threading.Event() for name in parties}
        sessions = {name: server.join(hellos[name], name, None, ended[name]) for name in parties}
        server.wait_for_parties(10)
        for event in ended.values():  # both streams end at once (a network blip)
            event.set()
        lost = sessions["insurer"]
        assert isinstance(lost, _Session)
        result: list[Any] = []
        waiter = threading.Thread(
            target=lambda: result.append(
                server.recover(PartyLostError("insurer", "insurer is gone", lost), 0, 30)
            ),
            daemon=True,
        )
        waiter.start()
        assert isinstance(server.join(hellos["insurer"], "insurer again"), _Session)
        waiter.join(2.5)
        assert waiter.is_alive(), "recovered while merchant's stream had ended too"
        assert isinstance(server.join(hellos["merchant"], "merchant again"), _Session)
        waiter.join(30)
        assert not waiter.is_alive() and set(result[0]) == set(parties)
    finally:
        server.stop()


def _joined(creds: Path, **dial: Any) -> tuple[LabelServer, threading.Thread, list[Any]]:
    server = _server(creds)
    party = FeatureParty(_table("insurer", 200), SETTINGS)
    thread, outcome = _dial(server, creds, party, FINGERPRINT, **dial)
    links = server.wait_for_parties(60)
    embedding = links["insurer"].forward(BatchRequest(0, 0))
    assert embedding.values.shape == (32, SETTINGS.model.embedding_dim)
    return server, thread, outcome


def _ends_with(outcome: list[Any], thread: threading.Thread, message: str) -> None:
    thread.join(60)
    assert not thread.is_alive()
    (error,) = outcome
    assert isinstance(error, PeerError) and message in str(error)


def test_a_label_party_that_leaves_mid_run_ends_the_feature_party(creds: Path) -> None:
    server, thread, outcome = _joined(creds, reconnect_timeout=0)
    server.stop()  # no Finish: the stream ends mid-run
    _ends_with(outcome, thread, "the label party closed the session before the run ended")


def test_a_label_party_that_never_comes_back_ends_the_feature_party_at_the_deadline(
    creds: Path,
) -> None:
    server, thread, outcome = _joined(creds, reconnect_timeout=1.5)
    server.stop()  # no Finish, and nobody listens any more: the party redials in vain
    _ends_with(outcome, thread, "; it did not come back within 1.5 s")
    assert "the label party closed the session before the run ended" in str(outcome[0])


def test_a_label_party_that_fails_tells_the_feature_party_why_and_it_ends_at_once(
    creds: Path,
) -> None:
    # A minute to redial: without the reason it would wait that long, then say only that
    # the label party did not come back.
    server, thread, outcome = _joined(creds, reconnect_timeout=60)
    server.abort("party 'broker' did not come back within 60 s")
    server.stop()
    _ends_with(
        outcome,
        thread,
        "the label party ended the run: party 'broker' did not come back within 60 s",
    )


def test_abort_reasons_name_accord_errors_and_only_the_kind_of_anything_else() -> None:
    assert abort_reason(PeerError("party 'x' did not come back")) == ("party 'x' did not come back")
    assert abort_reason(KeyboardInterrupt()) == "the label party was interrupted"
    assert abort_reason(OSError("disk /secret/path full")) == (
        "the label party failed (OSError; see its log)"
    )


def test_a_silent_label_party_ends_the_feature_party(creds: Path) -> None:
    server, thread, outcome = _joined(creds, idle_timeout=1.0, reconnect_timeout=0)
    try:
        _ends_with(outcome, thread, "the label party sent nothing for 1 s")
    finally:
        server.stop()


def test_a_label_party_that_readmits_the_party_but_stays_silent_ends_it_at_the_deadline(
    creds: Path,
) -> None:
    # The party redials after 0.5 s of silence and is admitted again, but the label party
    # never sends an instruction: the window is not reopened by the new welcome.
    server, thread, outcome = _joined(creds, idle_timeout=0.5, reconnect_timeout=1.5)
    try:
        _ends_with(outcome, thread, "it did not come back within 1.5 s")
        assert str(outcome[0]).startswith("the label party sent nothing for 0.5 s")
    finally:
        server.stop()


def test_a_silent_feature_party_ends_the_label_partys_wait() -> None:
    link = RemoteFeatureParty(_Session("insurer", "peer"), idle_timeout=0.2)
    with pytest.raises(PeerError, match=r"party 'insurer' sent nothing for 0.2 s \(waiting for"):
        link.forward(BatchRequest(0, 0))


def test_connections_that_never_say_hello_are_dropped_and_the_party_still_joins(
    creds: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    from accord.credentials.tls import bearer_metadata
    from accord.vertical.feature_transport import _channel
    from accord.vertical.proto import vertical_pb2_grpc as pb_grpc

    server = _server(creds, hello_timeout=1.0)
    silence = threading.Event()

    def nothing() -> Any:
        silence.wait(120)
        yield from ()

    credentials = feature_credentials(creds / "insurer")
    channel = _channel(DialSettings(f"127.0.0.1:{server.port}"), credentials)
    raw = socket.create_connection(("127.0.0.1", server.port or 0))  # TCP, then nothing
    try:
        # More silent streams (authenticated TLS, no Hello) than the server has threads:
        # without a deadline on the Hello they would hold every one of them.
        stub = pb_grpc.VerticalStub(channel)  # type: ignore[no-untyped-call]
        silent = [stub.Session(nothing(), metadata=bearer_metadata(credentials)) for _ in range(9)]
        party = FeatureParty(_table("insurer", 200), SETTINGS)
        thread, outcome = _dial(server, creds, party, FINGERPRINT)
        links = server.wait_for_parties(60)
        assert links["insurer"].forward(BatchRequest(0, 0)).values.shape[0] == 32
        links["insurer"].finish("done")
        thread.join(60)
        assert outcome == ["done"]
    finally:
        silence.set()
        raw.close()
        channel.close()
        server.stop()
    dropped = [r.getMessage() for r in caplog.records if "no Hello within 1 s" in r.getMessage()]
    assert dropped and len(silent) == 9


def test_a_credentials_folder_without_a_token_is_refused(creds: Path, tmp_path: Path) -> None:
    folder = tmp_path / "insurer"
    folder.mkdir()
    for name in ("ca.pem", "node.pem", "node.key"):
        (folder / name).write_bytes((creds / "insurer" / name).read_bytes())
    with pytest.raises(Exception, match="missing token"):
        feature_credentials(folder)


# ------------------------------------------------------------------ command refusals


def _write(folder: Path, name: str, header: str, rows: list[str], count: int | None = None) -> None:
    (folder / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")
    summary = {
        "party": name,
        "parties": ["bank", "insurer"],
        "intersection": len(rows) if count is None else count,
        "fingerprint": FINGERPRINT,
    }
    (folder / f"{name}.summary.json").write_text(json.dumps(summary))


ROWS = [f"id{i},{i % 7}.5,{i % 3},{i % 2}" for i in range(40)]


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (
            lambda f: _write(f, "bank", "id,x,z,y", ROWS),
            "bank.csv: column 'label' not found",
        ),
        (
            lambda f: _write(f, "bank", "id,x,z,label", [*ROWS[:5], "id5,abc,1,0", *ROWS[6:]]),
            "bank.csv: column 'x': expected numbers",
        ),
        (
            lambda f: _write(f, "bank", "id,x,z,label", [r.replace(",0", ",2") for r in ROWS]),
            "bank.csv: label column 'label': expected 0 or 1, found 2",
        ),
        (
            lambda f: _write(f, "bank", "id,x,z,label", ROWS, count=41),
            "bank.csv: expected the 41 aligned rows of",
        ),
    ],
    ids=["no-label-column", "non-numeric", "non-binary-label", "rows-differ"],
)
def test_bad_inputs_are_refused_in_one_line_before_anything_is_written(
    tmp_path: Path,
    creds: Path,
    capsys: pytest.CaptureFixture[str],
    arrange: Callable[[Path], None],
    message: str,
) -> None:
    arrange(tmp_path)
    run_dir = tmp_path / "run"
    code = main(
        [
            "vertical", "label", "--table", str(tmp_path / "bank.csv"),
            "--alignment", str(tmp_path / "bank.summary.json"), "--label-column", "label",
            "--ignore-columns", "id", "--listen", "127.0.0.1:0", "--credentials", str(creds),
            "--run-dir", str(run_dir),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED, err
    (line,) = [line for line in err.splitlines() if ": error: " in line]
    assert line.startswith("accord vertical: error: ") and message in line
    assert not run_dir.exists()


def test_settings_come_from_the_config_file_and_flags_win(tmp_path: Path) -> None:
    import argparse

    from accord.commands.vertical_options import settings_from_args

    config = tmp_path / "run.toml"
    config.write_text('epochs = 7\nbatch_size = 128\n[model]\nbottom = "mlp"\nembedding_dim = 4\n')
    names = ("seed", "epochs", "batch_size", "learning_rate", "optimizer", "patience")
    names += ("validation_fraction", "test_fraction", "bottom", "bottom_hidden")
    names += ("embedding_dim", "top", "top_hidden")
    args = argparse.Namespace(config=config, **dict.fromkeys(names))
    args.epochs, args.bottom_hidden = 9, "8,4"
    settings = settings_from_args(args)
    assert (settings.epochs, settings.batch_size) == (9, 128)
    assert settings.model.bottom == "mlp" and settings.model.embedding_dim == 4
    assert settings.model.bottom_hidden == (8, 4)
    args.top = "wide"
    expected = r'run\.toml and options: model\.top = "wide": expected'
    with pytest.raises(ConfigurationError, match=expected):
        settings_from_args(args)
