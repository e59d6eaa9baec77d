"""The audit trail (DRIM-M §6): append-only records in the index database, hash-chained.

Each record's hash covers the previous record's hash and its own canonical content, so changing or
deleting a stored record (by hand, in the database) breaks the chain from there on, and
`drimbox audit verify` says where. The product has no code path that updates or deletes a record.

Writers serialise on the single `audit_head` row: the UPDATE that takes the next sequence number
locks it (SQLite: the database write lock; PostgreSQL: the row lock) until the transaction that
inserts the record commits, so the HTTP workers, the retrieval processes and the daemon can all
write to one chain. `record_in(connection, event)` writes in the caller's own transaction, so a
record and the work it describes commit or roll back together.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, insert, select, update

from drimbox.errors import AuditTampered
from drimbox.index.models import AuditExport, AuditHead, AuditRecord
from drimbox.ports import AuditEvent

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_RECORDS = cast(Table, AuditRecord.__table__)
_HEAD = cast(Table, AuditHead.__table__)
_EXPORT = cast(Table, AuditExport.__table__)


@dataclass(frozen=True)
class StoredRecord:
    """One record as stored, with its place in the chain."""

    seq: int
    recorded_at: datetime
    action: str
    actor: str
    outcome: str
    patient_id: str
    study_uid: str
    peer: str
    detail: dict[str, object] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    detail_text: str = "{}"  # as stored: what the hash covers

    def as_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq, "recorded_at": self.recorded_at.isoformat(timespec="milliseconds"),
            "action": self.action, "actor": self.actor, "outcome": self.outcome,
            "patient_id": self.patient_id, "study_uid": self.study_uid, "peer": self.peer,
            "detail": self.detail, "hash": self.hash,
        }  # fmt: skip


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found: how many records checked and, if broken, where."""

    checked: int
    head_seq: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def chain_hash(prev_hash: str, seq: int, recorded_at: datetime, event: AuditEvent | StoredRecord,
               detail: str) -> str:  # fmt: skip
    """SHA-256 over the previous hash and the record's canonical JSON (sorted keys, UTC time)."""
    content = json.dumps(
        [seq, _utc(recorded_at).isoformat(timespec="microseconds"), event.action, event.actor, event.outcome,
         event.patient_id, event.study_uid, event.peer, detail],
        ensure_ascii=False, separators=(",", ":"),
    )  # fmt: skip
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def canonical_detail(detail: dict[str, object]) -> str:
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


class ChainedAuditTrail:
    """The `AuditTrail` port on the index database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, event: AuditEvent) -> None:
        """Append `event` in its own transaction; raises on a database failure (callers that
        must not fail because of the audit catch and log, as the publication worker does)."""
        with self.engine.begin() as connection:
            self.record_in(connection, event)

    def record_in(self, connection: Connection, event: AuditEvent) -> int:
        """Append `event` inside the caller's transaction; returns its sequence number."""
        head = connection.execute(
            update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq + 1).returning(_HEAD.c.seq, _HEAD.c.hash)
        ).one()
        seq, prev_hash = int(head.seq), str(head.hash)
        now = datetime.now(UTC)
        detail = canonical_detail(event.detail)
        digest = chain_hash(prev_hash, seq, now, event, detail)
        connection.execute(
            insert(_RECORDS).values(
                seq=seq,
                recorded_at=now,
                action=event.action[:64],
                actor=event.actor[:512],
                outcome=event.outcome[:16],
                patient_id=event.patient_id[:128],
                study_uid=event.study_uid[:64],
                peer=event.peer[:512],
                detail=detail,
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        connection.execute(update(_HEAD).where(_HEAD.c.id == 1).values(hash=digest))
        return seq

    # -- reading ---------------------------------------------------------------------------------

    def query(
        self,
        *,
        patient_id: str = "",
        study_uid: str = "",
        action: str = "",
        actor: str = "",
        outcome: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int = 0,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[StoredRecord]:
        """Records matching every given criterion (`action` ending in `.` matches a prefix)."""
        conditions = [_RECORDS.c.seq > after_seq]
        if patient_id:
            conditions.append(_RECORDS.c.patient_id == patient_id)
        if study_uid:
            conditions.append(_RECORDS.c.study_uid == study_uid)
        if action:
            column = _RECORDS.c.action
            conditions.append(column.startswith(action, autoescape=True) if action.endswith(".") else column == action)
        if actor:
            conditions.append(_RECORDS.c.actor == actor)
        if outcome:
            conditions.append(_RECORDS.c.outcome == outcome)
        if since is not None:
            conditions.append(_RECORDS.c.recorded_at >= _utc(since))
        if until is not None:
            conditions.append(_RECORDS.c.recorded_at < _utc(until))
        order = _RECORDS.c.seq.desc() if newest_first else _RECORDS.c.seq.asc()
        statement = select(_RECORDS).where(and_(*conditions)).order_by(order).limit(limit)
        with self.engine.connect() as connection:
            return [_stored(row) for row in connection.execute(statement)]

    def query_dicts(self, **criteria: Any) -> list[dict[str, object]]:
        """`query` as plain dicts, for the operator page."""
        return [record.as_dict() for record in self.query(**criteria)]

    def verify_dict(self) -> dict[str, object]:
        report = self.verify()
        return {"intact": report.intact, "checked": report.checked, "head_seq": report.head_seq,
                "broken_at": report.broken_at, "reason": report.reason}  # fmt: skip

    def records_after(self, seq: int, limit: int) -> list[StoredRecord]:
        """The next `limit` records after `seq`, oldest first (for exporters)."""
        return self.query(after_seq=seq, limit=limit, newest_first=False)

    def head(self) -> tuple[int, str]:
        with self.engine.connect() as connection:
            row = connection.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)).one()
        return int(row.seq), str(row.hash)

    def verify(self, batch: int = 5000) -> ChainReport:
        """Walk the whole chain: sequence without gaps, each hash recomputed, the head matching."""
        head_seq, head_hash = self.head()
        expected_seq, prev = 1, GENESIS
        for record in self._walk(batch):
            if record.seq != expected_seq:
                return ChainReport(expected_seq - 1, head_seq, expected_seq, f"record {expected_seq} is missing")
            if record.prev_hash != prev:
                return ChainReport(record.seq - 1, head_seq, record.seq, "does not follow the record before it")
            digest = chain_hash(prev, record.seq, record.recorded_at, record, record.detail_text)
            if digest != record.hash:
                return ChainReport(record.seq - 1, head_seq, record.seq, "content does not match its hash (altered)")
            prev, expected_seq = record.hash, expected_seq + 1
        checked = expected_seq - 1
        if checked != head_seq or prev != head_hash:
            return ChainReport(checked, head_seq, checked + 1, f"chain ends at {checked}, head says {head_seq}")
        return ChainReport(checked, head_seq)

    def check(self) -> ChainReport:
        """`verify`, raising AuditTampered when the chain is broken."""
        report = self.verify()
        if not report.intact:
            raise AuditTampered(f"audit trail broken at record {report.broken_at}: {report.reason}")
        return report

    def _walk(self, batch: int) -> Iterator[StoredRecord]:
        after = 0
        while True:
            records = self.records_after(after, batch)
            yield from records
            if len(records) < batch:
                return
            after = records[-1].seq

    # -- export cursors --------------------------------------------------------------------------

    def exported_up_to(self, sink: str) -> int:
        with self.engine.connect() as connection:
            value = connection.execute(select(_EXPORT.c.last_seq).where(_EXPORT.c.sink == sink)).scalar()
        return int(value or 0)

    def mark_exported(self, sink: str, seq: int) -> None:
        """Remember that `sink` holds every record up to `seq` (never moves backwards)."""
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            moved = connection.execute(
                update(_EXPORT).where(_EXPORT.c.sink == sink, _EXPORT.c.last_seq < seq)
                .values(last_seq=seq, updated_at=now)
            ).rowcount  # fmt: skip
            if not moved and connection.execute(select(_EXPORT.c.sink).where(_EXPORT.c.sink == sink)).first() is None:
                connection.execute(insert(_EXPORT).values(sink=sink, last_seq=seq, updated_at=now))


def _stored(row: object) -> StoredRecord:
    mapping = row._mapping  # type: ignore[attr-defined]
    try:
        detail = json.loads(mapping["detail"])
    except ValueError:
        detail = {"unreadable": mapping["detail"]}
    return StoredRecord(
        seq=int(mapping["seq"]), recorded_at=_utc(mapping["recorded_at"]), action=mapping["action"],
        actor=mapping["actor"], outcome=mapping["outcome"], patient_id=mapping["patient_id"],
        study_uid=mapping["study_uid"], peer=mapping["peer"], detail=detail if isinstance(detail, dict) else {},
        prev_hash=mapping["prev_hash"], hash=mapping["hash"], detail_text=mapping["detail"],
    )  # fmt: skip


def _utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes: they were stored as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def format_records(records: Sequence[StoredRecord]) -> list[str]:
    """One line per record for the CLI."""
    lines = []
    for record in records:
        who = record.actor + (f" via {record.peer}" if record.peer else "")
        what = " ".join(part for part in (record.patient_id, record.study_uid) if part)
        extra = ", ".join(f"{key}={value}" for key, value in record.detail.items())
        lines.append(f"{record.seq:>7} {record.recorded_at.isoformat(timespec='seconds')} {record.action:<22} "
                     f"{record.outcome:<7} {who} {what} {extra}".rstrip())  # fmt: skip
    return lines
