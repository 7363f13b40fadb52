"""Reading credentials: a local CA, TLS certificates, per-node (or per-party) tokens, and
the check a server makes on every registering node (or dialling party).

``accord certs DIR`` (:func:`accord.credentials.issue.make_credentials`) writes::

    DIR/ca.pem  DIR/ca.key              the federation's CA (keep ca.key offline)
    DIR/server.pem  DIR/server.key      the server's TLS certificate (serverAuth)
    DIR/tokens.json                     SHA-256 of each node's token (server side)
    DIR/<node-id>/ca.pem node.pem node.key token
                                        one folder to copy to each node's machine
                                        (``--names bank,insurer``: one per party name)
    DIR/revoked.json                    SHA-256 of certificates replaced by ``--renew``

``accord certs DIR --renew NODE``
(:func:`~accord.credentials.issue.renew_node_credentials`) issues that node a new
certificate and token from the same CA (a leaked or lost folder is replaced), lists the old
certificate in ``revoked.json`` and drops the old token from ``tokens.json``; a running
server reads both again when they change (:meth:`Authenticator.reloading`).

A node authenticates with its token (``authorization: Bearer`` metadata, checked against
the hash in constant time), with its client certificate (mutual TLS: signed by the CA,
clientAuth usage, common name = node id), or both (the default of ``accord server``). A
refused node gets one opaque "credentials refused"; the server log gets the reason.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accord.credentials.naming import check_node_id
from accord.errors import AccordError, ConfigurationError, InputDataError

__all__ = [
    "CLIENT_AUTH_MODES",
    "REVOKED_NAME",
    "Authenticator",
    "NodeCredentials",
    "ServerCredentials",
    "certificate_fingerprint",
    "hash_token",
    "load_node_credentials",
    "load_server_credentials",
    "read_file",
    "read_revoked",
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


def read_file(path: Path, what: str) -> bytes:
    """The bytes of a credential file; a missing or unreadable one is one line naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise InputDataError(f"{path}: {what} not found") from error
    except OSError as error:
        raise InputDataError(f"{path}: cannot read {what}: {error}") from error


def _read_json_of_format(path: Path, what: str, format_name: str) -> dict[str, Any]:
    """A JSON object whose ``format`` field is ``format_name`` (else a clear error)."""
    try:
        data = json.loads(read_file(path, what))
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
        certificate_chain=read_file(cert_path, "server certificate"),
        private_key=read_file(key_path, "server private key"),
        client_ca=None if ca_path is None else read_file(ca_path, "CA certificate"),
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
        token = read_file(token_path, "token").decode().strip()
        if not token:
            raise InputDataError(f"{token_path}: the token file is empty")
    return NodeCredentials(
        root_ca=None if ca_path is None else read_file(ca_path, "CA certificate"),
        certificate_chain=None if cert_path is None else read_file(cert_path, "node certificate"),
        private_key=None if key_path is None else read_file(key_path, "node private key"),
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
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return "no client certificate"
    return _pem_refusal(claimed, bytes(pems[0]), revoked)


def _pem_refusal(claimed: str, pem: bytes, revoked: frozenset[str]) -> str | None:
    """:func:`_certificate_refusal` of one PEM certificate. Only the parse is remembered,
    keyed on the certificate alone: a federation server checks every node's certificate
    against the revocation list at each round start, and parsing it each time cost 0.1 ms a
    node; the node id a peer claims is unchecked input and never part of a cache key."""
    parsed = _parsed_certificate(pem)
    if parsed.unreadable is not None:
        return parsed.unreadable
    if parsed.fingerprint in revoked:
        return f"client certificate of {claimed!r} is revoked ({REVOKED_NAME})"
    if parsed.common_name != claimed:
        return f"client certificate is for {parsed.common_name!r}, not {claimed!r}"
    return parsed.usage_problem


@dataclass(frozen=True)
class _ParsedCertificate:
    fingerprint: str = ""
    common_name: str = ""
    unreadable: str | None = None
    usage_problem: str | None = None


@functools.lru_cache(maxsize=1024)
def _parsed_certificate(pem: bytes) -> _ParsedCertificate:
    """What the checks need of a client certificate, parsed once per certificate."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        return _ParsedCertificate(unreadable=f"unreadable client certificate: {error}")
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    usage_problem = None
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage_problem = "client certificate has no extended key usage"
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            usage_problem = "client certificate is not for client authentication"
    return _ParsedCertificate(_fingerprint(certificate), common_name, None, usage_problem)


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
