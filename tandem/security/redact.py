"""What may be said about a secret-bearing value in a log line, a span or an error message."""

from __future__ import annotations

import urllib.parse

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (``redis://:pw@host``, ``rediss://user:pw@host``) masked; the
    rest (scheme, host, port, database, TLS options) stays, for the operator's sake."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
