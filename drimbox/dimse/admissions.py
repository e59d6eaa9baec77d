"""A C-GET's instances admitted behind the association, while the next ones arrive.

In a C-GET the PACS sends the next instance only once we have answered the C-STORE of the
previous one. Admitting an instance (read and check its header, place it, index it, write its
WADO-RS metadata) takes ~1-2 ms of a CT slice: done inside the C-STORE handler, the PACS waits
that long for every instance. Here the handler only closes the received file and queues it,
then answers at once; one thread per retrieval admits the queue in order, in batches (one index
transaction each) of what is waiting and what arrives within a few milliseconds more.

With an AdmissionProcess (the daemon's large in-process retrievals) the batches are admitted in
a process of their own: the receiving process then spends its one interpreter lock on the
association alone, the other core does the admitting. Measured on a CT C-GET (500 × 0.5 MB from
Orthanc, 2 cores shared with it): see bench/README.md.

The price: the PACS is told "success" for an instance we may refuse a moment later (truncated,
mismatching its request, disk full). Such an instance is counted as failed in the retrieval's
own report, as a failure status from us would have been counted by the PACS, and logged with its
reason. Only our own retrievals work this way; a C-STORE pushed to our SCP is answered after
admission.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.config import Settings
from drimbox.dimse.connection import ReceivedFile
from drimbox.dimse.parallel import RetrieverFactory, spawn_pool
from drimbox.dimse.storage import STATUS_SUCCESS, Admitted, Listener
from drimbox.errors import DrimboxError
from drimbox.store.files import DataSetStart
from drimbox.store.intake import CheckedFile, InstanceIntake

log = logging.getLogger(__name__)

#: Received files waiting for admission before the association waits too (files in incoming/,
#: not memory: each entry is a path): room for a whole batch while the one before is admitted.
_DEPTH = 64
#: Instances admitted together (one index transaction, one exchange with the admission process).
_BATCH = 32
#: A batch waits this long for one more instance, and no longer than `_GATHER` in all. Without
#: it, a CT slice every ~2 ms was admitted alone as soon as it came: 9 batches in 10 held one
#: instance, each paying a transaction and a round trip to the process (~0.4 ms of CPU on either
#: side). A large instance, which takes longer to arrive, still goes on its own at once.
_NEXT = 0.005
_GATHER = 0.05
#: How often a C-STORE waiting for room in the queue tells its association it is not idle.
_KEEPALIVE = 0.1


@dataclass(frozen=True)
class Received:
    """A complete data set file in incoming/, as the C-STORE request announced it."""

    path: Path
    sender: str
    sop_uid: str
    sop_class_uid: str
    #: where the data set begins, if the receiver wrote the file meta (else read from the file)
    start: DataSetStart | None = None


def admit_batch(intake: InstanceIntake, peer: str, batch: list[Received]) -> list[Admitted | str]:
    """Admit `batch` in one index transaction; per file, in order, what it became or why it was refused.

    A refused file is removed from incoming/ (never left half-admitted).
    """
    outcomes: list[Admitted | str] = []
    checked: list[tuple[int, Received, CheckedFile]] = []
    for received in batch:
        try:
            item = intake.check(received.path, sender=received.sender, expected_sop_uid=received.sop_uid,
                                expected_sop_class_uid=received.sop_class_uid, start=received.start)  # fmt: skip
        except Exception as exc:
            outcomes.append(_refused(received, exc, peer))
            continue
        checked.append((len(outcomes), received, item))
        outcomes.append("")  # filled below
    try:
        entries = intake.place([item for _, _, item in checked], sender=batch[0].sender, peer=peer,
                               audited=False)  # fmt: skip  # the retrieval's study.retrieved record
    except Exception as exc:
        for position, received, _ in checked:
            outcomes[position] = _refused(received, exc, peer)
        return outcomes
    for (position, _, _), entry in zip(checked, entries, strict=True):
        outcomes[position] = Admitted.of(entry)
    return outcomes


def _refused(received: Received, exc: Exception, peer: str) -> str:
    with contextlib.suppress(OSError):  # (a read-only store must not stop the queue)
        received.path.unlink(missing_ok=True)
    if not isinstance(exc, DrimboxError):
        log.error("instance not admitted", exc_info=exc, extra={"event": "cstore.error", "peer": peer})
        return f"{received.sop_uid}: {exc.__class__.__name__}: {exc}"
    return f"{received.sop_uid}: {exc}"


class Admissions:
    """The admission queue of one retrieval; use as a context manager (exit waits for the queue)."""

    def __init__(
        self,
        intake: InstanceIntake,
        peer: str,
        listener: Listener,
        process: AdmissionProcess | None = None,
        depth: int = _DEPTH,
    ) -> None:
        self._intake = intake
        self._peer = peer
        self._listener = listener
        self._process = process
        self._pending: queue.Queue[Received | None] = queue.Queue(maxsize=depth)
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"admit-{peer}", daemon=True)

    def __enter__(self) -> Admissions:
        try:
            if self._process is not None:
                self._process.warm()  # started while the association is being set up
            self._thread.start()
        except BaseException:
            if self._process is not None:
                self._process.done()  # (__exit__ will not be called)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._put(None)
        self._thread.join()
        if self._process is not None:
            self._process.done()

    def handle(self, event: Any) -> int:
        """The EVT_C_STORE handler of the C-GET's association: queue the file, answer success."""
        request = event.request
        path = Path(event.dataset_path)
        ReceivedFile.finish(path)
        self.submit(
            path,
            str(event.assoc.acceptor.ae_title).strip(),
            str(request.AffectedSOPInstanceUID or ""),
            str(request.AffectedSOPClassUID or ""),
            event.assoc.dul._idle_timer.restart,
        )
        return STATUS_SUCCESS

    def submit(
        self,
        path: Path,
        sender: str,
        sop_uid: str,
        sop_class_uid: str,
        waiting: Callable[[], None] | None = None,
        start: DataSetStart | None = None,
    ) -> None:
        """Queue a complete received file; blocks while the queue is full (the PACS waits meanwhile).

        `waiting` is called every `_KEEPALIVE` seconds of that wait: the association's idle timer
        is restarted, since it is we who are slow, not the PACS (the admission process starting,
        a busy disk), and an idle timeout must only ever catch a silent peer.
        """
        if not self._put(Received(path, sender, sop_uid, sop_class_uid, start), waiting):
            raise DrimboxError("the retrieval's admission has stopped")

    def lost(self, sop_uid: str, reason: str) -> None:
        """An instance answered as received that never reached the queue: failed all the same."""
        log.error("instance lost", extra={"event": "cstore.lost", "peer": self._peer, "reason": reason})
        self.failures.append(f"{sop_uid}: {reason}")

    def _put(self, item: Received | None, waiting: Callable[[], None] | None = None) -> bool:
        """Queue `item`, waiting for room (`waiting()` every `_KEEPALIVE` s); False if the queue
        is full and its reader has stopped."""
        while True:
            try:
                self._pending.put(item, timeout=_KEEPALIVE)
                return True
            except queue.Full:
                if not self._thread.is_alive():
                    return False
                if waiting is not None:
                    waiting()

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch, ended = self._gather(first)
            try:
                self._admit(batch)
            except Exception as exc:  # never let the queue's only reader die: the reactor would wait on it
                log.error("batch not admitted", exc_info=exc, extra={"event": "cstore.error", "peer": self._peer})
                self.failures.extend(_refused(received, exc, self._peer) for received in batch)
            if ended:
                return

    def _gather(self, first: Received) -> tuple[list[Received], bool]:
        """A batch starting with `first`: what is waiting, and what comes in `_NEXT` of the last
        one (within `_GATHER`); and whether the end of the retrieval was seen."""
        batch = [first]
        deadline = time.monotonic() + _GATHER
        while len(batch) < _BATCH:
            wait = min(_NEXT, deadline - time.monotonic())
            try:
                item = self._pending.get_nowait() if wait <= 0 else self._pending.get(timeout=wait)
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _admit(self, batch: list[Received]) -> None:
        outcomes = self._process.admit(self._peer, batch) if self._process is not None else None
        if outcomes is None:
            outcomes = self._admit_here(batch)
        for received, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, str):
                self.failures.append(outcome)
                continue
            try:
                self._listener(outcome)
            except Exception as exc:
                log.error("listener failed", exc_info=exc, extra={"event": "cstore.listener", "peer": self._peer})
                self.failures.append(f"{received.sop_uid}: {exc.__class__.__name__}: {exc}")

    def _admit_here(self, batch: list[Received]) -> list[Admitted | str]:
        """The batch admitted in this process. A file no longer in incoming/ was taken by an
        admission process that then failed: whether its row was committed is unknown, so it is
        reported failed rather than admitted twice."""
        present = [received.path.exists() for received in batch]
        local = iter(admit_batch(self._intake, self._peer, [r for r, p in zip(batch, present, strict=True) if p]))
        return [
            next(local) if here else f"{received.sop_uid}: the admission process stopped while admitting it"
            for received, here in zip(batch, present, strict=True)
        ]


class AdmissionProcess:
    """One process admitting the batches of this process's C-GETs, started on first use and kept
    until idle (`stop_if_idle`)."""

    def __init__(self, settings: Settings, factory: RetrieverFactory) -> None:
        self.settings = settings
        self.factory = factory
        self._executor: ProcessPoolExecutor | None = None
        self._ready: Future[bool] | None = None  # the start-up task: done once the process is up
        self._lock = threading.Lock()
        self._users = 0  # retrievals between warm() and done()
        self._last_used = time.monotonic()

    def warm(self) -> None:
        """Start the process now (it takes ~1 s to import), without waiting for it; a retrieval
        calls it as it begins, and `done()` once its last batch is admitted."""
        with self._lock:
            self._users += 1
            if self._ready is not None:
                return
            if self._executor is None:
                self._executor = spawn_pool(1, _start_admitter, self.settings, self.factory)
            try:
                self._ready = self._executor.submit(_started)
            except (BrokenProcessPool, RuntimeError):  # (RuntimeError: shut down meanwhile)
                self._executor = None

    def done(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            self._last_used = time.monotonic()

    def running(self) -> bool:
        """Whether the process is up (started and past its imports)."""
        with self._lock:
            ready = self._ready
        if ready is None or not ready.done() or ready.cancelled():
            return False
        return ready.exception() is None and ready.result() is True

    def stop_if_idle(self, idle_seconds: float) -> bool:
        """Stop the process if no retrieval has used it for `idle_seconds` (the next one starts
        it again, admitting in its own process meanwhile); whether it was stopped."""
        with self._lock:
            if self._executor is None or self._users or time.monotonic() - self._last_used < idle_seconds:
                return False
            executor, self._executor, self._ready = self._executor, None, None
        executor.shutdown(wait=True, cancel_futures=True)
        return True

    def admit(self, peer: str, batch: list[Received]) -> list[Admitted | str] | None:
        """What admit_batch returns, computed in the process; None if the process cannot, or is
        still starting (the caller then admits the batch itself: this process is a speed-up, never
        a reason to refuse nor to make the PACS wait)."""
        with self._lock:
            ready, executor = self._ready, self._executor
        if ready is None or executor is None or not ready.done():
            return None
        try:
            return executor.submit(_admit_here, peer, batch).result()
        except BrokenProcessPool:
            reason = "stopped"
            self._discard(executor)
        except Exception as exc:  # an admission's own errors are outcomes: this is the process failing
            reason = f"{exc.__class__.__name__}: {exc}"
        log.error("admission process unavailable", extra={"event": "cstore.admission_process", "reason": reason})
        return None

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        """Forget a broken process (the next warm() starts another)."""
        with self._lock:
            if self._executor is executor:
                self._executor, self._ready = None, None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            executor, self._executor, self._ready = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


# --- inside the admission process -------------------------------------------------------

_intake: InstanceIntake | None = None


def _start_admitter(settings: Settings, factory: RetrieverFactory) -> None:
    global _intake
    _intake = factory(settings).storage.intake


def _started() -> bool:
    return _intake is not None


def _admit_here(peer: str, batch: list[Received]) -> list[Admitted | str]:
    assert _intake is not None, "admission process not initialised"
    return admit_batch(_intake, peer, batch)
