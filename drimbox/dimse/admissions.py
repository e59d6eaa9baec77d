"""A C-GET's instances admitted on a thread of their own, while the next ones arrive.

In a C-GET the PACS sends the next instance only once we have answered the C-STORE of the
previous one. Admitting an instance (read and check its header, place it, index it, write its
WADO-RS metadata) takes ~2 ms of a CT slice: done inside the C-STORE handler, the PACS waits
that long for every instance. Here the handler only closes the received file and queues it,
then answers at once; one thread per retrieval admits the queue in order. Measured on a CT
C-GET (500 × 0.5 MB from Orthanc): 3.4 s → 2.6 s.

The price: the PACS is told "success" for an instance we may refuse a moment later (truncated,
mismatching its request, disk full). Such an instance is counted as failed in the retrieval's
own report, with its reason, as a failure status from us would have been counted by the PACS.
Only our own retrievals work this way; a C-STORE pushed to our SCP is answered after admission.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.dimse.connection import ReceivedFile
from drimbox.dimse.storage import Admitted, Listener
from drimbox.errors import DrimboxError
from drimbox.store.intake import InstanceIntake

log = logging.getLogger(__name__)

#: Received files waiting for admission before the association waits too (files in incoming/,
#: not memory: each entry is a path).
_DEPTH = 32
STATUS_SUCCESS = 0x0000


@dataclass(frozen=True)
class _Received:
    path: Path
    sender: str
    sop_uid: str
    sop_class_uid: str


class Admissions:
    """The admission queue of one retrieval; use as a context manager (exit waits for the queue)."""

    def __init__(self, intake: InstanceIntake, peer: str, listener: Listener, depth: int = _DEPTH) -> None:
        self._intake = intake
        self._peer = peer
        self._listener = listener
        self._pending: queue.Queue[_Received | None] = queue.Queue(maxsize=depth)
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"admit-{peer}", daemon=True)

    def __enter__(self) -> Admissions:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pending.put(None)
        self._thread.join()

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
        )
        return STATUS_SUCCESS

    def submit(self, path: Path, sender: str, sop_uid: str, sop_class_uid: str) -> None:
        """Queue a complete received file; blocks while the queue is full (the PACS waits meanwhile)."""
        self._pending.put(_Received(path, sender, sop_uid, sop_class_uid))

    def _run(self) -> None:
        while (received := self._pending.get()) is not None:
            self._admit(received)

    def _admit(self, received: _Received) -> None:
        try:
            entry = self._intake.admit(
                received.path,
                sender=received.sender,
                peer=self._peer,
                expected_sop_uid=received.sop_uid,
                expected_sop_class_uid=received.sop_class_uid,
                audited=False,  # the retrieval's study.retrieved record stands for its instances
            )
            self._listener(Admitted.of(entry))
        except DrimboxError as exc:
            received.path.unlink(missing_ok=True)
            self.failures.append(f"{received.sop_uid}: {exc}")
        except Exception as exc:
            received.path.unlink(missing_ok=True)
            log.exception("instance not admitted", extra={"event": "cstore.error", "peer": self._peer})
            self.failures.append(f"{received.sop_uid}: {exc.__class__.__name__}: {exc}")
