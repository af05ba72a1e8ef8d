"""Entry point of the decode worker: ``python -m services.decode --help``."""

from __future__ import annotations

import asyncio
import sys

from services.decode.server import DecodeServicer, WorkerServicer
from services.decode.settings import DecodeSettings
from tandem.config import load_settings
from tandem.grpc_server import GrpcServer
from tandem.logs import setup_logging
from tandem.metrics_http import serve_metrics
from tandem.runtime import run
from tandem.telemetry import TelemetrySettings, setup_telemetry
from tandem.v1 import worker_pb2_grpc
from tandem.worker import WorkerKVEvents, WorkerRuntime, build_engine, grpc_settings

ROLE = "decode"


def main(argv: list[str]) -> None:
    settings = load_settings(DecodeSettings, "tandem_decode", argv)
    setup_logging("decode", settings.log_level)
    setup_telemetry("tandem-decode", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))

    async def serve(stop: asyncio.Event) -> None:
        engine = build_engine(settings)
        kv_events = WorkerKVEvents(engine)
        server = GrpcServer(
            f"{settings.host}:{settings.port}",
            ["tandem.v1.DecodeService", "tandem.v1.WorkerService"],
            [
                lambda s: worker_pb2_grpc.add_DecodeServiceServicer_to_server(
                    DecodeServicer(engine, settings.served_model_name), s),
                lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                    WorkerServicer(engine, kv_events.snapshot), s),
            ],
            grpc_settings(settings),
        )
        if settings.metrics_port is not None:
            serve_metrics(settings.host, settings.metrics_port)
        await WorkerRuntime(ROLE, settings, engine, server, kv_events).serve(stop)

    run(serve)


if __name__ == "__main__":
    main(sys.argv[1:])
