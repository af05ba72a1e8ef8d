"""The pieces the request driver (``generation``) splices into one client stream: the prefill
worker's first token, the decode worker's deltas cut where a stop string ends across the
hand-off (or across a migration, after the text the lost worker held back), and the usage of
a request migrated between decode workers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator

from services.router.core.handoff_stop import HandoffStop
from services.router.core.request import Delta
from tandem.protocol import FINISH_FROM_PROTO
from tandem.v1 import common_pb2, worker_pb2

log = logging.getLogger(__name__)


def whole_usage(usage: common_pb2.Usage, prompt_tokens: int,
                 resumed_from: int) -> common_pb2.Usage:
    """The usage of a migrated request, from its last worker's (whose prompt carried the
    ``resumed_from`` tokens sent before): the original prompt, and every completion token
    once."""
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=resumed_from + usage.completion_tokens,
        cached_tokens=min(usage.cached_tokens, prompt_tokens))


def first_delta(handoff: worker_pb2.PrefillResponse) -> Delta:
    """The prefill worker's first token as the client's first delta."""
    finish = FINISH_FROM_PROTO.get(handoff.finish_reason)
    return Delta(
        text=handoff.first_token_text, token_ids=[handoff.first_token_id],
        finish_reason=finish,
        prompt_tokens=handoff.usage.prompt_tokens if finish else 0,
        completion_tokens=1 if finish else 0,
        cached_tokens=handoff.usage.cached_tokens if finish else 0,
        engine=handoff.engine,
        logprobs=[handoff.first_token_logprobs] if handoff.HasField("first_token_logprobs")
        else ())


def held_text(resumed_text: str, sent: str) -> str:
    """What a migrated stream's lost worker held back (text that could begin a stop string):
    the text of its tokens (``resumed_text``, from the new worker) past the text sent. Empty
    when the two disagree (a detokenization that differs between the workers)."""
    if resumed_text.startswith(sent):
        return resumed_text[len(sent):]
    log.warning("a migrated stream's text differs from the text sent; nothing restored",
                extra={"sent_chars": len(sent), "resumed_chars": len(resumed_text)})
    return ""


async def cut_at_stop(deltas: AsyncGenerator[Delta, None], cut: HandoffStop,
                       prompt_tokens: int, cached_tokens: int, completion_tokens: int = 1,
                       held_first: bool = False) -> AsyncGenerator[Delta, None]:
    """The decode worker's deltas after a hand-off, ended where a stop string that began in
    the first token's text ends (the decode call is closed, which aborts its request).
    ``completion_tokens``: those sent before (the prefill worker's first token). After a
    migration (``held_first``) the first delta is the text the lost worker held back, in
    place of the first token's."""
    first = held_first
    try:
        async for delta in deltas:
            completion_tokens += len(delta.token_ids)
            release = cut.first(delta.text) if first else cut.next(delta.text)
            if first and not release.stopped:
                first = False
                if release.text:
                    yield dataclasses.replace(delta, text=release.text)
                continue
            if release.stopped:
                yield dataclasses.replace(
                    delta, text=release.text, finish_reason="stop", prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens, cached_tokens=cached_tokens)
                return
            text = release.text + (cut.flush() if delta.finish_reason is not None else "")
            yield delta if text == delta.text else dataclasses.replace(delta, text=text)
    finally:
        await deltas.aclose()
