"""Settings: defaults < environment < CLI flags, docstrings become help."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Interval

from tandem.service.settings import (
    Settings,
    field_docs,
    flags_of,
    load_settings,
    options_of,
    shared,
)


@dataclasses.dataclass(frozen=True)
class Example:
    """An example service."""

    port: int = 8000
    """Port to listen on."""
    host: str = "127.0.0.1"
    """Interface to bind."""
    ratio: float = 0.5
    """A ratio."""
    verbose: bool = False
    """Log more."""
    name: str | None = None
    """Optional name."""
    tags: tuple[str, ...] = ()
    """Comma-separated tags."""

    def validate(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError("ratio must be in [0, 1]")


def test_field_docs_come_from_attribute_docstrings() -> None:
    assert field_docs(Example)["port"] == "Port to listen on."
    assert set(field_docs(Example)) == {f.name for f in dataclasses.fields(Example)}


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, Example()),
        ([], {"SVC_PORT": "9000"}, Example(port=9000)),
        (["--port", "9100"], {"SVC_PORT": "9000"}, Example(port=9100)),
        (["--verbose", "yes", "--ratio", "0.25"], {}, Example(verbose=True, ratio=0.25)),
        ([], {"SVC_NAME": "none"}, Example(name=None)),
        ([], {"SVC_NAME": "a"}, Example(name="a")),
        (["--tags", "x,y"], {}, Example(tags=("x", "y"))),
    ],
)
def test_precedence_and_parsing(argv: list[str], env: dict[str, str], expected: Example) -> None:
    assert load_settings(Example, "svc", argv=argv, environ=env) == expected


@pytest.mark.parametrize(
    "argv", [["--port", "eighty"], ["--verbose", "maybe"], ["--ratio", "2"], ["--unknown", "1"]]
)
def test_bad_values_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(Example, "svc", argv=argv, environ={})
    assert raised.value.code == 2


@dataclasses.dataclass(frozen=True)
class Outer:
    """A service with a nested settings group."""

    example: Example = dataclasses.field(default_factory=Example)
    """The example group (flags --example-<field>)."""
    level: int = 1
    """A level."""

    def validate(self) -> None:
        self.example.validate()


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], {}, Outer()),
    (["--example-port", "9"], {}, Outer(Example(port=9))),
    ([], {"T_EXAMPLE_RATIO": "0.25"}, Outer(Example(ratio=0.25))),
    (["--example-ratio", "0.75"], {"T_EXAMPLE_RATIO": "0.25"}, Outer(Example(ratio=0.75))),
    (["--level", "3", "--example-tags", "a,b"], {}, Outer(Example(tags=("a", "b")), 3)),
])
def test_nested_settings_are_flattened(argv: list[str], env: dict[str, str],
                                       expected: Outer) -> None:
    assert load_settings(Outer, "t", argv, env) == expected


def test_nested_settings_are_validated_and_documented(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    with pytest.raises(SystemExit):
        load_settings(Outer, "t", ["--example-ratio", "2"], {})
    assert "ratio must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings(Outer, "t", ["--help"], {})
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--example-port INT Port to listen on. [env T_EXAMPLE_PORT; default: 8000]" in help_text


@dataclasses.dataclass(frozen=True)
class Group(Settings):
    """A shared group."""

    url: str = "redis://here"
    """Where."""
    level: Annotated[int, Ge(1)] = 1
    """How deep (at least 1)."""


@dataclasses.dataclass(frozen=True)
class Clash(Settings):
    """Two shared groups that spell the same flags."""

    group: Group = shared(Group)
    """Flattened without a prefix."""
    other: Group = shared(Group, level=3)
    """Flattened without a prefix too: --url twice."""


@dataclasses.dataclass(frozen=True)
class Service(Settings):
    """A service with one shared group whose default it overrides."""

    mode: Literal["auto", "always", "never"] = "auto"
    """A choice."""
    workers: Annotated[int, Ge(1)] = 1
    """At least one."""
    ratio: Annotated[float, Interval(gt=0, le=1)] = 0.5
    """In (0, 1]."""
    ports: tuple[Annotated[int, Ge(0)], ...] = ()
    """Ports (none negative)."""
    group: Group = shared(Group, level=3)
    """Flattened without a prefix, with this service's default level."""


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ([], {}, Service()),
    (["--mode", "never"], {}, Service(mode="never")),
    ([], {"S_MODE": "always"}, Service(mode="always")),
    (["--url", "redis://there"], {}, Service(group=Group("redis://there", 3))),
    ([], {"S_LEVEL": "7"}, Service(group=Group(level=7))),
    (["--workers", "4", "--ratio", "1"], {}, Service(workers=4, ratio=1.0)),
])
def test_choices_limits_and_shared_groups(argv: list[str], env: dict[str, str],
                                          expected: Service) -> None:
    assert load_settings(Service, "s", argv, env) == expected


def test_a_shared_group_keeps_the_services_default() -> None:
    assert Service().group.level == 3
    assert load_settings(Service, "s", ["--url", "x"], {}).group == Group("x", 3)


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "sometimes"], "'sometimes' is not one of auto, always, never"),
    (["--workers", "0"], "--workers: must be >= 1 (got 0)"),
    (["--ratio", "0"], "--ratio: must be > 0 (got 0.0)"),
    (["--ratio", "1.5"], "--ratio: must be <= 1 (got 1.5)"),
    (["--level", "0"], "--level: must be >= 1 (got 0)"),
    (["--ports", "1,-2"], "--ports: must be >= 0 (got -2)"),
])
def test_choices_and_limits_are_refused_with_the_flag(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        load_settings(Service, "s", argv, {})
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "sometimes"}, "mode: 'sometimes' is not one of"),
    ({"workers": -1}, "workers: must be >= 1"),
    ({"ratio": 2.0}, "ratio: must be <= 1"),
    ({"ports": (1, -2)}, r"ports: must be >= 0 \(got -2\)"),
])
def test_settings_built_in_code_are_checked_too(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Service(**kwargs)  # type: ignore[arg-type]


def test_help_lists_choices_and_shared_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(Service, "s", ["--help"], {})
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--mode {auto,always,never} A choice." in help_text
    assert "--url STR Where. [env S_URL; default: 'redis://here']" in help_text
    assert "--level INT How deep (at least 1). [env S_LEVEL; default: 3]" in help_text


def test_one_flag_declared_twice_is_a_definition_error() -> None:
    with pytest.raises(TypeError, match=r"--url is declared by both group\.url and other\.url"):
        options_of(Clash)


@pytest.mark.parametrize("settings", [
    Service(), Service(mode="never", workers=3, group=Group("redis://x", 2)),
    Outer(Example(port=9, name="n", tags=("a", "b"), verbose=True), level=4),
    Outer(Example(name=None, tags=())),
])
def test_flags_of_loads_back_the_same_settings(settings: object) -> None:
    assert load_settings(type(settings), "s", flags_of(settings), {}) == settings


def test_flags_of_names_only_what_changed() -> None:
    assert flags_of(Service(workers=2, group=Group(level=5))) == [
        "--workers", "2", "--level", "5"]
    assert "--mode" in flags_of(Service(), changed_only=False)
