"""The QIDO-RS query layer over a real index, on SQLite and PostgreSQL: matching, paging, counts, plans."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event, text

from drimbox.index import db
from drimbox.index.queries import (
    InstanceRow,
    InvalidQuery,
    Match,
    SearchQuery,
    SeriesRow,
    StudyRow,
    contains,
    like_pattern,
    search,
    statement,
)
from drimbox.index.records import (
    InstanceEntry,
    InstanceRecord,
    PatientRecord,
    SeriesRecord,
    StoredFile,
    StudyRecord,
)
from drimbox.index.repository import IndexRepository
from tests.support.peers import Postgres

CT = "1.2.840.10008.5.1.4.1.1.2"
MG = "1.2.840.10008.5.1.4.1.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
US = "1.2.840.10008.5.1.4.1.1.6.1"
ROOT = "1.2.250.1.999"

LEFEVRE = PatientRecord("IPP001", "CIS", "LEFÈVRE^Hélène", "19650412", "F")
MARTIN = PatientRecord("IPP002", "CIS", "MARTIN^Jean-Pierre", "19501201", "M")
FONTAINE = PatientRecord("IPP003", "CIS", "DE LA FONTAINE^Éloïse", "19800101", "F")


def uid(*parts: int) -> str:
    return ".".join([ROOT, *map(str, parts)])


def fill(index: IndexRepository) -> None:
    """Seven studies: indexed down to instances, to series only, at study level only, odd IDs."""
    index.upsert_study(StudyRecord(uid(1), LEFEVRE, "20260105", "083000", "ACC-001", "S1", "MAMMOGRAPHIE",
                                   "DUPONT^Marc", "MG", 1, 4), "main")  # fmt: skip
    index.upsert_series(uid(1), [SeriesRecord(uid(1, 1), "MG", 1, "MG DBT", "BREAST", 4)])
    index.upsert_instances(uid(1, 1), [InstanceRecord(uid(1, 1, n), MG, n, 32, 24, 1) for n in (1, 2, 3, 4)])
    stored = InstanceRecord(uid(1, 1, 1), MG, 1, 32, 24, 1, "1.2.840.10008.1.2.1")
    index.record_stored(InstanceEntry(StudyRecord(uid(1), LEFEVRE), SeriesRecord(uid(1, 1), "MG"), stored,
                                      StoredFile("/store/x.dcm", 10)), "main")  # fmt: skip

    index.upsert_study(StudyRecord(uid(2), LEFEVRE, "20260620", "143000", "ACC-002", modalities="CT\\SR"), "main")
    index.upsert_series(uid(2), [SeriesRecord(uid(2, 1), "CT", 1), SeriesRecord(uid(2, 2), "SR", 2)])
    index.upsert_instances(uid(2, 1), [InstanceRecord(uid(2, 1, n), CT, n) for n in (3, 1, 2)])
    index.upsert_instances(uid(2, 2), [InstanceRecord(uid(2, 2, 1), SR, 1)])

    index.upsert_study(StudyRecord(uid(3), MARTIN, "20251231", "235959", "acc-003", modalities="MR",
                                   series_count=5, instance_count=120), "main")  # fmt: skip

    index.upsert_study(StudyRecord(uid(4), FONTAINE, "20260105", "120000", "ACC-004"), "main")
    index.upsert_series(uid(4), [SeriesRecord(uid(4, 1), "US", None, instance_count=7)])

    for n, patient_id in ((5, "IPP_04"), (6, "IPP%05"), (7, "IPP!06")):
        index.upsert_study(StudyRecord(uid(n), PatientRecord(patient_id, name="X^Y")), "main")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexRepository]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('qido') / 'index.db'}"
    else:
        server: Postgres = request.getfixturevalue("postgres")
        url = server.new_database("q")
    engine = db.make_engine(url)
    db.upgrade(engine)
    repository = IndexRepository(engine)
    fill(repository)
    yield repository
    engine.dispose()


def studies(index: IndexRepository, *matches: tuple[str, str], fuzzy: bool = False, **kw: Any) -> list[str]:
    """Study UIDs (their last component) a study search answers."""
    found = search(index, query("study", *matches, fuzzy=fuzzy, **kw))
    assert all(isinstance(row, StudyRow) for row in found)
    return [row.study_uid.removeprefix(ROOT + ".") for row in found if isinstance(row, StudyRow)]


def query(level: Any, *matches: tuple[str, str], **kw: Any) -> SearchQuery:
    parsed = [Match.parse(keyword, value) for keyword, value in matches]
    return SearchQuery(level, matches=tuple(m for m in parsed if m is not None), **kw)


def test_universal_search_answers_newest_first_with_undated_last(index: IndexRepository) -> None:
    assert studies(index) == ["2", "4", "1", "3", "5", "6", "7"]


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("PatientID", "IPP001", ["2", "1"]),
        ("PatientID", "IPP00?", ["2", "4", "1", "3"]),
        ("PatientID", "IPP_*", ["5"]),  # `_` is literal, not LIKE's any-character
        ("PatientID", "IPP%*", ["6"]),
        ("PatientID", "IPP!*", ["7"]),  # our escape character is literal too
        ("PatientID", "*", ["2", "4", "1", "3", "5", "6", "7"]),
        ("IssuerOfPatientID", "CIS", ["2", "4", "1", "3"]),
        ("AccessionNumber", "ACC-001", ["1"]),
        ("AccessionNumber", "acc-001", []),  # exact matching is case-sensitive
        ("AccessionNumber", "acc-00*", ["2", "4", "1", "3"]),  # wildcards are not
        ("StudyID", "S1", ["1"]),
        ("StudyDescription", "MAMMO*", ["1"]),
        ("StudyInstanceUID", uid(3), ["3"]),
        ("StudyInstanceUID", f"{uid(1)}\\{uid(3)}", ["1", "3"]),
        ("StudyInstanceUID", f"{uid(1)},{uid(7)}", ["1", "7"]),
        ("PatientBirthDate", "19650412", ["2", "1"]),
        ("PatientSex", "M", ["3"]),
    ],
)
def test_exact_wildcard_and_uid_list_matching(
    index: IndexRepository, keyword: str, value: str, expected: list[str]
) -> None:
    assert studies(index, (keyword, value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20260105", ["4", "1"]),
        ("20260101-20261231", ["2", "4", "1"]),
        ("-20251231", ["3"]),  # undated studies never match a range
        ("20260601-", ["2"]),
        ("20260105-20260105", ["4", "1"]),
    ],
)
def test_date_matching(index: IndexRepository, value: str, expected: list[str]) -> None:
    assert studies(index, ("StudyDate", value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0800-1200", ["4", "1"]), ("1430-", ["2", "3"]), ("-08", ["1"]), ("083000", ["1"]), ("0831-1159", [])],
)
def test_time_matching(index: IndexRepository, value: str, expected: list[str]) -> None:
    assert studies(index, ("StudyTime", value)) == expected


@pytest.mark.parametrize(
    ("value", "fuzzy", "expected"),
    [
        ("LEFÈVRE^Hélène", False, ["2", "1"]),
        ("lefevre^helene", False, ["2", "1"]),  # PN ignores case and accents (PS3.4 C.2.2.2.1)
        ("lefevre", False, []),  # without fuzzy matching the whole name must match
        ("LEF*", False, ["2", "1"]),
        ("lefevre", True, ["2", "1"]),
        ("HEL", True, ["2", "1"]),
        ("hél", True, ["2", "1"]),
        ("lef^hel", True, ["2", "1"]),
        ("ELENE", True, []),  # a prefix, not any substring
        ("fontaine", True, ["4"]),  # a word of a compound family name
        ("eloise", True, ["4"]),
        ("pierre", True, ["3"]),  # a hyphenated given name
        ("MART?N", True, ["3"]),
    ],
)
def test_person_name_matching(index: IndexRepository, value: str, fuzzy: bool, expected: list[str]) -> None:
    assert studies(index, ("PatientName", value), fuzzy=fuzzy) == expected


def test_referring_physician_matches_fuzzily_too(index: IndexRepository) -> None:
    assert studies(index, ("ReferringPhysicianName", "dup"), fuzzy=True) == ["1"]
    assert studies(index, ("ReferringPhysicianName", "dup")) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [("CT", ["2"]), ("US", ["4"]), ("MR", ["3"]), ("CT,MR", ["2", "3"]), ("SR\\US", ["2", "4"]), ("M?", ["1", "3"])],
)
def test_modalities_in_study_from_the_pacs_or_the_series(
    index: IndexRepository, value: str, expected: list[str]
) -> None:
    assert studies(index, ("ModalitiesInStudy", value)) == expected


def test_combined_keys_all_apply(index: IndexRepository) -> None:
    assert studies(index, ("PatientID", "IPP001"), ("StudyDate", "20260601-")) == ["2"]


def test_counts_come_from_the_index_rows_or_else_from_the_pacs(index: IndexRepository) -> None:
    by_uid = {row.study_uid: row for row in search(index, SearchQuery("study")) if isinstance(row, StudyRow)}
    two, three, four = by_uid[uid(2)], by_uid[uid(3)], by_uid[uid(4)]
    assert (two.series_count, two.instance_count, two.modalities) == (2, 4, ("CT", "SR"))
    assert (three.series_count, three.instance_count, three.modalities) == (5, 120, ("MR",))
    assert (four.series_count, four.instance_count, four.modalities) == (1, 7, ("US",))
    assert by_uid[uid(5)].series_count is None and by_uid[uid(5)].instance_count is None
    assert (by_uid[uid(1)].patient_name, by_uid[uid(1)].referring_physician) == ("LEFÈVRE^Hélène", "DUPONT^Marc")


def test_series_search_at_root_and_within_a_study(index: IndexRepository) -> None:
    rows = search(index, SearchQuery("series"))
    assert all(isinstance(row, SeriesRow) for row in rows)
    assert [r.series_uid for r in rows if isinstance(r, SeriesRow)] == [uid(2, 1), uid(2, 2), uid(4, 1), uid(1, 1)]
    [ct] = search(index, query("series", ("Modality", "CT")))
    assert isinstance(ct, SeriesRow) and (ct.series_number, ct.instance_count, ct.study.study_uid) == (1, 3, uid(2))
    [us] = search(index, SearchQuery("series", study_uid=uid(4)))
    assert isinstance(us, SeriesRow) and us.instance_count == 7  # no instance rows: the PACS's count
    found = search(index, query("series", ("ModalitiesInStudy", "CT"), ("SeriesNumber", "2")))
    assert [r.series_uid for r in found if isinstance(r, SeriesRow)] == [uid(2, 2)]
    assert [r.series_uid for r in search(index, query("series", ("PatientName", "hel"), fuzzy=True))
            if isinstance(r, SeriesRow)] == [uid(2, 1), uid(2, 2), uid(1, 1)]  # fmt: skip


def test_instance_search(index: IndexRepository) -> None:
    rows = search(index, SearchQuery("instance", study_uid=uid(2), series_uid=uid(2, 1)))
    assert [r.instance_number for r in rows if isinstance(r, InstanceRow)] == [1, 2, 3]
    [first] = search(index, query("instance", ("SOPInstanceUID", uid(1, 1, 1))))
    assert isinstance(first, InstanceRow)
    assert (first.held, first.rows, first.columns, first.number_of_frames) == (True, 32, 24, 1)
    assert first.transfer_syntax_uid == "1.2.840.10008.1.2.1" and first.series.instance_count == 4
    assert not any(
        isinstance(r, InstanceRow) and r.held for r in search(index, SearchQuery("instance", study_uid=uid(2)))
    )
    assert len(search(index, query("instance", ("SOPClassUID", SR)))) == 1
    assert len(search(index, query("instance", ("InstanceNumber", "2"), ("Modality", "CT\\MG")))) == 2


def test_paging_is_stable_and_complete(index: IndexRepository) -> None:
    everything = studies(index)
    pages = [studies(index, limit=2, offset=offset) for offset in range(0, 8, 2)]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [uid for page in pages for uid in page] == everything


def test_allowed_studies_restrict_every_level(index: IndexRepository) -> None:
    assert studies(index, allowed_study_uids=frozenset({uid(1), uid(3)})) == ["1", "3"]
    assert studies(index, allowed_study_uids=frozenset()) == []
    rows = search(index, SearchQuery("instance", allowed_study_uids=frozenset({uid(1)})))
    assert {r.series.study.study_uid for r in rows if isinstance(r, InstanceRow)} == {uid(1)}


def test_contains_tells_a_known_study_and_series(index: IndexRepository) -> None:
    assert contains(index, uid(3)) and contains(index, uid(2), uid(2, 2))
    assert not contains(index, uid(99)) and not contains(index, uid(1), uid(2, 2))


def test_a_search_is_at_most_two_statements(index: IndexRepository) -> None:
    executed: list[str] = []

    def count(*args: Any) -> None:
        executed.append(args[2])

    event.listen(index.engine, "before_cursor_execute", count)
    try:
        assert len(search(index, SearchQuery("instance"))) == 8
    finally:
        event.remove(index.engine, "before_cursor_execute", count)
    assert len([sql for sql in executed if sql.lstrip().upper().startswith("SELECT")]) == 2


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("StudyDate", "20261301", "not a date"),
        ("StudyDate", "2026-01-01", "not a date"),
        ("StudyDate", "20260101-20250101", "ends before it starts"),
        ("StudyDate", "-", "at least one bound"),
        ("StudyDate", "2026*", "not a date"),
        ("StudyTime", "2500", "not a time"),
        ("StudyInstanceUID", "1.2.x", "not a valid DICOM UID"),
        ("StudyInstanceUID", "1.2*", "not a valid DICOM UID"),
        ("StudyInstanceUID", "1.2.3,,1.2.4", "not a valid DICOM UID"),
        ("SeriesNumber", "two", "not an integer"),
        ("PatientID", "A\x01", "control characters"),
        ("PatientName", "X" * 400, "longer than"),
        ("PatientAge", "045Y", "not supported"),
    ],
)
def test_malformed_keys_are_refused(keyword: str, value: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        Match.parse(keyword, value)


@pytest.mark.parametrize(
    ("level", "kw", "message"),
    [
        ("study", {"matches": (Match("Modality", "exact", ("CT",)),)}, "series attribute"),
        ("series", {"matches": (Match("SOPInstanceUID", "exact", ("1.2.3",)),)}, "instance attribute"),
        ("study", {"matches": (Match("PatientID", "exact", ("A",)),) * 2}, "more than once"),
        ("study", {"limit": -1}, "negative"),
        ("study", {"offset": -5}, "negative"),
        ("series", {"series_uid": "1.2.3"}, "series scope"),
        ("study", {"study_uid": "1.2.x"}, "not a valid"),
        ("patient", {}, "level"),
    ],
)  # fmt: skip
def test_impossible_searches_are_refused(level: Any, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        SearchQuery(level, **kw)


def test_match_kinds_are_checked_against_the_attribute() -> None:
    with pytest.raises(InvalidQuery, match="does not support wildcard"):
        Match("StudyDate", "wildcard", ("2026*",))
    with pytest.raises(InvalidQuery, match="takes 2 value"):
        Match("StudyDate", "range", ("20260101",))


def test_like_pattern_escapes_what_like_would_read() -> None:
    assert like_pattern("A*B?C%D_E!F") == "A%B_C!%D!_E!!F"


@given(st.sampled_from(["PatientName", "PatientID", "StudyDate", "StudyTime", "StudyInstanceUID", "ModalitiesInStudy",
                        "SeriesNumber", "Modality"]), st.text(max_size=40))  # fmt: skip
def test_any_value_parses_or_is_refused_cleanly(keyword: str, value: str) -> None:
    with contextlib.suppress(InvalidQuery):  # anything else fails the test
        Match.parse(keyword, value)


SEARCHES = {
    "patient_id": (("PatientID", "IPP001"), "ix_patient_patient_id"),
    "study_date_range": (("StudyDate", "20260101-20260131"), "ix_study_date_time"),
    "accession": (("AccessionNumber", "ACC-001"), "ix_study_accession_number"),
    "patient_name": (("PatientName", "LEFEVRE^HELENE"), "ix_patient_name_normalized"),
}


@pytest.mark.parametrize("lookup", sorted(SEARCHES))
def test_study_searches_use_an_index(index: IndexRepository, lookup: str) -> None:
    """The planner answers a study search on these keys from their index, not by reading whole tables."""
    key, index_name = SEARCHES[lookup]
    compiled = statement(query("study", key, limit=100)).compile(
        dialect=index.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    with index.session() as session:
        if index.engine.dialect.name == "sqlite":
            plan = [str(row[-1]) for row in session.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
            assert any(line.startswith("SEARCH") and index_name in line for line in plan), plan
            assert not any(line.startswith("SCAN") for line in plan), plan
        else:
            session.execute(text("SET enable_seqscan = off"))
            plan = [row[0] for row in session.execute(text(f"EXPLAIN {compiled}"))]
            assert any(index_name in line for line in plan) and not any("Seq Scan" in line for line in plan), plan
