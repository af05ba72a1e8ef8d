"""How the data-plane transport (tandem.kvclient.dataplane_transport) reports a call it could not
serve, with a fake connection, no sockets: a connection that cannot be made is ``unreachable``
(the fallback rests it), one lost mid-call or out of step only fails the call, and a call past
its deadline is a TimeoutError (not repeated)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tandem.kvclient import dataplane_transport
from tandem.kvclient.dataplane_codec import ProtocolError, Status
from tandem.kvclient.dataplane_socket import SocketStream
from tandem.kvclient.dataplane_transport import DataPlaneError, DataPlaneTransport

HASHES = [b"h" * 16]


class FakeStream:
    """A connection whose reply never comes right: ``failure`` is raised when it is read."""

    def __init__(self, failure: Callable[[], BaseException] | None) -> None:
        self.failure = failure
        self.closed = False

    async def write(self, *parts: bytes) -> None:
        pass

    async def read_frame(self, *args: object) -> None:
        if self.failure is None:
            await asyncio.sleep(3600)
        else:
            raise self.failure()

    def close(self) -> None:
        self.closed = True


async def hang(host: str, port: int) -> FakeStream:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def refuse(host: str, port: int) -> FakeStream:
    raise ConnectionRefusedError(111, "Connection refused")


def connects(failure: Callable[[], BaseException] | None) -> Callable[[str, int], object]:
    async def connect(host: str, port: int) -> FakeStream:
        return FakeStream(failure)
    return connect


CASES = [
    # what happens, unreachable (rests the data plane)
    ("connection refused", refuse, True),
    ("connect unanswered", hang, True),
    ("connection lost mid-call", connects(lambda: ConnectionError("peer closed")), False),
    ("bytes that are no frame", connects(lambda: ProtocolError("garbage")), False),
]


@pytest.mark.parametrize(("connect", "unreachable"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
async def test_a_call_it_cannot_serve(monkeypatch: pytest.MonkeyPatch,
                                      connect: Callable[[str, int], object],
                                      unreachable: bool) -> None:
    monkeypatch.setattr(dataplane_transport, "CONNECT_TIMEOUT_S", 0.05)
    monkeypatch.setattr(SocketStream, "connect", staticmethod(connect))
    plane = DataPlaneTransport("store", 1, connections=1, timeout_s=5.0)
    with pytest.raises(DataPlaneError) as raised:
        await plane.lookup(HASHES)
    assert raised.value.unreachable is unreachable


async def test_a_call_past_its_deadline_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SocketStream, "connect", staticmethod(connects(None)))
    plane = DataPlaneTransport("store", 1, connections=1, timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await plane.lookup(HASHES)


async def test_a_request_no_frame_can_carry_goes_to_grpc() -> None:
    plane = DataPlaneTransport("store", 1, connections=1, timeout_s=5.0)
    with pytest.raises(DataPlaneError) as raised:
        await plane.put(HASHES, [b""], b"", 0, lambda word: None)
    assert (raised.value.status, raised.value.unreachable) == (Status.BAD_REQUEST, False)
