"""Statistics from the audit trail: the ANS "ModelStat" export and the operator's counters.

DRIM-M §6 names `Nombre_Appel` and `Statut_Appel` (calls and their status) and leaves the other
columns open **[?]**, so the columns are configurable (`[statistics] columns`) among the ones this
module knows how to compute. One row per day and per call status (the HTTP status answered to the
remote box), computed from the trail itself, so the figures and the audit can never disagree.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from drimbox.audit.trail import ChainedAuditTrail, StoredRecord

_CALLS = ("dicomweb.retrieve", "dicomweb.metadata", "dicomweb.search", "dicomweb.pixels", "dicomweb.access")


@dataclass
class _Day:
    calls: int = 0
    studies: set[str] = field(default_factory=set)
    bytes: int = 0
    publications: int = 0
    publication_failures: int = 0
    refusals: int = 0


KNOWN_COLUMNS = {
    "Date": "day (YYYY-MM-DD, UTC)",
    "Identifiant_DRIMbox": "this box (site structure id)",
    "Statut_Appel": "HTTP status answered to the calls of this row",
    "Nombre_Appel": "DICOMweb calls (QIDO-RS, WADO-RS) with that status",
    "Nombre_Etudes": "distinct studies served",
    "Volume_Octets": "bytes sent",
    "Nombre_Publications": "KOS publications, replacements and deletions the DMP accepted that day",
    "Nombre_Echecs_Publication": "publications the DMP refused or that failed",
    "Nombre_Refus": "requests refused (token, KOS, certificate)",
}


def model_stat_rows(records: Iterable[StoredRecord], box_id: str) -> list[dict[str, object]]:
    """One row per (day, call status); day-wide counters repeat on each of the day's rows."""
    per_status: dict[tuple[str, int], _Day] = defaultdict(_Day)
    per_day: dict[str, _Day] = defaultdict(_Day)
    for record in records:
        day = record.recorded_at.astimezone(UTC).date().isoformat()
        totals = per_day[day]
        status = record.detail.get("status")
        if record.action in _CALLS and isinstance(status, int):
            row = per_status[(day, status)]
            row.calls += 1
            if record.study_uid and status < 300:
                row.studies.add(record.study_uid)
            if record.outcome == "failure":
                totals.refusals += 1
        elif record.action == "dicomweb.completed" and isinstance(status, int):
            sent = record.detail.get("bytes")
            per_status[(day, status)].bytes += sent if isinstance(sent, int) else 0
        elif record.action in ("tls.refused", "auth.refused"):
            totals.refusals += 1
        elif record.action.startswith("kos.") and record.outcome == "success":
            totals.publications += 1
        elif record.action.startswith("kos."):
            totals.publication_failures += 1
    days = sorted(set(per_day) | {day for day, _ in per_status})
    rows: list[dict[str, object]] = []
    for day in days:
        statuses = sorted(status for d, status in per_status if d == day) or [0]
        totals = per_day[day]
        for status in statuses:
            row = per_status.get((day, status), _Day())
            rows.append({
                "Date": day, "Identifiant_DRIMbox": box_id, "Statut_Appel": status or "",
                "Nombre_Appel": row.calls, "Nombre_Etudes": len(row.studies), "Volume_Octets": row.bytes,
                "Nombre_Publications": totals.publications,
                "Nombre_Echecs_Publication": totals.publication_failures, "Nombre_Refus": totals.refusals,
            })  # fmt: skip
    return rows


def model_stat_csv(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """The CSV the ANS aggregates (`;`-separated, as French spreadsheets expect)."""
    unknown = [column for column in columns if column not in KNOWN_COLUMNS]
    if unknown:
        raise ValueError(f"unknown statistics columns {unknown}; known: {', '.join(KNOWN_COLUMNS)}")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), delimiter=";", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def walk(trail: ChainedAuditTrail, since: datetime, until: datetime, batch: int = 5000) -> Iterable[StoredRecord]:
    """Records between two moments, oldest first, read in batches (memory stays bounded)."""
    after = 0
    while True:
        found = trail.query(since=since, until=until, after_seq=after, limit=batch, newest_first=False)
        yield from found
        if len(found) < batch:
            return
        after = found[-1].seq


def last_day_counters(trail: ChainedAuditTrail, now: datetime | None = None) -> dict[str, int]:
    """What the status page shows: the last 24 hours' calls, studies served, bytes, refusals."""
    end = now or datetime.now(UTC)
    calls = served = sent = refusals = failures = 0
    studies: set[str] = set()
    for record in walk(trail, end - timedelta(hours=24), end):
        status = record.detail.get("status")
        if record.action in _CALLS:
            calls += 1
            if isinstance(status, int) and status < 300:
                served += 1
                studies.add(record.study_uid)
            elif record.outcome == "failure":
                refusals += 1
        elif record.action == "dicomweb.completed":
            value = record.detail.get("bytes")
            sent += value if isinstance(value, int) else 0
        elif record.action in ("tls.refused", "auth.refused"):
            refusals += 1
        elif record.outcome == "failure":
            failures += 1
    studies.discard("")
    return {"calls": calls, "served": served, "studies_served": len(studies), "bytes_sent": sent,
            "refusals": refusals, "other_failures": failures}  # fmt: skip
