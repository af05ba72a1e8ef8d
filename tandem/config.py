"""Typed, frozen settings objects loaded from defaults, environment variables and CLI flags.

Each service declares one frozen dataclass. Every field carries an attribute docstring (the
string literal right below it, as in vLLM's config classes); it becomes the ``--help`` text.
Precedence: CLI flag > environment variable (``<PREFIX>_<FIELD>``) > default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import os
import textwrap
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

SettingsT = TypeVar("SettingsT")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (including its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _base_type(annotation: Any) -> Any:
    """The scalar type inside ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def parse_value(raw: str, annotation: Any) -> Any:
    """Converts a string from the environment or the command line to a field's type."""
    optional = type(None) in typing.get_args(annotation)
    if optional and raw.strip().lower() in ("", "none", "null"):
        return None
    base = _base_type(annotation)
    if base is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        return tuple(parse_value(item, item_type) for item in raw.split(",") if item.strip())
    if base in (int, float, str):
        return base(raw)
    raise TypeError(f"unsupported settings type {annotation!r}")


def _env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}_{field_name}".upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str) -> None:
    """Adds one ``--flag`` per field, documented by its docstring and environment variable."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = (
            f"{docs.get(field.name, '')} "
            f"[env {_env_name(env_prefix, field.name)}; default: {default!r}]"
        )
        parser.add_argument(
            flag, dest=field.name, default=None, metavar=_metavar(hints[field.name]),
            help=help_text.strip(),
        )


def _metavar(annotation: Any) -> str:
    base = _base_type(annotation)
    return getattr(base, "__name__", "VALUE").upper()


def load_settings(
    cls: type[SettingsT],
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: typing.Mapping[str, str] | None = None,
    description: str | None = None,
) -> SettingsT:
    """Builds ``cls`` from defaults, then the environment, then CLI flags."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=description or inspect.getdoc(cls))
    add_arguments(parser, cls, env_prefix)
    namespace = parser.parse_args([] if argv is None else list(argv))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = getattr(namespace, field.name)
        if raw is None:
            raw = environ.get(_env_name(env_prefix, field.name))
        if raw is None:
            continue
        try:
            values[field.name] = parse_value(raw, hints[field.name])
        except (TypeError, ValueError) as error:
            parser.error(f"--{field.name.replace('_', '-')}: {error}")
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            parser.error(str(error))
    return settings
