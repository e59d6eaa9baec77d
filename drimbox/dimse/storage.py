"""Receiving instances: the C-STORE handler shared by our SCP and by C-GET sub-operations.

pynetdicom has already written the data set to a file in `incoming/` (chunked receive); the
handler hands that file to the intake and maps the outcome to a DIMSE status (PS3.4 Annex B):
0xA900 when the object contradicts its request, 0xC000 when it cannot be read, 0xA700 when
the store is full. The retrieval that asked for the instance is told as soon as it is admitted.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from drimbox.dimse.connection import ReceivedFile, receive_into
from drimbox.errors import DrimboxError, InstanceMismatch, InvalidInstance, StoreFull
from drimbox.index.records import InstanceEntry
from drimbox.kos.parse import DICOM_ERRORS
from drimbox.kos.rejection import Rejection, read_rejection
from drimbox.store.intake import InstanceIntake

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Admitted:
    """An instance that has just entered the store: what listeners need, small enough to pickle."""

    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    size: int

    @classmethod
    def of(cls, entry: InstanceEntry) -> Admitted:
        return cls(entry.study.study_uid, entry.series.series_uid, entry.instance.sop_uid, entry.file.path,
                   entry.file.size)  # fmt: skip


Listener = Callable[[Admitted], None]
RejectionListener = Callable[[Rejection, str], None]
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


class StorageHandler:
    """Turns received C-STORE data sets into store entries and tells whoever waits for them.

    A C-GET passes its own callback with each sub-operation (the instances arrive on its own
    association); a C-MOVE registers under its message ID, which the PACS repeats in every
    C-STORE it sends for that move (Move Originator Message ID), so concurrent retrievals of
    the same study never see each other's instances.
    """

    def __init__(self, intake: InstanceIntake) -> None:
        self.intake = intake
        self._moves: dict[int, Listener] = {}
        self._lock = threading.Lock()
        self._message_ids = itertools.count(random.randrange(1, 0xFFFF))
        self.on_rejection: RejectionListener | None = None
        receive_into(intake.store.incoming)

    def listen_move(self, listener: Listener) -> tuple[int, Callable[[], None]]:
        """A fresh C-MOVE message ID whose instances go to `listener`, and the unsubscribe."""
        with self._lock:
            message_id = next(self._message_ids) % 0xFFFF + 1
            self._moves[message_id] = listener

        def stop() -> None:
            with self._lock:
                self._moves.pop(message_id, None)

        return message_id, stop

    def handle(self, event: Any, peer: str = "", on_admitted: Listener | None = None) -> int | Dataset:
        """The EVT_C_STORE handler."""
        request = event.request
        # In a C-GET we requested the association and the PACS (the acceptor) sends.
        sending_side = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
        sender = str(sending_side.ae_title).strip()
        path = Path(event.dataset_path)
        ReceivedFile.finish(path)
        # A rejection note pushed to us (not an instance of our own C-GET or C-MOVE) goes to publication.
        pushed = on_admitted is None and request.MoveOriginatorMessageID is None
        if self.on_rejection is not None and pushed and str(request.AffectedSOPClassUID) == KOS_SOP_CLASS:
            handled = self._rejection(path, sender)
            if handled is not None:
                return handled
        listener = on_admitted
        if listener is None and request.MoveOriginatorMessageID is not None:
            with self._lock:
                listener = self._moves.get(int(request.MoveOriginatorMessageID))
        try:
            entry = self.intake.admit(
                path,
                sender=sender,
                peer=peer,
                expected_sop_uid=str(request.AffectedSOPInstanceUID or ""),
                expected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                audited=listener is None,  # our own retrieval's instances: its study.retrieved record
            )
        except InstanceMismatch as exc:
            return _status(STATUS_MISMATCH, str(exc))
        except InvalidInstance as exc:
            return _status(STATUS_CANNOT_UNDERSTAND, str(exc))
        except StoreFull as exc:
            return _status(STATUS_OUT_OF_RESOURCES, str(exc))
        except Exception as exc:
            path.unlink(missing_ok=True)
            log.exception("C-STORE failed", extra={"event": "cstore.error", "peer": sender})
            return _status(STATUS_OUT_OF_RESOURCES, f"{exc.__class__.__name__}")
        if listener is not None:
            listener(Admitted.of(entry))
        return STATUS_SUCCESS

    def _rejection(self, path: Path, sender: str) -> int | Dataset | None:
        """An IOCM rejection note goes to publication and is not stored; any other KOS is an instance."""
        try:
            rejection = read_rejection(dcmread(path, stop_before_pixels=True))
        except (*DICOM_ERRORS, OSError, AttributeError, DrimboxError) as exc:
            path.unlink(missing_ok=True)
            return _status(STATUS_CANNOT_UNDERSTAND, f"unreadable KOS: {exc}")
        if rejection is None or self.on_rejection is None:
            return None
        path.unlink(missing_ok=True)
        try:
            self.on_rejection(rejection, sender)
        except Exception as exc:
            log.exception("rejection note not handled", extra={"event": "iocm.error", "peer": sender})
            return _status(STATUS_OUT_OF_RESOURCES, f"{exc.__class__.__name__}")
        return STATUS_SUCCESS


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
