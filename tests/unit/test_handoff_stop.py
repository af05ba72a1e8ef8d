"""Stop strings across the prefill -> decode hand-off, table-driven: what the client receives
for a first token's text and the decode worker's texts."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from services.router.core.handoff_stop import HandoffStop
from services.router.core.request import Delta
from services.router.splice import cut_at_stop


def replay(stops: list[str], first: str, rest: list[str]) -> tuple[list[str], bool]:
    """The texts sent (one per piece, after a stop nothing more) and whether a stop ended it."""
    cut = HandoffStop(stops)
    sent = [cut.first(first).text]
    for text in rest:
        release = cut.next(text)
        sent.append(release.text)
        if release.stopped:
            return sent, True
    sent.append(cut.flush())
    return sent, False


@pytest.mark.parametrize(("stops", "first", "rest", "sent", "stopped"), [
    # no stop strings: everything passes at once
    ([], " Hello", [" world", "!"], [" Hello", " world", "!", ""], False),
    # the first token cannot begin a stop string: nothing held
    (["END"], " Hello", [" world"], [" Hello", " world", ""], False),
    # a stop string across the boundary: cut where it began, the rest never sent
    (["lo wor"], " Hello", [" world", "!"], [" Hel", "", ], True),
    # held, then released when the next text does not complete the stop string
    (["lo wor"], " Hello", [" there", "!"], [" Hel", "lo there", "!", ""], False),
    # the stop string spans several decode texts
    (["lo brave new"], " Hello", [" brave", " new", " world"], [" Hel", "", ""], True),
    # ... and one of them breaks the match
    (["lo brave new"], " Hello", [" brave", " old"], [" Hel", "", "lo brave old", ""], False),
    # a stop string wholly in the decode text is the engine's: passed through untouched
    (["STOP"], " Hi", [" fine STOP"], [" Hi", " fine STOP", ""], False),
    # several stop strings: the earliest start wins
    (["o wo", "lo w"], " Hello", [" world"], [" Hel", ""], True),
    # the whole first token is the beginning of a stop string
    (["Hello world"], "Hello", [" world"], ["", ""], True),
    # the held text is released at the end when the generation ends without a stop
    (["lo wor"], " Hello", [], [" Hel", "lo"], False),
    # a stop string that starts exactly at the boundary belongs to the engine
    ([" world"], " Hello", [" world"], [" Hello", " world", ""], False),
    # unicode
    (["é ✓"], " café", [" ✓ ok"], [" caf", ""], True),
])
def test_stop_strings_across_the_handoff(stops: list[str], first: str, rest: list[str],
                                         sent: list[str], stopped: bool) -> None:
    assert replay(stops, first, rest) == (sent, stopped)


def test_watching_ends_once_no_stop_can_begin_in_the_first_token() -> None:
    cut = HandoffStop(["lo wor"])
    cut.first(" Hello")
    assert cut.watching
    cut.next(" there")
    assert not cut.watching
    assert cut.next("lo world").text == "lo world"  # the engine's own text from here on


def test_a_whole_stop_string_in_the_first_text_ends_the_generation() -> None:
    """After a migration the first text is what the lost worker held back; a stop string it
    matched just before dying is in it whole."""
    release = HandoffStop(["tok7"]).first(" tok5 tok7 to")
    assert (release.text, release.stopped) == (" tok5 ", True)


async def _deltas(*texts: str) -> AsyncGenerator[Delta, None]:
    for index, text in enumerate(texts):
        yield Delta(text, [index] if index else [])  # the held text carries no token


@pytest.mark.parametrize(("held", "texts", "sent", "finish"), [
    # the held text continues the stream, then the new worker's text
    (" tok1 to", [" tok2", " tok3"], [" tok1", " to tok2", " tok3"], None),
    # a stop string begun in the held text, completed by the new worker: cut where it began
    (" tok1 to", ["k9 tok2"], [" tok1", ""], "stop"),
    # nothing held
    ("", [" tok2"], [" tok2"], None),
])
async def test_cut_after_a_migration(held: str, texts: list[str], sent: list[str],
                                     finish: str | None) -> None:
    out = [delta async for delta in cut_at_stop(_deltas(held, *texts), HandoffStop([" tok9"]),
                                                 prompt_tokens=10, cached_tokens=0,
                                                 completion_tokens=5, held_first=True)]
    assert [delta.text for delta in out] == sent
    assert out[-1].finish_reason == finish
    if finish:
        assert out[-1].completion_tokens == 5 + 1
