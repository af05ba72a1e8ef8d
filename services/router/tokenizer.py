"""The model's tokenizer and chat template without ``transformers``.

Loading the tokenizer through ``transformers.AutoTokenizer`` imports torch: ~8 s and ~440 MB
per router process here. The router needs far less: ``tokenizer.json`` (the Rust ``tokenizers``
library, which ``transformers`` wraps for fast tokenizers) and the chat template rendered in
the same Jinja environment as ``transformers.apply_chat_template`` (sandboxed, trim_blocks,
lstrip_blocks, loop controls, its ``tojson``, ``raise_exception`` and ``strftime_now``, the
``{% generation %}`` tag, and the special tokens as variables). ``LeanTokenizer.load`` returns
None for a model directory it cannot reproduce exactly (a tokenizer that ``transformers``
adjusts in Python, named templates); the router then takes the ``transformers`` path.
Tests compare both paths on the default model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_PLAIN_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer",
                  "GPT2TokenizerFast"}
"""Tokenizer classes that ``transformers`` runs as ``tokenizer.json`` alone."""
_ADJUSTING_KEYS = ("add_bos_token", "add_eos_token", "add_prefix_space", "legacy")
"""tokenizer_config.json keys with which ``transformers`` rewrites the tokenizer in Python."""
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                   "cls_token", "mask_token")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` renders its body (transformers marks assistant
    tokens with it; rendering is unchanged)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


def compile_chat_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(source)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it (text, or an AddedToken dict)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class LeanTokenizer:
    """Token ids and chat rendering from ``tokenizer.json`` and the chat template."""

    def __init__(self, backend: Any, template: jinja2.Template,
                 special_tokens: dict[str, str], source: str = "") -> None:
        self.backend = backend
        """The ``tokenizers.Tokenizer``."""
        self.template = template
        self.source = source
        """The chat template's Jinja source."""
        self.special_tokens = special_tokens

    @classmethod
    def load(cls, model_dir: str | Path) -> LeanTokenizer | None:
        """The lean tokenizer of ``model_dir``, or None when it would not be exact there."""
        directory = Path(model_dir)
        config_path = directory / "tokenizer_config.json"
        tokenizer_path = directory / "tokenizer.json"
        if not config_path.is_file() or not tokenizer_path.is_file():
            return None
        config = json.loads(config_path.read_text())
        if config.get("tokenizer_class") not in _PLAIN_CLASSES or any(
                key in config for key in _ADJUSTING_KEYS):
            return None
        template_path = directory / "chat_template.jinja"
        source = template_path.read_text() if template_path.is_file() \
            else config.get("chat_template")
        if not isinstance(source, str) or not source:
            return None  # absent, or named templates (a list): transformers chooses
        import tokenizers

        special = {name: text for name in _SPECIAL_TOKENS
                   if (text := _token_text(config.get(name))) is not None}
        return cls(tokenizers.Tokenizer.from_file(str(tokenizer_path)),
                   compile_chat_template(source), special, source)

    def render_chat(self, conversation: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None,
                    template: jinja2.Template | None = None) -> str:
        """``apply_chat_template(conversation, tools=tools, chat_template=template,
        tokenize=False, add_generation_prompt=True)``."""
        return (template or self.template).render(
            messages=conversation, tools=tools, documents=None, add_generation_prompt=True,
            **self.special_tokens)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: the vocabulary with added tokens."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))
