"""Checks of request fields (``core.validate``), shared by the gRPC and data-plane transports."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from services.kvstore.core.validate import Checks
from services.kvstore.settings import KVStoreSettings
from tandem.errors import TandemError
from tandem.v1 import common_pb2

CHECKS = Checks({"cxl": common_pb2.STORAGE_TIER_CXL, "nvme": common_pb2.STORAGE_TIER_NVME},
                dataclasses.replace(KVStoreSettings(), max_chain_blocks=2, max_block_bytes=100))


@pytest.mark.parametrize(("call", "result", "refused"), [
    (lambda: CHECKS.hashes([b"a" * 16, b"b" * 16]), [b"a" * 16, b"b" * 16], ""),
    (lambda: CHECKS.hashes([b"a" * 16] * 3), None, "block_hashes"),  # too many
    (lambda: CHECKS.hashes([b"a" * 15], "block_hash"), None, "block_hash"),
    (lambda: CHECKS.tier(0), None, ""),  # the fastest
    (lambda: CHECKS.tier(common_pb2.STORAGE_TIER_NVME), "nvme", ""),
    (lambda: CHECKS.tier(99), None, "tier"),
    (lambda: CHECKS.size(100), 100, ""),
    (lambda: CHECKS.size(0), None, "block_bytes"),
    (lambda: CHECKS.size(101), None, "block_bytes"),
    (lambda: CHECKS.parent(b""), b"", ""),
    (lambda: CHECKS.parent(b"p" * 16), b"p" * 16, ""),
    (lambda: CHECKS.parent(b"p"), None, "parent_hash"),
])
def test_checks(call: Callable[[], object], result: object, refused: str) -> None:
    if refused:
        with pytest.raises(TandemError) as raised:
            call()
        assert raised.value.param == refused
        assert raised.value.code == common_pb2.ERROR_CODE_INVALID_REQUEST
    else:
        assert call() == result


def test_storage_of_tiers() -> None:
    assert CHECKS.storage_of == {"cxl": common_pb2.STORAGE_TIER_CXL,
                                 "nvme": common_pb2.STORAGE_TIER_NVME}
