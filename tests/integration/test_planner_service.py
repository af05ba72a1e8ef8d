"""The planner service in-process (real Redis, real gRPC, the virtual connector, a router's
/metrics served by the test): each tick observes the interval's load from the metrics and the
fleet from the actuator's acknowledgement, decides, publishes the desired counts, and records
the decision as a span, metrics, a Redis stream entry and a WatchPlans message; SetTargets
changes the targets of the next decision and refuses a bad one naming its field."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import prometheus_client
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.planner.app import PlannerService
from services.planner.connectors.virtual import acknowledge, desired
from services.planner.core.settings import PlannerSettings
from services.planner.core.types import PoolState
from services.planner.decisions import stream_key
from services.planner.settings import PlannerServiceSettings
from tandem.redis_local import free_port
from tandem.service.groups import ControlPlaneSettings
from tandem.service.lifecycle import run_service
from tandem.v1 import planner_pb2, planner_pb2_grpc
from tandem.worker.settings import MockWorkerSettings


class FakeRouter:
    """A router's /metrics whose counters the test advances."""

    def __init__(self) -> None:
        self.requests = 0
        self.ttft_fast = 0

    def text(self) -> str:
        return (f"tandem_router_requests_total{{tandem_outcome=\"ok\"}} {self.requests}\n"
                f"gen_ai_client_token_usage_total{{gen_ai_token_type=\"input\"}} "
                f"{self.requests * 300}\n"
                f"gen_ai_client_token_usage_total{{gen_ai_token_type=\"output\"}} "
                f"{self.requests * 100}\n"
                f"gen_ai_server_time_to_first_token_seconds_bucket{{le=\"0.1\"}} {self.requests}\n"
                f"gen_ai_server_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} "
                f"{self.requests}\n")


@pytest.fixture
def router() -> Iterator[tuple[FakeRouter, str]]:
    fake = FakeRouter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = fake.text().encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def planner(redis_url: str, router: tuple[FakeRouter, str],
                  exporter: InMemorySpanExporter) -> AsyncIterator[PlannerService]:
    settings = PlannerServiceSettings(
        port=free_port(), connector="virtual", router_metrics_urls=(router[1],),
        control=ControlPlaneSettings(redis_url, f"test-{uuid.uuid4().hex[:8]}"),
        planning=PlannerSettings(interval_s=0.3, startup_s=1.0, prefill_max=8, decode_max=8),
        mock=MockWorkerSettings(profile="cpu-smollm2-135m", speedup=10))
    service = PlannerService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, stop))
    yield service
    stop.set()
    await task


def gauge(name: str, **labels: str) -> float | None:
    for family in prometheus_client.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_ticks_decide_publish_and_record(planner: PlannerService,
                                              router: tuple[FakeRouter, str],
                                              exporter: InMemorySpanExporter) -> None:
    fake, _ = router
    namespace = planner.settings.control.namespace
    client = aioredis.from_url(planner.settings.control.redis_url)
    await acknowledge(client, namespace, 0, {"prefill": PoolState(1), "decode": PoolState(1)})
    while not planner.server.port:
        await asyncio.sleep(0.01)
    async with grpc.aio.insecure_channel(planner.server.address) as channel:
        stub = planner_pb2_grpc.PlannerServiceStub(channel)
        watch = stub.WatchPlans(planner_pb2.WatchPlansRequest())
        # a heavy load: 200 requests per 0.3 s tick, each 300 prompt and 100 output tokens
        async def load() -> None:
            while True:
                fake.requests += 200
                await asyncio.sleep(0.3)
        loading = asyncio.create_task(load())
        plans = []
        async with asyncio.timeout(20):
            async for message in watch:
                plans.append(message.plan)
                if message.plan.decode_replicas > 1:
                    break
        watch.cancel()
        loading.cancel()
        plan = plans[-1]
        assert plan.connector == "virtual" and plan.observed_rate > 100
        assert [p.pool for p in plan.pools] == ["prefill", "decode"]
        assert plan.pools[1].ready == 1 and plan.pools[1].desired == plan.decode_replicas
        assert plan.forecast_rate > 0 and plan.predicted_itl_ms > 0 and plan.reason
        assert plan.observed_ttft_ms == pytest.approx(90.0)  # p90 within the 0-100 ms bucket
        assert plan.targets.ttft_ms == pytest.approx(500) and plan.targets.percentile == 0.9
        # published for the actuator under the plan's sequence
        assert await desired(client, namespace) == (
            plan.sequence, {"prefill": plan.prefill_replicas, "decode": plan.decode_replicas})
        # GetPlan: the latest plan
        latest = (await stub.GetPlan(planner_pb2.GetPlanRequest())).plan
        assert latest.sequence >= plan.sequence
        # WatchPlans with include_latest: the latest plan first
        async for message in stub.WatchPlans(planner_pb2.WatchPlansRequest(include_latest=True)):
            assert message.plan.sequence >= latest.sequence
            break
        # the Redis stream: the plan with the observation it came from
        entries = await client.xrange(stream_key(namespace))
        record = json.loads(entries[-1][1][b"plan"])
        assert set(record) == {"plan", "observation"}
        assert record["observation"]["pools"]["decode"] == {"ready": 1, "starting": 0,
                                                           "draining": 0}
        # a span per decision, metrics
        spans = [s for s in exporter.get_finished_spans() if s.name == "planner.decide"]
        assert len(spans) >= len(plans)
        decided = next(s for s in spans
                       if s.attributes["tandem.planner.sequence"] == plan.sequence)
        assert decided.attributes["tandem.planner.direction"] == "up"
        assert decided.attributes["tandem.planner.decode.desired"] == plan.decode_replicas
        assert gauge("tandem_planner_workers", tandem_pool="decode", tandem_state="ready") == 1
        assert gauge("tandem_planner_target_ttft_seconds") == 0.5
        assert (gauge("tandem_planner_decisions_total", tandem_direction="up") or 0) >= 1

        # SetTargets: the next plans steer to the new targets
        reply = await stub.SetTargets(planner_pb2.SetTargetsRequest(
            targets=planner_pb2.ServiceLevelObjective(ttft_ms=250)))
        assert (reply.targets.ttft_ms, reply.targets.itl_ms) == pytest.approx((250, 50))
        async with asyncio.timeout(10):
            async for message in stub.WatchPlans(planner_pb2.WatchPlansRequest()):
                if message.plan.targets.ttft_ms == pytest.approx(250):
                    break
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetTargets(planner_pb2.SetTargetsRequest(
                targets=planner_pb2.ServiceLevelObjective(percentile=1.5)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "targets.percentile" in refused.value.details()
    await client.aclose()
