"""Stop strings in the mock engine, matched as vLLM matches them: over the text generated so far
(never the prompt's), the stop string itself not returned, and, while a stop string could still
complete, the last ``len(longest stop) - 1`` characters of the text held back (vLLM's stop
buffer), so a client never receives text that a stop string later takes back. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """Feed each output's text to ``next``; it says what to send and whether a stop matched."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self._buffer = max((len(stop) for stop in self.stops), default=1) - 1
        self._text = ""
        self._sent = 0

    def next(self, text: str, finished: bool) -> tuple[str, bool]:
        """The text to send after ``text`` (the output's), and whether a stop string ended the
        generation (the text then ends where the stop string began)."""
        if not self.stops:
            return text, False
        start = max(0, len(self._text) - self._buffer)  # a match may begin in held text
        self._text += text
        found = [index for stop in self.stops if (index := self._text.find(stop, start)) != -1]
        if found:
            end = min(found)
            release, self._sent = self._text[self._sent:end], end
            return release, True
        end = len(self._text) if finished else max(self._sent, len(self._text) - self._buffer)
        release, self._sent = self._text[self._sent:end], end
        return release, False
