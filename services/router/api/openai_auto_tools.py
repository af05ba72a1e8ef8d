"""``tool_choice: "auto"``: the model decides whether to call a tool. The prompt renders the
tools with a tools-aware chat template and vLLM's own tool-call parser (``--tool-call-parser``,
a name of vLLM's ``ToolParserManager``) reads the calls in what the model wrote: whole
(``extract_tool_calls``) or as it streams (``extract_tool_calls_streaming``), so the router
answers ``tool_calls`` exactly where vLLM's server would, and text where the model answers in
prose.

vLLM's parsers live in the ``vllm`` package, whose import pulls in torch: 14 s and 585 MB of
resident memory here (more under load). The router therefore loads them once, on the first
``auto`` request (in a thread: the event loop keeps serving meanwhile), or when it starts with
``--tool-parser-preload``."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

from services.router.settings import ToolCallParserName
from tandem.errors import invalid

SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "chat_templates"
DEFAULT_MODEL_TOOLS_TEMPLATE = SHIPPED_TEMPLATES / "smollm2_tools.jinja"
"""SmolLM2's template with tools in the Hermes format (its own renders none)."""


@dataclasses.dataclass(frozen=True)
class AutoToolConfig:
    """How the router serves ``auto``: the template that renders the tools and the parser
    that reads the calls; ``refusal`` says why it cannot (a 400 naming ``tool_choice``)."""

    parser: ToolCallParserName
    template: str | None
    """The tools-aware template's source; None: the model's own (it renders tools)."""
    refusal: str | None = None

    @classmethod
    def resolve(cls, parser: ToolCallParserName, template_path: str, model_template: str,
                default_model: bool) -> AutoToolConfig:
        """``template_path`` (empty: the model's own template where it renders tools, else
        the shipped one for the default model); ``model_template``: the model's own source."""
        if parser == "none":
            return cls(parser, None, "tool_choice 'auto' (the default with tools) is off "
                       "(--tool-call-parser none); use 'required', a named function or 'none'")
        if template_path:
            return cls(parser, Path(template_path).read_text())
        if "tools" in model_template:
            return cls(parser, None)
        if default_model:
            return cls(parser, DEFAULT_MODEL_TOOLS_TEMPLATE.read_text())
        return cls(parser, None, "tool_choice 'auto' (the default with tools) is not "
                   "supported: the model's chat template renders no tools (see "
                   "--tool-chat-template); use 'required', a named function or 'none'")


class AutoTools:
    """vLLM's tool-call parser for ``auto`` requests, loaded once."""

    def __init__(self, config: AutoToolConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        """The model's tokenizer (a parser may read its vocabulary)."""
        self._classes: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.config.refusal is not None:
            raise invalid(self.config.refusal, "tool_choice")

    def load(self) -> tuple[Any, Any]:
        """vLLM's parser class and its request class (blocking: the first call imports)."""
        with self._lock:
            if self._classes is None:
                from vllm.entrypoints.openai.chat_completion.protocol import (
                    ChatCompletionRequest,
                )
                from vllm.tool_parsers import ToolParserManager

                self._classes = (ToolParserManager.get_tool_parser(self.config.parser),
                                 ChatCompletionRequest)
            return self._classes

    async def readers(self, tools: tuple[dict[str, Any], ...]) -> ToolReaders:
        """The readers of one request's choices (waits for the parser's first load)."""
        self.check()
        classes = self._classes
        if classes is None:
            classes = await asyncio.to_thread(self.load)
        parser, request_class = classes
        request = request_class(model="tandem", messages=[{"role": "user", "content": ""}],
                                tools=list(tools), tool_choice="auto")
        return ToolReaders(parser, request, self.tokenizer)


@dataclasses.dataclass(frozen=True)
class ToolReaders:
    """Makes one reader per choice (a parser keeps the state of one stream)."""

    parser: Any
    request: Any
    tokenizer: Any

    def reader(self) -> ToolReader:
        return ToolReader(self.parser(self.tokenizer, self.request.tools), self.request)


class ToolReader:
    """Reads one choice's output with vLLM's parser: whole, or delta by delta."""

    def __init__(self, parser: Any, request: Any) -> None:
        self.parser = parser
        self.request = request
        self.text = ""
        self.content_sent = 0
        """Characters of content streamed so far."""
        self.called = False
        """A tool call went out (the stream's finish reason is then ``tool_calls``)."""

    def whole(self, text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
        """(content, tool_calls) of a finished output; tool_calls None: prose."""
        found = self.parser.extract_tool_calls(text, self.request)
        if not found.tools_called:
            return text, None
        calls = [{"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments}}
            for call in found.tool_calls]
        return found.content or None, calls

    def feed(self, text: str, last: bool) -> dict[str, Any]:
        """The chat delta (``content``, ``tool_calls``) of a streamed piece of output;
        ``last``: the choice ends with it (text the parser held back as a possible start of a
        call goes out as content when no call came)."""
        previous = self.text
        self.text += text
        delta: dict[str, Any] = {}
        message = self.parser.extract_tool_calls_streaming(
            previous, self.text, text, [], [], [], self.request) if text else None
        if message is not None:
            if message.content:
                delta["content"] = message.content
                self.content_sent += len(message.content)
            if message.tool_calls:
                self.called = True
                delta["tool_calls"] = [call.model_dump(exclude_none=True)
                                       for call in message.tool_calls]
        if last and not self.called and len(self.text) > self.content_sent:
            delta["content"] = delta.get("content", "") + self.text[self.content_sent:]
            self.content_sent = len(self.text)
        return delta
