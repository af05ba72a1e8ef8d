"""The benchmark's reading of a worker's own stage figures from its /metrics page."""

from __future__ import annotations

import pytest

from bench.worker_stages import StageTotal, WorkerSnapshot, parse_page
from tandem.stages import Stage

DECODE_PAGE = """\
# HELP tandem_worker_running_requests Requests running in the engine
# TYPE tandem_worker_running_requests gauge
tandem_worker_running_requests{tandem_role="decode",tandem_worker_id="decode-0"} 0.0
# HELP tandem_stage_kv_get_duration_seconds Fetching a request's KV blocks from the KV store
# TYPE tandem_stage_kv_get_duration_seconds histogram
tandem_stage_kv_get_duration_seconds_bucket{le="0.05"} 1.0
tandem_stage_kv_get_duration_seconds_bucket{le="+Inf"} 2.0
tandem_stage_kv_get_duration_seconds_count 2.0
tandem_stage_kv_get_duration_seconds_sum 0.125
# HELP tandem_stage_first_decode_step_duration_seconds First token to second token
# TYPE tandem_stage_first_decode_step_duration_seconds histogram
tandem_stage_first_decode_step_duration_seconds_bucket{le="+Inf"} 3.0
tandem_stage_first_decode_step_duration_seconds_count 3.0
tandem_stage_first_decode_step_duration_seconds_sum 0.3
"""

KVSTORE_PAGE = """\
# HELP tandem_kvstore_blocks Blocks held
# TYPE tandem_kvstore_blocks gauge
tandem_kvstore_blocks{tier="cxl"} 12.0
"""


@pytest.mark.parametrize(("page", "worker", "stages"), [
    (DECODE_PAGE, "decode-0", {Stage.KV_GET: StageTotal(2.0, 0.125),
                               Stage.FIRST_DECODE_STEP: StageTotal(3.0, 0.3)}),
    (KVSTORE_PAGE, None, {}),
])
def test_a_page_gives_its_worker_and_stage_totals(
        page: str, worker: str | None, stages: dict[Stage, StageTotal]) -> None:
    assert parse_page(page) == (worker, stages)


def test_the_difference_of_two_snapshots_is_what_happened_between_them() -> None:
    before = WorkerSnapshot({Stage.KV_GET: StageTotal(2.0, 0.125)}, cpu_s=10.0)
    after = WorkerSnapshot({Stage.KV_GET: StageTotal(3.0, 0.2),
                            Stage.QUEUE: StageTotal(1.0, 0.001)}, cpu_s=12.5)
    delta = after - before
    assert delta.count(Stage.KV_GET) == 1.0
    assert delta.seconds(Stage.KV_GET) == pytest.approx(0.075)
    assert delta.seconds(Stage.QUEUE) == 0.001  # a stage first seen after ``before``
    assert delta.seconds(Stage.KV_PUT) == 0.0  # never recorded
    assert delta.cpu_s == 2.5
