"""The mock engine's stop strings: vLLM's semantics (text held back while a stop string could
still complete, the stop string not returned)."""

from __future__ import annotations

import pytest

from tandem.engines.mock.stop_strings import StopStrings


@pytest.mark.parametrize(("stops", "texts", "sent", "stopped_at"), [
    ([], [" a", " b"], [" a", " b"], None),
    # held back: the last len(" tok9") - 1 = 4 characters until the end
    ([" tok9"], [" tok1", " tok2", " tok3"], [" ", "tok1 ", "tok2 tok3"], None),
    # a stop string across two outputs: the text before it, then the end
    ([" tok9"], [" tok1", " to", "k9 tok2"], [" ", "tok", "1"], 2),
    # within one output
    (["2 t"], [" tok1 tok2 tok3"], [" tok1 tok"], 0),
    # the earliest of several
    (["k3", "k2"], [" tok1 tok2 tok3"], [" tok1 to"], 0),
])
def test_stop_strings(stops: list[str], texts: list[str], sent: list[str],
                      stopped_at: int | None) -> None:
    matcher = StopStrings(stops)
    released = []
    for index, text in enumerate(texts):
        release, stopped = matcher.next(text, finished=index == len(texts) - 1)
        released.append(release)
        if stopped:
            assert index == stopped_at
            break
    else:
        assert stopped_at is None
    assert released == sent
