"""A transport that serves each call on a fast primary transport (the data plane) and repeats it
on a secondary one (gRPC) when the primary could not serve it (``Unavailable``: refused or lost
connection, bytes that are no frame, an ERROR frame). A primary that cannot be reached at all
rests for ``rest_s``: calls go straight to the secondary meanwhile, then it is tried again. Any
other error (a call past its deadline, a buffer too small) is the caller's, not repeated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tandem.kvclient.transport import Buffer, PutResult, Served, Target, Transport, Unavailable

log = logging.getLogger(__name__)
REST_S = 5.0
"""How long an unreachable primary rests before the next try."""
Result = TypeVar("Result")


class FallbackTransport:
    def __init__(self, primary: Transport, secondary: Transport, rest_s: float = REST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.primary, self.secondary = primary, secondary
        self.name = f"{primary.name} or {secondary.name}"
        self.rest_s = rest_s
        self._clock = clock
        self._rest_until = 0.0

    @property
    def primary_up(self) -> bool:
        """Calls try the primary now (it is not resting)."""
        return self._clock() >= self._rest_until

    async def open(self) -> None:
        try:
            await self.primary.open()
        except Unavailable as error:  # the secondary serves meanwhile
            self._unavailable(error)
        await self.secondary.open()

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        return await self._call("lookup", lambda transport: transport.lookup(hashes))

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        return await self._call("put", lambda transport: transport.put(
            hashes, payloads, parent, tier, served))

    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        return await self._call("get", lambda transport: transport.get(hashes, target, served))

    async def flush(self) -> None:
        await self.primary.flush()
        await self.secondary.flush()

    async def close(self) -> None:
        await self.primary.close()
        await self.secondary.close()

    async def _call(self, call: str,
                    on: Callable[[Transport], Awaitable[Result]]) -> Result:
        if self.primary_up:
            try:
                return await on(self.primary)
            except Unavailable as error:
                self._unavailable(error)
                log.info("kv %s over %s: %s", call, self.secondary.name, error)
        return await on(self.secondary)

    def _unavailable(self, error: Unavailable) -> None:
        if error.unreachable:
            log.warning("kv %s unavailable, using %s for %.0f s", self.primary.name,
                        self.secondary.name, self.rest_s, extra={"error": str(error)})
            self._rest_until = self._clock() + self.rest_s
