"""gRPC transport security shared by every networked driver (federation, vertical).

:func:`server_tls` and :func:`channel_tls` turn the credentials read by
:mod:`accord.credentials.auth` into gRPC credentials (mutual TLS when the server holds the
CA), :func:`bearer_metadata` is how a client presents its token, and
:func:`channel_options` / :func:`format_address` are the channel settings and the address
form both ends use. gRPC is imported when a function is called, not with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accord.credentials.auth import NodeCredentials, ServerCredentials

if TYPE_CHECKING:
    import grpc

__all__ = [
    "bearer_metadata",
    "channel_options",
    "channel_tls",
    "format_address",
    "server_tls",
]


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC options both ends use: message limits, keepalive, no port sharing."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_tls(credentials: ServerCredentials) -> grpc.ServerCredentials:
    """The server's TLS credentials; client certificates are required (mutual TLS) when
    ``credentials`` holds the CA that signs them."""
    import grpc

    return grpc.ssl_server_credentials(
        [(credentials.private_key, credentials.certificate_chain)],
        root_certificates=credentials.client_ca,
        require_client_auth=credentials.client_ca is not None,
    )


def channel_tls(credentials: NodeCredentials) -> grpc.ChannelCredentials:
    """A client's TLS credentials: the CA it trusts and, if it has one, its certificate."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=credentials.root_ca,
        private_key=credentials.private_key,
        certificate_chain=credentials.certificate_chain,
    )


def bearer_metadata(credentials: NodeCredentials | None) -> tuple[tuple[str, str], ...]:
    """The ``authorization: Bearer`` metadata that presents the client's token (if any)."""
    if credentials is None or credentials.token is None:
        return ()
    return (("authorization", f"Bearer {credentials.token}"),)
