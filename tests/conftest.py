"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tandem.redis_local import PrivateRedis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private, empty Redis for the test session (never the machine's shared one)."""
    server = PrivateRedis()
    try:
        yield server.url
    finally:
        server.stop()
