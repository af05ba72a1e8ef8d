"""``tool_choice: "auto"`` (``openai_auto_tools``): the default model's tools template, which
template and parser the router takes, and vLLM's own "hermes" parser reading what the model
wrote — whole and streamed, as prose and as a call — into OpenAI's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.router.api.openai_auto_tools import (
    DEFAULT_MODEL_TOOLS_TEMPLATE,
    AutoToolConfig,
    AutoTools,
    ToolReaders,
)
from services.router.api.openai_choices import Choices, Shape
from services.router.api.openai_schema import ChatCompletionRequest
from services.router.api.openai_tools import FunctionDefinition, Tool, plan_tools
from services.router.prompts import PromptBuilder
from tandem.errors import TandemError
from tandem.model import default_model_dir
from tests.unit.test_openai_choices import chunks, delta, whole

WEATHER = Tool(type="function", function=FunctionDefinition(
    name="get_weather", description="Get the current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}))
PROSE = ("The weather in Paris is described as a mix of warm and cool. Paris is known for its "
         "beautiful Parisian culture")
"""SmolLM2-135M-Instruct's greedy answer (vLLM CPU, bf16) to "What is the weather in Paris?"
under the shipped template's tools prompt: prose."""
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
"""A call in the Hermes format the template asks for."""
PREFACED = "Let me check.\n" + CALL


@pytest.fixture(scope="module")
def prompts() -> PromptBuilder:
    return PromptBuilder(str(default_model_dir()), 4096)


@pytest.fixture(scope="module")
def readers(prompts: PromptBuilder) -> ToolReaders:
    config = AutoToolConfig.resolve("hermes", "", prompts.template_source, True)
    tools = AutoTools(config, prompts.tokenizer)
    tools.load()  # vLLM's parser (imports vllm: slow, once)
    import asyncio

    return asyncio.run(tools.readers((WEATHER.model_dump(exclude_none=True),)))


def test_the_default_models_template_renders_no_tools_and_the_shipped_one_does(
        prompts: PromptBuilder) -> None:
    assert "tools" not in prompts.template_source
    config = AutoToolConfig.resolve("hermes", "", prompts.template_source, True)
    assert config.template == DEFAULT_MODEL_TOOLS_TEMPLATE.read_text()
    assert config.refusal is None


@pytest.mark.parametrize("conversation", [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
])
def test_without_tools_the_shipped_template_renders_as_the_models_own(
        prompts: PromptBuilder, conversation: list[dict[str, Any]]) -> None:
    shipped = DEFAULT_MODEL_TOOLS_TEMPLATE.read_text()
    assert prompts.chat(conversation, None, shipped) == prompts.chat(conversation)


def test_the_shipped_template_renders_tools_calls_and_results(prompts: PromptBuilder) -> None:
    request = ChatCompletionRequest.model_validate({"model": "m", "tools": [
        WEATHER.model_dump(exclude_none=True)], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]})
    plan = request.tool_plan()
    assert plan is not None and plan.auto
    text = prompts.decode(prompts.chat(request.conversation(), list(plan.tools),
                                       DEFAULT_MODEL_TOOLS_TEMPLATE.read_text()))
    assert text.startswith("<|im_start|>system\nBe brief.\n\nYou are a function calling AI")
    assert json.dumps(WEATHER.model_dump(exclude_none=True)) in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call><|im_end|>\n') in text
    assert text.endswith("<|im_start|>user\n<tool_response>\nsunny\n</tool_response>"
                         "<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("parser", "path", "own", "default", "template", "refused"), [
    ("hermes", "", "{{ messages }}", True, "shipped", False),
    ("hermes", "", "{% for tool in tools %}{% endfor %}", False, None, False),  # its own
    ("hermes", "", "{{ messages }}", False, None, True),  # no tools anywhere: 400
    ("none", "", "{% if tools %}{% endif %}", True, None, True),
    ("hermes", "given", "{{ messages }}", False, "given", False),
])
def test_which_template_and_parser_serve_auto(
        tmp_path: Path, parser: Any, path: str, own: str, default: bool,
        template: str | None, refused: bool) -> None:
    given = tmp_path / "tools.jinja"
    given.write_text("given")
    config = AutoToolConfig.resolve(parser, str(given) if path else "", own, default)
    expected = {"shipped": DEFAULT_MODEL_TOOLS_TEMPLATE.read_text(), "given": "given",
                None: None}[template]
    assert config.template == expected
    assert (config.refusal is not None) == refused
    if refused:
        with pytest.raises(TandemError) as error:
            AutoTools(config, None).check()
        assert error.value.param == "tool_choice"


def auto_shape(readers: ToolReaders) -> Shape:
    return Shape(chat=True, tools=plan_tools([WEATHER], "auto", None), auto=readers)


@pytest.mark.parametrize(("text", "content", "called"), [
    (PROSE, PROSE, False),
    (CALL, None, True),
    (PREFACED, "Let me check.\n", True),
])
def test_a_whole_answer_is_prose_or_tool_calls(readers: ToolReaders, text: str,
                                               content: str | None, called: bool) -> None:
    choices = Choices(auto_shape(readers), 1)
    choices.add(0, delta(text, "stop", 20))
    choice = whole(choices)["choices"][0]
    assert choice["message"]["content"] == content
    assert choice["finish_reason"] == ("tool_calls" if called else "stop")
    if called:
        [call] = choice["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"]
        assert call["function"]["name"] == "get_weather"
        assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    else:
        assert "tool_calls" not in choice["message"]


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize(("text", "content", "called"), [
    (PROSE, PROSE, False),
    (PROSE + " <tool", PROSE + " <tool", False),  # held back as a possible call, then sent
    (CALL, "", True),
    (PREFACED, "Let me check.\n", True),
])
def test_a_streamed_answer_is_content_or_tool_call_deltas(
        readers: ToolReaders, size: int, text: str, content: str, called: bool) -> None:
    choices = Choices(auto_shape(readers), 1)
    parts = pieces(text, size)
    deltas = [(0, delta(part, "stop" if i == len(parts) - 1 else None, 20))
              for i, part in enumerate(parts)]
    sent = chunks(choices, deltas)
    streamed = [c["choices"][0]["delta"] for c in sent]
    assert "".join(d.get("content", "") for d in streamed) == content
    calls = [call for d in streamed for call in d.get("tool_calls", [])]
    assert sent[-1]["choices"][0]["finish_reason"] == ("tool_calls" if called else "stop")
    if not called:
        assert calls == []
        return
    assert calls[0]["id"] and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert {call["index"] for call in calls} == {0}
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    assert orjson.loads(arguments) == {"city": "Paris"}
