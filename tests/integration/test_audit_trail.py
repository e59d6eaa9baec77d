"""The hash-chained audit trail on both index databases: append, query, verify, detect tampering."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from drimbox.audit.trail import ChainedAuditTrail
from drimbox.errors import AuditTampered
from drimbox.index import db
from drimbox.index.models import AuditRecord
from drimbox.ports import AuditEvent
from tests.support.peers import Postgres

INS = "1234567890123"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.new_database("audit")


@pytest.fixture
def trail(database_url: str) -> Iterator[ChainedAuditTrail]:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield ChainedAuditTrail(engine)
    engine.dispose()


def _write(url: str, worker: int, count: int) -> None:
    engine = db.make_engine(url)
    trail = ChainedAuditTrail(engine)
    for n in range(count):
        trail.record(AuditEvent("dicomweb.retrieve", f"worker{worker}", study_uid=f"1.2.{worker}.{n}"))
    engine.dispose()


def test_records_are_chained_and_queried(trail: ChainedAuditTrail) -> None:
    trail.record(AuditEvent("hl7.received", "RIS", patient_id=INS, detail={"control_id": "M1"}))
    trail.record(AuditEvent("dicomweb.retrieve", "810000000001", patient_id=INS, study_uid="1.2.3",
                            peer="CN=db2.test,OU=1,O=X,C=FR", detail={"bytes": 1024, "status": 200}))  # fmt: skip
    trail.record(AuditEvent("tls.refused", "unauthenticated", "failure", peer="127.0.0.1:5000",
                            detail={"reason": "certificate revoked"}))  # fmt: skip

    assert trail.check().checked == 3
    mine = trail.query(patient_id=INS, newest_first=False)
    assert [r.action for r in mine] == ["hl7.received", "dicomweb.retrieve"]
    assert mine[1].peer == "CN=db2.test,OU=1,O=X,C=FR" and mine[1].detail == {"bytes": 1024, "status": 200}
    assert [r.seq for r in trail.query(action="tls.")] == [3]
    assert trail.query(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert trail.records_after(1, 10)[0].prev_hash == mine[0].hash


def test_writers_in_several_processes_keep_one_unbroken_chain(trail: ChainedAuditTrail, database_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write, args=(database_url, n, 40)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    report = trail.check()
    assert report.checked == report.head_seq == 120


def test_changing_deleting_or_truncating_a_record_is_detected(trail: ChainedAuditTrail) -> None:
    for n in range(5):
        trail.record(AuditEvent("dicomweb.retrieve", "810000000001", patient_id=INS, study_uid=f"1.2.{n}"))
    table = AuditRecord.__table__
    with trail.engine.begin() as connection:
        connection.execute(update(table).where(table.c.seq == 3).values(actor="someone else"))
    report = trail.verify()
    assert (report.broken_at, report.reason) == (3, "content does not match its hash (altered)")
    with pytest.raises(AuditTampered, match="record 3"):
        trail.check()

    with trail.engine.begin() as connection:
        connection.execute(update(table).where(table.c.seq == 3).values(actor="810000000001"))
    assert trail.verify().intact
    with trail.engine.begin() as connection:
        connection.execute(update(table).where(table.c.seq == 2).values(detail='{"bytes": 1}'))
    assert trail.verify().broken_at == 2
    with trail.engine.begin() as connection:
        connection.execute(update(table).where(table.c.seq == 2).values(detail="{}"))
        connection.execute(delete(table).where(table.c.seq == 4))
    assert trail.verify().reason == "record 4 is missing"
    with trail.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_record WHERE seq >= 4"))
    assert "head says 5" in trail.verify().reason


def test_a_record_in_a_rolled_back_transaction_leaves_no_trace(trail: ChainedAuditTrail) -> None:
    trail.record(AuditEvent("hl7.received", "RIS"))
    with pytest.raises(RuntimeError), trail.engine.begin() as connection:
        trail.record_in(connection, AuditEvent("publication.sent", "system"))
        raise RuntimeError("the work failed")
    trail.record(AuditEvent("hl7.received", "RIS"))
    assert trail.check().checked == 2


def test_export_cursor_only_moves_forward(trail: ChainedAuditTrail) -> None:
    assert trail.exported_up_to("syslog") == 0
    trail.mark_exported("syslog", 5)
    trail.mark_exported("syslog", 3)
    assert trail.exported_up_to("syslog") == 5
