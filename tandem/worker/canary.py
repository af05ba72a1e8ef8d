"""The canary: one real generation through the engine before the worker reports SERVING."""

from __future__ import annotations

import uuid

from tandem.engines.base import Engine, EngineRequest, Sampling


async def canary(engine: Engine) -> None:
    """One real generation through the engine; health turns SERVING only after it succeeds."""
    request = EngineRequest(
        request_id=f"canary-{uuid.uuid4().hex[:8]}",
        prompt_token_ids=[1, 2, 3, 4],
        sampling=Sampling(max_tokens=1, temperature=0.0, ignore_eos=True),
    )
    produced = 0
    async for output in engine.generate(request):
        produced += len(output.token_ids)
    if produced != 1:
        raise RuntimeError(f"canary produced {produced} tokens instead of 1")
