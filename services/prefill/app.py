"""Composition root of the prefill worker: its PrefillService on the shared worker runtime."""

from __future__ import annotations

from services.prefill.api.prefill_service import PrefillServicer
from services.prefill.settings import PrefillSettings
from tandem.engines.base import Engine
from tandem.service.grpc import PREFILL_SERVICE
from tandem.v1 import worker_pb2_grpc
from tandem.worker.app import RoleServing, worker_main
from tandem.worker.settings import WorkerSettings

ROLE = "prefill"


def prefill_servicer(engine: Engine, settings: WorkerSettings) -> RoleServing:
    servicer = PrefillServicer(engine, settings.model.served_model_name,
                               settings.kvstore_address or "")
    return RoleServing(
        lambda server: worker_pb2_grpc.add_PrefillServiceServicer_to_server(servicer, server))


def main(argv: list[str]) -> None:
    worker_main(ROLE, PrefillSettings, argv, PREFILL_SERVICE, prefill_servicer)
