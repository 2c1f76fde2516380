"""lab up says what it waits for whenever it has been quiet for a few seconds (lab.progress)."""

from __future__ import annotations

import itertools
import time

from lab.progress import Heartbeat


def test_a_quiet_stretch_is_filled_with_what_is_pending():
    said: list[str] = []
    with Heartbeat(said.append, every=0.2) as beat:
        beat.doing("smtp-out-chrma0", "compiling rspamd's hyperscan cache")
        beat.doing("maildrop0-chbtl0", "installing")
        beat.doing("maildrop1-ddln0", "installing")
        time.sleep(1.3)
    assert len(said) >= 2
    assert "installing: maildrop0-chbtl0, maildrop1-ddln0" in said[-1]
    assert "compiling rspamd's hyperscan cache: smtp-out-chrma0" in said[-1]


def test_nothing_extra_while_up_speaks_or_has_nothing_pending():
    said: list[str] = []
    with Heartbeat(said.append, every=0.5) as beat:
        for n in range(6):
            beat.say(f"step {n}")
            time.sleep(0.2)
        beat.doing("nginx0-chrma0", "installing")
        beat.doing("nginx0-chrma0", None)
        time.sleep(0.8)
    assert said == [f"step {n}" for n in range(6)]


def test_a_line_comes_when_due_not_up_to_half_a_second_late():
    at: list[float] = []
    with Heartbeat(lambda _: at.append(time.monotonic()), every=0.6) as beat:
        beat.say("start")
        beat.doing("smtp-in-chrma0", "installing")
        time.sleep(2.0)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(gaps) >= 2 and max(gaps) < 0.6 + 0.15, gaps
