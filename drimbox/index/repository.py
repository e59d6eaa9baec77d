"""Reads and writes of the index, one short transaction each.

Writers are the indexer (C-FIND answers) and the store (complete instance files); both go
through `upsert_*` so the same study seen from both sides ends in one row. Writes within a
process are serialised (SQLite has one writer anyway); a unique-key race with another process is
retried once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from drimbox.index.models import Instance, InstanceMetadata, KosGrant, Patient, Publication, Series, Study
from drimbox.index.records import (
    InstanceEntry,
    InstanceRecord,
    PatientRecord,
    SeriesRecord,
    StudyRecord,
    normalize_name,
)

T = TypeVar("T")


@dataclass(frozen=True)
class IndexCounts:
    """What the status page shows: rows per level and what we hold on disk."""

    patients: int
    studies: int
    series: int
    instances: int
    instances_held: int
    bytes_held: int


@dataclass(frozen=True)
class StudyState:
    """What the index knows of a study, to decide whether indexing must descend into it."""

    series_count: int
    instance_count: int
    pacs_series_count: int | None
    pacs_instance_count: int | None
    series_instance_counts: dict[str, int]
    series_pacs_counts: dict[str, int | None]


@dataclass(frozen=True)
class HeldInstance:
    """An instance we hold a file for."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    stored_at: datetime | None = None  # when this copy entered the store (a version of its metadata)


class IndexRepository:
    """The index, over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = threading.Lock()
        self._known_series: set[str] = set()  # series UIDs record_stored has seen: its fast path

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        with self._write_lock:
            for attempt in (1, 2):
                try:
                    with self._sessions.begin() as session:
                        return work(session)
                except IntegrityError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    # --- writes -------------------------------------------------------------------------

    def upsert_study(self, record: StudyRecord, peer: str) -> None:
        """Record a study as a STUDY-level C-FIND answer describes it."""

        def work(session: Session) -> None:
            study = _upsert_study(session, record, peer)
            study.pacs_series_count = record.series_count
            study.pacs_instance_count = record.instance_count

        self._write(work)

    def upsert_series(self, study_uid: str, records: Iterable[SeriesRecord]) -> None:
        """Record the series of a study as a SERIES-level C-FIND describes them."""
        records = list(records)

        def work(session: Session) -> None:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
            for record in records:
                series = _upsert_series(session, study, record)
                series.pacs_instance_count = record.instance_count

        self._write(work)

    def upsert_instances(self, series_uid: str, records: Iterable[InstanceRecord]) -> None:
        """Record the instances of a series as an IMAGE-level C-FIND describes them."""
        records = list(records)

        def work(session: Session) -> None:
            series = session.scalars(select(Series).where(Series.series_uid == series_uid)).one()
            for record in records:
                _upsert_instance(session, series, record)

        self._write(work)

    def mark_indexed(self, study_uid: str) -> None:
        def work(session: Session) -> None:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
            study.indexed_at = datetime.now(UTC)

        self._write(work)

    def record_stored(self, entry: InstanceEntry, peer: str = "", document: bytes | None = None) -> None:
        """Index a complete instance file that has just entered the store, from patient down.

        The first instance of a series goes through the full upsert (patient, study, series);
        the next ones of the same series are one INSERT .. ON CONFLICT each: the ORM path costs
        ~10 ms per instance, which a 500-slice CT retrieval cannot afford. Study and patient
        attributes are taken from the series' first instance.
        """
        self.record_stored_many([entry], peer, [document])

    def record_stored_many(
        self, entries: Sequence[InstanceEntry], peer: str = "", documents: Sequence[bytes | None] = ()
    ) -> None:
        """`record_stored` for several files in one transaction: all are indexed, or none.

        `documents`, when given, are the entries' WADO-RS metadata (None: not computed), saved in
        the same transaction.

        Instances of series already known are one multi-row statement; the first instance of a
        series takes the full upsert (patient, study, series) in the same transaction. A known
        series removed meanwhile (IntegrityError: its instances would get no series) makes the
        whole batch go again with the full path for every series.
        """
        if not entries:
            return
        statement = _stored_instance_statement(self.engine.dialect.name)
        saved, stale = _documents(entries, documents)

        def work(session: Session) -> None:
            known: list[dict[str, Any]] = []
            for entry in entries:
                if entry.series.series_uid in self._known_series:
                    known.append(_stored_instance_values(entry))
                    continue
                if known:
                    session.connection().execute(statement, known)  # Core: the ORM's bulk path costs 3x
                    known = []
                _record_full(session, entry, peer)
                session.flush()
                self._known_series.add(entry.series.series_uid)
            if known:
                session.connection().execute(statement, known)  # Core: the ORM's bulk path costs 3x
            if saved:
                session.flush()
                session.connection().execute(_metadata_statement(self.engine.dialect.name), saved)
            if stale:  # stored again without one: the previous copy's would be served
                session.execute(delete(InstanceMetadata).where(InstanceMetadata.sop_uid.in_(stale)))

        try:
            self._write(work)
        except IntegrityError:
            # (_write retried once already, with the series it had just added as known)
            for entry in entries:
                self._known_series.discard(entry.series.series_uid)
            self._write(work)
        if len(self._known_series) > 4096:
            self._known_series.clear()

    def remove_missing_series(self, study_uid: str, present: set[str]) -> list[str]:
        """Drop series the PACS no longer has; return the files they held."""

        def work(session: Session) -> list[str]:
            rows = session.scalars(select(Series).join(Study).where(Study.study_uid == study_uid)).all()
            return _delete(session, [s for s in rows if s.series_uid not in present])

        return self._write(work)

    def remove_missing_instances(self, series_uid: str, present: set[str]) -> list[str]:
        """Drop instances the PACS no longer has; return the files they held."""

        def work(session: Session) -> list[str]:
            rows = session.scalars(select(Instance).join(Series).where(Series.series_uid == series_uid)).all()
            return _delete(session, [i for i in rows if i.sop_uid not in present])

        return self._write(work)

    def remove_studies(self, study_uids: Iterable[str]) -> list[str]:
        """Drop studies (and their series and instances); return the files they held."""
        uids = list(study_uids)

        def work(session: Session) -> list[str]:
            studies = session.scalars(select(Study).where(Study.study_uid.in_(uids))).all()
            files = list(
                session.scalars(
                    select(Instance.file_path)
                    .join(Series)
                    .join(Study)
                    .where(Study.study_uid.in_(uids), Instance.file_path.is_not(None))
                )
            )
            for study in studies:
                session.delete(study)
            return [f for f in files if f]

        return self._write(work)

    # --- reads --------------------------------------------------------------------------

    def study_state(self, study_uid: str) -> StudyState | None:
        """Counts the index holds for a study, or None when the study is unknown."""
        with self.session() as session:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
            if study is None:
                return None
            per_series = dict(
                session.execute(
                    select(Series.series_uid, func.count(Instance.id))
                    .outerjoin(Instance)
                    .where(Series.study_pk == study.id)
                    .group_by(Series.series_uid)
                ).all()
            )
            pacs = dict(
                session.execute(
                    select(Series.series_uid, Series.pacs_instance_count).where(Series.study_pk == study.id)
                ).all()
            )
            return StudyState(
                series_count=len(per_series),
                instance_count=sum(per_series.values()),
                pacs_series_count=study.pacs_series_count,
                pacs_instance_count=study.pacs_instance_count,
                series_instance_counts=per_series,
                series_pacs_counts=pacs,
            )

    def study_peer(self, study_uid: str) -> str:
        """The PACS peer a study was indexed from ('' when unknown)."""
        with self.session() as session:
            return session.scalar(select(Study.pacs_peer).where(Study.study_uid == study_uid)) or ""

    def study_uids_between(self, peer: str, first_date: str, last_date: str) -> set[str]:
        """Studies from `peer` whose date lies in [first_date, last_date] (YYYYMMDD)."""
        with self.session() as session:
            rows = session.scalars(
                select(Study.study_uid).where(
                    Study.pacs_peer == peer, Study.study_date >= first_date, Study.study_date <= last_date
                )
            )
            return set(rows)

    def study_uids_of_peer(self, peer: str) -> set[str]:
        with self.session() as session:
            return set(session.scalars(select(Study.study_uid).where(Study.pacs_peer == peer)))

    def instance_uids(self, study_uid: str, series_uid: str | None = None) -> set[str]:
        """SOP Instance UIDs the index knows in a study (or one of its series)."""
        with self.session() as session:
            query = select(Instance.sop_uid).join(Series).join(Study).where(Study.study_uid == study_uid)
            if series_uid:
                query = query.where(Series.series_uid == series_uid)
            return set(session.scalars(query))

    def instance_count(self, study_uid: str, series_uid: str | None = None) -> int:
        """How many instances the index knows in a study (or one of its series)."""
        with self.session() as session:
            query = select(func.count(Instance.id)).join(Series).join(Study).where(Study.study_uid == study_uid)
            if series_uid:
                query = query.where(Series.series_uid == series_uid)
            return int(session.scalar(query) or 0)

    def instances_by_series(self, study_uid: str, series_uid: str | None = None) -> dict[str, list[str]]:
        """Series UID → its SOP Instance UIDs in instance-number order, for a study (or one series)."""
        with self.session() as session:
            query = (
                select(Series.series_uid, Instance.sop_uid)
                .join(Instance, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Study.study_uid == study_uid)
                .order_by(Series.series_number, Series.series_uid, Instance.instance_number, Instance.sop_uid)
            )
            if series_uid:
                query = query.where(Series.series_uid == series_uid)
            found: dict[str, list[str]] = {}
            for series, sop_uid in session.execute(query):
                found.setdefault(series, []).append(sop_uid)
            return found

    def sop_classes(self, study_uid: str, series_uid: str | None = None) -> dict[str, set[str]]:
        """SOP class → transfer syntaxes seen, for the instances of a study (or series)."""
        with self.session() as session:
            query = (
                select(Instance.sop_class_uid, Instance.transfer_syntax_uid)
                .join(Series)
                .join(Study)
                .where(Study.study_uid == study_uid)
            )
            if series_uid:
                query = query.where(Series.series_uid == series_uid)
            found: dict[str, set[str]] = {}
            for sop_class, syntax in session.execute(query.distinct()):
                if sop_class:
                    found.setdefault(sop_class, set())
                    if syntax:
                        found[sop_class].add(syntax)
            return found

    def study_keys(self, study_uid: str) -> tuple[str, str] | None:
        """(PatientID, AccessionNumber) of a study, as the PACS gave them."""
        with self.session() as session:
            row = session.execute(
                select(Patient.patient_id, Study.accession_number)
                .join(Study.patient)
                .where(Study.study_uid == study_uid)
            ).first()
            return (row[0], row[1]) if row is not None else None

    def study_known(self, study_uid: str) -> bool:
        with self.session() as session:
            return session.scalar(select(Study.id).where(Study.study_uid == study_uid)) is not None

    def series_known(self, study_uid: str, series_uid: str) -> bool:
        with self.session() as session:
            query = select(Series.id).join(Study).where(Study.study_uid == study_uid, Series.series_uid == series_uid)
            return session.scalar(query) is not None

    def held_one(self, sop_uid: str) -> HeldInstance | None:
        """One instance by SOP Instance UID, when its file is in our store."""
        with self.session() as session:
            query = _held_rows().where(Instance.sop_uid == sop_uid)
            row = session.execute(query).first()
            if row is None:
                return None
            return _held(*row)

    def held(self, study_uid: str, series_uid: str | None = None) -> list[HeldInstance]:
        """Instances of a study (or series) whose file is in our store."""
        with self.session() as session:
            query = (
                _held_rows()
                .where(Study.study_uid == study_uid)
                .order_by(Series.series_number, Instance.instance_number)
            )
            if series_uid:
                query = query.where(Series.series_uid == series_uid)
            return [_held(*row) for row in session.execute(query)]

    # --- WADO-RS metadata ------------------------------------------------------------------

    def metadata_documents(self, sop_uids: Sequence[str]) -> dict[str, bytes]:
        """The saved metadata documents of these instances (those without one are absent)."""
        found: dict[str, bytes] = {}
        with self.session() as session:
            for uids in _chunks(sop_uids):
                query = select(InstanceMetadata.sop_uid, InstanceMetadata.document).where(
                    InstanceMetadata.sop_uid.in_(uids)
                )
                found.update((uid, document) for uid, document in session.execute(query))
        return found

    def metadata_missing(self, sop_uids: Sequence[str]) -> list[str]:
        """Which of these instances have no saved metadata document (in their order)."""
        present: set[str] = set()
        with self.session() as session:
            for uids in _chunks(sop_uids):
                present.update(
                    session.scalars(select(InstanceMetadata.sop_uid).where(InstanceMetadata.sop_uid.in_(uids)))
                )
        return [uid for uid in sop_uids if uid not in present]

    def save_metadata(self, sop_uid: str, document: bytes) -> bool:
        """Save (or replace) an instance's metadata document; False if the instance is no longer
        indexed (removed meanwhile: its document would have nothing to belong to)."""
        rows = [{"sop_uid": sop_uid, "document": document}]
        try:
            self._write(
                lambda session: session.connection().execute(_metadata_statement(self.engine.dialect.name), rows)
            )
        except IntegrityError:
            return False
        return True

    # --- the store as a cache: what was served when, what to evict ---------------------------

    def touch(self, sop_uids: Iterable[str]) -> None:
        """Mark instances as served now: least recently served files are evicted first."""
        uids = list(sop_uids)
        now = datetime.now(UTC)

        def work(session: Session) -> None:
            for chunk in _chunks(uids):
                session.execute(update(Instance).where(Instance.sop_uid.in_(chunk)).values(last_access=now))

        if uids:
            self._write(work)

    def bytes_held(self) -> int:
        with self.session() as session:
            total = session.scalar(select(func.sum(Instance.file_size)).where(Instance.file_path.is_not(None)))
            return int(total or 0)

    def least_recently_served(self, limit: int) -> list[HeldInstance]:
        """Held instances, least recently served first (the eviction order)."""
        with self.session() as session:
            query = _held_rows().order_by(Instance.last_access, Instance.id).limit(limit)
            return [_held(*row) for row in session.execute(query)]

    def release_files(self, sop_uids: Iterable[str]) -> None:
        """Forget the files of these instances (they stay indexed, as the PACS still holds them)."""
        uids = list(sop_uids)

        def work(session: Session) -> None:
            for chunk in _chunks(uids):
                session.execute(
                    update(Instance)
                    .where(Instance.sop_uid.in_(chunk))
                    .values(file_path=None, file_size=None, stored_at=None)
                )

        if uids:
            self._write(work)

    # --- KOS grants (DRIM-M A8) ------------------------------------------------------------

    def grant_kos(self, kos_sop_uid: str, study_uid: str) -> None:
        """Record that the KOS `kos_sop_uid` we published opens `study_uid` (publication calls this)."""

        def work(session: Session) -> None:
            grant = session.get(KosGrant, kos_sop_uid)
            if grant is None:
                session.add(KosGrant(kos_sop_uid=kos_sop_uid, study_uid=study_uid, created_at=datetime.now(UTC)))
            else:
                grant.study_uid = study_uid

        self._write(work)

    def revoke_kos(self, kos_sop_uid: str) -> None:
        """Forget a KOS (its publication was deleted or replaced): it no longer opens its study."""

        def work(session: Session) -> None:
            grant = session.get(KosGrant, kos_sop_uid)
            if grant is not None:
                session.delete(grant)

        self._write(work)

    def study_of_kos(self, kos_sop_uid: str) -> str | None:
        """The study a KOS we published opens, or None when we never published it."""
        with self.session() as session:
            return session.scalar(select(KosGrant.study_uid).where(KosGrant.kos_sop_uid == kos_sop_uid))

    def kos_access(self, kos_sop_uid: str) -> tuple[str, str] | None:
        """The study a KOS we published opens and the INS it was published under, or None."""
        with self.session() as session:
            study = session.scalar(select(KosGrant.study_uid).where(KosGrant.kos_sop_uid == kos_sop_uid))
            if study is None:
                return None
            ins = session.scalar(select(Publication.ins).where(Publication.kos_sop_uid == kos_sop_uid))
            return study, ins or ""

    def counts(self) -> IndexCounts:
        with self.session() as session:
            held = session.execute(
                select(func.count(Instance.id), func.coalesce(func.sum(Instance.file_size), 0)).where(
                    Instance.file_path.is_not(None)
                )
            ).one()
            return IndexCounts(
                patients=session.scalar(select(func.count(Patient.id))) or 0,
                studies=session.scalar(select(func.count(Study.id))) or 0,
                series=session.scalar(select(func.count(Series.id))) or 0,
                instances=session.scalar(select(func.count(Instance.id))) or 0,
                instances_held=int(held[0]),
                bytes_held=int(held[1] or 0),
            )


def _chunks(uids: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """`uids` a few hundred at a time: the length of one `IN (...)` list."""
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


def _held_rows() -> Select[str, str, str, str, str, str | None, int | None, datetime | None]:
    """Instances whose file we hold, with their study and series UIDs: plain columns, not ORM
    objects (a 500-slice series as `Instance` objects took 5-11 ms of each WADO-RS request, about
    twice as long, holding the GIL the event loop sends with)."""
    return (
        select(
            Study.study_uid,
            Series.series_uid,
            Instance.sop_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.file_path,
            Instance.file_size,
            Instance.stored_at,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Instance.file_path.is_not(None))
    )


def _held(study_uid: str, series_uid: str, sop_uid: str, sop_class_uid: str, syntax: str, path: str | None,
          size: int | None, stored_at: datetime | None) -> HeldInstance:  # fmt: skip
    return HeldInstance(study_uid, series_uid, sop_uid, sop_class_uid, syntax, path or "", size or 0, stored_at)


# --- helpers used inside one transaction ------------------------------------------------


def _upsert_patient(session: Session, record: PatientRecord) -> Patient:
    patient = session.scalars(
        select(Patient).where(Patient.patient_id == record.patient_id, Patient.issuer == record.issuer)
    ).one_or_none()
    if patient is None:
        patient = Patient(patient_id=record.patient_id, issuer=record.issuer)
        session.add(patient)
    patient.name = record.name or patient.name or ""
    patient.name_normalized = normalize_name(patient.name)
    patient.birth_date = record.birth_date or patient.birth_date or ""
    patient.sex = record.sex or patient.sex or ""
    if record.other_ids:
        patient.other_ids = record.other_ids_json()
    elif patient.other_ids is None:
        patient.other_ids = "[]"
    return patient


def _upsert_study(session: Session, record: StudyRecord, peer: str) -> Study:
    patient = _upsert_patient(session, record.patient)
    study = session.scalars(select(Study).where(Study.study_uid == record.study_uid)).one_or_none()
    if study is None:
        study = Study(study_uid=record.study_uid)
        session.add(study)
    study.patient = patient
    for attr in ("study_date", "study_time", "accession_number", "study_id", "description", "modalities"):
        value = getattr(record, attr)
        if value or getattr(study, attr) is None:
            setattr(study, attr, value)
    if record.referring_physician or study.referring_physician is None:
        study.referring_physician = record.referring_physician
        study.referring_physician_normalized = normalize_name(record.referring_physician)
    if peer or study.pacs_peer is None:
        study.pacs_peer = peer
    session.flush()
    return study


def _upsert_series(session: Session, study: Study, record: SeriesRecord) -> Series:
    series = session.scalars(select(Series).where(Series.series_uid == record.series_uid)).one_or_none()
    if series is None:
        series = Series(series_uid=record.series_uid)
        session.add(series)
    series.study = study
    for attr in ("modality", "description", "body_part"):
        value = getattr(record, attr)
        if value or getattr(series, attr) is None:
            setattr(series, attr, value)
    if record.series_number is not None:
        series.series_number = record.series_number
    session.flush()
    return series


def _upsert_instance(session: Session, series: Series, record: InstanceRecord) -> Instance:
    instance = session.scalars(select(Instance).where(Instance.sop_uid == record.sop_uid)).one_or_none()
    if instance is None:
        instance = Instance(sop_uid=record.sop_uid, sop_class_uid="", transfer_syntax_uid="")
        session.add(instance)
    instance.series = series
    if record.sop_class_uid:
        instance.sop_class_uid = record.sop_class_uid
    if record.transfer_syntax_uid and not instance.file_path:
        instance.transfer_syntax_uid = record.transfer_syntax_uid
    for attr in ("instance_number", "rows", "columns", "number_of_frames"):
        value = getattr(record, attr)
        if value is not None:
            setattr(instance, attr, value)
    session.flush()
    return instance


_STORED_COLUMNS = ("sop_class_uid", "instance_number", "rows", "columns", "number_of_frames", "transfer_syntax_uid",
                   "file_path", "file_size", "stored_at", "last_access", "series_pk")  # fmt: skip


def _record_full(session: Session, entry: InstanceEntry, peer: str) -> None:
    """The stored file's rows from patient down (the first instance of a series)."""
    study = _upsert_study(session, entry.study, peer)
    series = _upsert_series(session, study, entry.series)
    instance = _upsert_instance(session, series, entry.instance)
    instance.transfer_syntax_uid = entry.instance.transfer_syntax_uid
    instance.file_path = entry.file.path
    instance.file_size = entry.file.size
    instance.stored_at = instance.last_access = datetime.now(UTC)


@functools.cache
def _stored_instance_statement(dialect: str) -> Any:
    """INSERT the instance row of a stored file, or UPDATE it when the SOP Instance UID is known.

    The series is looked up by UID in the statement itself (never a cached row id, which a
    deleted-then-reused rowid could turn into another patient's series); a series that no longer
    exists gives NULL and the NOT NULL constraint refuses the row. Built once per dialect with
    bound parameters: building it per instance cost ~1 ms of SQLAlchemy work on each C-STORE.
    """
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    series_pk = select(Series.id).where(Series.series_uid == bindparam("series_uid")).scalar_subquery()
    values: dict[str, Any] = {name: bindparam(name) for name in _STORED_COLUMNS if name != "series_pk"}
    statement = insert(Instance).values(sop_uid=bindparam("sop_uid"), series_pk=series_pk, **values)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[Instance.sop_uid], set_={name: excluded[name] for name in _STORED_COLUMNS}
    )


@functools.cache
def _metadata_statement(dialect: str) -> Any:
    """INSERT an instance's metadata document, or replace the one it had."""
    insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
    statement = insert(InstanceMetadata).values(sop_uid=bindparam("sop_uid"), document=bindparam("document"))
    return statement.on_conflict_do_update(
        index_elements=[InstanceMetadata.sop_uid], set_={"document": statement.excluded.document}
    )


def _documents(
    entries: Sequence[InstanceEntry], documents: Sequence[bytes | None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The metadata rows to save, and the SOP Instance UIDs stored without one (none given: all)."""
    if documents and len(documents) != len(entries):
        raise ValueError("one metadata document (or None) per entry")
    saved: list[dict[str, Any]] = []
    stale: list[str] = []
    for entry, document in zip(entries, documents or [None] * len(entries), strict=True):
        if document is None:
            stale.append(entry.instance.sop_uid)
        else:
            saved.append({"sop_uid": entry.instance.sop_uid, "document": document})
    return saved, stale


def _stored_instance_values(entry: InstanceEntry) -> dict[str, Any]:
    record = entry.instance
    now = datetime.now(UTC)
    return {
        "series_uid": entry.series.series_uid,
        "sop_uid": record.sop_uid,
        "sop_class_uid": record.sop_class_uid,
        "instance_number": record.instance_number,
        "rows": record.rows,
        "columns": record.columns,
        "number_of_frames": record.number_of_frames,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "file_path": entry.file.path,
        "file_size": entry.file.size,
        "stored_at": now,
        "last_access": now,
    }


def _delete(session: Session, rows: list[Series] | list[Instance]) -> list[str]:
    files: list[str] = []
    for row in rows:
        if isinstance(row, Instance):
            if row.file_path:
                files.append(row.file_path)
        else:
            files.extend(i.file_path for i in row.instances if i.file_path)
        session.delete(row)
    return files
