"""Settings of the decode worker."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from annotated_types import Interval

from tandem.worker.settings import WorkerSettings


@dataclasses.dataclass(frozen=True)
class DecodeSettings(WorkerSettings):
    """Decode worker: generates tokens on an engine and streams them to the router.

    Every flag can also be set as TANDEM_DECODE_<FLAG> in the environment."""

    port: Annotated[int, Interval(ge=0, le=65535)] = 50060
    """gRPC port (0 picks a free one; the registered address carries the real port)."""
    token_stream: bool = True
    """Also serve Generate on a framed token stream beside gRPC (``tandem.tokenstream``: the
    same messages, less CPU per token for the router), announced in discovery; routers with
    --token-stream prefer it. gRPC keeps serving every call either way."""
    token_stream_port: Annotated[int, Interval(ge=0, le=65535)] = 0
    """Port of the token stream (0 picks a free one; discovery carries the real port)."""
