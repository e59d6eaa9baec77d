"""Indexing a PACS by C-FIND: studies over a date window, then series and instances where needed.

Incremental (decisions: Incremental indexing): a study whose NumberOfStudyRelatedSeries and
-Instances match what the index holds is not descended into; within a study, a series whose
NumberOfSeriesRelatedInstances matches is skipped. A PACS that does not return those counts
(DCMTK dcmqrscp) is always descended into. Studies of the window that the PACS no longer has are
removed, with any files we held for them. `full=True` (the nightly reconciliation) looks at
every date and descends everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from pydicom.dataset import Dataset

from drimbox.dimse.connection import PeerConnector
from drimbox.dimse.find import PacsQuery, QueryStats
from drimbox.errors import InvalidUID
from drimbox.index.records import InstanceRecord, SeriesRecord, StudyRecord
from drimbox.index.repository import IndexRepository, StudyState
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.store.files import InstanceStore

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """What one indexing run found and did."""

    peer: str
    studies_seen: int = 0
    studies_new: int = 0
    studies_changed: int = 0
    studies_unchanged: int = 0
    studies_removed: int = 0
    series_queried: int = 0
    instances_seen: int = 0
    invalid_answers: int = 0
    stats: QueryStats = field(default_factory=QueryStats)


Progress = Callable[[int, int], None]


class PacsIndexer:
    """Walks one PACS peer into the index."""

    def __init__(
        self, connector: PeerConnector, index: IndexRepository, store: InstanceStore, audit: AuditTrail
    ) -> None:
        self.connector = connector
        self.index = index
        self.store = store
        self.audit = audit

    def run(
        self,
        peer: str,
        first: date | None,
        last: date | None,
        *,
        full: bool = False,
        progress: Progress | None = None,
    ) -> IndexReport:
        """Index studies dated in [first, last] (None: no bound) from `peer`."""
        query = PacsQuery(self.connector, peer)
        report = IndexReport(peer=peer, stats=query.stats)
        found: list[StudyRecord] = []

        def collect(batch: list[Dataset]) -> None:
            for answer in batch:
                try:
                    found.append(StudyRecord.from_dataset(answer))
                except InvalidUID as exc:
                    report.invalid_answers += 1
                    log.warning(
                        "C-FIND answer ignored",
                        extra={"event": "index.invalid", "peer": peer, "reason": str(exc)},
                    )

        query.studies(first, last, collect)
        unique = {record.study_uid: record for record in found}
        report.studies_seen = len(unique)
        for done, record in enumerate(unique.values(), start=1):
            self._index_study(query, record, report, full)
            if progress:
                progress(done, len(unique))
        self._remove_vanished(peer, first, last, set(unique), report)
        self.audit.record(AuditEvent("pacs.indexed", "system", detail={"peer": peer, "studies": report.studies_seen}))
        return report

    def _index_study(self, query: PacsQuery, record: StudyRecord, report: IndexReport, full: bool) -> None:
        state = self.index.study_state(record.study_uid)
        self.index.upsert_study(record, query.peer)
        if not full and state is not None and _study_unchanged(record, state):
            report.studies_unchanged += 1
            return
        if state is None:
            report.studies_new += 1
        else:
            report.studies_changed += 1
        truncated = query.stats.truncated
        series_records = [r for r in (_series(a, report) for a in query.series(record.study_uid)) if r]
        report.series_queried += 1
        self.index.upsert_series(record.study_uid, series_records)
        files: list[str] = []
        if query.stats.truncated == truncated:  # only a complete answer proves a series is gone
            files = self.index.remove_missing_series(record.study_uid, {s.series_uid for s in series_records})
        for series in series_records:
            if not full and state is not None and _series_unchanged(series, state):
                continue
            truncated = query.stats.truncated
            answers = query.instances(record.study_uid, series.series_uid)
            instances = [r for r in (_instance(a, report) for a in answers) if r]
            report.instances_seen += len(instances)
            self.index.upsert_instances(series.series_uid, instances)
            if query.stats.truncated == truncated:
                files += self.index.remove_missing_instances(series.series_uid, {i.sop_uid for i in instances})
        self.index.mark_indexed(record.study_uid)
        self.store.remove(files)

    def _remove_vanished(
        self, peer: str, first: date | None, last: date | None, present: set[str], report: IndexReport
    ) -> None:
        if first is None and last is None:
            known = self.index.study_uids_of_peer(peer)
        else:
            low = first.strftime("%Y%m%d") if first else "00000000"
            high = last.strftime("%Y%m%d") if last else "99999999"
            known = self.index.study_uids_between(peer, low, high)
        vanished = known - present
        if vanished and (report.stats.truncated or report.stats.splits):
            # A split query asks by date and time: studies without either are not in its answers.
            log.warning(
                "vanished studies kept: the PACS's answers were capped",
                extra={"event": "index.keep_vanished", "peer": peer, "count": len(vanished)},
            )
            return
        if vanished:
            self.store.remove(self.index.remove_studies(vanished))
            report.studies_removed = len(vanished)


def _study_unchanged(record: StudyRecord, state: StudyState) -> bool:
    if record.series_count is None or record.instance_count is None:
        return False
    return record.series_count == state.series_count and record.instance_count == state.instance_count


def _series_unchanged(record: SeriesRecord, state: StudyState) -> bool:
    if record.instance_count is None:
        return False
    return state.series_instance_counts.get(record.series_uid) == record.instance_count


def _series(answer: Dataset, report: IndexReport) -> SeriesRecord | None:
    try:
        return SeriesRecord.from_dataset(answer)
    except InvalidUID:
        report.invalid_answers += 1
        return None


def _instance(answer: Dataset, report: IndexReport) -> InstanceRecord | None:
    try:
        return InstanceRecord.from_dataset(answer)
    except InvalidUID:
        report.invalid_answers += 1
        return None
