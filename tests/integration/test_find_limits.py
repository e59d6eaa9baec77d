"""C-FIND resilience: a PACS that caps its answers, and one that drops associations mid-answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from drimbox.errors import QueryFailed
from tests.conftest import NodeFactory, orthanc_peer
from tests.support.datasets import CT, StudySpec, write_study
from tests.support.peers import Orthanc
from tests.support.scp import FindScp


@pytest.fixture
def capped_orthanc(tmp_path: Path, shim: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "capped", shim, extra={"LimitFindResults": 2}).start()
    yield server
    server.stop()


def test_capped_answers_are_split_until_complete(
    capped_orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    days = ["20261101", "20261105", "20261105", "20261105", "20261105", "20261118"]
    studies = [
        StudySpec(
            patient_id=f"IPP{n:08d}",
            study_date=day,
            accession=f"ACC{n}",
            series=[(CT, "CT", 1)],
            study_time=f"{8 + n:02d}1500",
        )
        for n, day in enumerate(days)
    ]
    for spec in studies:
        capped_orthanc.upload(write_study(spec, tmp_path / spec.accession))
    # no max_find_matches configured: Orthanc's own "capped" status (0xFE00) is enough to split
    node = make_node({"main": orthanc_peer(capped_orthanc)})
    report = node.index_peer("main", date(2026, 11, 1), date(2026, 11, 30))
    assert report.studies_seen == 6
    assert report.stats.splits > 0
    assert node.index.counts().studies == 6
    assert report.stats.truncated == 0


class FlakyPacs(FindScp):
    """A C-FIND SCP that drops the association in the middle of its first answers."""

    ae_title = "FLAKY"

    def __init__(self, studies: list[Dataset], drops: int) -> None:
        self.studies = studies
        self.drops_left = drops
        super().__init__()

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        level = event.identifier.QueryRetrieveLevel
        matches = self.studies if level == "STUDY" else []
        for number, match in enumerate(matches):
            if self.drops_left and number == 1:
                self.drops_left -= 1
                event.assoc.abort()
                return
            yield 0xFF00, match


def test_association_dropped_mid_answer_is_retried(make_node: NodeFactory) -> None:
    studies = []
    for n in range(3):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = f"1.2.826.0.1.{n + 1}"
        ds.PatientID = f"IPP{n}"
        ds.StudyDate = "20261120"
        studies.append(ds)
    pacs = FlakyPacs(studies, drops=2)
    try:
        node = make_node({"flaky": pacs.peer()})
        report = node.index_peer("flaky", date(2026, 11, 20), date(2026, 11, 20))
    finally:
        pacs.stop()
    assert report.stats.retries == 2
    assert report.studies_seen == 3
    assert node.index.counts().studies == 3


def test_association_dropped_every_time_fails_with_a_clear_error(make_node: NodeFactory) -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.826.0.1.9"
    pacs = FlakyPacs([ds, ds], drops=10)
    try:
        node = make_node({"flaky": pacs.peer()})
        with pytest.raises(QueryFailed, match="association lost during C-FIND at STUDY level"):
            node.index_peer("flaky", date(2026, 11, 20), date(2026, 11, 20))
    finally:
        pacs.stop()
    assert node.index.counts().studies == 0
