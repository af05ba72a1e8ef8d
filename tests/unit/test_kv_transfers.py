"""A request's KV transfers in the latency breakdown: summed per request in flight, carried
between vLLM's processes as plain lists (the connector's stats), one stage sample per request."""

from __future__ import annotations

import pickle

import pytest

from tandem.kv_transfers import STAGE_OF, Direction, RequestTransfers, Transfer
from tandem.kvconnector.stats import TandemConnectorStats, transfers_of
from tandem.stages import Stage

PUT, GET = Direction.PUT, Direction.GET


def test_a_request_sums_its_transfers_until_it_finishes() -> None:
    transfers = RequestTransfers()
    transfers.begin("a")
    transfers.begin("b")
    # A chunked prefill saves in two steps; b loads once; c is not in flight here.
    transfers.add([Transfer("a", PUT, 0.25, 100, 1), Transfer("b", GET, 0.5, 200, 2)])
    transfers.add([Transfer("a", PUT, 0.125, 100, 1), Transfer("c", GET, 9.0, 1, 1)])
    assert transfers.finish("a") == {PUT: 0.375}
    assert transfers.finish("b") == {GET: 0.5}
    assert transfers.finish("c") == {}
    assert len(transfers) == 0


def test_a_request_that_moved_nothing_records_nothing() -> None:
    transfers = RequestTransfers()
    transfers.begin("a")
    assert transfers.finish("a") == {}
    assert transfers.finish("a") == {}  # finished once


def test_a_transfer_crosses_processes_as_plain_values() -> None:
    transfer = Transfer("req-1", PUT, 0.5, 2_949_120, 12)
    wire = transfer.to_wire()
    assert all(isinstance(v, str | int | float) for v in wire)
    assert Transfer.from_wire(pickle.loads(pickle.dumps(wire))) == transfer
    with pytest.raises(ValueError):
        Transfer.from_wire(["r", "sideways", 0.1, 1, 1])


def test_each_direction_is_its_own_stage() -> None:
    assert STAGE_OF == {PUT: Stage.KV_PUT, GET: Stage.KV_GET}


def test_connector_stats_aggregate_and_reduce() -> None:
    first = TandemConnectorStats()
    assert first.is_empty()
    first.add(Transfer("a", PUT, 0.25, 100, 1))
    second = TandemConnectorStats()
    second.add(Transfer("a", PUT, 0.5, 300, 3))
    second.add(Transfer("b", GET, 0.125, 400, 4))
    merged = first.aggregate(second)
    assert not merged.is_empty()
    assert transfers_of(merged.to_dict()) == [
        Transfer("a", PUT, 0.25, 100, 1), Transfer("a", PUT, 0.5, 300, 3),
        Transfer("b", GET, 0.125, 400, 4)]
    assert merged.reduce() == {"put_transfers": 2, "put_bytes": 400, "put_seconds": 0.75,
                               "get_transfers": 1, "get_bytes": 400, "get_seconds": 0.125}
    merged.reset()
    assert merged.is_empty() and transfers_of(merged.to_dict()) == []
    assert transfers_of(None) == []
