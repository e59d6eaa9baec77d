"""A clock tests move by hand, for tokens and caches that expire."""

from __future__ import annotations

START = 1_800_000_000.0


class FakeClock:
    """Callable like `time.time`; `now` is whatever the test sets."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
