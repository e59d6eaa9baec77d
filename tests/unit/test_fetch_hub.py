"""Fetch on demand: requests share one retrieval, and none waits forever on a stuck one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drimbox.dicomweb.fetching import RetrievalHub
from drimbox.errors import RetrieveFailed


class Source:
    """Delivers `count` files, then hangs until released when `hang` is set."""

    def __init__(self, folder: Path, count: int, hang: bool) -> None:
        self.folder, self.count, self.hang = folder, count, hang
        self.release = threading.Event()
        self.calls = 0

    def fetch_series(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        return self.fetch_study(study_uid)

    def fetch_study(self, study_uid: str) -> Iterator[Path]:
        self.calls += 1
        for n in range(self.count):
            path = self.folder / "1.2.3" / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            yield path
        if self.hang:
            self.release.wait(30)


def test_a_stuck_retrieval_ends_the_request_with_an_error_after_what_arrived(tmp_path: Path) -> None:
    source = Source(tmp_path, 2, hang=True)
    hub = RetrievalHub(source, stall_seconds=0.2)
    got: list[str] = []
    with pytest.raises(RetrieveFailed, match="nothing arrived"):
        for path in hub.follow("9.9"):
            got.append(path.name)
    source.release.set()
    assert got == ["0.dcm", "1.dcm"]


def test_requests_during_a_retrieval_share_it(tmp_path: Path) -> None:
    source = Source(tmp_path, 3, hang=True)
    hub = RetrievalHub(source, stall_seconds=5)
    first = hub.follow("9.9")
    assert next(first).name == "0.dcm"
    second = hub.follow("9.9")
    source.release.set()
    assert [p.name for p in second] == ["0.dcm", "1.dcm", "2.dcm"]
    assert [p.name for p in first] == ["1.dcm", "2.dcm"]
    assert source.calls == 1 and hub.started == 1


def test_a_study_is_fetched_whole_only_when_none_of_its_series_is_on_its_way(tmp_path: Path) -> None:
    """The choice between the whole study and series by series is made under the hub's lock:
    never a study retrieval beside a running series one (the series would come twice)."""
    source = Source(tmp_path, 2, hang=True)
    hub = RetrievalHub(source, stall_seconds=5)
    series = hub.follow("9.9", "1.2.3")
    assert next(series).name == "0.dcm"  # the series retrieval is running
    asked: list[str] = []
    assert hub.follow_study("9.9", lambda: asked.append("whole?") or True) is None
    assert asked == [] and hub.started == 1, "with a series on its way: series by series, not asked"
    source.release.set()
    assert [p.name for p in series] == ["1.dcm"]
    assert hub.follow_study("9.9", lambda: False) is None and hub.started == 1  # something held
    source.release.clear()
    whole = hub.follow_study("9.9", lambda: True)
    assert whole is not None and hub.started == 2
    assert next(whole).name == "0.dcm"
    joined = hub.follow_study("9.9", lambda: pytest.fail("a running study retrieval is joined, not judged"))
    assert joined is not None and hub.started == 2
    source.release.set()
    assert [p.name for p in joined] == ["0.dcm", "1.dcm"] and source.calls == 2
