"""Settings: defaults < environment < CLI flags, docstrings become help."""

from __future__ import annotations

import dataclasses

import pytest

from tandem.config import field_docs, load_settings


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
