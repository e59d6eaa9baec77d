"""C-GET split over worker processes, each with its own association to the PACS.

pynetdicom decodes every DIMSE message in Python and we index and describe each instance: one
association tops out near one CPU core (~55 MB/s for a CT of 0.5 MB slices, measured), whatever
the network. Worker processes each run one association on a share of the study: whole series
(SERIES-level C-GET), or lists of SOP Instance UIDs (IMAGE level) when the peer's
`split_by = "instances"`. They admit what they receive into the same store and index, and report
each instance back here, so listeners still see instances as soon as they land.

A worker exits by itself when the process that started it dies, so a killed daemon leaves no
retrieval running behind it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drimbox.config import Settings
from drimbox.errors import DrimboxError, RetrieveFailed

if TYPE_CHECKING:
    from drimbox.dimse.retrieve import Retriever, RetrieveReport

#: Builds a Retriever inside a worker process. It must be a module-level function (pickled by
#: name); `daemon.py` provides it, since only the composition root may wire the audit trail in.
RetrieverFactory = Callable[[Settings], "Retriever"]


@dataclass(frozen=True)
class Part:
    """One worker's share: instances of one series, or (no UIDs) the whole series."""

    series_uid: str
    sop_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartResult:
    failed: int
    errors: tuple[str, ...]


def by_series(counts: dict[str, int | None]) -> list[Part]:
    """One part per series, largest first: the pool hands the next series to the first free worker."""
    return [Part(series_uid) for series_uid, _ in sorted(counts.items(), key=lambda item: -(item[1] or 0))]


def split(instances_by_series: dict[str, list[str]], workers: int) -> list[Part]:
    """Deal each series' instances round-robin into `workers` parts, so all advance in order."""
    parts = []
    for series_uid, sop_uids in instances_by_series.items():
        for share in range(workers):
            chunk = tuple(sop_uids[share::workers])
            if chunk:
                parts.append(Part(series_uid, chunk))
    return parts


class WorkerPool:
    """A pool of retrieval processes, started on first use and kept until idle (`stop_if_idle`)."""

    def __init__(self, settings: Settings, factory: RetrieverFactory, processes: int) -> None:
        self.settings = settings
        self.factory = factory
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._executor: ProcessPoolExecutor | None = None
        self._arrivals: Any = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._last_used = time.monotonic()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._arrivals = self._context.Queue(maxsize=256)
                self._executor = spawn_pool(self.processes, _start_worker, self.settings, self.factory, self._arrivals)
            return self._executor

    def run(
        self, peer: str, study_uid: str, parts: list[Part], report: RetrieveReport, admitted: Callable[[Any], None]
    ) -> None:
        """Retrieve every part; `admitted` hears of each instance as it lands, from any worker.

        One split retrieval at a time uses the pool (they share the arrivals queue). Each part
        ends with a marker on that queue, after its instances: waiting for every marker, not just
        for the results (which travel on another pipe), ensures no arrival is left behind.
        """
        with self._run_lock:
            try:
                self._run_parts(peer, study_uid, parts, report, admitted)
            finally:
                self._last_used = time.monotonic()
        if report.errors:
            raise RetrieveFailed(f"C-GET failed in a worker: {report.errors[0]}")

    def _run_parts(
        self, peer: str, study_uid: str, parts: list[Part], report: RetrieveReport, admitted: Callable[[Any], None]
    ) -> None:
        try:
            futures = [self._pool().submit(_retrieve_part, peer, study_uid, part) for part in parts]
        except BrokenProcessPool:
            self.close()
            raise RetrieveFailed("the retrieval workers stopped; retry") from None
        markers = 0
        while markers < len(parts):
            try:
                item = self._arrivals.get(timeout=0.1)
            except queue.Empty:
                if any(f.done() and f.exception() is not None for f in futures) and all(f.done() for f in futures):
                    break  # a worker died: its marker will never come
                continue
            if item is None:
                markers += 1
            else:
                admitted(item)
        wait(futures)
        for future in futures:
            self._collect(future, report)

    def _collect(self, future: Future[PartResult], report: RetrieveReport) -> None:
        try:
            result = future.result()
        except BrokenProcessPool:
            self.close()
            report.errors.append("a retrieval worker died")
            return
        except DrimboxError as exc:
            report.errors.append(str(exc))
            return
        report.failed += result.failed
        report.errors.extend(result.errors)

    def running(self) -> int:
        """How many worker processes are started (0 before first use and once stopped as idle)."""
        with self._lock:
            return self.processes if self._executor is not None else 0

    def stop_if_idle(self, idle_seconds: float) -> bool:
        """Stop the processes if no split retrieval has run for `idle_seconds` (the next one
        starts them again, ~1 s); whether they were stopped. Never while a retrieval runs."""
        if not self._run_lock.acquire(blocking=False):
            return False
        try:
            with self._lock:
                started = self._executor is not None
            if not started or time.monotonic() - self._last_used < idle_seconds:
                return False
            self.close()
            return True
        finally:
            self._run_lock.release()

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None


# --- inside a worker process ------------------------------------------------------------

_worker: Retriever | None = None
_arrivals: Any = None


def spawn_pool(workers: int, initializer: Callable[..., None], *initargs: Any) -> ProcessPoolExecutor:
    """Processes started fresh (spawn: no copy of this process's threads and locks) that run
    `initializer(*initargs)` first, and exit when this process is gone (`_exit_with_parent`)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_initialized,
        initargs=(initializer, os.getpid(), *initargs),
    )


def _initialized(initializer: Callable[..., None], parent: int, *initargs: Any) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()  # (even if it hangs)
    initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    """A worker's watch: once the process that started it is gone, so is the worker."""
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _start_worker(settings: Settings, factory: RetrieverFactory, arrivals: Any) -> None:
    global _worker, _arrivals
    _worker = factory(settings)
    _arrivals = arrivals


def _retrieve_part(peer: str, study_uid: str, part: Part) -> PartResult:
    assert _worker is not None, "worker not initialised"
    try:
        report = _worker.retrieve_part(peer, study_uid, part.series_uid, list(part.sop_uids) or None, _arrivals.put)
    finally:
        _arrivals.put(None)  # the part's end marker, behind its last instance
    return PartResult(report.failed, tuple(report.errors))
