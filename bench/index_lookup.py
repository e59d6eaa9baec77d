"""Index lookups at scale: 20,000 studies, 1,000,000 instances, on SQLite (default) or PostgreSQL.

Fills a fresh index through the real Alembic schema, then times the lookups QIDO-RS and the
indexer make (by PatientID, StudyInstanceUID, AccessionNumber, a StudyDate range, the instances
of a series, one SOP Instance UID). The reference printed beside each figure is the same query
made to ignore our indexes (SQLite `NOT INDEXED`; PostgreSQL with index, index-only and bitmap scans off),
i.e. what the lookup would cost without the schema's indexes.

    .venv/bin/python bench/index_lookup.py                       # SQLite in a temp folder
    .venv/bin/python bench/index_lookup.py --url postgresql+psycopg://postgres@127.0.0.1:5432/bench
    .venv/bin/python bench/index_lookup.py --studies 2000        # quicker, 100,000 instances
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, text

from drimbox.index import db
from drimbox.index.models import Instance, Patient, Series, Study

SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 25
CHUNK = 20_000


def fill(engine: Engine, studies: int) -> float:
    """Insert `studies` studies (2 per patient) with their series and instances; return seconds."""
    started = time.perf_counter()
    instance_rows: list[dict[str, object]] = []
    with engine.begin() as conn:
        conn.execute(insert(Patient), [
            {"id": p + 1, "patient_id": f"IPP{p:08d}", "issuer": "CIS", "name": f"NOM{p}^PRENOM",
             "name_normalized": f"NOM{p}^PRENOM", "birth_date": "19650412", "sex": "F", "other_ids": "[]"}
            for p in range(studies // 2)
        ])  # fmt: skip
        conn.execute(insert(Study), [
            {"id": s + 1, "study_uid": f"1.2.250.1.{s}", "patient_pk": s // 2 + 1,
             "study_date": f"2026{1 + s % 12:02d}{1 + s % 28:02d}", "study_time": "101500",
             "accession_number": f"ACC{s:09d}", "study_id": "1", "description": "MAMMOGRAPHIE",
             "referring_physician": "", "referring_physician_normalized": "", "modalities": "MG",
             "pacs_peer": "main"}
            for s in range(studies)
        ])  # fmt: skip
        conn.execute(insert(Series), [
            {"id": s * SERIES_PER_STUDY + k + 1, "series_uid": f"1.2.250.1.{s}.{k}", "study_pk": s + 1,
             "modality": "MG", "description": "", "body_part": "BREAST"}
            for s in range(studies) for k in range(SERIES_PER_STUDY)
        ])  # fmt: skip
        for series_pk in range(1, studies * SERIES_PER_STUDY + 1):
            for i in range(INSTANCES_PER_SERIES):
                instance_rows.append(
                    {"sop_uid": f"1.2.250.2.{series_pk}.{i}", "series_pk": series_pk, "instance_number": i + 1,
                     "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.2", "transfer_syntax_uid": ""}
                )  # fmt: skip
            if len(instance_rows) >= CHUNK:
                _flush(conn, instance_rows)
        _flush(conn, instance_rows)
    return time.perf_counter() - started


def _flush(conn: Connection, rows: list[dict[str, object]]) -> None:
    if rows:
        conn.execute(insert(Instance), rows)
        rows.clear()


def lookups(studies: int) -> dict[str, tuple[str, str]]:
    """name → (indexed query, the same query ignoring indexes on SQLite)."""
    s = studies // 3
    series_pk = s * SERIES_PER_STUDY + 1
    return {
        "PatientID": (f"SELECT id FROM patient WHERE patient_id = 'IPP{s // 2:08d}'",
                      f"SELECT id FROM patient NOT INDEXED WHERE patient_id = 'IPP{s // 2:08d}'"),
        "StudyInstanceUID": (f"SELECT id FROM study WHERE study_uid = '1.2.250.1.{s}'",
                             f"SELECT id FROM study NOT INDEXED WHERE study_uid = '1.2.250.1.{s}'"),
        "AccessionNumber": (f"SELECT id FROM study WHERE accession_number = 'ACC{s:09d}'",
                            f"SELECT id FROM study NOT INDEXED WHERE accession_number = 'ACC{s:09d}'"),
        "StudyDate range (1 week)": (
            "SELECT count(*) FROM study WHERE study_date BETWEEN '20260301' AND '20260307'",
            "SELECT count(*) FROM study NOT INDEXED WHERE study_date BETWEEN '20260301' AND '20260307'"),
        "instances of a series": (f"SELECT sop_uid FROM instance WHERE series_pk = {series_pk}",
                                  f"SELECT sop_uid FROM instance NOT INDEXED WHERE series_pk = {series_pk}"),
        "SOPInstanceUID": (f"SELECT id FROM instance WHERE sop_uid = '1.2.250.2.{series_pk}.3'",
                           f"SELECT id FROM instance NOT INDEXED WHERE sop_uid = '1.2.250.2.{series_pk}.3'"),
    }  # fmt: skip


def _planner(conn: Connection, state: str) -> None:
    for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
        conn.execute(text(f"SET {setting} = {state}"))


def timed(run: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of `repeat` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--studies", type=int, default=20_000, help="studies (×50 instances); default 20,000")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{Path(folder) / 'bench.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        seconds = fill(engine, args.studies)
        instances = args.studies * SERIES_PER_STUDY * INSTANCES_PER_SERIES
        print(f"{engine.dialect.name}: {args.studies:,} studies, {instances:,} instances inserted in {seconds:.1f} s")
        print(f"{'lookup':28} {'indexed ms':>11} {'no index ms':>12}")
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("ANALYZE"))
            for name, (indexed, scan) in lookups(args.studies).items():
                fast = timed(lambda q=indexed: conn.execute(text(q)).all(), args.repeat)
                if engine.dialect.name == "sqlite":
                    slow = timed(lambda q=scan: conn.execute(text(q)).all(), 3)
                else:
                    _planner(conn, "off")
                    # another text: psycopg prepares a query run 5 times and would reuse its index plan
                    slow = timed(lambda q=indexed + " /* no index */": conn.execute(text(q)).all(), 3)
                    _planner(conn, "on")
                print(f"{name:28} {fast:11.3f} {slow:12.1f}")
        engine.dispose()


if __name__ == "__main__":
    main()
