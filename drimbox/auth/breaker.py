"""A circuit breaker in front of Pro Santé Connect, so an outage costs one failed call per cool-down
rather than one per WADO-RS request.

A viewer fetching a study sends hundreds of requests; with PSC down, each would wait for a
connection timeout before answering 503, tying up workers for nothing. After `threshold`
consecutive failures (no answer, a timeout, a 5xx) the breaker opens and refuses at once for
`cool_down` seconds; then one request is let through as a trial (half-open): its success closes
the breaker, its failure opens it again. An answer that is not a 5xx (even a 401 refusing our
credentials) proves PSC is up, so it counts as a success here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import httpx

from drimbox.auth.cache import Clock
from drimbox.errors import VerifierUnavailable

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half-open"]
T = TypeVar("T")

FAILURE_THRESHOLD = 5
COOL_DOWN_SECONDS = 30.0


def server_error(response: httpx.Response) -> str:
    """What is wrong with an answer, for the breaker: only a 5xx means the provider is unwell."""
    return f"HTTP {response.status_code}" if response.status_code >= 500 else ""


class CircuitBreaker:
    """Counts consecutive failures of calls to one provider and stops calling it while it is down.

    Thread-safe: the state changes under a lock, the calls themselves run outside it. While the
    half-open trial is in flight, other callers are refused rather than piling onto a provider
    that may still be down.
    """

    def __init__(
        self,
        name: str,
        *,
        threshold: int = FAILURE_THRESHOLD,
        cool_down: float = COOL_DOWN_SECONDS,
        clock: Clock = time.time,
    ) -> None:
        if threshold < 1 or cool_down < 0:
            raise ValueError("a circuit breaker needs threshold >= 1 and cool_down >= 0")
        self.name = name
        self._threshold, self._cool_down, self._clock = threshold, cool_down, clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._last_error = ""
        self._open_until = 0.0

    def call(self, exchange: Callable[[], T], judge: Callable[[T], str] = lambda result: "") -> T:
        """`exchange()`'s result, counting an exception it raises (re-raised) or a result `judge`
        finds wrong (returned) as a failure; VerifierUnavailable without calling while open."""
        self._admit()
        try:
            result = exchange()
        except BaseException as exc:  # whatever ends the call, the half-open trial must be settled
            self._failed(repr(exc))
            raise
        problem = judge(result)
        if problem:
            self._failed(problem)
        else:
            self._succeeded()
        return result

    def health(self) -> dict[str, object]:
        """State for the status page: `state`, `consecutive_failures`, `last_error`, and
        `retry_at` (epoch seconds of the next trial while open, else None)."""
        with self._lock:
            return {
                "state": self._state,
                "consecutive_failures": self._failures,
                "last_error": self._last_error,
                "retry_at": self._open_until if self._state == "open" else None,
            }

    def _admit(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            now = self._clock()
            if self._state == "open" and now >= self._open_until:
                self._state = "half-open"  # this caller is the trial
                log.info("provider tried again", extra={"event": "auth.breaker.half_open", "provider": self.name})
                return
            if self._state == "half-open":
                wait = "a trial call is in progress"
            else:
                wait = f"next attempt in {max(self._open_until - now, 0.0):.0f} s"
            raise VerifierUnavailable(
                f"calls to {self.name} suspended after {self._failures} consecutive failures "
                f"(last: {self._last_error}); {wait}"
            )

    def _failed(self, problem: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = problem
            # A failure from a call started before the breaker opened leaves the cool-down alone.
            if self._state == "half-open" or (self._state == "closed" and self._failures >= self._threshold):
                self._state = "open"
                self._open_until = self._clock() + self._cool_down
                log.warning(
                    "provider unavailable: calls suspended",
                    extra={"event": "auth.breaker.open", "provider": self.name, "failures": self._failures,
                           "error": problem, "seconds": self._cool_down},
                )  # fmt: skip

    def _succeeded(self) -> None:
        with self._lock:
            if self._state != "closed":
                log.info("provider available again", extra={"event": "auth.breaker.closed", "provider": self.name})
            self._state = "closed"
            self._failures = 0
