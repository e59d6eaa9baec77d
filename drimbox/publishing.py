"""Wiring of the source side's publication chain: RIS (MLLP) → outbox → worker → DMP.

Kept out of `daemon.py` so the daemon stays a list of parts; this module only assembles the
`hl7`, `dimse` and `dmp` boundaries around the `publish` core.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from drimbox.config import Settings
from drimbox.dimse.catalog import PacsCatalog
from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.storage import StorageHandler
from drimbox.errors import ConfigError, DmpUnavailable, PeerUnknown
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditTrail
from drimbox.publish.assembly import PacsStudy, StudyCatalog
from drimbox.publish.inbox import PublicationInbox
from drimbox.publish.iocm import RejectionHandler
from drimbox.publish.outbox import Outbox, PublicationView
from drimbox.publish.submission import DmpEntry, DmpGateway, Submission, Withdrawal
from drimbox.publish.worker import PublicationWorker, WorkerSettings
from drimbox.report.message import ReportAction, ReportMessage
from drimbox.report.model import TEST_INS_ROOTS, Identifier, Report

log = logging.getLogger(__name__)


@dataclass
class Publishing:
    """The publication parts of one box; `start()` opens the MLLP listener and the worker thread."""

    settings: Settings
    outbox: Outbox
    inbox: PublicationInbox
    worker: PublicationWorker
    mllp: Any
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.mllp is not None:
            self.mllp.start()
        if self.settings.publication.enabled:
            poll = self.settings.publication.poll_seconds
            self._thread = threading.Thread(
                target=self.worker.run_forever, args=(poll,), name="publication", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self.worker.stop()
        if self.mllp is not None:
            self.mllp.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        close = getattr(self.worker.gateway, "close", None)
        if callable(close):
            close()

    def snapshot(self) -> dict[str, Any]:
        """Counts per state, for the status page (no patient data)."""
        address = self.mllp.address if self.mllp is not None else None
        return {
            "publications": self.outbox.counts(),
            "hl7_listener": f"{address[0]}:{address[1]}" if address else "disabled",
        }


def build_publishing(
    settings: Settings,
    outbox: Outbox,
    index: IndexRepository,
    connector: PeerConnector,
    storage: StorageHandler,
    audit: AuditTrail,
    gateway: DmpGateway | None = None,
    catalog: StudyCatalog | None = None,
) -> Publishing:
    """Assemble the chain; `gateway` and `catalog` may be given (tests), else built from settings."""
    # Imported here: the DMP client loads signing keys and the HL7 listener binds a port, which
    # one-shot commands building a node do not need.
    from drimbox.dmp.gateway import SoapDmpGateway
    from drimbox.hl7.mllp import MllpServer

    publication = settings.publication
    if settings.mode == "demo":
        roots = list(dict.fromkeys([*publication.ins_roots, *TEST_INS_ROOTS]))
        publication = publication.model_copy(update={"ins_roots": roots})
    inbox = PublicationInbox(outbox, settings.hl7, publication, audit)
    storage.on_rejection = RejectionHandler(outbox, audit)
    if catalog is None:
        peer = _peer(settings)
        catalog = PacsCatalog(connector, peer, index) if peer else _NoPacs()
    if gateway is None:
        gateway = SoapDmpGateway(settings.dmp, settings.site) if settings.publication.enabled else _Paused()
    worker = PublicationWorker(
        outbox, catalog, gateway, index, audit, worker_settings(settings), _business_ack(settings, outbox)
    )
    mllp = MllpServer(settings.hl7, inbox, app_name="DRIMBOX", facility=settings.site.structure_id)
    return Publishing(settings, outbox, inbox, worker, mllp if settings.hl7.enabled else None)


def worker_settings(settings: Settings) -> WorkerSettings:
    p = settings.publication
    return WorkerSettings(
        wado_prefix=settings.http.public_base_url + settings.dicomweb.prefix,
        institution_name=settings.site.name,
        wait_for_images=timedelta(hours=p.wait_for_images_hours),
        images_retry=timedelta(seconds=p.images_retry_seconds),
        retry_base=timedelta(seconds=p.retry_base_seconds),
        retry_max=timedelta(seconds=p.retry_max_seconds),
        give_up=timedelta(hours=p.give_up_hours),
        replacement=p.replacement,
        include_report=p.include_report,
        check_accession=p.check_accession,
        check_patient_id=p.check_patient_id,
        kos_series_number=p.kos_series_number,
        concurrency=p.concurrency,
    )


def _peer(settings: Settings) -> str:
    if settings.publication.peer:
        settings.peer(settings.publication.peer)
        return settings.publication.peer
    if len(settings.pacs) == 1:
        return next(iter(settings.pacs))
    if not settings.pacs:
        return ""
    raise ConfigError("publication.peer: several PACS peers are configured; name the one holding the studies")


def _business_ack(settings: Settings, outbox: Outbox) -> Any:
    """The ZAM^Z01 sender (DMP reception acknowledgement to the RIS), when configured."""
    hl7 = settings.hl7
    if not hl7.business_ack or not hl7.business_ack_host:
        return None

    def send(publication: PublicationView) -> None:
        from drimbox.hl7.ack import build_business_ack
        from drimbox.hl7.client import send_message

        message = outbox.message(publication.message_id) if publication.message_id else None
        if message is None or publication.origin != "report":
            return
        success = publication.state in ("published", "deleted")
        application, _, facility = message.sender.partition("@")
        original = ReportMessage(
            control_id=message.control_id,
            message_type=message.message_type,
            event=[*message.message_type.split("^"), "", ""][1],
            version="2.6",
            action=ReportAction(publication.action),
            document=b"",
            document_type="",
            sending_application=application,
            sending_facility=facility,
        )
        try:
            code = publication.dmp_issues[0]["code"] if publication.dmp_issues else ""
            ack = build_business_ack(
                original,
                success,
                error_code="" if success else code,
                error_text="" if success else publication.reason,
                app_name="DRIMBOX",
                facility=settings.site.structure_id,
            )
            send_message(hl7.business_ack_host, hl7.business_ack_port, ack, timeout=10)
            outbox.advance(publication.id, publication.state, "ZAM^Z01 sent to the RIS", business_ack="sent")
        except Exception as exc:
            log.warning("ZAM^Z01 not delivered", extra={"event": "hl7.zam_failed", "reason": str(exc)})
            outbox.advance(publication.id, publication.state, f"ZAM^Z01 not delivered: {exc}", business_ack="failed")

    return send


class _Paused:
    """The DMP when publication is disabled: the worker is not started, intents wait in the outbox."""

    def provide(self, submission: Submission) -> None:
        raise DmpUnavailable("publication is disabled ([publication] enabled = false)")

    def find_entry(self, patient_ins: Identifier, unique_id: str, report: Report) -> DmpEntry | None:
        raise DmpUnavailable("publication is disabled ([publication] enabled = false)")

    def withdraw(self, withdrawal: Withdrawal) -> None:
        raise DmpUnavailable("publication is disabled ([publication] enabled = false)")


class _NoPacs:
    """No [pacs] peer configured: publications wait, with a reason an operator can act on."""

    def study(self, study_uid: str) -> PacsStudy | None:
        raise PeerUnknown("no PACS peer is configured ([pacs.<name>]): the study cannot be looked up")
