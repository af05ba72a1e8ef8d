"""What the planner reads from the routers' /metrics: the Prometheus text parsed and summed
over routers, the interval's percentile from two cumulative histograms (as PromQL's
histogram_quantile), and the observation between two snapshots."""

from __future__ import annotations

import math

import pytest

from services.planner.core.types import PoolState
from services.planner.observe import Snapshot, observation, parse, quantile

ROUTER = """\
# TYPE tandem_router_requests_total counter
tandem_router_requests_total{tandem_outcome="ok"} 90
tandem_router_requests_total{tandem_outcome="error"} 10
# TYPE tandem_router_running_requests gauge
tandem_router_running_requests 4
# TYPE tandem_router_queued_requests gauge
tandem_router_queued_requests 1
# TYPE gen_ai_client_token_usage_total counter
gen_ai_client_token_usage_total{gen_ai_token_type="input"} 12000
gen_ai_client_token_usage_total{gen_ai_token_type="output"} 3000
# TYPE tandem_router_prompt_blocks_total counter
tandem_router_prompt_blocks_total 700
# TYPE tandem_router_cached_blocks_total counter
tandem_router_cached_blocks_total 350
# TYPE gen_ai_server_time_to_first_token_seconds histogram
gen_ai_server_time_to_first_token_seconds_bucket{le="0.1"} 50
gen_ai_server_time_to_first_token_seconds_bucket{le="0.5"} 90
gen_ai_server_time_to_first_token_seconds_bucket{le="+Inf"} 100
gen_ai_server_time_to_first_token_seconds_sum 20
gen_ai_server_time_to_first_token_seconds_count 100
# TYPE gen_ai_server_time_per_output_token_seconds histogram
gen_ai_server_time_per_output_token_seconds_bucket{le="0.05"} 100
gen_ai_server_time_per_output_token_seconds_bucket{le="+Inf"} 100
gen_ai_server_time_per_output_token_seconds_sum 3
gen_ai_server_time_per_output_token_seconds_count 100
"""


def test_parse_sums_every_router() -> None:
    snapshot = parse([ROUTER, ROUTER])
    assert snapshot.requests == 200 and snapshot.running == 8 and snapshot.queued == 2
    assert (snapshot.input_tokens, snapshot.output_tokens) == (24000, 6000)
    assert (snapshot.prompt_blocks, snapshot.cached_blocks) == (1400, 700)
    assert snapshot.ttft_buckets == {0.1: 100, 0.5: 180, math.inf: 200}


@pytest.mark.parametrize(("q", "before", "after", "expected"), [
    # 100 new samples: 50 under 0.1, 40 in (0.1, 0.5], 10 above
    (0.5, {}, {0.1: 50, 0.5: 90, math.inf: 100}, 0.1),
    (0.7, {}, {0.1: 50, 0.5: 90, math.inf: 100}, 0.1 + 0.4 * (20 / 40)),
    (0.25, {}, {0.1: 50, 0.5: 90, math.inf: 100}, 0.05),
    (0.95, {}, {0.1: 50, 0.5: 90, math.inf: 100}, 0.5),  # in +Inf: its lower bound
    # only the interval counts: 10 new samples, all in (0.1, 0.5]
    (0.9, {0.1: 50, 0.5: 90, math.inf: 100}, {0.1: 50, 0.5: 100, math.inf: 110},
     0.1 + 0.4 * 0.9),
    (0.9, {0.1: 5, math.inf: 5}, {0.1: 5, math.inf: 5}, None),  # no new sample
    (0.9, {}, {}, None),
])
def test_quantile_of_the_interval(q: float, before: dict[float, float],
                                  after: dict[float, float], expected: float | None) -> None:
    got = quantile(q, before, after)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_observation_of_an_interval() -> None:
    before = Snapshot(requests=100, running=4, input_tokens=12000, output_tokens=3000,
                      prompt_blocks=700, cached_blocks=350,
                      ttft_buckets={0.1: 50, 0.5: 90, math.inf: 100},
                      itl_buckets={0.05: 100, math.inf: 100})
    after = Snapshot(requests=150, running=9, input_tokens=22000, output_tokens=8000,
                     prompt_blocks=800, cached_blocks=425,
                     ttft_buckets={0.1: 50, 0.5: 140, math.inf: 150},
                     itl_buckets={0.05: 100, math.inf: 100})
    pools = {"decode": PoolState(2, starting=1)}
    seen = observation(before, after, now_s=50.0, interval_s=10.0, percentile=0.9,
                       pools=pools)  # type: ignore[arg-type]
    assert seen.arrivals == 55  # 50 finished + 5 more in flight
    assert seen.rate == 5.5
    assert (seen.prompt_tokens, seen.output_tokens) == ((200,), (100,))
    assert seen.prefix_hit_rate == 0.75
    assert seen.observed_ttft_p == pytest.approx(0.1 + 0.4 * 0.9)
    assert seen.observed_itl_p is None
    assert seen.pools == pools


def test_an_idle_interval_and_a_restarted_router() -> None:
    busy = Snapshot(requests=500, running=0, input_tokens=1000, output_tokens=1000)
    idle = observation(busy, busy, 10.0, 10.0, 0.9, {})
    assert idle.arrivals == 0 and idle.prompt_tokens == () and idle.prefix_hit_rate == 0.0
    restarted = Snapshot(requests=3, running=1, input_tokens=30, output_tokens=9)
    seen = observation(busy, restarted, 20.0, 10.0, 0.9, {})
    assert seen.arrivals == 4 and seen.prompt_tokens == (10,) and seen.output_tokens == (3,)


def test_a_request_waiting_for_a_first_worker_is_demand() -> None:
    """Scale-to-zero: no worker, nothing finished or running, one request queued at the
    router: an arrival (the planner brings the pools back from zero for it)."""
    empty = Snapshot(requests=7)
    waiting = Snapshot(requests=7, queued=1)
    assert observation(empty, waiting, 10.0, 10.0, 0.9, {}).arrivals == 1
    served = Snapshot(requests=8)  # it was served within the next interval
    assert observation(waiting, served, 20.0, 10.0, 0.9, {}).arrivals == 0


async def test_a_name_is_scraped_at_each_of_its_addresses() -> None:
    from services.planner.observe import MetricsScraper

    scraper = MetricsScraper(["http://localhost:8000/metrics", "http://10.1.2.3:9/m"], 1.0)
    urls = await scraper.endpoints()
    await scraper.close()
    assert "http://127.0.0.1:8000/metrics" in urls and urls[-1] == "http://10.1.2.3:9/m"


@pytest.mark.parametrize(("before", "after", "mean", "limit", "expected"), [
    # 30 prompts in (64, 128], 10 in (512, 1024]: 3 samples at 96 and 1 at 768, scaled so
    # their mean is the true mean 250 (96·3 + 768 = 1056; times 250/264)
    ({}, {64: 0, 128: 30, 512: 30, 1024: 40, math.inf: 40}, 250.0, 4,
     (91, 91, 91, 727)),
    # only the interval's samples count (99 short, 1 long); the rare tail keeps one sample:
    # 10 at 64 and 1 at 576, scaled to the mean 70 (times 70/110.5)
    ({128: 30, 1024: 30, math.inf: 30}, {128: 129, 1024: 130, math.inf: 130}, 70.0, 10,
     (41,) * 10 + (365,)),
    ({}, {}, 42.4, 64, (42,)),  # no histogram: the mean
    ({16: 5}, {16: 5}, 0.0, 64, ()),  # nothing new, no mean
    ({}, {100: 0, math.inf: 3}, 500.0, 3, (500, 500, 500)),  # the +Inf bucket: 2 times its bound
])
def test_length_samples(before: dict[float, float], after: dict[float, float], mean: float,
                        limit: int, expected: tuple[int, ...]) -> None:
    from services.planner.observe import length_samples

    assert length_samples(before, after, mean, limit) == expected
