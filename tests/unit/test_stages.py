"""The latency-breakdown stages: one histogram per stage, named in one place."""

from __future__ import annotations

import pytest

from tandem.stages import INTER_TOKEN_METRIC, Stage, metric_name, prometheus_name, record_stage


@pytest.mark.parametrize(("stage", "name", "prometheus"), [
    (Stage.QUEUE, "tandem.stage.queue.duration", "tandem_stage_queue_duration_seconds"),
    (Stage.KV_GET, "tandem.stage.kv_get.duration", "tandem_stage_kv_get_duration_seconds"),
    (Stage.INTER_TOKEN, INTER_TOKEN_METRIC, "gen_ai_server_time_per_output_token_seconds"),
])
def test_names(stage: Stage, name: str, prometheus: str) -> None:
    assert metric_name(stage) == name
    assert prometheus_name(stage) == prometheus


def test_every_stage_has_its_own_histogram() -> None:
    names = [metric_name(stage) for stage in Stage]
    assert len(set(names)) == len(names)


def test_inter_token_is_left_to_the_genai_metric() -> None:
    with pytest.raises(ValueError, match="time_per_output_token"):
        record_stage(Stage.INTER_TOKEN, 0.01)
