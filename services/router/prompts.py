"""Chat template and tokenization, done once at the router (the same rules as vLLM's server:
chat prompts are rendered with the model's template and tokenized without extra special
tokens; completion prompts are tokenized with the tokenizer's defaults)."""

from __future__ import annotations

import functools
from typing import Any

from services.router.ascii_bpe import AsciiByteLevelBPE
from tandem.errors import TandemError, invalid
from tandem.v1 import common_pb2


class PromptBuilder:
    """Turns OpenAI prompts into token ids for one model."""

    def __init__(self, model_dir: str, max_model_len: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.max_model_len = max_model_len
        if not getattr(self.tokenizer, "chat_template", None):
            raise RuntimeError(f"the tokenizer in {model_dir} has no chat template")
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._fast = AsciiByteLevelBPE.for_tokenizer(backend) if backend is not None else None
        """Exact fast path for ASCII chat prompts (None: the tokenizer's own path)."""

    def chat(self, conversation: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True)
        if self._fast is not None:
            return self._fast.encode(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def completion(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = self.vocab_size
            if any(token >= vocab for token in prompt):
                raise invalid(f"prompt token ids must be below the vocabulary size {vocab}",
                              "prompt")
            return prompt
        return list(self.tokenizer.encode(prompt))

    @functools.cached_property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def check_length(self, prompt_tokens: int, max_tokens: int | None) -> None:
        """A prompt that leaves no room for max_tokens is the client's error (400)."""
        if prompt_tokens == 0:
            raise invalid("the prompt is empty", "prompt")
        wanted = max_tokens or 1
        if prompt_tokens + wanted > self.max_model_len:
            raise TandemError(
                common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, "
                f"{wanted} for the completion). Please reduce the prompt or max_tokens.",
                "messages" if max_tokens is None else "max_tokens")
