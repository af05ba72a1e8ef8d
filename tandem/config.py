"""Typed, frozen settings objects loaded from defaults, environment variables and CLI flags.

Each service declares one frozen dataclass. Every field carries an attribute docstring (the
string literal right below it, as in vLLM's config classes); it becomes the ``--help`` text.
Precedence: CLI flag > environment variable (``<PREFIX>_<FIELD>``) > default. A field whose type
is itself a settings dataclass is flattened: its fields become ``--<field>-<subfield>`` flags
(environment ``<PREFIX>_<FIELD>_<SUBFIELD>``), documented by the inner class's docstrings.
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


@dataclasses.dataclass(frozen=True)
class _Option:
    """One flag: a scalar field, possibly inside a nested settings dataclass."""

    path: tuple[str, ...]
    """Field names from the outer class down to the scalar."""
    annotation: Any
    default: Any
    doc: str

    @property
    def name(self) -> str:
        return "_".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _options(cls: type, path: tuple[str, ...] = ()) -> list[_Option]:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    options: list[_Option] = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            options += _options(annotation, (*path, field.name))  # type: ignore[arg-type]
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        options.append(_Option((*path, field.name), annotation, default,
                               docs.get(field.name, "")))
    return options


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str) -> None:
    """Adds one ``--flag`` per field, documented by its docstring and environment variable."""
    for option in _options(cls):
        help_text = (f"{option.doc} "
                     f"[env {_env_name(env_prefix, option.name)}; default: {option.default!r}]")
        parser.add_argument(option.flag, dest=option.name, default=None,
                            metavar=_metavar(option.annotation), help=help_text.strip())


def _build(cls: type[SettingsT], values: dict[tuple[str, ...], Any]) -> SettingsT:
    """``cls`` with the given values (keyed by field path); nested classes built likewise."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        inner = {path[1:]: value for path, value in values.items() if path[0] == field.name}
        if dataclasses.is_dataclass(hints[field.name]):
            if inner:
                kwargs[field.name] = _build(hints[field.name], inner)
        elif (field.name,) in values:
            kwargs[field.name] = values[(field.name,)]
    return cls(**kwargs)


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
    values: dict[tuple[str, ...], Any] = {}
    for option in _options(cls):
        raw = getattr(namespace, option.name)
        if raw is None:
            raw = environ.get(_env_name(env_prefix, option.name))
        if raw is None:
            continue
        try:
            values[option.path] = parse_value(raw, option.annotation)
        except (TypeError, ValueError) as error:
            parser.error(f"{option.flag}: {error}")
    settings = _build(cls, values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            parser.error(str(error))
    return settings
