"""Fetch on demand: one retrieval from the PACS per study or series, shared by every request.

A WADO-RS request for instances we do not hold starts a retrieval through the StudySource port
and streams each instance as soon as it has landed, while later ones are still on the wire.
Requests arriving meanwhile for the same series, or for a series of a study being retrieved,
follow the running retrieval instead of starting another (and a study request made while some
of its series are being fetched follows those, then fetches the others series by series: see
`Wado._from_pacs`). A finished or failed retrieval is
forgotten at once: the next request retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from drimbox.errors import RetrieveFailed
from drimbox.ports import StudySource

log = logging.getLogger(__name__)

_Key = tuple[str, str | None]


class Retrieval:
    """One running retrieval: the files landed so far, and how it ended."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.paths: list[Path] = []
        self.done = False
        self.error: BaseException | None = None
        self._changed = threading.Condition()

    def landed(self, path: Path) -> None:
        with self._changed:
            self.paths.append(path)
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self.done, self.error = True, error
            self._changed.notify_all()

    def follow(self, series_uid: str | None = None, stall_seconds: float | None = None) -> Iterator[Path]:
        """Every file of the retrieval (of `series_uid` only, when given), as they land.

        Raises the retrieval's error after the last file, so a response can end in a way the
        client notices instead of looking complete; raises RetrieveFailed when nothing lands for
        `stall_seconds` (a safety net: the DIMSE idle timeout normally ends a stuck retrieval
        first), so no request thread waits forever.
        """
        seen = 0
        while True:
            with self._changed:
                while seen == len(self.paths) and not self.done:
                    if not self._changed.wait(stall_seconds) and seen == len(self.paths) and not self.done:
                        raise RetrieveFailed(f"nothing arrived from the PACS for {stall_seconds:.0f} s")
                batch, seen = self.paths[seen:], len(self.paths)
                finished, error = self.done and seen == len(self.paths), self.error
            for path in batch:
                if series_uid is None or path.parent.name == series_uid:
                    yield path
            if finished:
                if error is not None:
                    raise error
                return


class RetrievalHub:
    """Starts retrievals through a StudySource and lets requests share them."""

    def __init__(self, source: StudySource, after: Callable[[], object] | None = None,
                 stall_seconds: float | None = None) -> None:  # fmt: skip
        self.source = source
        self.after = after  # run after each retrieval (the store cache's eviction)
        self.stall_seconds = stall_seconds
        self._running: dict[_Key, Retrieval] = {}
        self._lock = threading.Lock()
        self.started = 0  # retrievals started since start: the status page and tests read it

    def follow(self, study_uid: str, series_uid: str | None = None,
               held: Callable[[], list[Path] | None] | None = None) -> Iterator[Path]:  # fmt: skip
        """The files of a study or series as they land, from a running retrieval or a new one.

        `held`, when given, is asked (under the hub's lock, so no retrieval ends meanwhile) before a
        new retrieval starts: the files it returns are served instead (all landed already).
        """
        with self._lock:
            retrieval = self._running.get((study_uid, None))
            if retrieval is None:
                retrieval = self._running.get((study_uid, series_uid))
            if retrieval is None:
                here = held() if held is not None else None
                if here is not None:
                    return iter(here)
                retrieval = self._start((study_uid, series_uid))
        return retrieval.follow(series_uid, self.stall_seconds)

    def follow_study(self, study_uid: str, whole: Callable[[], bool]) -> Iterator[Path] | None:
        """The study's files from its running retrieval, or from a new one when no retrieval of
        it or of its series runs and `whole()` says to fetch it whole; None to go series by series.

        Decided under the hub's lock, so no series retrieval starts between the look and the start
        (a study retrieval beside a series one fetched that series twice). `whole()` is asked
        there too: no retrieval of the study ends meanwhile.
        """
        with self._lock:
            retrieval = self._running.get((study_uid, None))
            if retrieval is None:
                if any(key[0] == study_uid for key in self._running) or not whole():
                    return None
                retrieval = self._start((study_uid, None))
        return retrieval.follow(None, self.stall_seconds)

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def _start(self, key: _Key) -> Retrieval:
        retrieval = Retrieval(key)
        self._running[key] = retrieval
        self.started += 1
        thread = threading.Thread(target=self._run, args=(retrieval,), name=f"fetch-{key[0][-12:]}", daemon=True)
        thread.start()
        return retrieval

    def _run(self, retrieval: Retrieval) -> None:
        study_uid, series_uid = retrieval.key
        error: BaseException | None = None
        try:
            files = (
                self.source.fetch_series(study_uid, series_uid) if series_uid else self.source.fetch_study(study_uid)
            )
            for path in files:
                retrieval.landed(path)
        except Exception as exc:
            error = exc
            log.warning("retrieval on demand failed",
                        extra={"event": "fetch.failed", "study_uid": study_uid, "reason": str(exc)})  # fmt: skip
        finally:
            with self._lock:
                self._running.pop(retrieval.key, None)
            retrieval.finish(error)
            if self.after is not None:
                try:
                    self.after()
                except Exception:
                    log.exception("after-retrieval work failed", extra={"event": "fetch.after_failed"})
