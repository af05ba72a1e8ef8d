"""PlannerService over gRPC: the latest plan, new targets, and the stream of decisions."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable

import grpc
from opentelemetry import trace

from services.planner.core.settings import PlannerSettings
from services.planner.decisions import DecisionLog, targets_message
from tandem.errors import invalid
from tandem.service.grpc import PLANNER_SERVICE
from tandem.service.handlers import rpc
from tandem.v1 import planner_pb2, planner_pb2_grpc


def retargeted(settings: PlannerSettings,
               targets: planner_pb2.ServiceLevelObjective) -> PlannerSettings:
    """``settings`` with the targets set in ``targets`` (a field left 0 keeps its value); a
    value out of range is refused naming its field."""
    changes: dict[str, float] = {}
    for field, name, scale in (("ttft_ms", "ttft_target_s", 1e-3),
                               ("itl_ms", "itl_target_s", 1e-3),
                               ("percentile", "percentile", 1.0)):
        value = getattr(targets, field)
        if value == 0:
            continue
        if value < 0 or (field == "percentile" and value >= 1) or value != value:
            raise invalid(f"targets.{field} out of range: {value}", f"targets.{field}")
        changes[name] = value * scale
    try:
        return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    except ValueError as error:  # the settings' own limits
        raise invalid(f"targets refused: {error}", "targets") from None


class PlannerServicer(planner_pb2_grpc.PlannerServiceServicer):
    """Reads the decision log; changes targets through ``retarget``."""

    def __init__(self, decisions: DecisionLog,
                 settings: Callable[[], PlannerSettings],
                 retarget: Callable[[PlannerSettings], None]) -> None:
        self.decisions = decisions
        self.settings = settings
        self.retarget = retarget

    @rpc(PLANNER_SERVICE)
    async def GetPlan(self, request: planner_pb2.GetPlanRequest,
                      context: grpc.aio.ServicerContext,
                      span: trace.Span) -> planner_pb2.GetPlanResponse:
        latest = self.decisions.latest
        return planner_pb2.GetPlanResponse(plan=latest) if latest is not None \
            else planner_pb2.GetPlanResponse()

    @rpc(PLANNER_SERVICE)
    async def SetTargets(self, request: planner_pb2.SetTargetsRequest,
                         context: grpc.aio.ServicerContext,
                         span: trace.Span) -> planner_pb2.SetTargetsResponse:
        settings = retargeted(self.settings(), request.targets)
        self.retarget(settings)
        span.set_attributes({"tandem.planner.ttft_target_s": settings.ttft_target_s,
                             "tandem.planner.itl_target_s": settings.itl_target_s,
                             "tandem.planner.percentile": settings.percentile})
        return planner_pb2.SetTargetsResponse(targets=targets_message(settings))

    @rpc(PLANNER_SERVICE)
    async def WatchPlans(self, request: planner_pb2.WatchPlansRequest,
                         context: grpc.aio.ServicerContext,
                         span: trace.Span) -> AsyncIterator[planner_pb2.WatchPlansResponse]:
        queue = self.decisions.watch()
        try:
            if request.include_latest and self.decisions.latest is not None:
                yield planner_pb2.WatchPlansResponse(plan=self.decisions.latest)
            while (plan := await queue.get()) is not None:
                yield planner_pb2.WatchPlansResponse(plan=plan)
        finally:
            self.decisions.unwatch(queue)
