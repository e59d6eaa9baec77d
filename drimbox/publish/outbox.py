"""The outbox: report messages and publication intents, stored before the RIS gets its ACK.

Every write is one transaction on an engine whose SQLite connections sync every commit
(`synchronous=FULL`), so an intent acknowledged to the RIS survives a crash or a power cut. The
worker is the only one that moves an intent forward; each move appends a history event.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from drimbox.index.db import make_engine
from drimbox.index.models import Publication, PublicationEvent, ReportMessageRow

Clock = Callable[[], datetime]
RAW_KEPT = 1024 * 1024


class State(StrEnum):
    """Where an intent is. The first four are active (the worker still has work to do)."""

    PENDING = "pending"
    WAITING = "waiting"
    READY = "ready"
    SENDING = "sending"
    PUBLISHED = "published"
    DELETED = "deleted"
    SKIPPED = "skipped"
    REFUSED = "refused"
    FAILED = "failed"
    REPLACED = "replaced"
    WITHDRAWN = "withdrawn"


ACTIVE = (State.PENDING, State.WAITING, State.READY, State.SENDING)


@dataclass(frozen=True)
class Intent:
    """A publication to create: one study, one action."""

    study_uid: str
    action: str
    ins: str = ""
    ins_root: str = ""
    origin: str = "report"
    rejected: tuple[str, ...] = ()
    message_id: int | None = None


@dataclass(frozen=True)
class PublicationView:
    """A snapshot of one publication row, safe to use outside a session."""

    id: int
    study_uid: str
    action: str
    origin: str
    state: str
    reason: str
    ins: str
    ins_root: str
    message_id: int | None
    submission_uid: str
    signature_uid: str
    kos_sop_uid: str
    kos_series_uid: str
    kos: bytes | None
    replaces_id: int | None
    replaced_entry_uuid: str
    entry_uuid: str
    rejected: tuple[str, ...]
    dmp_issues: list[dict[str, str]]
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    business_ack: str
    history: list[tuple[datetime, str, str]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the KOS bytes (the status page and the CLI show this)."""
        return {
            "id": self.id,
            "study_uid": self.study_uid,
            "action": self.action,
            "origin": self.origin,
            "state": self.state,
            "reason": self.reason,
            "kos_sop_uid": self.kos_sop_uid,
            "submission_uid": self.submission_uid,
            "replaces": self.replaces_id,
            "entry_uuid": self.entry_uuid,
            "dmp_issues": self.dmp_issues,
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at) if self.active else None,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "business_ack": self.business_ack,
            "history": [{"at": _iso(at), "state": state, "detail": detail} for at, state, detail in self.history],
        }


@dataclass(frozen=True)
class MessageView:
    id: int
    received_at: datetime
    control_id: str
    message_type: str
    sender: str
    outcome: str
    outcome_text: str
    document_id: str
    flags: dict[str, str]


def durable_engine(engine: Engine) -> Engine:
    """An engine on the same database whose SQLite commits are synced to disk (synchronous=FULL).

    The index engine runs with synchronous=NORMAL (fast, safe against a crash but not against a
    power cut); an acknowledged report must survive both.
    """
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:"):
        return engine
    durable = make_engine(url.render_as_string(hide_password=False))
    event.listen(durable, "connect", _full_sync)
    return durable


def _full_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class Outbox:
    """Reads and writes of report messages and publications."""

    def __init__(self, engine: Engine, uid_root: str = "", clock: Clock | None = None) -> None:
        self.engine = durable_engine(engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        self._uid_prefix = uid_root.rstrip(".") + "." if uid_root else None
        self.clock: Clock = clock or (lambda: datetime.now(UTC))

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._lock, self._sessions.begin() as session:
            yield session

    def new_uid(self) -> str:
        return str(generate_uid(prefix=self._uid_prefix))

    # --- messages -------------------------------------------------------------------------

    def record(
        self,
        *,
        control_id: str,
        message_type: str,
        sender: str,
        outcome: str,
        text: str,
        document_id: str = "",
        flags: dict[str, str] | None = None,
        document: bytes | None = None,
        raw: bytes | None = None,
        intents: Iterable[Intent] = (),
        also: Callable[[Connection, tuple[int, ...]], None] | None = None,
    ) -> tuple[int, tuple[int, ...]]:
        """Store one judged message and the intents it creates, in one transaction.

        Returns the message id and the new publication ids. Intents whose `message_id` is None
        point at this message. `also(connection, publication_ids)` runs in the same transaction
        (the audit record of the message: both are stored, or neither).
        """
        now = self.clock()
        with self._write() as session:
            row = ReportMessageRow(
                received_at=now,
                control_id=control_id[:64],
                message_type=message_type[:32],
                sender=sender[:256],
                outcome=outcome,
                outcome_text=text,
                document_id=document_id[:128],
                flags=json.dumps(flags or {}, sort_keys=True),
                document=document,
                raw=raw[:RAW_KEPT] if raw is not None else None,
            )
            session.add(row)
            session.flush()
            ids = tuple(self._add(session, intent, row.id, now) for intent in intents)
            if also is not None:
                also(session.connection(), ids)
            return row.id, ids

    def add(self, intents: Iterable[Intent]) -> tuple[int, ...]:
        """Create intents that no message carried (IOCM rejection notes)."""
        now = self.clock()
        with self._write() as session:
            return tuple(self._add(session, intent, intent.message_id, now) for intent in intents)

    def _supersede(self, session: Session, study_uid: str, by: int, now: datetime) -> None:
        """A newer report or order for a study makes its older, never-sent intents moot: they end as
        skipped instead of holding the newer one back while they wait for images."""
        older = session.scalars(
            select(Publication).where(
                Publication.study_uid == study_uid,
                Publication.id < by,
                Publication.state.in_([State.PENDING, State.WAITING, State.READY]),
                Publication.attempts == 0,
            )
        )
        for row in older:
            detail = f"superseded by publication {by} before it was sent"
            row.state, row.reason, row.updated_at, row.finished_at = State.SKIPPED, detail, now, now
            session.add(PublicationEvent(publication_id=row.id, at=now, state=State.SKIPPED, detail=detail))

    def _add(self, session: Session, intent: Intent, message_id: int | None, now: datetime) -> int:
        row = Publication(
            message_id=intent.message_id if intent.message_id is not None else message_id,
            study_uid=intent.study_uid,
            action=intent.action,
            origin=intent.origin,
            state=State.PENDING,
            ins=intent.ins,
            ins_root=intent.ins_root,
            submission_uid=self.new_uid(),
            signature_uid=self.new_uid(),
            kos_sop_uid=self.new_uid(),
            kos_series_uid=self.new_uid(),
            rejected=json.dumps(list(intent.rejected)),
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        if intent.origin in ("report", "order"):
            self._supersede(session, intent.study_uid, row.id, now)
        session.add(
            PublicationEvent(
                publication_id=row.id,
                at=now,
                state=State.PENDING,
                detail=f"{intent.action} requested ({intent.origin})",
            )
        )
        return row.id

    def accepted_message(self, sender: str, control_id: str, document: bytes) -> tuple[int, tuple[int, ...]] | None:
        """An earlier accepted message with the same sender, control id and document, and its intents."""
        if not control_id:
            return None
        with self._sessions() as session:
            rows = session.scalars(
                select(ReportMessageRow).where(
                    ReportMessageRow.sender == sender[:256],
                    ReportMessageRow.control_id == control_id[:64],
                    ReportMessageRow.outcome == "AA",
                )
            )
            for row in rows:
                if (row.document or b"") == document:
                    ids = session.scalars(select(Publication.id).where(Publication.message_id == row.id))
                    return row.id, tuple(ids)
            return None

    def document(self, message_id: int) -> bytes | None:
        """The CDA an accepted message carried."""
        with self._sessions() as session:
            return session.scalar(select(ReportMessageRow.document).where(ReportMessageRow.id == message_id))

    def message(self, message_id: int) -> MessageView | None:
        with self._sessions() as session:
            row = session.get(ReportMessageRow, message_id)
            return _message_view(row) if row is not None else None

    def messages(self, limit: int = 100, refused_only: bool = False) -> list[MessageView]:
        with self._sessions() as session:
            query = select(ReportMessageRow)
            if refused_only:
                query = query.where(ReportMessageRow.outcome != "AA")
            rows = session.scalars(query.order_by(ReportMessageRow.id.desc()).limit(limit))
            return [_message_view(row) for row in rows]

    # --- publications ---------------------------------------------------------------------

    def advance(self, publication_id: int, state: State | str, detail: str = "", **fields: Any) -> None:
        """Move a publication to `state`, set `fields`, and append the history event."""
        state = State(state)
        now = self.clock()
        with self._write() as session:
            row = session.get(Publication, publication_id)
            if row is None:
                raise KeyError(publication_id)
            for key, value in fields.items():
                if key in ("dmp_issues", "rejected"):
                    value = json.dumps(value)
                setattr(row, key, value)
            if state != row.state or detail:
                session.add(PublicationEvent(publication_id=publication_id, at=now, state=state, detail=detail))
            if "reason" not in fields and state != row.state:
                row.reason = detail if state not in (State.PUBLISHED, State.DELETED) else ""
            row.state = state
            row.updated_at = now
            if state not in ACTIVE and row.finished_at is None:
                row.finished_at = now

    def due(self, limit: int = 20) -> list[int]:
        """Active publications whose time has come, oldest first, at most one per study.

        A newer intent for a study waits until the older ones are finished, so a replacement is
        never sent before the publication it replaces.
        """
        now = self.clock()
        with self._sessions() as session:
            first_active = (
                select(Publication.study_uid, func.min(Publication.id).label("first"))
                .where(Publication.state.in_(list(ACTIVE)))
                .group_by(Publication.study_uid)
                .subquery()
            )
            query = (
                select(Publication.id)
                .join(first_active, Publication.id == first_active.c.first)
                .where(Publication.next_attempt_at <= now)
                .order_by(Publication.next_attempt_at, Publication.id)
                .limit(limit)
            )
            return list(session.scalars(query))

    def load(self, publication_id: int, history: bool = False) -> PublicationView:
        with self._sessions() as session:
            row = session.get(Publication, publication_id)
            if row is None:
                raise KeyError(publication_id)
            return _view(session, row, history)

    def live(self, study_uid: str, before: int | None = None) -> PublicationView | None:
        """The study's KOS currently published by us (the newest in state published)."""
        with self._sessions() as session:
            query = select(Publication).where(Publication.study_uid == study_uid, Publication.state == State.PUBLISHED)
            if before is not None:
                query = query.where(Publication.id < before)
            row = session.scalars(query.order_by(Publication.id.desc()).limit(1)).first()
            return _view(session, row, False) if row is not None else None

    def list(
        self, state: str | None = None, study_uid: str | None = None, limit: int = 100, history: bool = True
    ) -> list[PublicationView]:
        with self._sessions() as session:
            query = select(Publication)
            if state:
                query = query.where(Publication.state == state)
            if study_uid:
                query = query.where(Publication.study_uid == study_uid)
            rows = session.scalars(query.order_by(Publication.id.desc()).limit(limit))
            return [_view(session, row, history) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._sessions() as session:
            rows = session.execute(select(Publication.state, func.count(Publication.id)).group_by(Publication.state))
            return {str(state): int(count) for state, count in rows}


def _view(session: Session, row: Publication, history: bool) -> PublicationView:
    events: list[tuple[datetime, str, str]] = []
    if history:
        query = select(PublicationEvent).where(PublicationEvent.publication_id == row.id).order_by(PublicationEvent.id)
        events = [(_utc(e.at), e.state, e.detail) for e in session.scalars(query)]
    return PublicationView(
        id=row.id,
        study_uid=row.study_uid,
        action=row.action,
        origin=row.origin,
        state=row.state,
        reason=row.reason,
        ins=row.ins,
        ins_root=row.ins_root,
        message_id=row.message_id,
        submission_uid=row.submission_uid,
        signature_uid=row.signature_uid,
        kos_sop_uid=row.kos_sop_uid,
        kos_series_uid=row.kos_series_uid,
        kos=row.kos,
        replaces_id=row.replaces_id,
        replaced_entry_uuid=row.replaced_entry_uuid,
        entry_uuid=row.entry_uuid,
        rejected=tuple(json.loads(row.rejected or "[]")),
        dmp_issues=json.loads(row.dmp_issues or "[]"),
        attempts=row.attempts,
        next_attempt_at=_utc(row.next_attempt_at),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        finished_at=_utc(row.finished_at) if row.finished_at else None,
        business_ack=row.business_ack,
        history=events,
    )


def _message_view(row: ReportMessageRow) -> MessageView:
    return MessageView(
        row.id,
        _utc(row.received_at),
        row.control_id,
        row.message_type,
        row.sender,
        row.outcome,
        row.outcome_text,
        row.document_id,
        json.loads(row.flags or "{}"),
    )


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat(timespec="seconds")
