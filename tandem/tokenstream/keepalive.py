"""Socket options of every token-stream connection: no Nagle delay (a token leaves at once)
and TCP keepalive at the gRPC keepalive's pace, so a peer that vanished without a reset (a
host gone, a partition) ends its calls UNAVAILABLE instead of leaving them waiting."""

from __future__ import annotations

import socket

from tandem.service.groups import GrpcSettings


def keep_alive(sock: socket.socket | None, settings: GrpcSettings) -> None:
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults
        idle_s = max(1, settings.keepalive_time_ms // 1000)
        probe_s = max(1, settings.keepalive_timeout_ms // 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
