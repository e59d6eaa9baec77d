"""C-GET split over worker processes, each with its own association to the PACS.

pynetdicom decodes every PDU and DIMSE message in Python: one association tops out near one
CPU core (~35 MB/s for a CT of 0.5 MB slices, measured), whatever the network. Worker processes
each run one association on a share of the study's instances (IMAGE-level C-GET with a list of
SOP Instance UIDs), admit what they receive into the same store and index, and report each
instance back here, so listeners still see instances as soon as they land.

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
from drimbox.dimse.storage import StorageHandler
from drimbox.errors import DrimboxError, RetrieveFailed

if TYPE_CHECKING:
    from drimbox.dimse.retrieve import Retriever, RetrieveReport

#: Builds a Retriever inside a worker process. It must be a module-level function (pickled by
#: name); `daemon.py` provides it, since only the composition root may wire the audit trail in.
RetrieverFactory = Callable[[Settings], "Retriever"]


@dataclass(frozen=True)
class Part:
    """One worker's share: instances of one series."""

    series_uid: str
    sop_uids: tuple[str, ...]


@dataclass(frozen=True)
class PartResult:
    failed: int
    errors: tuple[str, ...]


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
    """A pool of retrieval processes, started on first use and kept for the node's lifetime."""

    def __init__(self, settings: Settings, storage: StorageHandler, factory: RetrieverFactory, processes: int) -> None:
        self.settings = settings
        self.storage = storage
        self.factory = factory
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._executor: ProcessPoolExecutor | None = None
        self._arrivals: Any = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._arrivals = self._context.Queue(maxsize=256)
                self._executor = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=self._context,
                    initializer=_start_worker,
                    initargs=(self.settings, self.factory, self._arrivals, os.getpid()),
                )
            return self._executor

    def run(self, peer: str, study_uid: str, parts: list[Part], report: RetrieveReport) -> None:
        """Retrieve every part; instances reach the storage handler's listeners as they land."""
        try:
            futures = [self._pool().submit(_retrieve_part, peer, study_uid, part) for part in parts]
        except BrokenProcessPool:
            self.close()
            raise RetrieveFailed("the retrieval workers stopped; retry") from None
        while True:
            self._drain()
            _, pending = wait(futures, timeout=0.05)
            if not pending:
                self._drain()
                break
        for future in futures:
            self._collect(future, report)
        if report.errors:
            raise RetrieveFailed(f"C-GET failed in a worker: {report.errors[0]}")

    def _drain(self) -> None:
        while True:
            try:
                admitted = self._arrivals.get_nowait()
            except queue.Empty:
                return
            self.storage.notify(admitted)

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

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None


# --- inside a worker process ------------------------------------------------------------

_worker: Retriever | None = None
_arrivals: Any = None


def _start_worker(settings: Settings, factory: RetrieverFactory, arrivals: Any, parent: int) -> None:
    global _worker, _arrivals
    _worker = factory(settings)
    _arrivals = arrivals
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _retrieve_part(peer: str, study_uid: str, part: Part) -> PartResult:
    assert _worker is not None, "worker not initialised"
    report = _worker.retrieve_part(peer, study_uid, part.series_uid, list(part.sop_uids), _arrivals.put)
    return PartResult(report.failed, tuple(report.errors))
