"""Chat template and tokenization, done once at the router (the same rules as vLLM's server:
chat prompts are rendered with the model's template and tokenized without extra special
tokens; completion prompts are tokenized with the tokenizer's defaults). Without transformers
where ``services.router.tokenizer`` reproduces it exactly, with it elsewhere."""

from __future__ import annotations

import functools
from typing import Any

from services.router.ascii_bpe import AsciiByteLevelBPE
from services.router.tokenizer import LeanTokenizer, compile_chat_template
from tandem.errors import TandemError, invalid
from tandem.v1 import common_pb2


class PromptBuilder:
    """Turns OpenAI prompts into token ids for one model."""

    def __init__(self, model_dir: str, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        self.lean = LeanTokenizer.load(model_dir)
        """tokenizer.json and the chat template without transformers (None: transformers)."""
        self._hf: Any = None
        if self.lean is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            if not getattr(self._hf, "chat_template", None):
                raise RuntimeError(f"the tokenizer in {model_dir} has no chat template")
        backend = self.lean.backend if self.lean is not None \
            else getattr(self._hf, "backend_tokenizer", None)
        self._fast = AsciiByteLevelBPE.for_tokenizer(backend) if backend is not None else None
        """Exact fast path for ASCII chat prompts (None: the tokenizer's own path)."""

    def chat(self, conversation: list[dict[str, Any]],
             tools: list[dict[str, Any]] | None = None, template: str | None = None
             ) -> list[int]:
        """The prompt's tokens; ``tools`` rendered by the model's template, or by
        ``template`` (a Jinja source: a tools-aware template the model lacks)."""
        if self.lean is not None:
            text = self.lean.render_chat(conversation, tools,
                                         _compiled(template) if template else None)
        else:
            text = self._hf.apply_chat_template(conversation, tools=tools,
                                                chat_template=template, tokenize=False,
                                                add_generation_prompt=True)
        self.refuse_oversized(text, "messages")
        if self._fast is not None:
            return self._fast.encode(text)
        return self._encode(text, add_special_tokens=False)

    @functools.cached_property
    def template_source(self) -> str:
        """The model's own chat template."""
        if self.lean is not None:
            return self.lean.source
        return str(self._hf.chat_template)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (``tokenizers.Tokenizer`` or transformers')."""
        return self.lean.backend if self.lean is not None else self._hf

    def completion(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = self.vocab_size
            if any(token >= vocab for token in prompt):
                raise invalid(f"prompt token ids must be below the vocabulary size {vocab}",
                              "prompt")
            return prompt
        self.refuse_oversized(prompt, "prompt")
        return self._encode(prompt, add_special_tokens=True)

    def refuse_oversized(self, text: str, param: str) -> None:
        """Refuses, without tokenizing it, a text that cannot fit the context whatever its
        tokens: tokenizing megabytes (an 8 MiB body, a 64 MiB gRPC message) holds the event
        loop, and every stream of the router with it, for tens of seconds."""
        per_token = self.max_token_bytes
        if per_token is None:
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        least_tokens = -(-size // per_token)
        if least_tokens >= self.max_model_len:  # and one token to generate
            raise TandemError(
                common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"the prompt ({size} bytes) is at least {least_tokens} tokens. Please reduce "
                f"the prompt.", param)

    @functools.cached_property
    def max_token_bytes(self) -> int | None:
        """The most bytes of text one token stands for, where the tokenizer splits text into
        bytes (ByteLevel) without normalizing it first: a token's string, one symbol per byte,
        is at least as long in UTF-8 as the bytes it stands for. None for other tokenizers
        (a normalizer may drop text, an unknown token may cover any run of it)."""
        backend = self.lean.backend if self.lean is not None \
            else getattr(self._hf, "backend_tokenizer", None)
        if backend is None or backend.normalizer is not None \
                or type(backend.pre_tokenizer).__name__ != "ByteLevel":
            return None
        return max(len(token.encode()) for token in backend.get_vocab(with_added_tokens=True))

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if self.lean is not None:
            return self.lean.encode(text, add_special_tokens)
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, tokens: list[int]) -> str:
        """The text of token ids (an echoed token prompt), special tokens kept."""
        if self.lean is not None:
            return str(self.lean.backend.decode(tokens, skip_special_tokens=False))
        return str(self._hf.decode(tokens, skip_special_tokens=False))

    @functools.cached_property
    def vocab_size(self) -> int:
        return self.lean.vocab_size if self.lean is not None else len(self._hf)

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


@functools.lru_cache(maxsize=4)
def _compiled(source: str) -> Any:
    return compile_chat_template(source)
