"""Our DICOM listener: C-ECHO and C-STORE SCP on an explicit address.

It receives what PACS peers push to us, C-MOVE sub-operations included, and (later) IOCM
rejection notes. Each calling AE may hold at most `max_associations_per_peer` associations;
beyond that the new association is aborted as soon as it is established.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.config import DimseSettings, PacsPeer
from drimbox.dimse.connection import make_ae
from drimbox.dimse.contexts import SCP_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, VERIFICATION
from drimbox.dimse.storage import StorageHandler
from drimbox.ports import AuditEvent, AuditTrail

log = logging.getLogger(__name__)


class StoreServer:
    """The C-STORE SCP; start() returns once it listens, stop() closes it.

    Only known callers get in: the AE titles of the PACS peers, from the peer's own address,
    and those listed in `dimse.accept_from` (from any address). Others are rejected at
    association time (calling AE title not recognised) or aborted when their address is wrong.
    """

    def __init__(self, settings: DimseSettings, storage: StorageHandler, peers: dict[str, PacsPeer],
                 audit: AuditTrail) -> None:  # fmt: skip
        self.settings = settings
        self.storage = storage
        self.audit = audit
        self.peer_hosts: dict[str, set[str]] = {}
        for peer in peers.values():
            self.peer_hosts.setdefault(peer.ae_title, set()).update(_addresses(peer.host))
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
        ae.require_calling_aet = sorted(set(self.peer_hosts) | set(self.settings.accept_from)) or ["-NONE-"]
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
        address = str(event.assoc.requestor.address)
        hosts = self.peer_hosts.get(caller)
        if caller not in self.settings.accept_from and hosts is not None and address not in hosts:
            log.warning("association refused: address", extra={"event": "scp.refused", "peer": caller,
                                                                "address": address})  # fmt: skip
            self.audit.record(AuditEvent("association.refused", caller, "failure",
                                         detail={"address": address, "reason": "not the PACS's address"}))  # fmt: skip
            event.assoc.abort()
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


def _addresses(host: str) -> set[str]:
    """The IP addresses of a configured peer host (the name itself when it does not resolve)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)} | {host}
    except OSError:
        return {host}
