"""Attributes of the server span a worker opens for one prompt request (Generate, Prefill)."""

from __future__ import annotations

from opentelemetry.util.types import AttributeValue

from tandem.worker.validation import PromptRequest


def prompt_span_attributes(service: str, method: str, request: PromptRequest,
                           model: str) -> dict[str, AttributeValue]:
    """The ``rpc.*`` attributes of the call, the request's id, the model and the prompt's
    size."""
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "tandem.request_id": request.request_id, "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": len(request.prompt_token_ids)}
