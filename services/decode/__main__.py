"""Entry point of the decode worker: ``python -m services.decode --help``."""

from __future__ import annotations

import sys

from services.decode.server import DecodeServicer
from services.decode.settings import DecodeSettings
from tandem.engines.base import Engine
from tandem.v1 import worker_pb2_grpc
from tandem.worker import WorkerSettings
from tandem.worker_service import AddServicer, worker_main


def decode_servicer(engine: Engine, settings: WorkerSettings) -> AddServicer:
    return lambda server: worker_pb2_grpc.add_DecodeServiceServicer_to_server(
        DecodeServicer(engine, settings.served_model_name), server)


def main(argv: list[str]) -> None:
    worker_main("decode", DecodeSettings, argv, "tandem.v1.DecodeService", decode_servicer)


if __name__ == "__main__":
    main(sys.argv[1:])
