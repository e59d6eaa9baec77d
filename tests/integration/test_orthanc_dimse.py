"""The DIMSE boundary against a real Orthanc: echo, incremental indexing, C-GET and C-MOVE retrieval."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from drimbox.daemon import Node, build_node
from drimbox.dimse import suboperations
from drimbox.dimse.parallel import Part
from tests.conftest import NodeFactory, orthanc_peer, register_with_orthanc
from tests.support.datasets import CT, DBT, MG, StudySpec, elements_equal, pixel_hash, write_study
from tests.support.peers import Orthanc

DAY = date(2026, 11, 20)


@pytest.fixture
def two_studies(tmp_path: Path, orthanc: Orthanc) -> dict[str, list[Path]]:
    mammo = StudySpec(patient_id="IPP00000001", series=[(MG, "MG", 4)], accession="ACC1")
    mixed = StudySpec(
        patient_id="IPP00000002",
        patient_name="LEFÈVRE^Françoise",
        accession="ACC2",
        series=[(CT, "CT", 5), (DBT, "MG", 1)],
        frames=3,
    )
    files = {mammo.study_uid: write_study(mammo, tmp_path / "s1"), mixed.study_uid: write_study(mixed, tmp_path / "s2")}
    orthanc.upload([p for paths in files.values() for p in paths])
    return files


def test_echo(orthanc: Orthanc, make_node: NodeFactory) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    health = node.echo("main")
    assert health.reachable is True
    assert health.detail == "status 0x0000"


def test_echo_to_a_closed_port_says_unreachable(make_node: NodeFactory) -> None:
    from tests.support.peers import free_port

    node = make_node({"gone": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}})
    health = node.echo("gone")
    assert health.reachable is False
    assert "did not accept the association" in health.detail


def test_index_finds_exactly_what_orthanc_holds(
    orthanc: Orthanc, make_node: NodeFactory, two_studies: dict[str, list[Path]]
) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    report = node.index_peer("main", DAY, DAY)
    assert report.studies_seen == 2 and report.studies_new == 2
    counts = node.index.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (2, 2, 3, 10)
    for study_uid, files in two_studies.items():
        expected = {f.stem for f in files}
        assert node.index.instance_uids(study_uid) == expected


def test_reindexing_is_incremental(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path, two_studies: dict[str, list[Path]]
) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    node.index_peer("main", DAY, DAY)
    again = node.index_peer("main", DAY, DAY)
    assert again.studies_unchanged == 2
    assert dict(again.stats.requests) == {"STUDY": 1}

    # one more instance in one series of one study: only that study and series are descended into
    study_uid = next(iter(two_studies))
    extra = StudySpec(study_uid=study_uid, series=[(MG, "MG", 1)], accession="ACC1")
    orthanc.upload(write_study(extra, tmp_path / "extra"))
    third = node.index_peer("main", DAY, DAY)
    assert (third.studies_changed, third.studies_unchanged) == (1, 1)
    assert dict(third.stats.requests) == {"STUDY": 1, "SERIES": 1, "IMAGE": 1}
    assert len(node.index.instance_uids(study_uid)) == 5


def test_study_deleted_from_pacs_leaves_the_index(
    orthanc: Orthanc, make_node: NodeFactory, two_studies: dict[str, list[Path]]
) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    node.index_peer("main", DAY, DAY)
    gone = next(iter(two_studies))
    for path in two_studies[gone]:
        orthanc.delete_instance(path.stem)
    report = node.index_peer("main", DAY, DAY)
    assert report.studies_removed == 1
    assert node.index.study_state(gone) is None


def _check_retrieved(node: Node, files: list[Path], study_uid: str) -> None:
    held = {h.sop_uid: h for h in node.index.held(study_uid)}
    assert set(held) == {f.stem for f in files}
    for original in files:
        stored = held[original.stem]
        assert Path(stored.path).is_file()
        assert pixel_hash(stored.path) == pixel_hash(original)
        assert elements_equal(stored.path, original)


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_retrieve_stores_identical_instances(
    method: str,
    orthanc: Orthanc,
    make_node: NodeFactory,
    two_studies: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short_path: list[bool] = []
    take = suboperations.SubOperations.take

    def counted(self: suboperations.SubOperations, dul: Any, body: memoryview) -> bool:
        short_path.append(take(self, dul, body))
        return short_path[-1]

    monkeypatch.setattr(suboperations.SubOperations, "take", counted)
    node = make_node({"main": orthanc_peer(orthanc, method)})
    if method == "c-move":
        node.scp.start()
        register_with_orthanc(orthanc, node)
    node.index_peer("main", DAY, DAY)
    for study_uid, files in two_studies.items():
        report = node.retriever.retrieve(study_uid)
        assert (report.stored, report.failed) == (len(files), 0)
        _check_retrieved(node, files, study_uid)
    assert list(node.store.incoming.iterdir()) == []
    # Orthanc's C-STORE sub-operations of a C-GET are answered in the reactor (suboperations.py)
    # (command, data and pending C-GET responses: all but each C-GET's final response)
    assert short_path.count(True) >= (20 if method == "c-get" else 0) and short_path.count(False) <= 2


def test_retrieve_without_prior_index_learns_sop_classes_by_cfind(
    orthanc: Orthanc, make_node: NodeFactory, two_studies: dict[str, list[Path]]
) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    study_uid, files = list(two_studies.items())[1]
    report = node.retriever.retrieve(study_uid)
    assert report.stored == len(files)
    _check_retrieved(node, files, study_uid)


def test_fetch_series_yields_files_as_they_land(
    orthanc: Orthanc, make_node: NodeFactory, two_studies: dict[str, list[Path]]
) -> None:
    node = make_node({"main": orthanc_peer(orthanc)})
    node.index_peer("main", DAY, DAY)
    study_uid, files = list(two_studies.items())[1]
    from pydicom import dcmread

    series_uid = dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    expected = {f.stem for f in files if dcmread(f, stop_before_pixels=True).SeriesInstanceUID == series_uid}
    got = [p.stem for p in node.retriever.fetch_series(study_uid, series_uid)]
    assert set(got) == expected and len(got) == len(expected)


def test_cget_leaves_one_audit_record_per_retrieval(
    orthanc: Orthanc, make_node: NodeFactory, two_studies: dict[str, list[Path]]
) -> None:

    node = make_node({"main": orthanc_peer(orthanc)})
    study_uid = next(iter(two_studies))
    node.retriever.retrieve(study_uid)
    records = [r.as_dict() for r in node.audit.query(limit=1000, newest_first=False)]
    assert [r for r in records if r["action"] == "instance.stored"] == []  # not one per instance
    [retrieved] = [r for r in records if r["action"] == "study.retrieved"]
    assert retrieved["detail"]["stored"] == 4 and retrieved["outcome"] == "success"
    assert retrieved["study_uid"] == study_uid and retrieved["actor"] == "main"


def _record_shares(node: Node) -> list[Part]:
    """The parts each split retrieval of `node` hands its worker processes, in order."""
    shares: list[Part] = []
    pool = node.retriever.pool
    if pool is not None:
        run = pool.run

        def recorded(peer: str, study_uid: str, parts: list[Part], *rest: Any) -> None:
            shares.extend(parts)
            run(peer, study_uid, parts, *rest)

        pool.run = recorded  # type: ignore[method-assign]
    return shares


@pytest.mark.parametrize(("processes", "split_by"), [(1, "series"), (3, "series"), (3, "instances")])
def test_large_study_over_one_or_several_associations(
    processes: int, split_by: str, orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    spec = StudySpec(series=[(CT, "CT", 30), (CT, "CT", 11)], rows=64, columns=64)
    files = write_study(spec, tmp_path / "ct")
    orthanc.upload(files)
    peer = orthanc_peer(orthanc, retrieve_processes=processes, parallel_min_instances=16, split_by=split_by)
    node = make_node({"main": peer})
    node.index_peer("main", DAY, DAY)
    # instances that reach the PACS after the last indexing are retrieved too
    late = StudySpec(study_uid=spec.study_uid, series=[(CT, "CT", 5)], rows=64, columns=64)
    files += write_study(late, tmp_path / "late")
    orthanc.upload(files[-5:])
    shares = _record_shares(node)
    seen: list[str] = []
    report = node.retriever.retrieve(spec.study_uid, on_instance=lambda a: seen.append(a.sop_uid))
    assert (report.stored, report.failed) == (46, 0)
    assert sorted(seen) == sorted(f.stem for f in files)
    _check_retrieved(node, files, spec.study_uid)
    if processes == 1:
        assert shares == []
    elif split_by == "series":  # whole series, largest first, the late one included
        assert [len(p.sop_uids) for p in shares] == [0, 0, 0]
        assert [sum(1 for f in files if dcmread(f).SeriesInstanceUID == p.series_uid) for p in shares] == [30, 11, 5]
    else:  # each series dealt out to the 3 processes
        assert sorted(len(p.sop_uids) for p in shares) == [1, 2, 2, 3, 4, 4, 10, 10, 10]


def test_http_worker_processes_retrieve_without_a_pool_of_their_own(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    """With `dicomweb.workers > 1` each HTTP worker builds its node this way: one association per
    retrieval in the worker itself, not a pool of C-GET processes per HTTP worker."""
    spec = StudySpec(series=[(CT, "CT", 20), (CT, "CT", 20)], rows=32, columns=32)
    files = write_study(spec, tmp_path / "ct")
    orthanc.upload(files)
    node = make_node({"main": orthanc_peer(orthanc, retrieve_processes=2, parallel_min_instances=8)})
    assert node.retriever.pool is not None
    worker = build_node(node.settings, retrieval_processes=False)
    try:
        assert worker.retriever.pool is None
        worker.index_peer("main", DAY, DAY)
        report = worker.retriever.retrieve(spec.study_uid)
    finally:
        worker.close()
    assert (report.stored, report.failed) == (40, 0)
    _check_retrieved(node, files, spec.study_uid)


def _indexed_ct(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path, *, slices: int, size: int, min_instances: int
) -> tuple[Node, StudySpec, list[Path]]:
    """A CT of `slices` slices in Orthanc, indexed by a node whose C-GETs of `min_instances` or more
    use its admission process."""
    spec = StudySpec(series=[(CT, "CT", slices)], rows=size, columns=size)
    files = write_study(spec, tmp_path / "ct")
    orthanc.upload(files)
    node = make_node({"main": orthanc_peer(orthanc, parallel_min_instances=min_instances)})
    node.index_peer("main", DAY, DAY)
    return node, spec, files


def _admitted_by_process(node: Node) -> list[int]:
    """Batch sizes the node's admission process admitted (None answers, i.e. fallbacks, as 0)."""
    process = node.retriever.admission
    assert process is not None
    sizes: list[int] = []
    admit = process.admit

    def recorded(peer: str, batch: list[Any]) -> Any:
        outcomes = admit(peer, batch)
        sizes.append(0 if outcomes is None else len(batch))
        return outcomes

    process.admit = recorded  # type: ignore[method-assign]
    return sizes


def test_a_large_in_process_retrieval_is_admitted_by_the_admission_process(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    """One association receives; another process checks, places, indexes and describes."""
    node, spec, files = _indexed_ct(orthanc, make_node, tmp_path, slices=40, size=64, min_instances=16)
    process = node.retriever.admission
    assert process is not None
    process.warm()  # (until it is up, a retrieval admits by itself: see the next test)
    assert process._ready is not None and process._ready.result(timeout=60)
    sizes = _admitted_by_process(node)
    seen: list[str] = []
    report = node.retriever.retrieve(spec.study_uid, on_instance=lambda a: seen.append(a.sop_uid))
    assert (report.stored, report.failed) == (40, 0) and sorted(seen) == sorted(f.stem for f in files)
    assert sum(sizes) == 40 and 0 not in sizes
    _check_retrieved(node, files, spec.study_uid)
    assert node.index.metadata_missing([h.sop_uid for h in node.index.held(spec.study_uid)]) == []


def _no_intake(settings: Any) -> Any:
    raise RuntimeError("cannot open the index")


def test_without_its_admission_process_a_retrieval_admits_by_itself(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    """The process is a speed-up: when it cannot start, the batches are admitted in-process."""
    from drimbox.dimse.admissions import AdmissionProcess

    node, spec, files = _indexed_ct(orthanc, make_node, tmp_path, slices=20, size=32, min_instances=8)
    node.retriever.admission = AdmissionProcess(node.settings, _no_intake)
    sizes = _admitted_by_process(node)
    try:
        report = node.retriever.retrieve(spec.study_uid)
    finally:
        node.retriever.admission.close()
    assert (report.stored, report.failed) == (20, 0)
    assert sizes and set(sizes) == {0}
    _check_retrieved(node, files, spec.study_uid)


def test_a_retrieval_does_not_wait_for_its_admission_process_to_start(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    """The first large retrieval starts the process and admits by itself until it is up."""
    node, spec, files = _indexed_ct(orthanc, make_node, tmp_path, slices=20, size=32, min_instances=8)
    sizes = _admitted_by_process(node)
    report = node.retriever.retrieve(spec.study_uid)
    assert (report.stored, report.failed) == (20, 0)
    assert sizes and sizes[0] == 0  # the first batch did not wait for the process's imports
    _check_retrieved(node, files, spec.study_uid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_idle_retrieval_processes_stop_and_start_again_on_the_next_retrieval(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    """The C-GET workers and the admission process (~80 MB each) do not outlive their use by
    more than `dimse.retrieval_processes_idle_minutes`; the next retrieval starts them again."""
    spec = StudySpec(series=[(CT, "CT", 12), (CT, "CT", 12)], rows=32, columns=32)
    files = write_study(spec, tmp_path / "ct")
    orthanc.upload(files)
    node = make_node({"main": orthanc_peer(orthanc, retrieve_processes=2, parallel_min_instances=8)})
    node.index_peer("main", DAY, DAY)
    pool, admission = node.retriever.pool, node.retriever.admission
    assert pool is not None and admission is not None
    assert node.retriever.stop_idle_processes(0) == []  # none started yet
    assert node.snapshot()["retrieval_processes"]["c_get_workers"] == 0
    assert node.retriever.retrieve(spec.study_uid).stored == 24  # split over the pool
    admission.warm()  # as a large in-process retrieval begins
    assert admission._ready is not None and admission._ready.result(timeout=60)
    workers = [*pool._pool()._processes, *(admission._executor._processes if admission._executor else [])]
    assert len(workers) == 3 and all(_alive(pid) for pid in workers)
    running = {"c_get_workers": 2, "admission_process": True, "stop_after_idle_minutes": 10.0}
    assert node.snapshot()["retrieval_processes"] == running

    assert node.retriever.stop_idle_processes(0) == ["c-get workers"]  # the admission is in use
    assert node.retriever.stop_idle_processes(3600) == []
    admission.done()  # that retrieval ends
    assert node.retriever.stop_idle_processes(3600) == []  # used a moment ago
    assert node.retriever.stop_idle_processes(0) == ["admission process"]
    assert not any(_alive(pid) for pid in workers)
    assert pool._executor is None and admission._executor is None
    assert node.snapshot()["retrieval_processes"] == {**running, "c_get_workers": 0, "admission_process": False}

    for path in (node.settings.store.folder / "store" / spec.study_uid).rglob("*.dcm"):
        path.unlink()
    assert node.retriever.retrieve(spec.study_uid).stored == 24  # workers started again
    assert pool._executor is not None
    _check_retrieved(node, files, spec.study_uid)
