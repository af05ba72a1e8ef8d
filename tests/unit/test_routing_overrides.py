"""Routing overrides: text from Redis to validated settings, table-driven."""

from __future__ import annotations

import re

import pytest

from services.router.core.routing_overrides import apply_overrides, changed_fields
from services.router.core.routing_settings import RoutingSettings
from services.router.routing_admin import _assignments

BASE = RoutingSettings(prefill_weight=2.0, policy="least_loaded")


@pytest.mark.parametrize(("raw", "expected"), [
    ({}, BASE),
    ({"prefill_weight": "3"}, RoutingSettings(prefill_weight=3.0, policy="least_loaded")),
    ({"policy": "kv", "cxl_credit": "0.25", "busy_waiting": "8"},
     RoutingSettings(prefill_weight=2.0, cxl_credit=0.25, busy_waiting=8)),
    ({"seed": "none"}, BASE),
    ({"seed": "7", "temperature": "0.5"},
     RoutingSettings(prefill_weight=2.0, policy="least_loaded", seed=7, temperature=0.5)),
])
def test_overrides_apply_on_top_of_the_base(raw: dict[str, str],
                                            expected: RoutingSettings) -> None:
    assert apply_overrides(BASE, raw) == expected


@pytest.mark.parametrize(("raw", "message"), [
    ({"prefil_weight": "3"}, "unknown routing setting 'prefil_weight'"),
    ({"prefill_weight": "heavy"}, "routing setting prefill_weight"),
    ({"busy_waiting": "1.5"}, "routing setting busy_waiting"),
    ({"cxl_credit": "7"}, "cxl_credit: must be <= 1 (got 7.0)"),
    ({"policy": "fastest"}, "policy: 'fastest' is not one of kv, round_robin, random, "
                            "least_loaded"),
    ({"running_weight": "-1"}, "running_weight: must be >= 0 (got -1.0)"),
    ({"prefill_weight": "3", "busy_block_fraction": "0"}, "busy_block_fraction"),  # all or none
])
def test_bad_overrides_are_refused_with_the_reason(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_overrides(BASE, raw)


def test_changed_fields_name_only_what_changed() -> None:
    after = apply_overrides(BASE, {"prefill_weight": "2", "cxl_credit": "0.5"})
    assert changed_fields(BASE, after) == {"cxl_credit": 0.5}
    assert changed_fields(BASE, BASE) == {}


@pytest.mark.parametrize(("items", "expected"), [
    (["prefill_weight=3"], {"prefill_weight": "3"}),
    (["cxl-credit = 0.5", "policy=kv"], {"cxl_credit": "0.5", "policy": "kv"}),
])
def test_admin_reads_field_assignments(items: list[str], expected: dict[str, str]) -> None:
    assert _assignments(items) == expected


@pytest.mark.parametrize("item", ["prefill_weight", "=3", ""])
def test_admin_refuses_what_is_not_an_assignment(item: str) -> None:
    with pytest.raises(ValueError, match="expected field=value"):
        _assignments([item])
