"""API keys on the HTTP API: an ASGI middleware in front of ``OpenAIApp`` (installed only with
``--api-keys-enabled``). Every path but the open ones (/health, /metrics) needs
``Authorization: Bearer <key>``: without a valid key the answer is 401 in OpenAI's shape
(``invalid_api_key``) and the app never sees the request. With one, the caller rides in
``access.current`` through the app, and the key's ``x-ratelimit-*`` headers join whatever
response the app starts."""

from __future__ import annotations

from typing import Any

import orjson

from services.router.access import Access, AuthRefused, current
from services.router.api.http_api import Receive, Scope, Send, _respond, _retry_headers
from tandem.errors import TandemError

OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Paths served without a key (probes and scrapes)."""

_UNAUTHORIZED = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]


def unauthorized_body(error: AuthRefused) -> bytes:
    return orjson.dumps({"error": {"message": error.message, "type": "invalid_request_error",
                                   "param": None, "code": "invalid_api_key"}})


class ApiKeyMiddleware:
    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    def __getattr__(self, name: str) -> Any:  # ``ready`` and friends are the app's
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"].rstrip("/") or "/") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = await self.access.authenticate(authorization)
        except AuthRefused as error:
            await _respond(send, 401, unauthorized_body(error), _UNAUTHORIZED)
            return
        except TandemError as error:  # the keys cannot be read
            await _respond(send, 503, orjson.dumps({"error": {
                "message": error.message, "type": "service_unavailable_error", "param": None,
                "code": None}}), _retry_headers(error.retry_after_ms))
            return

        async def send_with_limits(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and caller.headers:
                message = {**message, "headers": [*message.get("headers", ()),
                                                   *caller.headers]}
            await send(message)

        token = current.set(caller)
        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            current.reset(token)
