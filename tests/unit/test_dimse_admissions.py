"""A C-GET's instances admitted behind the association (drimbox/dimse/admissions.py), on a real store and index."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread

from drimbox.dimse.admissions import Admissions
from drimbox.dimse.storage import Admitted
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditEvent
from drimbox.store.files import InstanceStore
from drimbox.store.intake import InstanceIntake
from tests.support.datasets import CT, StudySpec, write_study


class _Trail:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[InstanceIntake]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    db.upgrade(engine)
    yield InstanceIntake(InstanceStore(tmp_path / "data"), IndexRepository(engine), _Trail(), "https://box/dicom-web")
    engine.dispose()


def _received(intake: InstanceIntake, source: Path, sop_uid: str | None = None, name: str = "") -> Any:
    """A C-STORE event as pynetdicom hands it over: the data set already in a file of incoming/."""
    ds = dcmread(source, stop_before_pixels=True)
    path = intake.store.incoming / f"cstore-{name or source.stem}.dcm"
    shutil.copyfile(source, path)
    request = SimpleNamespace(AffectedSOPInstanceUID=sop_uid or ds.SOPInstanceUID, AffectedSOPClassUID=ds.SOPClassUID)
    acceptor = SimpleNamespace(ae_title="ORTHANC")
    dul = SimpleNamespace(_idle_timer=SimpleNamespace(restart=lambda: None))
    return SimpleNamespace(request=request, dataset_path=path, assoc=SimpleNamespace(acceptor=acceptor, dul=dul))


def test_instances_are_admitted_in_order_after_the_answer(intake: InstanceIntake, tmp_path: Path) -> None:
    sources = write_study(StudySpec(series=[(CT, "CT", 5)]), tmp_path / "src")
    admitted: list[Admitted] = []
    with Admissions(intake, "pacs", admitted.append) as admissions:
        statuses = [admissions.handle(_received(intake, source)) for source in sources]
    assert statuses == [0x0000] * 5
    assert [a.sop_uid for a in admitted] == [p.stem for p in sources]
    for item in admitted:
        assert Path(item.path).read_bytes() == (tmp_path / "src" / f"{item.sop_uid}.dcm").read_bytes()
    assert intake.index.metadata_missing([a.sop_uid for a in admitted]) == []
    assert admissions.failures == []
    assert intake.index.counts().instances == 5
    assert list(intake.store.incoming.iterdir()) == []


def test_a_refused_instance_is_a_failure_of_the_retrieval(intake: InstanceIntake, tmp_path: Path) -> None:
    """Told "success" already, the PACS cannot count it: the retrieval's own report does."""
    good, truncated, other = write_study(StudySpec(series=[(CT, "CT", 3)], rows=64, columns=64), tmp_path / "src")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    admitted: list[Admitted] = []
    with Admissions(intake, "pacs", admitted.append) as admissions:
        admissions.handle(_received(intake, good))
        admissions.handle(_received(intake, truncated))
        admissions.handle(_received(intake, other, sop_uid="1.2.3.4.5", name="mismatch"))
    assert [a.sop_uid for a in admitted] == [good.stem]
    assert len(admissions.failures) == 2
    assert admissions.failures[0].startswith(f"{truncated.stem}: ") and "truncated" in admissions.failures[0]
    assert admissions.failures[1].startswith("1.2.3.4.5: ") and "differs" in admissions.failures[1]
    assert intake.index.counts().instances == 1
    assert list(intake.store.incoming.iterdir()) == []  # nothing half-admitted left behind


def test_a_failing_listener_does_not_stop_the_queue(intake: InstanceIntake, tmp_path: Path) -> None:
    sources = write_study(StudySpec(series=[(CT, "CT", 3)]), tmp_path / "src")
    seen: list[str] = []

    def listener(item: Admitted) -> None:
        seen.append(item.sop_uid)
        if len(seen) == 1:
            raise RuntimeError("reader gone")

    with Admissions(intake, "pacs", listener) as admissions:
        for source in sources:
            admissions.handle(_received(intake, source))
    assert seen == [p.stem for p in sources]
    assert admissions.failures == [f"{sources[0].stem}: RuntimeError: reader gone"]


def test_records_are_reused_only_for_the_same_bytes(intake: InstanceIntake, tmp_path: Path) -> None:
    """The study and series records of a series' next instances come from a memo keyed by bytes."""
    from drimbox.store.intake import _entry

    first, second, third = write_study(StudySpec(series=[(CT, "CT", 3)], rows=32, columns=48), tmp_path / "src")
    ds = dcmread(third)
    ds.PatientName = "MARTIN^Zoé"
    ds.Rows, ds.NumberOfFrames = 16, 2  # (same pixel bytes: 2 frames of 16 × 48)
    ds.save_as(third)
    entries = [_entry(intake.store.inspect(path), tmp_path / "x.dcm") for path in (first, second, third)]
    assert entries[1].study is entries[0].study and entries[1].series is entries[0].series
    assert entries[2].study is not entries[0].study and entries[2].series is entries[0].series
    assert entries[2].study.patient.name == "MARTIN^Zoé" and entries[0].study.patient.name == "DUPRÉ^Hélène"
    assert [e.instance.sop_uid for e in entries] == [first.stem, second.stem, third.stem]
    shapes = [(e.instance.rows, e.instance.columns, e.instance.number_of_frames) for e in entries]
    assert shapes == [(32, 48, None), (32, 48, None), (16, 48, 2)]
    assert [e.instance.instance_number for e in entries] == [1, 2, 3]


def test_a_batch_the_index_refuses_leaves_no_file(
    intake: InstanceIntake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Placed and indexed together, or none of the new files stays (nor the received ones)."""
    sources = write_study(StudySpec(series=[(CT, "CT", 4)]), tmp_path / "src")

    def refused(*_args: Any) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(intake.index, "record_stored_many", refused)
    admitted: list[Admitted] = []
    with Admissions(intake, "pacs", admitted.append) as admissions:
        for source in sources:
            admissions.handle(_received(intake, source))
    assert admitted == [] and len(admissions.failures) == 4
    assert all("database is locked" in failure for failure in admissions.failures)
    assert list(intake.store.root.rglob("*.dcm")) == [] and list(intake.store.incoming.iterdir()) == []


def test_a_small_file_read_whole_still_defers_its_pixels(intake: InstanceIntake, tmp_path: Path) -> None:
    """Parsed in memory, the pixel data stays deferred and is read from the file when asked for."""
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=128, columns=128), tmp_path / "src")
    inspected = intake.store.inspect(source)
    raw = inspected.elements[0x7FE00010]
    assert raw.value is None  # deferred, not in memory
    assert inspected.dataset.PixelData == dcmread(source).PixelData


def test_a_full_queue_keeps_the_association_from_idling(intake: InstanceIntake, tmp_path: Path) -> None:
    """While a C-STORE waits for room in the queue (admission slower than the PACS), the
    association's idle timer is restarted: it is we who are slow, not the PACS."""
    import threading

    sources = write_study(StudySpec(series=[(CT, "CT", 3)]), tmp_path / "src")
    restarts: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def slow_listener(_item: Admitted) -> None:
        entered.set()
        release.wait(5)

    admissions = Admissions(intake, "pacs", slow_listener, depth=1)
    with admissions:
        events = [_received(intake, source) for source in sources]
        for event in events:
            event.assoc.dul._idle_timer.restart = lambda: restarts.append(1)
        admissions.handle(events[0])  # taken by the admitting thread, which then waits in the listener
        assert entered.wait(5)
        admissions.handle(events[1])  # fills the queue
        waiter = threading.Thread(target=admissions.handle, args=(events[2],))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and len(restarts) >= 3  # blocked, telling its association every 0.1 s
        release.set()
        waiter.join(5)
    assert admissions.failures == []


def test_an_unexpected_error_never_stops_the_queue(
    intake: InstanceIntake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its only reader dying would leave the reactor waiting forever for room in the queue."""
    from drimbox.dimse import admissions as module

    def broken(*_args: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(module, "admit_batch", broken)
    sources = write_study(StudySpec(series=[(CT, "CT", 5)]), tmp_path / "src")
    with Admissions(intake, "pacs", lambda _a: None, depth=1) as admissions:
        for source in sources:
            admissions.handle(_received(intake, source))
    assert len(admissions.failures) == 5 and all("Read-only" in f for f in admissions.failures)
    assert list(intake.store.incoming.iterdir()) == []


def test_instances_arriving_close_together_share_a_batch(
    intake: InstanceIntake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction (and one exchange with the admission process) for a run of small instances,
    a batch of its own for one that comes after a pause, and the end of the retrieval closes the
    batch being gathered at once rather than after the gathering time."""
    from drimbox.dimse import admissions as module

    monkeypatch.setattr(module, "_NEXT", 0.5)
    monkeypatch.setattr(module, "_GATHER", 30.0)
    sizes: list[int] = []
    place = intake.place

    def counted(batch: Any, **kwargs: Any) -> Any:
        sizes.append(len(batch))
        return place(batch, **kwargs)

    monkeypatch.setattr(intake, "place", counted)
    sources = write_study(StudySpec(series=[(CT, "CT", 6)], rows=64, columns=64), tmp_path / "src")
    admitted: list[Admitted] = []
    with Admissions(intake, "pacs", admitted.append) as admissions:
        for source in sources[:4]:
            admissions.handle(_received(intake, source))
        time.sleep(1.5)  # longer than _NEXT: the run of four is admitted meanwhile
        assert sizes == [4] and len(admitted) == 4
        started = time.monotonic()
        for source in sources[4:]:
            admissions.handle(_received(intake, source))
    assert time.monotonic() - started < 10, "the end of the retrieval did not wait for _GATHER"
    assert sizes == [4, 2] and [a.sop_uid for a in admitted] == [p.stem for p in sources]
    assert admissions.failures == []


class _Process:
    """An AdmissionProcess stand-in that counts its users."""

    def __init__(self, fails: bool) -> None:
        self.fails, self.users = fails, 0

    def warm(self) -> None:
        self.users += 1
        if self.fails:
            raise OSError("too many open files")

    def done(self) -> None:
        self.users -= 1


@pytest.mark.parametrize("fails", [False, True])
def test_a_retrieval_is_a_user_of_the_admission_process_until_it_ends(intake: InstanceIntake, fails: bool) -> None:
    """Even when starting the process fails: else it would count as in use forever, never stopped as idle."""
    process = _Process(fails)
    admissions = Admissions(intake, "main", lambda _: None, process)  # type: ignore[arg-type]
    if fails:
        with pytest.raises(OSError), admissions:
            pass
    else:
        with admissions:
            assert process.users == 1
    assert process.users == 0


def test_a_split_retrieval_that_fails_still_counts_as_a_use_of_the_pool() -> None:
    """The idle clock restarts at the end of every retrieval, failed or not."""
    from drimbox.dimse.parallel import WorkerPool
    from drimbox.dimse.retrieve import RetrieveReport

    pool = WorkerPool(SimpleNamespace(), lambda settings: None, 2)  # type: ignore[arg-type]
    before = pool._last_used

    def failing(*_args: Any) -> None:
        raise RuntimeError("a listener failed")

    pool._run_parts = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        pool.run("main", "1.2.3", [], RetrieveReport("1.2.3", None, "c-get"), lambda _: None)
    assert pool._last_used > before
