"""Helpers for the alignment integration tests: real `accord align` processes, a relay.

Every party is a real ``python -m accord.cli align`` process (which starts its own enclave
process); parties talk over TCP on 127.0.0.1. :class:`Relay` sits between a dialling party
and a listening one, records every byte, and can alter, replay, reorder or drop frames and
records the way a hostile host or network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import random
import re
import socket
import string
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accord.tee.core.attestation import (
    AttestationPolicy,
    PartyBinding,
    key_fingerprint,
    policy_toml,
    public_key_bytes,
)
from accord.tee.core.channel import RECORD_HEADER
from accord.tee.core.wire import PEER_HEADER, PeerFrame
from accord.tee.runtime.measurement import enclave_measurement
from accord.tee.runtime.platform_key import load_or_create_platform_key

LISTENING = re.compile(r"listening on (\S+)$")
_HELLO_PREFIX = struct.Struct("!13sHI")


def make_ids(count: int, seed: int, length: int = 24) -> list[str]:
    """Distinct random IDs (long enough that none occurs in other bytes by chance)."""
    rng = random.Random(seed)
    ids: set[str] = set()
    while len(ids) < count:
        ids.add("".join(rng.choices(string.ascii_letters + string.digits, k=length)))
    return sorted(ids)


def write_table(path: Path, ids: Sequence[str], feature: str = "x") -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", feature])
        for row, value in enumerate(ids):
            writer.writerow([value, row * 10])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def platform_fingerprint(key_path: Path) -> str:
    return key_fingerprint(public_key_bytes(load_or_create_platform_key(key_path)))


def write_policy(
    path: Path,
    *,
    platform_keys: Sequence[Path],
    measurement: str | None = None,
    allow_debug: bool = False,
    allow_simulated: bool = True,
    min_security_version: int = 1,
    bindings: dict[str, Sequence[Path]] | None = None,
) -> Path:
    """A policy trusting ``platform_keys``; ``bindings`` binds party names to some of them."""
    policy = AttestationPolicy(
        allowed_measurements=frozenset({measurement or enclave_measurement().hex()}),
        trusted_platform_keys=frozenset(platform_fingerprint(key) for key in platform_keys),
        min_security_version=min_security_version,
        allow_debug=allow_debug,
        allow_simulated=allow_simulated,
        parties=tuple(
            PartyBinding(name, frozenset(platform_fingerprint(key) for key in keys))
            for name, keys in (bindings or {}).items()
        ),
    )
    path.write_text(policy_toml(policy))
    return path


class Party:
    """A running ``accord align`` process; stderr is collected line by line."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        command = [sys.executable, "-m", "accord.cli", "align", "--party-name", name]
        command += [*args, "--progress", "log"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._address: str | None = None
        self._listening = threading.Event()
        self._stdout = ""
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = LISTENING.search(line.strip())
            if match and self._address is None:
                self._address = match.group(1)
                self._listening.set()
        self._listening.set()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self._stdout = self.process.stdout.read()

    def address(self, timeout: float = 60) -> str:
        """The address the party listens on, once it says so."""
        self._listening.wait(timeout)
        if self._address is None:
            raise AssertionError(f"party {self.name} never listened:\n" + "\n".join(self.lines))
        return self._address

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float = 90) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once the process ends."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code, self._stdout, "\n".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(30)


def party_args(
    table: Path,
    policy: Path,
    key: Path,
    out: Path,
    name: str,
    *,
    listen: bool = False,
    peers: Sequence[str] = (),
    parties: int = 2,
    extra: Sequence[str] = (),
) -> list[str]:
    """The usual flags of one test party; outputs go to ``out/<name>.*``."""
    args = [
        "--input", str(table), "--key", "id", "--policy", str(policy),
        "--platform-key", str(key), "--parties", str(parties),
        "--output-map", str(out / f"{name}.map.csv"),
        "--output-table", str(out / f"{name}.aligned.csv"),
        "--summary", str(out / f"{name}.summary.json"),
        "--connect-timeout", "30", "--idle-timeout", "30",
    ]  # fmt: skip
    if listen:
        args += ["--listen", "127.0.0.1:0"]
    for peer in peers:
        args += ["--peer", peer]
    return [*args, *extra]


# A record transformer sees (index of the record in its direction, record bytes) and returns
# the records to send now (possibly none, to hold or drop it), or None to cut the connection.
RecordHook = Callable[[int, bytes], list[bytes] | None]
FrameHook = Callable[[PeerFrame, bytes], list[tuple[PeerFrame, bytes]] | None]


def _receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def split_records(body: bytes) -> list[bytes]:
    records, offset = [], 0
    while offset < len(body):
        *_, length = RECORD_HEADER.unpack_from(body, offset)
        end = offset + RECORD_HEADER.size + length
        records.append(body[offset:end])
        offset = end
    return records


class Relay:
    """A TCP relay between a dialling party and a listening one, on 127.0.0.1.

    It understands the peer protocol (hello, frames, sealed records) so that hooks can
    act on whole frames and records; every byte is also recorded as it passed.
    ``to_listener`` is the direction dialler → listener, ``to_dialer`` the other.
    """

    def __init__(
        self,
        target: str,
        *,
        records: dict[str, RecordHook] | None = None,
        frames: dict[str, FrameHook] | None = None,
    ) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._record_hooks = records or {}
        self._frame_hooks = frames or {}
        self.captured = {"to_listener": bytearray(), "to_dialer": bytearray()}
        self.frames: dict[str, list[tuple[PeerFrame, bytes]]] = {
            "to_listener": [],
            "to_dialer": [],
        }
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            dialer, _ = self._server.accept()
            listener = socket.create_connection(self._target)
            self._sockets = [dialer, listener]
            pumps = [
                threading.Thread(target=self._pump, args=(dialer, listener, "to_listener")),
                threading.Thread(target=self._pump, args=(listener, dialer, "to_dialer")),
            ]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join()
        for sock in self._sockets:
            sock.close()
        self._server.close()

    def _send(self, sink: socket.socket, direction: str, data: bytes) -> None:
        self.captured[direction] += data
        sink.sendall(data)

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        record_hook = self._record_hooks.get(direction)
        frame_hook = self._frame_hooks.get(direction)
        record_index = 0
        try:
            prefix = _receive_exactly(source, _HELLO_PREFIX.size)
            if prefix is None:
                return
            *_, size = _HELLO_PREFIX.unpack(prefix)
            body = _receive_exactly(source, size)
            if body is None:
                return
            self._send(sink, direction, prefix + body)
            while True:
                header = _receive_exactly(source, PEER_HEADER.size)
                if header is None:
                    return
                kind_code, size = PEER_HEADER.unpack(header)
                body = _receive_exactly(source, size) or b""
                kind = PeerFrame(kind_code)
                self.frames[direction].append((kind, body))
                outgoing: list[tuple[PeerFrame, bytes]] | None = [(kind, body)]
                if frame_hook is not None:
                    outgoing = frame_hook(kind, body)
                elif kind is PeerFrame.RECORDS and record_hook is not None:
                    outgoing = []
                    for record in split_records(body):
                        result = record_hook(record_index, record)
                        record_index += 1
                        if result is None:
                            outgoing = None
                            break
                        outgoing += [(PeerFrame.RECORDS, item) for item in result]
                if outgoing is None:
                    return
                for out_kind, out_body in outgoing:
                    self._send(
                        sink, direction, PEER_HEADER.pack(out_kind, len(out_body)) + out_body
                    )
        except OSError:
            return
        finally:
            self.close()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._server.close()

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)


async def listening_party(
    connect_timeout: float = 60, **options: Any
) -> tuple[asyncio.Future[Any], Any]:
    """Party "a" of the two-party session "s1" listening on 127.0.0.1:0, with no peer to
    dial: (its ``connect_links`` task, the endpoint it bound). ``options`` go to
    ``connect_links`` (limits, hello_timeout, ...)."""
    from accord.tee.runtime.transport import Endpoint, Hello, connect_links

    listening: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
    listener = asyncio.ensure_future(
        connect_links(
            Hello("a", "s1", 2),
            listen=Endpoint("127.0.0.1", 0),
            peers=[],
            connect_timeout=connect_timeout,
            idle_timeout=60,
            on_listening=listening.set_result,
            **options,
        )
    )
    return listener, await asyncio.wait_for(listening, 30)
