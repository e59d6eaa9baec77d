"""The sandbox DMP's registry and repository: one SQLite file in its folder, so entries survive a
restart of the sandbox (tests kill and restart the product, not necessarily the DMP).

Each entry keeps its document bytes, the ExtrinsicObject as the registry would return it (ids made
urn:uuid, repositoryUniqueId slot added; status is set at query time from the `status` column),
its codes and reference ids for ITI-18 filters, its submission set and the entry it replaced.
A submission is written in one transaction: all its entries and the deprecation of what they
replace, or nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from drimbox.sandbox.dmp.ebxml import DEPRECATED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submission_sets (
    entry_uuid TEXT PRIMARY KEY, unique_id TEXT NOT NULL UNIQUE, patient_id TEXT NOT NULL,
    source_id TEXT NOT NULL, metadata TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_uuid TEXT NOT NULL UNIQUE, unique_id TEXT NOT NULL UNIQUE,
    patient_id TEXT NOT NULL, status TEXT NOT NULL, mime_type TEXT NOT NULL, hash TEXT NOT NULL,
    size INTEGER NOT NULL, creation_time TEXT NOT NULL, type_code TEXT NOT NULL, document BLOB NOT NULL,
    metadata TEXT NOT NULL, submission_set TEXT NOT NULL, repository_unique_id TEXT NOT NULL, replaces TEXT);
CREATE TABLE IF NOT EXISTS entry_codes (entry_uuid TEXT NOT NULL, scheme TEXT NOT NULL, code TEXT NOT NULL,
    coding_scheme TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reference_ids (entry_uuid TEXT NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS patients (ins TEXT PRIMARY KEY, authorised INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS authorisations (ins TEXT NOT NULL, structure_id TEXT NOT NULL,
    practitioner TEXT NOT NULL, granted_at TEXT NOT NULL);
"""
_ENTRY_COLUMNS = (
    "entry_uuid, unique_id, patient_id, status, mime_type, hash, size, creation_time, type_code, document, "
    "metadata, submission_set, repository_unique_id, replaces"
)


@dataclass(frozen=True)
class StoredEntry:
    """A DocumentEntry as the sandbox holds it (`status` is the full ebRIM/DMP status URN)."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    mime_type: str
    hash: str
    size: int
    creation_time: str
    type_code: str
    document: bytes
    metadata: str
    submission_set: str  # the submission set's uniqueId
    repository_unique_id: str
    replaces: str | None = None
    codes: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)  # (scheme, code, codingScheme)
    reference_ids: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class NewSubmissionSet:
    entry_uuid: str
    unique_id: str
    patient_id: str
    source_id: str
    metadata: str


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def register(
        self, submission_set: NewSubmissionSet, entries: Sequence[StoredEntry], deprecate: Iterable[str] = ()
    ) -> None:
        now = datetime.now(UTC).isoformat()
        with self._transaction() as db:
            db.execute("INSERT INTO submission_sets VALUES (?, ?, ?, ?, ?, ?)", (*astuple(submission_set), now))
            for entry in entries:
                row = [getattr(entry, name.strip()) for name in _ENTRY_COLUMNS.split(",")]
                db.execute(f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row)
                rows = [(entry.entry_uuid, *code) for code in entry.codes]
                db.executemany("INSERT INTO entry_codes VALUES (?, ?, ?, ?)", rows)
                db.executemany(
                    "INSERT INTO reference_ids VALUES (?, ?)", [(entry.entry_uuid, v) for v in entry.reference_ids]
                )
            for entry_uuid in deprecate:
                db.execute("UPDATE entries SET status = ? WHERE entry_uuid = ?", (DEPRECATED, entry_uuid))

    def set_statuses(self, submission_set: NewSubmissionSet, changes: Sequence[tuple[str, str]]) -> None:
        """ITI-57: record the update's submission set and apply (entryUUID, new status) pairs."""
        now = datetime.now(UTC).isoformat()
        with self._transaction() as db:
            db.execute("INSERT INTO submission_sets VALUES (?, ?, ?, ?, ?, ?)", (*astuple(submission_set), now))
            db.executemany("UPDATE entries SET status = ? WHERE entry_uuid = ?", [(s, e) for e, s in changes])

    def entries(self, where: str = "", params: Sequence[object] = ()) -> list[StoredEntry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries {where} ORDER BY seq", params).fetchall()
            found = []
            for row in rows:
                codes = self._db.execute(
                    "SELECT scheme, code, coding_scheme FROM entry_codes WHERE entry_uuid = ?", (row[0],)
                ).fetchall()
                references = self._db.execute("SELECT value FROM reference_ids WHERE entry_uuid = ?", (row[0],))
                entry = StoredEntry(*row)
                found.append(replace(entry, codes=tuple(codes), reference_ids=tuple(r[0] for r in references)))
            return found

    def entry(self, *, entry_uuid: str = "", unique_id: str = "") -> StoredEntry | None:
        column, value = ("entry_uuid", entry_uuid) if entry_uuid else ("unique_id", unique_id)
        found = self.entries(f"WHERE {column} = ?", (value,))
        return found[0] if found else None

    def submission_set_exists(self, *, unique_id: str = "", entry_uuid: str = "") -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM submission_sets WHERE unique_id = ? OR entry_uuid = ?", (unique_id, entry_uuid)
            ).fetchone()
        return row is not None

    def uuid_taken(self, value: str) -> bool:
        return self.submission_set_exists(entry_uuid=value) or self.entry(entry_uuid=value) is not None

    # -- patients (TD0.2 / TD0.3) ----------------------------------------------------------------

    def add_patient(self, ins: str, authorised: bool) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO patients VALUES (?, ?)", (ins, int(authorised)))

    def patient(self, ins: str) -> bool | None:
        """None when the patient is unknown, else whether every professional may access the record."""
        with self._lock:
            row = self._db.execute("SELECT authorised FROM patients WHERE ins = ?", (ins,)).fetchone()
        return None if row is None else bool(row[0])

    def authorise(self, ins: str, structure_id: str, practitioner: str) -> None:
        with self._transaction() as db:
            values = (ins, structure_id, practitioner, datetime.now(UTC).isoformat())
            db.execute("INSERT INTO authorisations VALUES (?, ?, ?, ?)", values)

    def authorised(self, ins: str, practitioner: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM authorisations WHERE ins = ? AND practitioner = ?", (ins, practitioner)
            ).fetchone()
        return row is not None
