"""Routing settings changed at run time, for every router of a namespace at once.

The router starts from its flags (``--routing-<field>``); an operator overrides any field of
``RoutingSettings`` in one Redis hash, ``<namespace>:routing`` (field name -> value as text),
with ``python -m services.router.routing_admin``. Every router reads the hash on its discovery
interval and routes with ``flags + overrides`` from its next decision on; deleting a field
returns to the flag. An override that does not parse or validate is refused as a whole: the
router keeps the settings it had, and says why in its log. Pure: no I/O here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from services.router.core.routing_settings import RoutingSettings
from tandem.service.settings import parse_value

_FIELDS = {field.name for field in dataclasses.fields(RoutingSettings)}
_HINTS = typing.get_type_hints(RoutingSettings, include_extras=True)


def routing_key(namespace: str) -> str:
    """The Redis hash that holds a namespace's routing overrides."""
    return f"{namespace}:routing"


def parse_overrides(raw: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of the overrides; ValueError names the bad field."""
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name not in _FIELDS:
            raise ValueError(f"unknown routing setting {name!r} "
                             f"(known: {', '.join(sorted(_FIELDS))})")
        try:
            values[name] = parse_value(text, _HINTS[name])
        except (TypeError, ValueError) as error:
            raise ValueError(f"routing setting {name}: {error}") from None
    return values


def apply_overrides(base: RoutingSettings, raw: Mapping[str, str]) -> RoutingSettings:
    """``base`` with the overrides applied and checked (ValueError when they don't hold)."""
    return dataclasses.replace(base, **parse_overrides(raw))


def changed_fields(before: RoutingSettings, after: RoutingSettings) -> dict[str, Any]:
    """Fields whose values differ, with their new values (for the router's log)."""
    return {name: getattr(after, name) for name in sorted(_FIELDS)
            if getattr(before, name) != getattr(after, name)}
