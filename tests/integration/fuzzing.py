"""Hypothesis strategies and settings for the router's fuzz tests (HTTP and gRPC).

The fuzz tests run in ``make test`` with a bounded, derandomized budget so CI sees the same
examples every run. Two environment variables open it up locally:

    TANDEM_FUZZ_EXAMPLES=2000 TANDEM_FUZZ_RANDOM=1 make test-integration

``TANDEM_FUZZ_EXAMPLES`` is the number of examples per test (default 30); with
``TANDEM_FUZZ_RANDOM=1`` each run draws new examples instead of the fixed CI sequence (a
failure prints the ``@reproduce_failure`` blob to pin it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

FUZZ = settings(
    max_examples=int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "30")),
    derandomize=os.environ.get("TANDEM_FUZZ_RANDOM", "") != "1",
    deadline=None,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)
"""Every fuzz test's settings: no deadline (a request's time is the server's business, and
the suite has its own timeout), no example database (CI is stateless), no explain phase (it
traces every line: slow, and the failing input is printed anyway)."""


def outcome(label: str) -> None:
    """Counts an outcome for ``pytest --hypothesis-show-statistics`` (how much of the budget
    got past validation); a no-op in a plain test."""
    if currently_in_test_context():
        event(label)


ODD_CHARACTERS = [
    "\x00", "\x01", "\x1b", "\x7f", "\u0085", "\u00a0",       # NUL, controls, NEL, NBSP
    "\u200b", "\u200d", "\u2028", "\u2029", "\ufeff",          # zero width, separators, BOM
    "\u202e", "\u202d", "\u2066", "\u0627\u0644\u0639",        # RTL override, isolates, Arabic
    "\u0301", "e\u0301\u0302\u0303\u0304\u0305\u0306",         # combining marks (zalgo)
    "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8",
    "\ufffd", "\uffff", "\U0010ffff",                          # replacement, non-characters
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "{{ x }}", "{% if %}",  # template bait
]
"""Characters and sequences that break naive text handling."""

odd_text = st.lists(
    st.sampled_from(ODD_CHARACTERS) | st.text(max_size=8), max_size=12).map("".join)
"""Short strings mixing plain text with the odd characters above (valid unicode: protobuf
refuses anything else before it is sent, and JSON bodies get theirs from
``with_lone_surrogate``)."""

LONE_SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\udc00\ud800"]


def with_lone_surrogate(body: dict[str, Any], field: str) -> st.SearchStrategy[dict[str, Any]]:
    """``body`` with a lone surrogate in the text of ``field`` (a string or a chat message):
    valid JSON when escaped (``\\ud800``), invalid UTF-8 when not."""

    def insert(surrogate: str) -> dict[str, Any]:
        value = body[field]
        if isinstance(value, str):
            return body | {field: value + surrogate}
        return body | {field: [message | {"content": message["content"] + surrogate}
                               for message in value]}

    return st.sampled_from(LONE_SURROGATES).map(insert)

HUGE_NUMBERS: list[int | float] = [
    0, -1, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
    -(2**63) - 1, -(2**64), 10**30, 1e308, -1e308, 5e-324, -0.0, 0.5, 1.5, 2.000001, -2.5,
]

numbers = st.sampled_from(HUGE_NUMBERS) | st.integers() | st.floats(allow_nan=False,
                                                                     allow_infinity=False)

scalars = st.none() | st.booleans() | numbers | odd_text

json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value, small."""


def deep(depth: int, kind: str) -> Any:
    """``depth`` nested arrays or objects."""
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return value


deep_values = st.builds(deep, st.sampled_from([64, 1000, 1100]), st.sampled_from(["array",
                                                                                   "object"]))
"""Deep nesting: below and above the JSON parser's depth limit (1024)."""

wrong_values = json_values | deep_values


def encode_json(value: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes for any value: lone surrogates become ``\\udXXX`` escapes (ascii_only) or
    invalid UTF-8 (not), numbers past float range stay exact integers. Deep values are
    written without recursion so 1000-deep nesting encodes."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            parts.append(item.text)
        elif isinstance(item, list):
            stack.append(_Raw("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Raw(","))
            parts.append("[")
        elif isinstance(item, dict):
            stack.append(_Raw("}"))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, member = entries[index]
                stack.append(member)
                stack.append(_Raw(json.dumps(str(key), ensure_ascii=ascii_only) + ":"))
                if index:
                    stack.append(_Raw(","))
            parts.append("{")
        else:
            parts.append(json.dumps(item, ensure_ascii=ascii_only))
    return "".join(parts).encode("utf-8", "surrogatepass")


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text


def mutate(body: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
           ) -> st.SearchStrategy[dict[str, Any]]:
    """A valid ``body`` with one to three mutations: a field dropped, a field given a wrong or
    edge value (from ``fields`` when it has a strategy there, else any JSON), an unknown field
    added, or a nested message mutated the same way."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        result = dict(body)
        for _ in range(draw(st.integers(1, 3))):
            action = draw(st.sampled_from(["drop", "wrong", "edge", "extra"]))
            name = draw(st.sampled_from(sorted(set(body) | set(fields))))
            if action == "drop":
                result.pop(name, None)
            elif action == "wrong":
                result[name] = draw(wrong_values)
            elif action == "edge" and name in fields:
                result[name] = draw(fields[name])
            else:
                result[draw(odd_text)] = draw(wrong_values)
        return result

    return build()


def mutate_message(valid: Message, fields: dict[str, st.SearchStrategy[Any]]
                   ) -> st.SearchStrategy[Message]:
    """A copy of the ``valid`` protobuf message with one to three of ``fields`` (dotted paths
    into nested messages: ``sampling.top_k``) set to a drawn value; None clears the field, a
    list replaces a repeated field."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(valid)()
        message.CopyFrom(valid)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(sorted(fields)))
            value = draw(fields[path])
            *parents, name = path.split(".")
            target = message
            for parent in parents:
                target = getattr(target, parent)
            if value is None:
                target.ClearField(name)
            elif isinstance(value, list):
                del getattr(target, name)[:]
                getattr(target, name).extend(value)
            else:
                setattr(target, name, value)
        return message

    return build()
