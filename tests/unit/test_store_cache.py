"""The store as a bounded cache: least recently served files go first, pinned files never."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditEvent
from drimbox.store.cache import StoreCache
from drimbox.store.files import InstanceStore
from drimbox.store.intake import InstanceIntake
from tests.support.datasets import CT, StudySpec, write_study


class NoAudit:
    def record(self, event: AuditEvent) -> None:
        pass


def _intake(tmp_path: Path) -> InstanceIntake:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    db.upgrade(engine)
    return InstanceIntake(
        InstanceStore(tmp_path / "data"), IndexRepository(engine), NoAudit(), "http://box.test/dicom-web"
    )


def _filled(tmp_path: Path, count: int) -> tuple[IndexRepository, InstanceStore, list[str]]:
    intake = _intake(tmp_path)
    index, store = intake.index, intake.store
    uids = []
    for source in write_study(StudySpec(series=[(CT, "CT", count)], rows=64, columns=64), tmp_path / "src"):
        received = store.incoming / source.name
        received.write_bytes(source.read_bytes())
        uids.append(intake.admit(received, sender="TEST").instance.sop_uid)
    return index, store, uids


def test_unbounded_cache_never_evicts(tmp_path: Path) -> None:
    index, store, _ = _filled(tmp_path, 3)
    assert StoreCache(index, store, 0).evict() == 0
    assert len(list(store.root.rglob("*.dcm"))) == 3


def test_least_recently_served_go_first_and_pinned_stay(tmp_path: Path) -> None:
    index, store, uids = _filled(tmp_path, 6)
    size = index.bytes_held() // 6
    cache = StoreCache(index, store, max_bytes=size * 4)
    cache.served([uids[0], uids[1]])  # the oldest stored are now the most recently served
    with cache.pinned(uids[2]):
        freed = cache.evict()
    kept = {h.sop_uid for h in index.least_recently_served(10)}
    assert freed >= 2 * size and index.bytes_held() <= size * 4 * 0.9 + size
    assert {uids[0], uids[1], uids[2]} <= kept, "recently served and pinned instances stay"
    assert uids[3] not in kept
    files = {p.stem for p in store.root.rglob("*.dcm")}
    assert files == kept, "the index and the files agree after eviction"
    assert index.metadata_missing(uids) == [], "metadata stays with the index, not with the files"
    assert index.instance_uids(index.least_recently_served(1)[0].study_uid) == set(uids), "evicted stay indexed"


def test_intake_metadata_keeps_large_sequences(tmp_path: Path) -> None:
    """Values pydicom deferred at inspection (a sequence over 1 KiB) are read into the metadata."""
    import gzip
    import json

    from pydicom import Dataset, dcmread
    from pydicom.sequence import Sequence

    intake = _intake(tmp_path)
    store = intake.store
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    ds = dcmread(source)
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset() for _ in range(300)])
    for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameLabel = f"slice {number}"
    received = store.incoming / "cstore-1.dcm"
    ds.save_as(received)
    entry = intake.admit(received, sender="TEST")
    sop = entry.instance.sop_uid
    meta = json.loads(gzip.decompress(intake.index.metadata_documents([sop])[sop]))
    assert len(meta["52009230"]["Value"]) == 300
    intake.index.engine.dispose()


def test_a_pin_never_waits_for_an_eviction_s_database_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop takes pins (WADO-RS parts sent as stored): it must not stall on eviction I/O."""
    index, store, uids = _filled(tmp_path, 4)
    cache = StoreCache(index, store, max_bytes=index.bytes_held() // 2)
    writing, finish = threading.Event(), threading.Event()
    release = index.release_files

    def slow_release(sop_uids: Iterable[str]) -> None:
        chosen = list(sop_uids)
        writing.set()
        finish.wait(10)
        release(chosen)

    monkeypatch.setattr(index, "release_files", slow_release)
    evicting = threading.Thread(target=cache.evict)
    evicting.start()
    try:
        assert writing.wait(10)
        began = time.monotonic()
        with cache.pinned(uids[-1]):
            pass
        assert time.monotonic() - began < 1, "the pin waited for the eviction's write"
    finally:
        finish.set()
        evicting.join(10)
    assert index.bytes_held() <= cache.max_bytes


_PIN_ELSEWHERE = """
import sys, time
from pathlib import Path
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.store.cache import StoreCache
from drimbox.store.files import InstanceStore

folder, sop_uid, path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
index = IndexRepository(db.make_engine(f"sqlite:///{folder / 'index.db'}"))
cache = StoreCache(index, InstanceStore(folder / "data"), 0)
with cache.pinned(sop_uid, path):
    print("pinned", flush=True)
    sys.stdin.readline()
"""


def test_a_file_another_process_serves_is_not_evicted(tmp_path: Path) -> None:
    """With several HTTP processes, one may evict while another serves: the pin is a shared
    flock on the file, which the eviction sees across processes."""
    import subprocess
    import sys

    index, store, _ = _filled(tmp_path, 6)
    size = index.bytes_held() // 6
    oldest = index.least_recently_served(1)[0]
    command = [sys.executable, "-c", _PIN_ELSEWHERE, str(tmp_path), oldest.sop_uid, oldest.path]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "pinned"
        cache = StoreCache(index, store, max_bytes=size * 4)
        assert cache.evict() >= 2 * size
        kept = {h.sop_uid for h in index.least_recently_served(10)}
        assert oldest.sop_uid in kept and Path(oldest.path).is_file(), "pinned in the other process"
        assert {p.stem for p in store.root.rglob("*.dcm")} == kept
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=30) == 0
    StoreCache(index, store, max_bytes=size).evict()
    assert not Path(oldest.path).exists(), "unpinned, it goes first"


def test_a_filesystem_without_locks_still_evicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock refused (ENOLCK, as some network filesystems answer): nothing is taken for pinned
    elsewhere, the bound still holds."""
    import errno

    from drimbox.store import cache as cache_module

    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    index, store, _ = _filled(tmp_path, 6)
    size = index.bytes_held() // 6
    monkeypatch.setattr(cache_module.fcntl, "flock", no_locks)
    cache = StoreCache(index, store, max_bytes=size * 4)
    assert cache.evict() >= 2 * size
    assert len(list(store.root.rglob("*.dcm"))) <= 4
