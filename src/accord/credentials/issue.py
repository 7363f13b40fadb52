"""Making credentials: ``accord certs DIR`` and ``accord certs DIR --renew``.

A local CA, the server's TLS certificate, and per node (a federation's node ids, or a
vertical run's party names) a certificate, key and token (the layout is drawn in
:mod:`accord.credentials.auth`, which reads and checks them). Private
keys and tokens are written with mode 0600; ``tokens.json`` and ``revoked.json`` are
replaced atomically, so a running server reads the old state or the new one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.credentials.auth import (
    REVOKED_FORMAT,
    REVOKED_NAME,
    TOKENS_FORMAT,
    certificate_fingerprint,
    hash_token,
    read_file,
    read_revoked,
    read_token_hashes,
)
from accord.credentials.naming import check_name
from accord.errors import ConfigurationError, InputDataError

__all__ = ["CredentialRenewal", "make_credentials", "renew_node_credentials"]

logger = logging.getLogger(__name__)


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError as error:
        raise ConfigurationError(f"{path}: exists already (use --force to replace)") from error
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigurationError(f"{path}: exists already (use --force to replace)")
    path.write_bytes(data)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Accord federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    ca_key: Any,
    ca_cert: Any,
    common_name: str,
    alt_names: list[Any],
    usage: Any,
    start: dt.datetime,
    end: dt.datetime,
) -> tuple[bytes, bytes]:
    """A leaf certificate and its key (PEM), signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _write_node_folder(
    directory: Path,
    node: str,
    ca_key: Any,
    ca_cert: Any,
    start: dt.datetime,
    end: dt.datetime,
    overwrite: bool,
) -> tuple[Path, str]:
    """Write ``directory/node/``: the CA, a new client certificate, its key and a new token.
    Returns the folder and the token's hash (for ``tokens.json``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = directory / node
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o700)
    cert, key = _issue(
        ca_key, ca_cert, node, [x509.DNSName(node)], ExtendedKeyUsageOID.CLIENT_AUTH, start, end
    )
    token = secrets.token_urlsafe(32)
    _write_public(folder / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), overwrite)
    _write_public(folder / "node.pem", cert, overwrite)
    _write_private(folder / "node.key", key, overwrite)
    _write_private(folder / "token", (token + "\n").encode(), overwrite)
    return folder, hash_token(token)


def _checked_node_ids(node_ids: Iterable[str], days: int, what: str) -> list[str]:
    nodes = list(node_ids)
    for node in nodes:
        problem = check_name(node, what)
        if problem is not None:
            raise ConfigurationError(problem)
    if len(set(nodes)) != len(nodes) or not nodes:
        raise ConfigurationError(f"{what}s: expected distinct {what}s, got {nodes}")
    if not isinstance(days, int) or days < 1:
        raise ConfigurationError(f"days: expected a whole number >= 1, got {days!r}")
    return nodes


def make_credentials(
    directory: Path,
    node_ids: Iterable[str],
    *,
    hosts: Sequence[str] = (),
    now: dt.datetime,
    days: int = 365,
    overwrite: bool = False,
    what: str = "node id",
) -> dict[str, Path]:
    """Write a CA, a server certificate for ``localhost``, ``127.0.0.1``, ``::1`` and
    ``hosts``, and for each node a client certificate and a token. Returns the paths.

    ``what`` names the ids in errors: ``node id`` (a federation) or ``party name`` (a
    vertical run, whose parties authenticate as nodes do)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    nodes = _checked_node_ids(node_ids, days, what)
    directory.mkdir(parents=True, exist_ok=True)

    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Accord federation CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, alt_names: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> tuple[bytes, bytes]:
        return _issue(ca_key, ca_cert, common_name, alt_names, usage, start, end)

    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    addresses = ["127.0.0.1", "::1"]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            alt.append(x509.DNSName(host))
        else:
            addresses.append(host)
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(addresses)]
    server_cert, server_key = leaf("accord-server", alt, ExtendedKeyUsageOID.SERVER_AUTH)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

    paths = {
        "ca": directory / "ca.pem",
        "ca_key": directory / "ca.key",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "tokens": directory / "tokens.json",
    }
    _write_public(paths["ca"], ca_pem, overwrite)
    _write_private(paths["ca_key"], _key_pem(ca_key), overwrite)
    _write_public(paths["server_cert"], server_cert, overwrite)
    _write_private(paths["server_key"], server_key, overwrite)
    hashes_by_node: dict[str, str] = {}
    for node in nodes:
        paths[node], hashes_by_node[node] = _write_node_folder(
            directory, node, ca_key, ca_cert, start, end, overwrite
        )
    tokens_json = {"format": TOKENS_FORMAT, "version": 1, "nodes": hashes_by_node}
    _write_public(paths["tokens"], (json.dumps(tokens_json, indent=2) + "\n").encode(), overwrite)
    # The command prints what was written; the log repeats it only at debug level.
    logger.debug("wrote a CA, a server certificate and %d node credentials", len(nodes))
    return paths


@dataclass(frozen=True)
class CredentialRenewal:
    """What :func:`renew_node_credentials` did, node by node."""

    #: Each node's new credentials folder.
    folders: dict[str, Path]
    #: Nodes whose old certificate was added to ``revoked.json``.
    revoked: tuple[str, ...]
    #: Nodes that had a token but no certificate to revoke (the token is replaced).
    replaced_tokens: tuple[str, ...]
    #: Node ids never issued before (nothing to revoke): new credentials only.
    issued: tuple[str, ...]


def renew_node_credentials(
    directory: Path,
    node_ids: Iterable[str],
    *,
    now: dt.datetime,
    days: int = 365,
    what: str = "node id",
) -> CredentialRenewal:
    """A new client certificate and token for each node, from ``directory``'s CA.

    The node's old certificate (if its folder has one) is added to ``revoked.json`` and its
    old token is replaced in ``tokens.json``, so the old folder no longer authenticates (a
    running server reads both files again). A node id never issued is added (and counted as
    issued, not revoked).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    nodes = _checked_node_ids(node_ids, days, what)
    ca_pem = read_file(directory / "ca.pem", "CA certificate")
    if not (directory / "ca.key").exists():
        raise ConfigurationError(
            f"{directory / 'ca.key'}: not found; renewing issues the new credentials with the "
            f"CA key that `accord certs {directory}` wrote"
        )
    ca_key_pem = read_file(directory / "ca.key", "CA private key")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError as error:
        raise InputDataError(f"{directory}: unreadable CA certificate or key: {error}") from error
    tokens_path = directory / "tokens.json"
    hashes_by_node = read_token_hashes(tokens_path)
    revoked_path = directory / REVOKED_NAME
    revoked = set(read_revoked(revoked_path)) if revoked_path.exists() else set()
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    paths: dict[str, Path] = {}
    revoked_nodes: list[str] = []
    replaced: list[str] = []
    issued: list[str] = []
    for node in nodes:
        folder = directory / node
        old = folder / "node.pem"
        if old.exists():
            try:
                revoked.add(certificate_fingerprint(old.read_bytes()))
            except ValueError as error:
                raise InputDataError(f"{old}: unreadable certificate: {error}") from error
            revoked_nodes.append(node)
        elif node in hashes_by_node:
            replaced.append(node)
        else:
            issued.append(node)
        paths[node], hashes_by_node[node] = _write_node_folder(
            directory, node, ca_key, ca_cert, start, end, True
        )
    tokens_json = {"format": TOKENS_FORMAT, "version": 1, "nodes": hashes_by_node}
    # Revocations first, each file replaced whole: a server reading them meanwhile sees the
    # old state or the new one, never half a file.
    revoked_json = {"format": REVOKED_FORMAT, "version": 1, "certificates": sorted(revoked)}
    write_atomically(revoked_path, (json.dumps(revoked_json, indent=2) + "\n").encode())
    write_atomically(tokens_path, (json.dumps(tokens_json, indent=2) + "\n").encode())
    logger.debug(
        "renewed %d node credentials: %d certificates revoked, %d new ids",
        len(nodes),
        len(revoked_nodes),
        len(issued),
    )
    return CredentialRenewal(paths, tuple(revoked_nodes), tuple(replaced), tuple(issued))
