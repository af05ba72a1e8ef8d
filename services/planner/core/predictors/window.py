"""A time window of (time, rate) observations, shared by the windowed predictors."""

from __future__ import annotations

from collections import deque


class RateWindow:
    """The rates observed over the last ``span_s`` seconds."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.points: deque[tuple[float, float]] = deque()

    def add(self, now_s: float, rate: float) -> None:
        self.points.append((now_s, max(rate, 0.0)))
        while self.points and self.points[0][0] <= now_s - self.span_s:
            self.points.popleft()

    def rates(self) -> list[float]:
        return [rate for _, rate in self.points]

    @property
    def last(self) -> float:
        return self.points[-1][1] if self.points else 0.0
