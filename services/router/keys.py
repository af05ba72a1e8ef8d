"""API keys of the routers of a namespace (used with ``--api-keys-enabled``).

    python -m services.router.keys [--redis-url URL] [--namespace NS] create --tenant acme \\
        [--requests-per-minute 600] [--tokens-per-minute 200000] [--concurrent-streams 8]
    python -m services.router.keys list
    python -m services.router.keys revoke <key id>

``create`` prints the new key once: it is not stored anywhere (Redis holds only its hash),
so it cannot be shown again. A limit of 0 (the default) is no limit. ``list`` shows each key's
id, tenant and limits, never a secret. ``revoke`` deletes a key: every router refuses it
within ``--api-keys-cache-ttl-s`` (5 s by default). Keys live in the Redis hash
``<namespace>:apikey:<id>`` (``services/router/keystore.py``).
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

from services.router import keystore
from services.router.core.api_keys import Limits


def run(client: redis.Redis, namespace: str, args: argparse.Namespace) -> str:
    """Carries out one command; returns what to print (ValueError for bad input)."""
    if args.command == "create":
        limits = Limits(args.requests_per_minute, args.tokens_per_minute,
                        args.concurrent_streams)
        if min(limits.requests_per_minute, limits.tokens_per_minute,
               limits.concurrent_streams) < 0:
            raise ValueError("limits are counts: 0 (no limit) or more")
        key = keystore.create(client, namespace, args.tenant, limits)
        return (f"{key}\n(key id {key.split('-')[1]}, tenant {args.tenant!r}; "
                "this is the only time the key is shown)")
    if args.command == "revoke":
        if not keystore.revoke(client, namespace, args.key_id):
            raise ValueError(f"no key {args.key_id!r} in namespace {namespace!r}")
        return f"revoked {args.key_id}"
    rows = [f"{'id':16}  {'tenant':20}  {'req/min':>8}  {'tok/min':>9}  {'streams':>7}  created"]
    for record in keystore.list_keys(client, namespace):
        limits = record.limits
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        rows.append(f"{record.key_id:16}  {record.tenant:20}  {limits.requests_per_minute:>8}  "
                    f"{limits.tokens_per_minute:>9}  {limits.concurrent_streams:>7}  {created}")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.router.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="the control-plane Redis of the routers [default: %(default)s]")
    parser.add_argument("--namespace", default="tandem",
                        help="the routers' namespace [default: %(default)s]")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key (printed once)")
    create.add_argument("--tenant", required=True,
                        help="the tenant of every request made with the key")
    for flag, what in (("--requests-per-minute", "requests"), ("--tokens-per-minute",
                       "tokens (prompt + max_tokens reserved at admission)"),
                       ("--concurrent-streams", "requests running at once")):
        create.add_argument(flag, type=int, default=0, help=f"limit of {what} (0: none)")
    commands.add_parser("list", help="the keys (ids, tenants, limits; no secrets)")
    revoke = commands.add_parser("revoke", help="delete a key")
    revoke.add_argument("key_id", help="the key's id (the 16 hex digits after 'tk-')")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    try:
        print(run(client, args.namespace, args))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
