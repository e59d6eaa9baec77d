"""Indexing a PACS that caps its C-FIND answers (Orthanc's LimitFindResults): nothing is missed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tests.conftest import NodeFactory, orthanc_peer
from tests.support.datasets import CT, StudySpec, write_study
from tests.support.peers import Orthanc


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
