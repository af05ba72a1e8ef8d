"""The one place a gRPC channel is made: plaintext, or TLS with this service's client
certificate when ``--tls-cert`` is set (``tandem.service.tls``), always with the kit's
transport options (``GrpcSettings``)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from tandem.service.groups import GrpcSettings
from tandem.service.tls import channel_credentials

Options = Sequence[tuple[str, int | str]]


def _options(settings: GrpcSettings, extra: Options) -> list[tuple[str, int | str]]:
    tls = settings.tls.channel_options() if settings.tls.enabled else []
    return [*settings.channel_options(), *tls, *extra]


def aio_channel(address: str, settings: GrpcSettings | None = None,
                extra_options: Options = ()) -> grpc.aio.Channel:
    """An asyncio channel to ``address``."""
    settings = settings or GrpcSettings()
    options = _options(settings, extra_options)
    if settings.tls.enabled:
        return grpc.aio.secure_channel(address, channel_credentials(settings.tls), options)
    return grpc.aio.insecure_channel(address, options)


def sync_channel(address: str, settings: GrpcSettings | None = None,
                 extra_options: Options = ()) -> grpc.Channel:
    """A blocking channel to ``address`` (the launcher, readiness probes)."""
    settings = settings or GrpcSettings()
    options = _options(settings, extra_options)
    if settings.tls.enabled:
        return grpc.secure_channel(address, channel_credentials(settings.tls), options)
    return grpc.insecure_channel(address, options)
