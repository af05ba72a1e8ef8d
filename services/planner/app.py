"""Composition root of the planner: the only place that wires its parts together.

Start: Redis, the connector, the scraper of the routers' metrics, the workers' queues
(``WorkerService.GetLoad``), the core planner (its
performance model from the mock engine's profile), the decision log, the gRPC server; the
canary reads the fleet through the connector; then SERVING and the tick (``Periodic``, every
``--interval-s``): observe the fleet and the interval's load, decide, apply, record. Stop
(SIGTERM): the tick stops, gRPC drains, the connector and Redis close. The fleet keeps the
counts last applied.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

from services.planner.api.grpc_api import PlannerServicer
from services.planner.connectors import build_connector
from services.planner.core.perf_model import PerformanceModel
from services.planner.core.planner import Planner
from services.planner.core.settings import PlannerSettings
from services.planner.core.types import POOLS, Observation, Pool, PoolState
from services.planner.decisions import DecisionLog
from services.planner.metrics import planner_metrics
from services.planner.observe import MetricsScraper, Snapshot, observation
from services.planner.settings import PlannerServiceSettings
from services.planner.startup import StartupClock
from services.planner.worker_loads import WorkerLoads
from tandem.engines.mock.perf import PerfProfile, fixed_profile, load_profile
from tandem.service.control_plane import control_plane_redis
from tandem.service.grpc import PLANNER_SERVICE, GrpcServer
from tandem.service.lifecycle import Periodic, service_main
from tandem.service.tls import client_context
from tandem.v1 import planner_pb2_grpc
from tandem.worker.settings import MockWorkerSettings

log = logging.getLogger("services.planner")


def worker_profile(mock: MockWorkerSettings) -> PerfProfile:
    """The performance model's profile: the one the mock workers run (``--mock-profile``, or
    their fixed times), its times divided by ``--mock-speedup`` as the workers divide them."""
    profile = (load_profile(mock.profile) if mock.profile else
               fixed_profile(mock.prefill_ms_per_token / 1000, mock.decode_ms / 1000))
    if mock.speedup == 1:
        return profile
    times = ("step_overhead_s", "prefill_token_s", "prefill_attention_s", "decode_step_s",
             "decode_seq_s", "decode_context_s")
    return dataclasses.replace(profile, **{name: getattr(profile, name) / mock.speedup
                                           for name in times})


class PlannerService:
    """The planner as a kit ``Service``."""

    name = "planner"

    def __init__(self, settings: PlannerServiceSettings) -> None:
        self.settings = settings
        self.planning = settings.planning
        self.redis = control_plane_redis(settings.control)
        self.connector = build_connector(settings, self.redis)
        tls = settings.grpc.tls
        self.scraper = MetricsScraper(settings.router_metrics_urls, settings.scrape_timeout_s,
                                      client_context(tls) if tls.enabled else True)
        self.loads = WorkerLoads(self.redis, settings.control.namespace,
                                 settings.scrape_timeout_s, settings.grpc)
        self.planner = Planner(self.planning, PerformanceModel(worker_profile(settings.mock)))
        self.decisions = DecisionLog(self.redis, settings.control.namespace,
                                     settings.decisions_stream_maxlen, planner_metrics())
        self.servicer = PlannerServicer(self.decisions, lambda: self.planning, self.retarget)
        self.server = GrpcServer(
            f"{settings.server.host}:{settings.port}", [PLANNER_SERVICE],
            [lambda s: planner_pb2_grpc.add_PlannerServiceServicer_to_server(self.servicer, s)],
            settings.grpc, settings.server.drain_grace_s)
        self.ticker = Periodic("planner tick", self.planning.interval_s, self.tick)
        self.startup = StartupClock(settings.startup_samples)
        self.sequence = 0
        self.applied: Mapping[Pool, int] | None = None
        self.previous: tuple[Snapshot, float] | None = None

    def retarget(self, planning: PlannerSettings) -> None:
        """New targets from the next tick on."""
        self.planning = planning
        self.planner.retarget(planning)
        log.info("planner targets", extra={"ttft_target_s": planning.ttft_target_s,
                                           "itl_target_s": planning.itl_target_s,
                                           "percentile": planning.percentile})

    async def start(self) -> None:
        await self.connector.start()
        await self.server.start()

    async def canary(self) -> None:
        await self.connector.observe()

    async def serve(self) -> None:
        await self.server.set_serving(True)
        self.ticker.start()
        log.info("planner serving", extra={"address": self.server.address,
                                           "connector": self.connector.name})

    async def observe(self) -> Observation | None:
        """The interval since the previous tick (None on the first: it sets the baseline)."""
        fleet = await self.connector.observe()
        snapshot = await self.scraper.snapshot()
        waiting = await self.loads.waiting()
        now = time.monotonic()
        self._measure_startup(now, fleet)
        previous, self.previous = self.previous, (snapshot, now)
        if previous is None:
            return None
        before, then = previous
        seen = observation(before, snapshot, now, now - then, self.planning.percentile,
                           {pool: fleet[pool] for pool in POOLS if pool in fleet})
        return dataclasses.replace(seen, waiting=waiting)

    def _measure_startup(self, now: float, fleet: Mapping[Pool, PoolState]) -> None:
        """A worker came up: the lead time follows the measured start-ups."""
        if self.startup.observe(now, fleet) and self.settings.measure_startup:
            lead = self.startup.lead_s
            if lead is not None and lead != self.planning.startup_s:
                log.info("worker start-up measured", extra={"startup_s": lead})
                self.retarget(dataclasses.replace(self.planning, startup_s=lead))

    async def tick(self) -> None:
        """Observe, decide, apply (when it changes something), record."""
        seen = await self.observe()
        if seen is None:
            return
        decision = self.planner.step(seen)
        self.sequence += 1
        desired = {pool: decision.desired.get(pool, 0) for pool in POOLS}
        provisioned = {pool: seen.pools[pool].provisioned if pool in seen.pools else 0
                       for pool in POOLS}
        if desired != self.applied or desired != provisioned:
            await self.connector.apply(desired, self.sequence)
            self.applied = desired
            for pool in POOLS:
                if desired[pool] > provisioned[pool]:
                    self.startup.asked(time.monotonic(), pool)
        await self.decisions.record(self.sequence, decision, seen, self.planning,
                                    self.connector.name)

    async def drain(self) -> None:
        await self.ticker.close()
        self.decisions.end_watches()
        await self.server.drain()

    async def close(self) -> None:
        await self.ticker.close()
        await self.server.close()
        await self.scraper.close()
        await self.loads.close()
        await self.connector.close()
        await self.redis.aclose()


def main(argv: list[str]) -> None:
    service_main("planner", PlannerServiceSettings, argv, PlannerService)
