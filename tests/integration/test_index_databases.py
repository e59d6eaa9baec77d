"""The index on both databases it supports: SQLite (default, WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from drimbox.index import db
from drimbox.index.records import InstanceEntry, InstanceRecord, PatientRecord, SeriesRecord, StoredFile, StudyRecord
from drimbox.index.repository import IndexRepository
from tests.support.datasets import MG
from tests.support.peers import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexRepository]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
    else:
        server: Postgres = request.getfixturevalue("postgres")
        url = server.new_database("t")
    engine = db.make_engine(url)
    db.upgrade(engine)
    yield IndexRepository(engine)
    engine.dispose()


def _study(n: int, patient: str = "IPP1", name: str = "DUPRÉ^Hélène") -> StudyRecord:
    return StudyRecord(
        study_uid=f"1.2.3.{n}",
        patient=PatientRecord(patient_id=patient, issuer="CIS", name=name, birth_date="19650412", sex="F"),
        study_date="20261120",
        accession_number=f"ACC{n}",
        description="MAMMOGRAPHIE",
        series_count=1,
        instance_count=2,
    )


def test_migrations_reach_head_with_the_lookup_indexes(index: IndexRepository) -> None:
    assert db.current_revision(index.engine) == db.head_revision()
    inspector = inspect(index.engine)
    indexed = {
        (table, tuple(ix["column_names"])) for table in ("patient", "study") for ix in inspector.get_indexes(table)
    }
    assert ("patient", ("patient_id",)) in indexed
    assert ("study", ("accession_number",)) in indexed
    assert ("study", ("study_date", "study_time")) in indexed
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("study")}
    assert ("study_uid",) in uniques or any(
        ix["unique"] and ix["column_names"] == ["study_uid"] for ix in inspector.get_indexes("study")
    )


def test_the_migrations_build_exactly_the_models(index: IndexRepository) -> None:
    """What Alembic's autogenerate would still find to migrate: nothing (a model changed without
    its migration, or the reverse, fails here on both databases)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from drimbox.index.models import Base

    with index.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_walk_from_cfind_records_and_stored_file(index: IndexRepository) -> None:
    index.upsert_study(_study(1), "main")
    index.upsert_series("1.2.3.1", [SeriesRecord("1.2.3.1.1", modality="MG", series_number=1, instance_count=2)])
    index.upsert_instances(
        "1.2.3.1.1",
        [
            InstanceRecord("1.2.3.1.1.1", MG, 1),
            InstanceRecord("1.2.3.1.1.2", MG, 2),
        ],
    )
    state = index.study_state("1.2.3.1")
    assert state is not None
    assert (state.series_count, state.instance_count, state.pacs_instance_count) == (1, 2, 2)

    instance = InstanceRecord("1.2.3.1.1.1", MG, 1, transfer_syntax_uid="1.2.840.10008.1.2.1")
    entry = InstanceEntry(_study(1), SeriesRecord("1.2.3.1.1", modality="MG"), instance, StoredFile("/x.dcm", 1234))
    index.record_stored(entry, "main")
    [held] = index.held("1.2.3.1")
    assert (held.sop_uid, held.size, held.transfer_syntax_uid) == ("1.2.3.1.1.1", 1234, "1.2.840.10008.1.2.1")
    counts = index.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances, counts.instances_held) == (1, 1, 1, 2, 1)
    assert index.sop_classes("1.2.3.1") == {MG: {"1.2.840.10008.1.2.1"}}


def test_names_kept_as_received_and_normalised(index: IndexRepository) -> None:
    index.upsert_study(_study(2, name="LEFÈVRE^Françoise"), "main")
    with index.session() as session:
        row = session.execute(text("SELECT name, name_normalized FROM patient")).one()
    assert tuple(row) == ("LEFÈVRE^Françoise", "LEFEVRE^FRANCOISE")


def test_removals_cascade_and_return_files(index: IndexRepository) -> None:
    index.upsert_study(_study(3), "main")
    index.upsert_series("1.2.3.3", [SeriesRecord("1.2.3.3.1"), SeriesRecord("1.2.3.3.2")])
    entry = InstanceEntry(_study(3), SeriesRecord("1.2.3.3.2"), InstanceRecord("1.2.3.3.2.1"), StoredFile("/f.dcm", 1))
    index.record_stored(entry)
    assert index.remove_missing_series("1.2.3.3", {"1.2.3.3.1"}) == ["/f.dcm"]
    assert index.counts().instances == 0
    assert index.remove_studies(["1.2.3.3"]) == []
    assert index.counts().studies == 0 and index.counts().series == 0


def test_same_study_from_two_sides_is_one_row(index: IndexRepository) -> None:
    index.upsert_study(_study(4), "main")
    entry = InstanceEntry(_study(4), SeriesRecord("1.2.3.4.1"), InstanceRecord("1.2.3.4.1.1"), StoredFile("/g.dcm", 5))
    index.record_stored(entry, "")
    assert index.counts().studies == 1
    assert index.study_peer("1.2.3.4") == "main"


LOOKUPS = {
    "patient_id": "SELECT id FROM patient WHERE patient_id = 'IPP1'",
    "study_uid": "SELECT id FROM study WHERE study_uid = '1.2.3.1'",
    "accession": "SELECT id FROM study WHERE accession_number = 'ACC1'",
    "study_date": "SELECT id FROM study WHERE study_date BETWEEN '20261101' AND '20261130'",
    "instances_of_series": "SELECT id FROM instance WHERE series_pk = 1",
    "sop_uid": "SELECT id FROM instance WHERE sop_uid = '1.2.3.1.1.1'",
}


@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
def test_lookups_use_an_index(index: IndexRepository, lookup: str) -> None:
    """The query planner answers each frequent lookup from an index, not a table scan."""
    with index.session() as session:
        if index.engine.dialect.name == "sqlite":
            plan = " ".join(str(row[-1]) for row in session.execute(text("EXPLAIN QUERY PLAN " + LOOKUPS[lookup])))
            assert "USING" in plan and "INDEX" in plan, plan
        else:
            session.execute(text("SET enable_seqscan = off"))
            plan = " ".join(row[0] for row in session.execute(text("EXPLAIN " + LOOKUPS[lookup])))
            assert "Index" in plan and "Seq Scan" not in plan, plan


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_stored_files_recorded_in_batches(index: IndexRepository) -> None:
    """New series take the full path, the next instances of known series one multi-row statement;
    a series removed meanwhile sends its batch back through the full path."""

    def entry(series: str, number: int, path: str) -> InstanceEntry:
        instance = InstanceRecord(f"{series}.{number}", MG, number, transfer_syntax_uid="1.2.840.10008.1.2.1")
        return InstanceEntry(_study(1), SeriesRecord(series, modality="MG"), instance, StoredFile(path, 100 + number))

    batch = [entry("1.2.3.1.1", 1, "/a1"), entry("1.2.3.1.1", 2, "/a2"), entry("1.2.3.1.2", 1, "/b1")]
    batch += [entry("1.2.3.1.1", 3, "/a3"), entry("1.2.3.1.2", 2, "/b2")]
    index.record_stored_many(batch, "main")
    held = {h.sop_uid: h.size for h in index.held("1.2.3.1")}
    assert held == {"1.2.3.1.1.1": 101, "1.2.3.1.1.2": 102, "1.2.3.1.2.1": 101, "1.2.3.1.1.3": 103, "1.2.3.1.2.2": 102}

    assert (index.instance_count("1.2.3.1"), index.instance_count("1.2.3.1", "1.2.3.1.2")) == (5, 2)
    assert index.instance_count("9.9.9") == 0
    index.remove_missing_series("1.2.3.1", {"1.2.3.1.1"})  # series .2 goes, the repository still thinks it known
    index.record_stored_many([entry("1.2.3.1.2", 3, "/b3"), entry("1.2.3.1.1", 4, "/a4")], "main")
    held = {h.sop_uid: h.size for h in index.held("1.2.3.1")}
    assert held.keys() == {"1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.1.3", "1.2.3.1.1.4", "1.2.3.1.2.3"}


def test_a_batch_is_recorded_whole_or_not_at_all(index: IndexRepository, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch across a series boundary whose second series fails leaves no row of the first:
    the intake then removes every file of the batch, and no row may point at one of them."""
    from drimbox.index import repository

    def entry(series: str, number: int) -> InstanceEntry:
        instance = InstanceRecord(f"{series}.{number}", MG, number)
        return InstanceEntry(_study(1), SeriesRecord(series, modality="MG"), instance, StoredFile(f"/{number}", 1))

    index.record_stored_many([entry("1.2.3.1.1", 1)], "main")
    full = repository._record_full

    def failing(session: Any, item: InstanceEntry, peer: str) -> None:
        if item.series.series_uid == "1.2.3.1.2":
            raise RuntimeError("connection lost")
        full(session, item, peer)

    monkeypatch.setattr(repository, "_record_full", failing)
    with pytest.raises(RuntimeError):
        index.record_stored_many([entry("1.2.3.1.1", 2), entry("1.2.3.1.2", 1)], "main")
    assert [h.sop_uid for h in index.held("1.2.3.1")] == ["1.2.3.1.1.1"]


def test_metadata_documents_travel_with_their_instances(index: IndexRepository) -> None:
    """Saved in the batch's transaction (new and known series alike), replaced when the instance is
    stored again, kept when its file is released, gone with its study."""

    def entry(series: str, number: int) -> InstanceEntry:
        instance = InstanceRecord(f"{series}.{number}", MG, number)
        return InstanceEntry(_study(1), SeriesRecord(series, modality="MG"), instance, StoredFile(f"/{number}", 1))

    first = [entry("1.2.3.1.1", 1), entry("1.2.3.1.1", 2), entry("1.2.3.1.2", 1)]
    index.record_stored_many(first, "main", [b"doc-1", None, b"doc-3"])
    uids = ["1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.2.1"]
    assert index.metadata_documents(uids) == {"1.2.3.1.1.1": b"doc-1", "1.2.3.1.2.1": b"doc-3"}
    assert index.metadata_missing(uids) == ["1.2.3.1.1.2"]

    before = {h.sop_uid: h.stored_at for h in index.held("1.2.3.1")}
    index.record_stored_many([entry("1.2.3.1.1", 1), entry("1.2.3.1.1", 2)], "main", [b"doc-1b", b"doc-2"])
    assert index.metadata_documents(uids[:2]) == {"1.2.3.1.1.1": b"doc-1b", "1.2.3.1.1.2": b"doc-2"}
    after = {h.sop_uid: h.stored_at for h in index.held("1.2.3.1")}
    assert after["1.2.3.1.1.1"] != before["1.2.3.1.1.1"], "stored_at versions the metadata (its ETag)"

    assert index.save_metadata("1.2.3.1.1.2", b"doc-2b")
    assert not index.save_metadata("9.9.9.9", b"no such instance")
    index.release_files(["1.2.3.1.1.2"])
    assert index.metadata_documents(["1.2.3.1.1.2"]) == {"1.2.3.1.1.2": b"doc-2b"}
    with pytest.raises(ValueError):
        index.record_stored_many(first, "main", [b"one document for three entries"])

    index.record_stored_many([entry("1.2.3.1.1", 1)], "main", [None])  # stored again, not described
    assert "1.2.3.1.1.1" not in index.metadata_documents(uids), "the previous copy's document is not kept"

    index.remove_studies(["1.2.3.1"])
    assert index.metadata_documents(uids) == {}
    with index.session() as session:
        assert session.execute(text("SELECT count(*) FROM instance_metadata")).scalar() == 0


def test_metadata_documents_are_not_saved_when_their_batch_fails(
    index: IndexRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drimbox.index import repository

    def entry(series: str, number: int) -> InstanceEntry:
        instance = InstanceRecord(f"{series}.{number}", MG, number)
        return InstanceEntry(_study(1), SeriesRecord(series, modality="MG"), instance, StoredFile(f"/{number}", 1))

    index.record_stored_many([entry("1.2.3.1.1", 1)], "main", [b"kept"])
    statement = repository._metadata_statement(index.engine.dialect.name)

    def broken(dialect: str) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(repository, "_metadata_statement", broken)
    with pytest.raises(RuntimeError):
        index.record_stored_many([entry("1.2.3.1.1", 2), entry("1.2.3.1.2", 1)], "main", [b"a", b"b"])
    assert [h.sop_uid for h in index.held("1.2.3.1")] == ["1.2.3.1.1.1"], "no instance row without its document"
    assert statement is not None and index.metadata_documents(["1.2.3.1.1.1"]) == {"1.2.3.1.1.1": b"kept"}
