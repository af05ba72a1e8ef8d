"""API keys: their format, their hash at rest, their record, and the router's settings for them.
Pure logic (the Redis side is ``services.router.keystore``).

- **Format.** ``tk-<id>-<secret>``: ``id`` is 16 hex digits (public: the lookup key, shown by
  ``list``, safe in logs), ``secret`` 43 URL-safe base64 characters (256 random bits, shown
  once at ``create``, never stored nor logged).
- **At rest.** Only ``sha256(id:secret)`` is stored. The secret is 256 random bits, so a fast
  hash is enough (a slow password hash protects guessable secrets, not random ones); the
  comparison is constant time (``hmac.compare_digest``), so the time of a refusal tells
  nothing about how much of a guessed secret was right.
- **Record.** What the key maps to: its tenant and its limits (0 = unlimited).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
from typing import Annotated, Literal

from annotated_types import Ge, Gt

from tandem.service.settings import Settings

PREFIX = "tk"
_KEY = re.compile(r"tk-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")


@dataclasses.dataclass(frozen=True)
class ApiKeySettings(Settings):
    """API keys and per-key limits at the router (flags ``--api-keys-<field>``). Off by
    default: the local system serves without keys, and the tenant is the body's ``user``."""

    enabled: bool = False
    """Require ``Authorization: Bearer <key>`` on the HTTP API (but /health and /metrics) and
    ``authorization`` metadata on RouterService; the tenant is then the key's, and the key's
    limits apply. Keys are made with ``python -m services.router.keys create``."""
    cache_ttl_s: Annotated[float, Ge(0)] = 5.0
    """How long a router keeps a key's record (or its absence) after reading it from Redis: a
    revoked key is refused by every router within this time."""
    redis_failure: Literal["closed", "open"] = "closed"
    """What the limits do while Redis is unreachable: "closed" refuses requests (503,
    UNAVAILABLE), "open" serves them unlimited. Either way a key is only accepted if its
    record is known (read within ``cache_ttl_s``)."""
    stream_lease_s: Annotated[float, Gt(0)] = 30.0
    """A concurrent-stream slot is a lease in Redis, renewed while the stream runs (every
    third of this); a router that dies leaks its slots for at most this long."""
    redis_timeout_s: Annotated[float, Gt(0)] = 0.5
    """Longest wait for Redis on a key lookup or a limit check before Redis counts as
    unreachable."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """A key's limits (0: unlimited)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    concurrent_streams: int = 0


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """What a key maps to (its Redis hash holds exactly these fields)."""

    key_id: str
    tenant: str
    secret_hash: str
    """Hex sha256 of ``id:secret``."""
    limits: Limits = Limits()
    created: float = 0.0
    """Unix time of ``create``."""

    def to_fields(self) -> dict[str, str]:
        l = self.limits  # noqa: E741
        return {"tenant": self.tenant, "hash": self.secret_hash,
                "rpm": str(l.requests_per_minute), "tpm": str(l.tokens_per_minute),
                "streams": str(l.concurrent_streams), "created": repr(self.created)}

    @classmethod
    def from_fields(cls, key_id: str, fields: dict[str, str]) -> KeyRecord:
        return cls(key_id, fields["tenant"], fields["hash"],
                   Limits(int(fields.get("rpm", 0)), int(fields.get("tpm", 0)),
                          int(fields.get("streams", 0))),
                   float(fields.get("created", 0.0)))


@dataclasses.dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # a key never reaches a log through its repr
        return f"ParsedKey(key_id={self.key_id!r}, secret=<hidden>)"


def parse_key(key: str) -> ParsedKey | None:
    """The key's id and secret; None when it is no well-formed key."""
    match = _KEY.fullmatch(key)
    return ParsedKey(match[1], match[2]) if match else None


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value (the scheme is
    case-insensitive, RFC 9110); None when absent or of another scheme."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def secret_hash(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def secret_matches(record: KeyRecord, key: ParsedKey) -> bool:
    """Whether ``key`` is ``record``'s, in time independent of where they differ."""
    return hmac.compare_digest(secret_hash(key.key_id, key.secret), record.secret_hash)


def new_key() -> tuple[str, ParsedKey]:
    """A fresh key: its full text (give it to the client once) and its parts."""
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{PREFIX}-{key_id}-{secret}", ParsedKey(key_id, secret)


AuthFailure = Literal["missing", "malformed", "unknown", "wrong_secret"]

_MESSAGES: dict[str, str] = {
    "missing": "You didn't provide an API key. Provide it in an Authorization header using "
               "Bearer auth (Authorization: Bearer YOUR_KEY).",
    "malformed": "Incorrect API key provided: it is not a tandem key (tk-<id>-<secret>).",
    "unknown": "Incorrect API key provided: no such key (it may have been revoked).",
    "wrong_secret": "Incorrect API key provided: no such key (it may have been revoked).",
}
"""A wrong secret reads as an unknown key: a refusal never says that an id exists."""


def presented_key(authorization: str | None) -> ParsedKey | AuthFailure:
    """The key an ``Authorization`` value presents, or why there is none to look up."""
    key = bearer_key(authorization)
    if key is None:
        return "missing"
    return parse_key(key) or "malformed"


def verify(key: ParsedKey, record: KeyRecord | None) -> KeyRecord | AuthFailure:
    """``record`` (the stored record of ``key``'s id, None when there is none) if ``key`` is
    its, else why it is refused."""
    if record is None:
        return "unknown"
    return record if secret_matches(record, key) else "wrong_secret"


def refusal_message(failure: AuthFailure) -> str:
    """What the client reads (never any part of the presented secret)."""
    return _MESSAGES[failure]
