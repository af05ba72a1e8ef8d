"""Stop strings across the prefill → decode hand-off.

After a remote prefill, the first token's text comes from the prefill worker and the rest from
the decode worker, whose engine matches stop strings in the text it generates itself only. A
stop string that begins in the first token's text and ends in the decode worker's text would
go unseen. The router closes that gap: it holds back the end of the first token's text that
could begin a stop string, and matches the stop strings over that held text and the decode
worker's text until no match can start in the first token's text any more; from then on the
engine's own matching is complete. As in OpenAI's API and vLLM, the stop string itself is not
returned. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """What to send to the client after one piece of text."""

    text: str
    stopped: bool = False
    """A stop string matched: ``text`` ends where it began; the generation is over."""


class HandoffStop:
    """Feed the first token's text to ``first``, then each later text to ``next``."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self._held = ""
        """Text not sent yet that begins in the first token's text."""
        self._boundary = 0
        """How many leading characters of ``_held`` belong to the first token's text."""

    @property
    def watching(self) -> bool:
        """Whether a stop string may still begin in the first token's text."""
        return self._boundary > 0

    def first(self, text: str) -> Release:
        """The first token's text: what may be sent at once (or, when a whole stop string is
        in it, the text before it: the generation is over)."""
        starts = [index for stop in self.stops if (index := text.find(stop)) != -1]
        if starts:
            self._held, self._boundary = "", 0
            return Release(text[:min(starts)], stopped=True)
        hold = self._longest_stop_prefix_suffix(text, len(text))
        self._held, self._boundary = text[len(text) - hold:], hold
        return Release(text[:len(text) - hold])

    def next(self, text: str) -> Release:
        """A later text (the decode worker's): what may be sent now, or where a stop string
        that began in the first token's text ends the generation."""
        if not self.watching:
            return Release(text)
        window = self._held + text
        boundary = self._boundary
        starts = [index for stop in self.stops
                  if (index := window.find(stop)) != -1 and index < boundary]
        if starts:
            self._held, self._boundary = "", 0
            return Release(window[:min(starts)], stopped=True)
        hold = self._longest_stop_prefix_suffix(window, boundary)
        self._held, self._boundary = window[len(window) - hold:], hold - (len(window) - boundary)
        if self._boundary <= 0:
            self._held, self._boundary = "", 0
            return Release(window)
        return Release(window[:len(window) - hold])

    def flush(self) -> str:
        """Text still held when the generation ended without a stop."""
        held, self._held, self._boundary = self._held, "", 0
        return held

    def _longest_stop_prefix_suffix(self, window: str, boundary: int) -> int:
        """Length of the longest suffix of ``window`` that begins before ``boundary`` and is a
        proper prefix of a stop string (0 if none)."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(window)), longest, -1):
                if len(window) - length < boundary and window.endswith(stop[:length]):
                    longest = length
                    break
        return longest
