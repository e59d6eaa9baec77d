"""The index: patients, studies, series and instances as the PACS and our store know them.

It holds what QIDO-RS answers from (PS3.18 §10.6 required attributes) and, per instance,
where its file is when we hold one. Counts reported by the PACS (`pacs_*_count`) decide whether
an incremental indexing run needs to descend into a study or a series.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of the index tables."""


class Patient(Base):
    """A patient as the PACS identifies them: the site's IPP with its issuer.

    The INS, when the PACS holds it, is among `other_ids` (OtherPatientIDsSequence); the INS a
    KOS carries comes from the validated report, not from here (decisions: Identity).
    """

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_id_issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")
    name_normalized: Mapped[str] = mapped_column(String(324), default="", index=True)
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    other_ids: Mapped[str] = mapped_column(Text, default="[]", doc="JSON list of {id, issuer, type}")

    studies: Mapped[list[Study]] = relationship(back_populates="patient", cascade="all, delete-orphan")


class Study(Base):
    """A study, at the level QIDO-RS and C-FIND STUDY answer."""

    __tablename__ = "study"
    __table_args__ = (Index("ix_study_date_time", "study_date", "study_time"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_normalized: Mapped[str] = mapped_column(String(324), default="")
    modalities: Mapped[str] = mapped_column(String(128), default="", doc="backslash-separated")
    pacs_peer: Mapped[str] = mapped_column(String(64), default="")
    pacs_series_count: Mapped[int | None] = mapped_column(Integer)
    pacs_instance_count: Mapped[int | None] = mapped_column(Integer)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    """A series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    pacs_instance_count: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    """An instance; `file_path` is set only once its complete file is in our store."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    file_path: Mapped[str | None] = mapped_column(String(512))
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_access: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class InstanceMetadata(Base):
    """The WADO-RS metadata of a stored instance: its DICOM JSON, one gzip member.

    Computed once when the file enters the store and kept here rather than in a file beside the
    instance: a file creation per instance cost as much as the rest of its admission. A table
    of its own keeps the instance rows (which QIDO scans) small. Kept when the file is evicted
    (the next copy of the same instance has the same metadata; storing it again replaces it).
    """

    __tablename__ = "instance_metadata"

    sop_uid: Mapped[str] = mapped_column(ForeignKey("instance.sop_uid", ondelete="CASCADE"), primary_key=True)
    document: Mapped[bytes] = mapped_column(LargeBinary)


class KosGrant(Base):
    """A KOS manifest we published for a study: holding its UID is what opens the study (DRIM-M A8).

    A remote box sends the KOS's SOP Instance UID in `KOS-SOPInstanceUID`; publication fills this
    table. One study may have several KOS (a replaced report publishes a new one).
    """

    __tablename__ = "kos_grant"

    kos_sop_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReportMessageRow(Base):
    """One HL7 message from the RIS, as judged: kept so an operator can see what came and why.

    `document` is the CDA of an accepted message (publication re-reads it); `raw` is kept only
    for refused messages (to show what was wrong), truncated to 1 MiB.
    """

    __tablename__ = "report_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    control_id: Mapped[str] = mapped_column(String(64), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    sender: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[str] = mapped_column(String(2))
    outcome_text: Mapped[str] = mapped_column(Text, default="")
    document_id: Mapped[str] = mapped_column(String(128), default="")
    flags: Mapped[str] = mapped_column(Text, default="{}", doc="JSON MetaDMPMSS flags")
    document: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)


class Publication(Base):
    """One intent towards the DMP (publish, replace or delete a study's KOS): the outbox row.

    Written in the same transaction that judges the report, before the RIS gets its ACK; the
    worker moves it through `state` and appends a `PublicationEvent` at each step. The KOS SOP
    Instance UID and the submission set uniqueId are chosen once and never change, which is what
    makes a resend after a crash recognisable (idempotency key).
    """

    __tablename__ = "publication"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("report_message.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16), default="report")
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    ins: Mapped[str] = mapped_column(String(64), default="")
    ins_root: Mapped[str] = mapped_column(String(64), default="")
    submission_uid: Mapped[str] = mapped_column(String(64), unique=True)
    signature_uid: Mapped[str] = mapped_column(String(64))
    kos_sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    kos_series_uid: Mapped[str] = mapped_column(String(64))
    kos: Mapped[bytes | None] = mapped_column(LargeBinary)
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("publication.id"))
    replaced_entry_uuid: Mapped[str] = mapped_column(String(64), default="")
    entry_uuid: Mapped[str] = mapped_column(String(64), default="")
    rejected: Mapped[str] = mapped_column(Text, default="[]", doc="JSON SOP UIDs an IOCM note rejected")
    dmp_issues: Mapped[str] = mapped_column(Text, default="[]")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    business_ack: Mapped[str] = mapped_column(String(16), default="", doc="'' | sent | failed")


class PublicationEvent(Base):
    """One step in a publication's history (state entered, and why)."""

    __tablename__ = "publication_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    publication_id: Mapped[int] = mapped_column(ForeignKey("publication.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class AuditRecord(Base):
    """One audit record (DRIM-M §6), chained to the one before it by `hash`.

    `hash` = SHA-256 of the previous record's hash and this record's canonical content, so a
    record changed or removed anywhere breaks every hash after it (`drimbox audit verify`). The
    product only ever inserts rows here.
    """

    __tablename__ = "audit_record"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)  # fmt: skip
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(512))
    outcome: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str] = mapped_column(String(128), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    peer: Mapped[str] = mapped_column(String(512))
    detail: Mapped[str] = mapped_column(Text, doc="canonical JSON object")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's head: one row, updated in the transaction that inserts each record, which
    serialises writers across processes (SQLite and PostgreSQL both lock the row)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class AuditExport(Base):
    """How far each export sink (the syslog collector) has received the chain."""

    __tablename__ = "audit_export"

    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
