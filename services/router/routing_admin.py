"""Changes the routing of every router in a namespace while they run.

    python -m services.router.routing_admin [--redis-url URL] [--namespace NS] show
    python -m services.router.routing_admin set prefill_weight=2 cxl_credit=0.5 policy=kv
    python -m services.router.routing_admin unset cxl_credit
    python -m services.router.routing_admin reset

Overrides live in the Redis hash ``<namespace>:routing``; each router applies them on its next
discovery interval (``--discovery-interval-s``, 0.5 s by default) on top of its own
``--routing-*`` flags. A ``set`` is checked before it is written (types and ranges, against
the defaults), so a typo never reaches the routers; ``show`` prints the overrides and the
settings they give on top of the defaults. The fields are ``RoutingSettings``'
(``services/router/routing_settings.py``; ``python -m services.router --help`` documents each
as ``--routing-<field>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import redis

from services.router.core.routing_overrides import apply_overrides, routing_key
from services.router.core.routing_settings import RoutingSettings
from tandem.security.redact import redact_url


def _assignments(items: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected field=value, got {item!r}")
        values[name.strip().replace("-", "_")] = value.strip()
    return values


def _current(client: redis.Redis, key: str) -> dict[str, str]:
    reply = client.hgetall(key)
    return {k.decode(): v.decode() for k, v in reply.items()}  # type: ignore[union-attr]


def run(client: redis.Redis, namespace: str, command: str, items: list[str]) -> str:
    """Carries out one command; returns what to print (ValueError for bad input)."""
    key = routing_key(namespace)
    if command == "set":
        values = _assignments(items)
        if not values:
            raise ValueError("set needs at least one field=value")
        apply_overrides(RoutingSettings(), {**_current(client, key), **values})  # checks all
        client.hset(key, items=[part for pair in values.items() for part in pair])
    elif command == "unset":
        if not items:
            raise ValueError("unset needs at least one field")
        client.hdel(key, *(item.replace("-", "_") for item in items))
    elif command == "reset":
        client.delete(key)
    elif command != "show":
        raise ValueError(f"unknown command {command!r}")
    overrides = _current(client, key)
    effective = apply_overrides(RoutingSettings(), overrides)
    lines = [f"{key}: {len(overrides)} override(s)"]
    lines += [f"  {name} = {value}" for name, value in sorted(overrides.items())]
    lines.append("settings on top of the defaults (a router applies its own --routing-* flags "
                 "underneath):")
    lines += [f"  {name} = {value!r}" for name, value in dataclasses.asdict(effective).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="the control-plane Redis of the routers [default: %(default)s]")
    parser.add_argument("--namespace", default="tandem",
                        help="the routers' namespace [default: %(default)s]")
    parser.add_argument("command", choices=("show", "set", "unset", "reset"))
    parser.add_argument("items", nargs="*", help="field=value (set) or field (unset)")
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    try:
        print(run(client, args.namespace, args.command, args.items))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except redis.RedisError as error:
        print(f"error: Redis at {redact_url(args.redis_url)}: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
