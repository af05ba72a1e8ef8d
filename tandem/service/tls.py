"""TLS of every hop: one settings group (``--tls-cert``, ``--tls-key``, ``--tls-ca``,
``--tls-client-auth``; nested in ``GrpcSettings``, so every service has it) and what is built
from it: gRPC server and channel credentials, and ``ssl`` contexts for the KV store's data plane
and the router's HTTPS.

Without a certificate everything stays plaintext (the local default). With one, a service
serves TLS with it, requires its callers to present a certificate signed by ``--tls-ca``
(mutual TLS, unless ``--tls-client-auth false``), and presents it itself when it calls another
service. The files are read when a server or a channel is built, so a rotated certificate is
picked up by new connections of a restarted process; nothing here logs their contents.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import grpc

from tandem.service.settings import Settings


@dataclasses.dataclass(frozen=True)
class TlsSettings(Settings):
    """Transport security of this service's servers and of its calls to other services."""

    cert: str = ""
    """PEM certificate chain this service presents, as a server and as a client; empty:
    plaintext everywhere."""
    key: str = ""
    """PEM private key of --tls-cert (a file only its service can read)."""
    ca: str = ""
    """PEM bundle of the CA(s) that peers' certificates must chain to: the servers this service
    calls, and the clients that call it."""
    client_auth: bool = True
    """Servers require a client certificate signed by --tls-ca (mutual TLS). The router's
    HTTPS (OpenAI) port never asks for one: its clients are authenticated by API keys."""
    server_name: str = ""
    """Name every server's certificate is checked against, whatever address it is reached at
    (peers found by IP: compose replicas, Kubernetes pods; put it in every service's
    certificate, ``devca --hosts``); empty: the host of the address called."""

    @property
    def enabled(self) -> bool:
        return bool(self.cert)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()  # (a nested group: the loader validates only the top-level settings)

    def validate(self) -> None:
        if self.enabled and not (self.key and self.ca):
            raise ValueError("--tls-cert needs --tls-key and --tls-ca")
        if not self.enabled and (self.key or self.ca):
            raise ValueError("--tls-key and --tls-ca need --tls-cert")

    def flags(self) -> list[str]:
        """The flags that give a child process these settings."""
        if not self.enabled:
            return []
        return ["--tls-cert", self.cert, "--tls-key", self.key, "--tls-ca", self.ca,
                "--tls-client-auth", str(self.client_auth).lower(),
                *(["--tls-server-name", self.server_name] if self.server_name else [])]

    def channel_options(self) -> list[tuple[str, str]]:
        """gRPC channel options of these settings (the name servers are checked against)."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(tls.key), _read(tls.cert))], root_certificates=_read(tls.ca),
        require_client_auth=tls.client_auth)


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca),
                                        private_key=_read(tls.key),
                                        certificate_chain=_read(tls.cert))


def server_context(tls: TlsSettings, client_auth: bool | None = None) -> ssl.SSLContext:
    """An ``ssl`` server context (the data plane; the router's HTTPS with ``client_auth``
    False)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    required = tls.client_auth if client_auth is None else client_auth
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """An ``ssl`` client context: verifies the server against --tls-ca (host name included) and
    presents this service's certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context
