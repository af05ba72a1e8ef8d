"""Entry point of the prefill worker: ``python -m services.prefill --help``."""

from __future__ import annotations

import sys

from services.prefill.server import PrefillServicer
from services.prefill.settings import PrefillSettings
from tandem.engines.base import Engine
from tandem.v1 import worker_pb2_grpc
from tandem.worker import WorkerSettings
from tandem.worker_service import AddServicer, worker_main


def prefill_servicer(engine: Engine, settings: WorkerSettings) -> AddServicer:
    store = settings.kvstore_address or ""
    return lambda server: worker_pb2_grpc.add_PrefillServiceServicer_to_server(
        PrefillServicer(engine, settings.served_model_name, store), server)


def main(argv: list[str]) -> None:
    worker_main("prefill", PrefillSettings, argv, "tandem.v1.PrefillService", prefill_servicer)


if __name__ == "__main__":
    main(sys.argv[1:])
