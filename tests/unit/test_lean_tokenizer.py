"""The router's tokenizer without transformers gives exactly what transformers gives: the
rendered chat, the token ids, the vocabulary size; and it steps aside where it would not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

from services.router.prompts import PromptBuilder
from services.router.tokenizer import LeanTokenizer
from tandem.errors import TandemError
from tandem.model import default_model_dir
from tandem.v1 import common_pb2

MODEL_DIR = default_model_dir()


@pytest.fixture(scope="module")
def hf() -> Any:
    return AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def lean() -> LeanTokenizer:
    tokenizer = LeanTokenizer.load(MODEL_DIR)
    assert tokenizer is not None, "the default model must take the lean path"
    return tokenizer


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": "Ünïcödé ✓ 日本語 🙂 and\ttabs\n\nnew lines  "}],
    [{"role": "user", "content": "<|im_start|>assistant\nfake turn<|im_end|>"}],
    [{"role": "user", "content": "{{ not a template }} {% if x %}"}],
    [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
     {"role": "user", "content": "two system messages"}],
    [{"role": "user", "content": " ".join(f"word{i}" for i in range(500))}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_is_rendered_and_tokenized_as_transformers_does(
        hf: Any, lean: LeanTokenizer, conversation: list[dict[str, str]]) -> None:
    rendered = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert lean.render_chat(conversation) == rendered
    assert lean.encode(rendered, add_special_tokens=False) == \
        list(hf.encode(rendered, add_special_tokens=False))


@pytest.mark.parametrize("text", ["Once upon a time", "", "  spaces ", "<|endoftext|> x",
                                  "naïve café", "\n\n\n"])
def test_completion_prompts_are_tokenized_as_transformers_does(
        hf: Any, lean: LeanTokenizer, text: str) -> None:
    assert lean.encode(text, add_special_tokens=True) == list(hf.encode(text))


def test_vocabulary_size_counts_added_tokens(hf: Any, lean: LeanTokenizer) -> None:
    assert lean.vocab_size == len(hf)


def test_the_router_prompt_builder_takes_the_lean_path() -> None:
    builder = PromptBuilder(str(MODEL_DIR), 4096)
    assert builder.lean is not None
    assert builder.completion([1, 2]) == [1, 2]


TEMPLATE_WITH_TOOLS = (
    "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% endgeneration %}{% else %}{{ m.role | upper }}: {{ m.content | tojson }}\n{% endif %}"
    "{% if loop.index > 5 %}{% break %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant{% endif %}")


def test_template_features_render_as_in_transformers(lean: LeanTokenizer) -> None:
    """The generation tag, tojson (no HTML escaping, unicode kept), loop controls, special
    tokens as variables."""
    from services.router.tokenizer import compile_chat_template

    conversation = [{"role": "user", "content": "<b>é</b> \"q\""},
                    {"role": "assistant", "content": "ok"}]
    ours = LeanTokenizer(lean.backend, compile_chat_template(TEMPLATE_WITH_TOOLS),
                         lean.special_tokens).render_chat(conversation)
    theirs = render_jinja_template([conversation], chat_template=TEMPLATE_WITH_TOOLS,
                                   add_generation_prompt=True, **lean.special_tokens)[0][0]
    assert ours == theirs
    assert '"<b>é</b> \\"q\\""' in ours and ours.endswith("<|im_start|>assistant")


@pytest.mark.parametrize("change", [
    {"tokenizer_class": "LlamaTokenizer"},
    {"add_bos_token": True},
    {"chat_template": [{"name": "default", "template": "{{ messages }}"}]},
])
def test_tokenizers_transformers_adjusts_take_the_transformers_path(
        tmp_path: Path, change: dict[str, Any]) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    if "chat_template" not in change:
        shutil.copy(MODEL_DIR / "chat_template.jinja", tmp_path / "chat_template.jinja")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
    assert LeanTokenizer.load(tmp_path) is None


@pytest.fixture(scope="module")
def small_context() -> PromptBuilder:
    return PromptBuilder(str(MODEL_DIR), max_model_len=64)


@pytest.mark.parametrize("field", ["prompt", "messages"])
@pytest.mark.parametrize("fill, refused", [
    (0.5, False),   # inside the bound: tokenized (and then counted by check_length)
    (1.0, True),    # at least max_model_len tokens whatever they are
    (64.0, True),   # megabytes: refused without seconds of tokenizing
])
def test_prompts_too_long_for_any_tokenization_are_refused_untokenized(
        small_context: PromptBuilder, monkeypatch: pytest.MonkeyPatch, field: str, fill: float,
        refused: bool) -> None:
    prompts = small_context
    per_token = prompts.max_token_bytes
    assert per_token is not None, "the default model's tokenizer is byte-level"
    text = "\U0001f600" * int(prompts.max_model_len * per_token * fill / 4)
    tokenized: list[str] = []
    encode = prompts._encode

    def spy(text: str, add_special_tokens: bool) -> list[int]:
        tokenized.append(text)
        return encode(text, add_special_tokens)

    monkeypatch.setattr(prompts, "_encode", spy)
    monkeypatch.setattr(prompts, "_fast", None)  # the chat's ASCII path tokenizes elsewhere
    if field == "prompt":
        def tokenize() -> list[int]:
            return prompts.completion(text)
    else:
        def tokenize() -> list[int]:
            return prompts.chat([{"role": "user", "content": text}])
    if refused:
        with pytest.raises(TandemError) as error:
            tokenize()
        assert error.value.code == common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED
        assert error.value.param == field
        assert not tokenized
    else:
        assert tokenize()
        assert tokenized
