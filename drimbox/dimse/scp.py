"""Our DICOM listener: C-ECHO and C-STORE SCP on an explicit address.

It receives what PACS peers push to us, C-MOVE sub-operations included, and (later) IOCM
rejection notes. Each calling AE may hold at most `max_associations_per_peer` associations;
beyond that the new association is aborted as soon as it is established.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.config import DimseSettings
from drimbox.dimse.connection import make_ae
from drimbox.dimse.contexts import SCP_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, VERIFICATION
from drimbox.dimse.storage import StorageHandler

log = logging.getLogger(__name__)


class StoreServer:
    """The C-STORE SCP; start() returns once it listens, stop() closes it."""

    def __init__(self, settings: DimseSettings, storage: StorageHandler) -> None:
        self.settings = settings
        self.storage = storage
        self._server: ThreadedAssociationServer | None = None
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self.settings.bind, self.settings.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        ae = make_ae(self.settings)
        ae.add_supported_context(VERIFICATION, SCP_TRANSFER_SYNTAXES)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, SCP_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.storage.handle),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        self._server = ae.start_server((self.settings.bind, self.settings.port), block=False, evt_handlers=handlers)
        log.info(
            "DICOM listener started",
            extra={
                "event": "scp.started",
                "bind": self.settings.bind,
                "port": self.address[1],
                "ae_title": self.settings.ae_title,
            },
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_established(self, event: Any) -> None:
        caller = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            self._open[caller] += 1
            too_many = self._open[caller] > self.settings.max_associations_per_peer
        if too_many:
            log.warning("association refused: per-peer cap", extra={"event": "scp.cap", "peer": caller})
            event.assoc.abort()

    def _on_closed(self, event: Any) -> None:
        caller = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            self._open[caller] -= 1
            if self._open[caller] <= 0:
                del self._open[caller]
