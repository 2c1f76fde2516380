"""What `lab up` is doing, said at least every few seconds.

A first start has long quiet stretches: the hosts install, rspamd's main process loads its
hyperscan patterns (or, on a machine whose cache is cold, compiles them: 10-40 s of one core,
lab.hyperscan), and the daemons take a while to listen on a loaded machine. Whenever `up` has
said nothing for EVERY seconds, the heartbeat says what it waits for, by host, with the time since
`up` started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

EVERY = 3.0


class Heartbeat:
    def __init__(self, say: Callable[[str], None], every: float = EVERY) -> None:
        self._say = say
        self._every = every
        self._started = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._doing: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lab-up-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def say(self, text: str) -> None:
        with self._lock:
            self._last = time.monotonic()
            self._say(text)

    def doing(self, who: str, what: str | None) -> None:
        """`who` (a host, a phase) is now doing `what`; None: done."""
        with self._lock:
            if what is None:
                self._doing.pop(who, None)
            else:
                self._doing[who] = what

    def _beat(self) -> None:
        while True:
            with self._lock:
                due = self._last + self._every - time.monotonic()
                idle = not self._doing
            # Wakes when the next line is due (a fixed 0.5 s step let quiet stretches reach 3.5 s).
            if self._stop.wait(min(0.5, max(0.1 if idle else 0.02, due))):
                return
            with self._lock:
                now = time.monotonic()
                if now - self._last < self._every or not self._doing:
                    continue
                by_what: dict[str, list[str]] = {}
                for who, what in self._doing.items():
                    by_what.setdefault(what, []).append(who)
                summary = "; ".join(f"{what}: {', '.join(sorted(who))}" for what, who in by_what.items())
                self._last = now
                self._say(f"  ... {now - self._started:.0f}s, {summary}")
