"""Typed, frozen settings loaded from defaults, environment variables and CLI flags.

Each service declares one frozen dataclass. Every field carries an attribute docstring (the
string literal right below it, as in vLLM's config classes); it becomes the ``--help`` text.
Precedence: CLI flag > environment variable (``<PREFIX>_<FIELD>``) > default.

- A choice is typed as ``Literal[...]``: the flag lists the choices and refuses others.
- A limit sits on the field: ``Annotated[int, Ge(1)]`` (``annotated_types``); every ``Settings``
  checks its limits and choices when it is built, from flags or in code.
- A field whose type is itself a settings dataclass is a group. A plain group is flattened
  under its name: its fields become ``--<field>-<subfield>`` flags (environment
  ``<PREFIX>_<FIELD>_<SUBFIELD>``). A shared group (``shared(Group)``: control plane, telemetry,
  server) is flattened without a prefix, so every service spells its flags the same way.

pydantic-settings does much of this, but it spells nested flags ``--group.field`` and costs
~0.3 s of imports (this loader: 0.05 s), measured on the router's start-up path.
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import annotated_types

SettingsT = TypeVar("SettingsT")

_FLATTEN = "tandem.settings.flatten"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings class: its choices and limits are checked when it is built."""

    def __post_init__(self) -> None:
        check_fields(self)


def shared(group: Callable[..., Any], **defaults: Any) -> Any:
    """A shared settings group as a field, flattened without a prefix; ``defaults`` override
    the group's own for this service."""
    factory = functools.partial(group, **defaults) if defaults else group
    return dataclasses.field(default_factory=factory, metadata={_FLATTEN: True})


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


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


_hints: Callable[[type], dict[str, Any]] = functools.cache(_type_hints)


def _unannotated(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """The type inside ``Annotated[...]`` and its metadata."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        return inner, tuple(metadata)
    return annotation, ()


def _base_type(annotation: Any) -> Any:
    """The scalar type inside ``Annotated[X | None, ...]``."""
    annotation, _ = _unannotated(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unannotated(args[0])[0]
    return annotation


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(_unannotated(annotation)[0])


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal`` field (None: not a choice)."""
    base = _base_type(annotation)
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def parse_value(raw: str, annotation: Any) -> Any:
    """Converts a string from the environment or the command line to a field's type."""
    if _optional(annotation) and raw.strip().lower() in ("", "none", "null"):
        return None
    base = _base_type(annotation)
    if choices_of(annotation) is not None:
        return raw  # checked with the field's limits (value_error)
    if base is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        return tuple(parse_value(item.strip(), item_type) for item in raw.split(",")
                     if item.strip())
    if base in (int, float, str):
        return base(raw)
    raise TypeError(f"unsupported settings type {annotation!r}")


_LIMITS: dict[type, tuple[str, Callable[[Any, Any], bool]]] = {
    annotated_types.Gt: (">", lambda value, bound: value > bound),
    annotated_types.Ge: (">=", lambda value, bound: value >= bound),
    annotated_types.Lt: ("<", lambda value, bound: value < bound),
    annotated_types.Le: ("<=", lambda value, bound: value <= bound),
}


def _limit_errors(value: Any, metadata: Sequence[Any]) -> list[str]:
    """What ``value`` breaks among a field's ``annotated_types`` limits (``Gt``, ``Ge``,
    ``Lt``, ``Le`` and ``Interval``, which groups them)."""
    bounds: list[Any] = []
    for item in metadata:
        bounds += list(item) if isinstance(item, annotated_types.Interval) else [item]
    errors = []
    for bound in bounds:
        rule = _LIMITS.get(type(bound))
        if rule is None:
            continue
        symbol, holds = rule
        limit = getattr(bound, type(bound).__name__.lower())  # Gt.gt, Ge.ge, ...
        if not holds(value, limit):
            errors.append(f"{symbol} {limit}")
    return errors


def value_error(value: Any, annotation: Any) -> str | None:
    """Why ``value`` is outside the choices or limits of a field of type ``annotation`` (the
    items of a tuple each checked), or None."""
    if value is None:
        return None
    inner, metadata = _unannotated(annotation)
    if typing.get_origin(inner) in (typing.Union, types.UnionType):
        inner, more = _unannotated(next(a for a in typing.get_args(inner)
                                        if a is not type(None)))
        metadata += more
    if typing.get_origin(inner) is tuple and isinstance(value, tuple):
        item_type = typing.get_args(inner)[0]
        return next((error for item in value
                     if (error := value_error(item, item_type)) is not None), None)
    if typing.get_origin(inner) is Literal and value not in typing.get_args(inner):
        return f"{value!r} is not one of {', '.join(map(str, typing.get_args(inner)))}"
    errors = _limit_errors(value, metadata)
    return f"must be {errors[0]} (got {value!r})" if errors else None


def check_fields(settings: Any) -> None:
    """Raises ValueError naming the first field outside its choices or limits."""
    hints = _hints(type(settings))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            continue
        error = value_error(value, hints[field.name])
        if error is not None:
            raise ValueError(f"{field.name}: {error}")


def _env_name(prefix: str, flag_name: str) -> str:
    return f"{prefix}_{flag_name}".upper()


@dataclasses.dataclass(frozen=True)
class _Option:
    """One flag: a scalar field, possibly inside a (shared or named) settings group."""

    path: tuple[str, ...]
    """Field names from the outer class down to the scalar."""
    flag_path: tuple[str, ...]
    """The parts of ``path`` the flag is spelled with (shared groups add none)."""
    annotation: Any
    default: Any
    doc: str

    @property
    def name(self) -> str:
        return "_".join(self.flag_path)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _options(cls: type, path: tuple[str, ...] = (), flag_path: tuple[str, ...] = (),
             defaults: Any = None) -> list[_Option]:
    docs = field_docs(cls)
    hints = _hints(cls)
    options: list[_Option] = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        default = (getattr(defaults, field.name) if defaults is not None
                   else _default_of(field))
        if dataclasses.is_dataclass(_unannotated(annotation)[0]):
            group_flag = flag_path if field.metadata.get(_FLATTEN) else (*flag_path, field.name)
            options += _options(_unannotated(annotation)[0], (*path, field.name),  # type: ignore[arg-type]
                                group_flag, default)
            continue
        options.append(_Option((*path, field.name), (*flag_path, field.name), annotation,
                               default, docs.get(field.name, "")))
    return options


def _checked_options(cls: type) -> tuple[_Option, ...]:
    """The flags of a settings class; two fields spelled with one flag are a bug."""
    options = tuple(_options(cls))
    seen: dict[str, tuple[str, ...]] = {}
    for option in options:
        if option.flag in seen:
            raise TypeError(f"{cls.__name__}: {option.flag} is declared by both "
                            f"{'.'.join(seen[option.flag])} and {'.'.join(option.path)}")
        seen[option.flag] = option.path
    return options


options_of: Callable[[type], tuple[_Option, ...]] = functools.cache(_checked_options)
"""Every flag of a settings class (computed once per class)."""


def _metavar(annotation: Any) -> str:
    choices = choices_of(annotation)
    if choices is not None:
        return "{" + ",".join(map(str, choices)) + "}"
    return str(getattr(_base_type(annotation), "__name__", "VALUE")).upper()


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str) -> None:
    """Adds one ``--flag`` per field, documented by its docstring and environment variable."""
    for option in options_of(cls):
        help_text = (f"{option.doc} "
                     f"[env {_env_name(env_prefix, option.name)}; default: {option.default!r}]")
        parser.add_argument(option.flag, dest=option.name, default=None,
                            metavar=_metavar(option.annotation), help=help_text.strip())


def _build(cls: type[SettingsT], values: Mapping[tuple[str, ...], Any],
           base: Any = None) -> SettingsT:
    """``cls`` with the given values (keyed by field path) over its defaults, or over ``base``
    (a group's default instance, which carries a service's overrides of the group)."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        group = _unannotated(hints[field.name])[0]
        if dataclasses.is_dataclass(group):
            inner = {path[1:]: value for path, value in values.items() if path[0] == field.name}
            if inner:
                group_base = getattr(base, field.name) if base is not None else _default_of(field)
                kwargs[field.name] = _build(group, inner, group_base)  # type: ignore[arg-type]
        elif (field.name,) in values:
            kwargs[field.name] = values[(field.name,)]
    if base is not None:
        return typing.cast(SettingsT, dataclasses.replace(base, **kwargs))
    return cls(**kwargs)


def load_settings(
    cls: type[SettingsT],
    env_prefix: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    description: str | None = None,
) -> SettingsT:
    """Builds ``cls`` from defaults, then the environment, then CLI flags; a bad value ends
    the process with a usage error naming its flag."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=description or inspect.getdoc(cls))
    add_arguments(parser, cls, env_prefix)
    namespace = parser.parse_args([] if argv is None else list(argv))
    values: dict[tuple[str, ...], Any] = {}
    for option in options_of(cls):
        raw = getattr(namespace, option.name)
        if raw is None:
            raw = environ.get(_env_name(env_prefix, option.name))
        if raw is None:
            continue
        try:
            values[option.path] = parse_value(raw, option.annotation)
        except (TypeError, ValueError) as error:
            parser.error(f"{option.flag}: {error}")
        refused = value_error(values[option.path], option.annotation)
        if refused is not None:
            parser.error(f"{option.flag}: {refused}")
    try:
        settings = _build(cls, values)
        _check_all(settings)
        validate = getattr(settings, "validate", None)
        if validate is not None:
            validate()
    except ValueError as error:
        parser.error(str(error))
    return settings


def flags_of(settings: Any, *, changed_only: bool = True) -> list[str]:
    """The command line that loads ``settings`` again (``load_settings``'s inverse): how the
    launcher, the tests and the benchmarks hand typed settings to a child process. With
    ``changed_only``, only the fields that differ from their defaults."""
    flags: list[str] = []
    defaults = type(settings)()
    for option in options_of(type(settings)):
        value, default = settings, defaults
        for name in option.path:
            value, default = getattr(value, name), getattr(default, name)
        if changed_only and value == default:
            continue
        flags += [option.flag, _spelled(value)]
    return flags


def _spelled(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(_spelled, value))
    return str(value)


def _check_all(settings: Any) -> None:
    """Choices and limits of a settings object and its groups (for classes not built on
    ``Settings``, which check themselves)."""
    check_fields(settings)
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_all(value)

