"""Credentials of a federation: a local CA, TLS certificates, per-node tokens, and the check
a server makes on every registering node.

``accord certs DIR`` (:func:`make_credentials`) writes::

    DIR/ca.pem  DIR/ca.key              the federation's CA (keep ca.key offline)
    DIR/server.pem  DIR/server.key      the server's TLS certificate (serverAuth)
    DIR/tokens.json                     SHA-256 of each node's token (server side)
    DIR/<node-id>/ca.pem node.pem node.key token
                                        one folder to copy to each node's machine
    DIR/revoked.json                    SHA-256 of certificates replaced by ``--renew``

``accord certs DIR --renew NODE`` (:func:`renew_node_credentials`) issues that node a new
certificate and token from the same CA (a leaked or lost folder is replaced), lists the old
certificate in ``revoked.json`` and drops the old token from ``tokens.json``; a running
server reads both again when they change (:meth:`Authenticator.reloading`).

A node authenticates with its token (``authorization: Bearer`` metadata, checked against
the hash in constant time), with its client certificate (mutual TLS: signed by the CA,
clientAuth usage, common name = node id), or both (the default of ``accord server``). A
refused node gets one opaque "credentials refused"; the server log gets the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accord.atomic_files import write_atomically
from accord.errors import AccordError, ConfigurationError, InputDataError
from accord.federation.naming import check_node_id

__all__ = [
    "CLIENT_AUTH_MODES",
    "REVOKED_NAME",
    "Authenticator",
    "CredentialRenewal",
    "NodeCredentials",
    "ServerCredentials",
    "certificate_fingerprint",
    "hash_token",
    "load_node_credentials",
    "load_server_credentials",
    "make_credentials",
    "read_revoked",
    "renew_node_credentials",
]

logger = logging.getLogger(__name__)

#: How nodes prove who they are: a token, a client certificate, or both.
CLIENT_AUTH_MODES = ("both", "mtls", "token")
TOKENS_FORMAT = "accord-node-tokens"
REVOKED_FORMAT = "accord-revoked-certificates"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ServerCredentials:
    """TLS material of the server and how it checks nodes. ``client_ca`` set means mutual
    TLS; ``token_hashes`` set means token checks."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    token_hashes: Mapping[str, str] | None
    #: SHA-256 (hex) of client certificates that are refused although the CA signed them.
    revoked_certificates: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NodeCredentials:
    """What a node presents: the CA it trusts, its client certificate and its token."""

    root_ca: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None
    token: str | None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise InputDataError(f"{path}: {what} not found") from error
    except OSError as error:
        raise InputDataError(f"{path}: cannot read {what}: {error}") from error


def _read_json_of_format(path: Path, what: str, format_name: str) -> dict[str, Any]:
    """A JSON object whose ``format`` field is ``format_name`` (else a clear error)."""
    try:
        data = json.loads(_read(path, what))
    except json.JSONDecodeError as error:
        raise InputDataError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise InputDataError(f"{path}: expected an object with format {format_name!r}")
    return data


def read_token_hashes(path: Path) -> dict[str, str]:
    """Read ``tokens.json``: node id -> SHA-256 hex of its token."""
    data = _read_json_of_format(path, "token file", TOKENS_FORMAT)
    nodes = data.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise InputDataError(f"{path}: field 'nodes': expected a non-empty object")
    for node, digest in nodes.items():
        problem = check_node_id(node)
        if problem is not None:
            raise InputDataError(f"{path}: {problem}")
        if not (isinstance(digest, str) and len(digest) == 64):
            raise InputDataError(f"{path}: nodes.{node}: expected a SHA-256 hex digest")
    return {str(k): str(v) for k, v in nodes.items()}


def load_server_credentials(
    directory: Path | None,
    client_auth: str = "both",
    *,
    certificate: Path | None = None,
    private_key: Path | None = None,
    client_ca: Path | None = None,
    tokens: Path | None = None,
) -> ServerCredentials:
    """The server's credentials from an ``accord certs`` folder or explicit files."""
    if client_auth not in CLIENT_AUTH_MODES:
        raise ConfigurationError(
            f"client_auth: expected one of {', '.join(CLIENT_AUTH_MODES)}; got {client_auth!r}"
        )

    def pick(explicit: Path | None, name: str) -> Path | None:
        if explicit is not None:
            return explicit
        return None if directory is None else directory / name

    cert_path, key_path = pick(certificate, "server.pem"), pick(private_key, "server.key")
    if cert_path is None or key_path is None:
        raise ConfigurationError("TLS: give --credentials DIR or --tls-cert and --tls-key")
    ca_path = pick(client_ca, "ca.pem") if client_auth in ("both", "mtls") else None
    tokens_path = pick(tokens, "tokens.json") if client_auth in ("both", "token") else None
    if client_auth in ("both", "mtls") and ca_path is None:
        raise ConfigurationError("mutual TLS: give --credentials DIR or --tls-ca")
    if client_auth in ("both", "token") and tokens_path is None:
        raise ConfigurationError("token authentication: give --credentials DIR or --tokens")
    revoked_path = None if directory is None else directory / REVOKED_NAME
    return ServerCredentials(
        certificate_chain=_read(cert_path, "server certificate"),
        private_key=_read(key_path, "server private key"),
        client_ca=None if ca_path is None else _read(ca_path, "CA certificate"),
        token_hashes=None if tokens_path is None else read_token_hashes(tokens_path),
        revoked_certificates=(
            read_revoked(revoked_path)
            if revoked_path is not None and revoked_path.exists()
            else frozenset()
        ),
    )


def load_node_credentials(
    directory: Path | None,
    *,
    root_ca: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    token_file: Path | None = None,
) -> NodeCredentials:
    """A node's credentials from its ``accord certs`` folder (``DIR/<node-id>``) or files;
    files missing from the folder are simply not presented."""

    def pick(explicit: Path | None, name: str) -> Path | None:
        if explicit is not None:
            return explicit
        if directory is None:
            return None
        candidate = directory / name
        return candidate if candidate.exists() else None

    if directory is not None and not directory.is_dir():
        raise InputDataError(f"{directory}: no such credentials folder")
    ca_path, cert_path = pick(root_ca, "ca.pem"), pick(certificate, "node.pem")
    key_path, token_path = pick(private_key, "node.key"), pick(token_file, "token")
    if (cert_path is None) != (key_path is None):
        raise ConfigurationError("client certificate: give both the certificate and its key")
    token = None
    if token_path is not None:
        token = _read(token_path, "token").decode().strip()
        if not token:
            raise InputDataError(f"{token_path}: the token file is empty")
    return NodeCredentials(
        root_ca=None if ca_path is None else _read(ca_path, "CA certificate"),
        certificate_chain=None if cert_path is None else _read(cert_path, "node certificate"),
        private_key=None if key_path is None else _read(key_path, "node private key"),
        token=token,
    )


class Authenticator:
    """Decides whether a registering node is who it claims to be."""

    def __init__(
        self,
        token_hashes: Mapping[str, str] | None,
        require_client_cert: bool,
        revoked_certificates: frozenset[str] = frozenset(),
    ) -> None:
        self.token_hashes = None if token_hashes is None else dict(token_hashes)
        self.require_client_cert = require_client_cert
        self.revoked_certificates = revoked_certificates
        self._load: Callable[[], ServerCredentials] | None = None
        self._watched: tuple[Path, ...] = ()
        self._stamp: tuple[tuple[int, int, int] | None, ...] = ()
        self._load_error: str | None = None

    @classmethod
    def reloading(
        cls, load: Callable[[], ServerCredentials], watched: Sequence[Path]
    ) -> Authenticator:
        """An authenticator that reads the tokens and revocations again whenever one of
        ``watched`` changes (``accord certs --renew`` on a running server takes effect at
        the next registration). A file that cannot be read then refuses every node until
        it is fixed: a broken revocation list must not let revoked nodes in."""
        credentials = load()
        check = cls(
            credentials.token_hashes,
            credentials.client_ca is not None,
            credentials.revoked_certificates,
        )
        check._load, check._watched = load, tuple(watched)
        check._stamp = _stamps(check._watched)
        return check

    def _refresh(self) -> None:
        if self._load is None:
            return
        stamp = _stamps(self._watched)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            credentials = self._load()
        except AccordError as error:
            self._load_error = f"node credentials files unreadable: {error}"
            logger.error("%s; refusing every node until they are fixed", self._load_error)
            return
        self._load_error = None
        self.token_hashes = (
            None if credentials.token_hashes is None else dict(credentials.token_hashes)
        )
        self.revoked_certificates = credentials.revoked_certificates
        logger.info(
            "node credentials reloaded: %d tokens, %d revoked certificates",
            len(self.token_hashes or {}),
            len(self.revoked_certificates),
        )

    @property
    def open(self) -> bool:
        """True when no check is made (``--insecure`` without tokens)."""
        return self.token_hashes is None and not self.require_client_cert

    def refusal(
        self,
        claimed_node_id: str,
        metadata: Sequence[tuple[str, str | bytes]],
        auth_context: Mapping[str, Sequence[bytes]],
    ) -> str | None:
        """Why the node is refused (for the local log only), or ``None`` to accept it."""
        self._refresh()
        if self._load_error is not None:
            return self._load_error
        if self.token_hashes is not None:
            problem = self._token_refusal(claimed_node_id, metadata)
            if problem is not None:
                return problem
        if self.require_client_cert:
            return _certificate_refusal(claimed_node_id, auth_context, self.revoked_certificates)
        return None

    def _token_refusal(
        self, claimed: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> str | None:
        assert self.token_hashes is not None
        values = [v for k, v in metadata if k.lower() == "authorization"]
        if len(values) != 1:
            return f"expected one authorization header, got {len(values)}"
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        if not value.startswith("Bearer "):
            return "authorization header is not a bearer token"
        presented = hash_token(value[len("Bearer ") :])
        expected = self.token_hashes.get(claimed)
        # Compare even for unknown ids, so timing does not reveal which ids exist.
        matches = hmac.compare_digest(presented, expected or "0" * 64)
        if expected is None:
            return f"no token is registered for node id {claimed!r}"
        if not matches:
            return f"wrong token for node id {claimed!r}"
        return None


def _certificate_refusal(
    claimed: str,
    auth_context: Mapping[str, Sequence[bytes]],
    revoked: frozenset[str] = frozenset(),
) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return "no client certificate"
    try:
        certificate = x509.load_pem_x509_certificate(pems[0])
    except ValueError as error:
        return f"unreadable client certificate: {error}"
    if _fingerprint(certificate) in revoked:
        return f"client certificate of {claimed!r} is revoked ({REVOKED_NAME})"
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    if common_name != claimed:
        return f"client certificate is for {common_name!r}, not {claimed!r}"
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "client certificate has no extended key usage"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        return "client certificate is not for client authentication"
    return None


REVOKED_NAME = "revoked.json"


def _stamps(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((status.st_mtime_ns, status.st_size, status.st_ino))
    return tuple(stamps)


def _fingerprint(certificate: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 (hex) of a PEM certificate's DER bytes: how ``revoked.json`` names it."""
    from cryptography import x509

    return _fingerprint(x509.load_pem_x509_certificate(pem))


def read_revoked(path: Path) -> frozenset[str]:
    """Read ``revoked.json``: the SHA-256 of every revoked client certificate."""
    data = _read_json_of_format(path, "revocation list", REVOKED_FORMAT)
    fingerprints = data.get("certificates")
    if not isinstance(fingerprints, list) or not all(
        isinstance(f, str) and len(f) == 64 for f in fingerprints
    ):
        raise InputDataError(f"{path}: certificates: expected a list of SHA-256 hex digests")
    return frozenset(fingerprints)


# ------------------------------------------------------------------ making credentials


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


def _checked_node_ids(node_ids: Iterable[str], days: int) -> list[str]:
    nodes = list(node_ids)
    for node in nodes:
        problem = check_node_id(node)
        if problem is not None:
            raise ConfigurationError(problem)
    if len(set(nodes)) != len(nodes) or not nodes:
        raise ConfigurationError(f"node ids: expected distinct ids, got {nodes}")
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
) -> dict[str, Path]:
    """Write a CA, a server certificate for ``localhost``, ``127.0.0.1``, ``::1`` and
    ``hosts``, and for each node a client certificate and a token. Returns the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    nodes = _checked_node_ids(node_ids, days)
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
    directory: Path, node_ids: Iterable[str], *, now: dt.datetime, days: int = 365
) -> CredentialRenewal:
    """A new client certificate and token for each node, from ``directory``'s CA.

    The node's old certificate (if its folder has one) is added to ``revoked.json`` and its
    old token is replaced in ``tokens.json``, so the old folder no longer authenticates (a
    running server reads both files again). A node id never issued is added (and counted as
    issued, not revoked).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    nodes = _checked_node_ids(node_ids, days)
    ca_pem = _read(directory / "ca.pem", "CA certificate")
    if not (directory / "ca.key").exists():
        raise ConfigurationError(
            f"{directory / 'ca.key'}: not found; renewing issues the new credentials with the "
            f"CA key that `accord certs {directory}` wrote"
        )
    ca_key_pem = _read(directory / "ca.key", "CA private key")
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
