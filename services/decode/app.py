"""Composition root of the decode worker: its DecodeService on the shared worker runtime."""

from __future__ import annotations

from services.decode.api.decode_service import DecodeServicer
from services.decode.settings import DecodeSettings
from tandem.engines.base import Engine
from tandem.service.grpc import DECODE_SERVICE
from tandem.tokenstream.server import TokenStreamServer
from tandem.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker.app import RoleServing, worker_main

ROLE = "decode"


def decode_servicer(engine: Engine, settings: DecodeSettings) -> RoleServing:
    """DecodeService on gRPC and, when the settings ask for it, its Generate on the framed
    token stream: one servicer behind both."""
    servicer = DecodeServicer(engine, settings.model.served_model_name)
    stream = TokenStreamServer(servicer.Generate, worker_pb2.GenerateRequest,
                               settings.server.host, settings.token_stream_port, settings.grpc,
                               settings.server.drain_grace_s) if settings.token_stream else None
    return RoleServing(
        lambda server: worker_pb2_grpc.add_DecodeServiceServicer_to_server(servicer, server),
        stream)


def main(argv: list[str]) -> None:
    worker_main(ROLE, DecodeSettings, argv, DECODE_SERVICE, decode_servicer)
