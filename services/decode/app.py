"""Composition root of the decode worker: its DecodeService on the shared worker runtime."""

from __future__ import annotations

from services.decode.api.decode_service import DecodeServicer
from services.decode.settings import DecodeSettings
from tandem.engines.base import Engine
from tandem.service.grpc import DECODE_SERVICE
from tandem.tokenstream.server import TokenStreamServer
from tandem.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker.app import AddServicer, worker_main
from tandem.worker.settings import WorkerSettings

ROLE = "decode"


def decode_servicer(engine: Engine, settings: WorkerSettings) -> AddServicer:
    return lambda server: worker_pb2_grpc.add_DecodeServiceServicer_to_server(
        DecodeServicer(engine, settings.model.served_model_name), server)


def decode_stream(engine: Engine, settings: WorkerSettings) -> TokenStreamServer | None:
    """Generate on the framed token stream, when the settings ask for it."""
    if not isinstance(settings, DecodeSettings) or not settings.token_stream:
        return None
    servicer = DecodeServicer(engine, settings.model.served_model_name)
    return TokenStreamServer(servicer.Generate, worker_pb2.GenerateRequest,
                             settings.server.host, settings.token_stream_port, settings.grpc)


def main(argv: list[str]) -> None:
    worker_main(ROLE, DecodeSettings, argv, DECODE_SERVICE, decode_servicer, decode_stream)
