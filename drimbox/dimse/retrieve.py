"""Bringing a study or series from the PACS into our store: C-GET, or C-MOVE to our own SCP.

Each instance is admitted (checked, renamed into place, indexed) as it arrives, and reported to
the caller at once, so a DICOMweb response can stream it while later instances are still on the
wire. A C-GET of a study with many instances is split over worker processes (`parallel.py`).
`fetch_study`/`fetch_series` implement the StudySource port on a thread with a bounded queue.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt

from drimbox.config import Settings
from drimbox.dimse.admissions import AdmissionProcess, Admissions
from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.contexts import COMMON_STORAGE_SOP_CLASSES, GET_MODEL, MOVE_MODEL, cget_storage_contexts
from drimbox.dimse.find import PacsQuery
from drimbox.dimse.fragments import MAX_FAST_PDU
from drimbox.dimse.parallel import WorkerPool, by_series, split
from drimbox.dimse.scp import StoreServer
from drimbox.dimse.storage import Admitted, StorageHandler
from drimbox.dimse.suboperations import SubOperations
from drimbox.errors import RetrieveFailed
from drimbox.index.records import InstanceRecord, SeriesRecord
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.uids import checked_uid

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
WARNING = 0xB000
#: Refused instances whose reasons are logged one by one (the count is always complete).
_LISTED_FAILURES = 10


@dataclass
class RetrieveReport:
    """The outcome of one retrieval, as the PACS reported it and as we stored it."""

    study_uid: str
    series_uid: str | None
    method: str
    stored: int = 0
    bytes: int = 0
    failed: int = 0
    warnings: int = 0
    seconds: float = 0.0
    status: int | None = None
    errors: list[str] = field(default_factory=list)


OnInstance = Callable[[Admitted], None]


class Retriever:
    """Retrieves from the configured PACS peers; implements the StudySource port."""

    def __init__(
        self,
        settings: Settings,
        connector: PeerConnector,
        storage: StorageHandler,
        index: IndexRepository,
        audit: AuditTrail,
        scp: StoreServer | None = None,
        pool: WorkerPool | None = None,
        admission: AdmissionProcess | None = None,
    ) -> None:
        self.settings = settings
        self.connector = connector
        self.storage = storage
        self.index = index
        self.audit = audit
        self.scp = scp
        self.pool = pool
        self.admission = admission

    def peer_for(self, study_uid: str) -> str:
        """The peer the index says holds the study, or the only configured one."""
        study_uid = checked_uid(study_uid, "StudyInstanceUID")
        indexed = self.index.study_peer(study_uid)
        if indexed in self.settings.pacs:
            return indexed
        if len(self.settings.pacs) == 1:
            return next(iter(self.settings.pacs))
        if not self.settings.pacs:
            raise RetrieveFailed("no PACS peer configured; add a [pacs.<name>] section")
        raise RetrieveFailed(f"study {study_uid} is not indexed; run `drimbox index` first")

    def retrieve(
        self,
        study_uid: str,
        series_uid: str | None = None,
        *,
        peer: str | None = None,
        on_instance: OnInstance | None = None,
    ) -> RetrieveReport:
        """Bring the study (or one series) into the store with the peer's configured method."""
        study_uid = checked_uid(study_uid, "StudyInstanceUID")
        if series_uid is not None:
            series_uid = checked_uid(series_uid, "SeriesInstanceUID")
        peer = peer or self.peer_for(study_uid)
        method = self.settings.peer(peer).retrieve
        report = RetrieveReport(study_uid, series_uid, method)
        started = time.monotonic()

        def admitted(instance: Admitted) -> None:
            if series_uid and instance.series_uid != series_uid:
                return
            report.stored += 1
            report.bytes += instance.size
            if on_instance:
                on_instance(instance)

        try:
            parts = self._parallel_parts(peer, study_uid, series_uid) if method == "c-get" else []
            if parts and self.pool is not None:
                self.pool.run(peer, study_uid, parts, report, admitted)
            elif method == "c-get":
                self._cget(peer, study_uid, series_uid, report, admitted)
            else:
                self._cmove(peer, study_uid, series_uid, report, admitted)
        finally:
            report.seconds = time.monotonic() - started
            self.audit.record(
                AuditEvent(
                    "study.retrieved",
                    peer,
                    "success" if not report.failed and not report.errors else "failure",
                    study_uid=study_uid,
                    detail={
                        "series_uid": series_uid or "",
                        "stored": report.stored,
                        "failed": report.failed,
                        "method": method,
                    },
                )
            )
        return report

    def retrieve_part(
        self, peer: str, study_uid: str, series_uid: str, sop_uids: list[str] | None, on_instance: OnInstance
    ) -> RetrieveReport:
        """C-GET some instances of one series, or all of it (a worker process's share); no audit record of its own."""
        report = RetrieveReport(study_uid, series_uid, "c-get")
        self._cget(peer, study_uid, series_uid, report, on_instance, sop_uids)
        return report

    def _parallel_parts(self, peer: str, study_uid: str, series_uid: str | None) -> list[Any]:
        """The shares of a C-GET worth splitting over processes, or [] to use one association.

        The index says whether the study is big enough. Shares by series come from a SERIES-level
        C-FIND (a one-series study is not split). Shares by instances use the index's lists when
        that C-FIND confirms the PACS still has the same counts; otherwise a fresh IMAGE-level
        C-FIND, so instances added since the last indexing are not left out.
        """
        config = self.settings.peer(peer)
        if self.pool is None or config.retrieve_processes < 2:
            return []
        known = self.index.instances_by_series(study_uid, series_uid)
        if sum(len(uids) for uids in known.values()) < config.parallel_min_instances:
            return []
        query = PacsQuery(self.connector, peer)
        counts: dict[str, int | None] = {}
        for answer in query.series(study_uid):
            with contextlib.suppress(ValueError):
                record = SeriesRecord.from_dataset(answer)
                if series_uid in (None, record.series_uid):
                    counts[record.series_uid] = record.instance_count
        if config.split_by == "series":
            return by_series(counts) if len(counts) > 1 else []
        if counts.keys() == known.keys() and all(counts[s] == len(known[s]) for s in known):
            return split(known, config.retrieve_processes)
        current: dict[str, list[tuple[int, str]]] = {}
        for answer in query.instances(study_uid, series_uid):
            with contextlib.suppress(ValueError):
                instance = InstanceRecord.from_dataset(answer)
                series = checked_uid(answer.get("SeriesInstanceUID"), "SeriesInstanceUID")
                current.setdefault(series, []).append((instance.instance_number or 0, instance.sop_uid))
        ordered = {series: [uid for _, uid in sorted(items)] for series, items in current.items()}
        return split(ordered, config.retrieve_processes)

    # --- C-GET --------------------------------------------------------------------------

    def _cget(
        self,
        peer: str,
        study_uid: str,
        series_uid: str | None,
        report: RetrieveReport,
        admitted: OnInstance,
        sop_uids: list[str] | None = None,
    ) -> None:
        sop_classes = self._sop_classes(peer, study_uid, series_uid)
        contexts, roles = cget_storage_contexts(sop_classes)
        contexts.insert(0, build_context(GET_MODEL))

        process = self.admission if self._large(peer, study_uid, series_uid, sop_uids) else None
        admissions = Admissions(self.storage.intake, peer, admitted, process)
        try:
            with admissions:
                self._cget_into(admissions, peer, contexts, roles, _identifier(study_uid, series_uid, sop_uids), report)
        finally:
            # Refused after the PACS was told "success" (admissions.py): failed all the same.
            report.failed += len(admissions.failures)
            for failure in admissions.failures[:_LISTED_FAILURES]:
                log.warning("instance refused", extra={"event": "cget.refused", "peer": peer, "reason": failure})

    def _large(self, peer: str, study_uid: str, series_uid: str | None, sop_uids: list[str] | None) -> bool:
        """Worth the admission process: as many instances as would be worth splitting over processes."""
        if self.admission is None:
            return False
        expected = len(sop_uids) if sop_uids else self.index.instance_count(study_uid, series_uid)
        return expected >= self.settings.peer(peer).parallel_min_instances

    def _cget_into(
        self, admissions: Admissions, peer: str, contexts: list[Any], roles: list[Any], query: Dataset,
        report: RetrieveReport,
    ) -> None:  # fmt: skip
        """One C-GET association; its C-STORE sub-operations go to `admissions` (suboperations.py)."""
        suboperations: SubOperations | None = None
        try:
            with self.connector.associate(peer, contexts, roles, [(evt.EVT_C_STORE, admissions.handle)]) as assoc:
                suboperations = SubOperations(assoc, admissions, self.storage.intake.store.incoming)
                if 0 < self.settings.dimse.max_pdu <= MAX_FAST_PDU:  # (else PDUs may exceed its buffer)
                    suboperations.attach(assoc)
                self._follow(assoc.send_c_get(query, GET_MODEL), report, "C-GET")
        finally:
            if suboperations is not None:  # the association has ended: nothing more can arrive
                suboperations.close()

    def _sop_classes(self, peer: str, study_uid: str, series_uid: str | None) -> dict[str, set[str]]:
        """SOP classes (and stored syntaxes) of what we retrieve: from the index, else by C-FIND."""
        known = self.index.sop_classes(study_uid, series_uid)
        if known:
            return known
        answers = PacsQuery(self.connector, peer).instances(study_uid, series_uid)
        found: dict[str, set[str]] = {}
        for answer in answers:
            try:
                record = InstanceRecord.from_dataset(answer)
            except ValueError:
                continue
            if record.sop_class_uid:
                found.setdefault(record.sop_class_uid, set())
                if record.transfer_syntax_uid:
                    found[record.sop_class_uid].add(record.transfer_syntax_uid)
        if not answers:
            raise RetrieveFailed(f"{peer} has no instance of study {study_uid}")
        if not found:
            # The PACS lists instances without their SOP class (DCMTK dcmqrscp does): offer the
            # common storage classes instead, which fit in one association.
            log.info(
                "SOP classes unknown, offering common ones",
                extra={"event": "cget.common_classes", "peer": peer, "study_uid": study_uid},
            )
            return {sop_class: set() for sop_class in COMMON_STORAGE_SOP_CLASSES}
        return found

    # --- C-MOVE -------------------------------------------------------------------------

    def _cmove(
        self, peer: str, study_uid: str, series_uid: str | None, report: RetrieveReport, admitted: OnInstance
    ) -> None:
        if self.scp is None:
            raise RetrieveFailed("C-MOVE needs our DICOM listener running to receive the instances")
        message_id, unsubscribe = self.storage.listen_move(admitted)
        try:
            context = build_context(MOVE_MODEL)
            with self.connector.associate(peer, [context]) as assoc:
                responses = assoc.send_c_move(
                    _identifier(study_uid, series_uid),
                    self.settings.dimse.ae_title,
                    MOVE_MODEL,
                    msg_id=message_id,
                )
                self._follow(responses, report, "C-MOVE")
        finally:
            unsubscribe()

    # --- both ---------------------------------------------------------------------------

    def _follow(self, responses: Iterator[tuple[Dataset, Dataset | None]], report: RetrieveReport, what: str) -> None:
        """Read the retrieve responses to the end and record the final counts."""
        final: Dataset | None = None
        for status, _identifier_ds in responses:
            code = status.get("Status") if status is not None else None
            if code is None:
                report.errors.append(f"association lost during {what}")
                raise RetrieveFailed(f"{what}: association lost after {report.stored} instances")
            if code in PENDING:
                continue
            final = status
            break
        if final is None:
            raise RetrieveFailed(f"{what}: no final response")
        report.status = int(final.Status)
        report.failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        report.warnings = int(final.get("NumberOfWarningSuboperations", 0) or 0)
        if report.status not in (0x0000, WARNING) and report.status & 0xF000 != 0xB000:
            report.errors.append(f"{what} ended with status 0x{report.status:04X}")
            raise RetrieveFailed(
                f"{what} failed with status 0x{report.status:04X} ({report.stored} stored, {report.failed} failed)"
            )

    # --- StudySource --------------------------------------------------------------------

    def processes_status(self) -> dict[str, object]:
        """For the status page: the helper processes running now (they stop when idle)."""
        return {
            "c_get_workers": self.pool.running() if self.pool is not None else 0,
            "admission_process": self.admission.running() if self.admission is not None else False,
            "stop_after_idle_minutes": self.settings.dimse.retrieval_processes_idle_minutes,
        }

    def stop_idle_processes(self, idle_seconds: float) -> list[str]:
        """Stop the C-GET worker and admission processes no retrieval used for `idle_seconds`
        (~110 MB of PSS each, idle); the next large retrieval starts them again. What was stopped."""
        stopped = []
        if self.pool is not None and self.pool.stop_if_idle(idle_seconds):
            stopped.append("c-get workers")
        if self.admission is not None and self.admission.stop_if_idle(idle_seconds):
            stopped.append("admission process")
        return stopped

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self.pool is not None:
            self.pool.close()
        if self.admission is not None:
            self.admission.close()

    def fetch_study(self, study_uid: str) -> Iterator[Path]:
        return self._fetch(study_uid, None)

    def fetch_series(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        return self._fetch(study_uid, series_uid)

    def _fetch(self, study_uid: str, series_uid: str | None) -> Iterator[Path]:
        arrived: queue.Queue[Path | BaseException | None] = queue.Queue(maxsize=64)
        abandoned = threading.Event()

        def hand_over(item: Path | BaseException | None) -> None:
            # Never block a DICOM association for a reader that has gone away.
            while not abandoned.is_set():
                try:
                    arrived.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                self.retrieve(study_uid, series_uid, on_instance=lambda a: hand_over(Path(a.path)))
                hand_over(None)
            except BaseException as exc:
                hand_over(exc)

        threading.Thread(target=work, name=f"fetch-{study_uid[-12:]}", daemon=True).start()
        try:
            while True:
                item = arrived.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            abandoned.set()


def _identifier(study_uid: str, series_uid: str | None, sop_uids: list[str] | None = None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE" if sop_uids else "SERIES" if series_uid else "STUDY"
    identifier.StudyInstanceUID = study_uid
    if series_uid:
        identifier.SeriesInstanceUID = series_uid
    if sop_uids:
        identifier.SOPInstanceUID = sop_uids
    return identifier
