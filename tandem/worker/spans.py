"""Attributes a worker adds to the server span of one prompt request (Generate, Prefill)."""

from __future__ import annotations

from opentelemetry.util.types import AttributeValue

from tandem.worker.validation import PromptRequest


def prompt_attributes(request: PromptRequest, model: str) -> dict[str, AttributeValue]:
    """The request's id, the model and the prompt's size (the kit's wrapper sets the
    ``rpc.*`` ones)."""
    return {"tandem.request_id": request.request_id, "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": len(request.prompt_token_ids)}
