"""The same C-FIND / C-GET / C-MOVE checks against a second PACS implementation: DCMTK dcmqrscp.

dcmqrscp returns no NumberOfStudyRelated* counts, so indexing always descends; that must still
find exactly what it holds.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tests.conftest import BOX_AET, NodeFactory
from tests.support.datasets import CT, DBT, MG, StudySpec, elements_equal, write_study
from tests.support.peers import free_port

DAY = date(2026, 11, 20)


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, list[Path]]:
    mammo = StudySpec(patient_id="IPP00000011", series=[(MG, "MG", 4)], accession="ACC11")
    mixed = StudySpec(patient_id="IPP00000012", accession="ACC12", series=[(CT, "CT", 4), (DBT, "MG", 1)], frames=4)
    return {s.study_uid: write_study(s, tmp_path / s.accession) for s in (mammo, mixed)}


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_index_and_retrieve_from_dcmqrscp(
    method: str, studies: dict[str, list[Path]], make_node: NodeFactory, dcmqrscp_factory
) -> None:  # type: ignore[no-untyped-def]
    box_port = free_port()
    files = [p for paths in studies.values() for p in paths]
    qr = dcmqrscp_factory(files, {"drimbox": (BOX_AET, "127.0.0.1", box_port)})
    peer = {"ae_title": qr.ae_title, "host": "127.0.0.1", "port": qr.port, "retrieve": method}
    node = make_node({"qr": peer}, dimse_port=box_port)
    if method == "c-move":
        node.scp.start()

    assert node.echo("qr").reachable is True
    report = node.index_peer("qr", DAY, DAY)
    assert report.studies_seen == 2
    counts = node.index.counts()
    assert (counts.studies, counts.series, counts.instances) == (2, 3, 9)

    for study_uid, paths in studies.items():
        assert node.index.instance_uids(study_uid) == {p.stem for p in paths}
        retrieved = node.retriever.retrieve(study_uid)
        assert (retrieved.stored, retrieved.failed) == (len(paths), 0)
        held = {h.sop_uid: h.path for h in node.index.held(study_uid)}
        for original in paths:
            assert elements_equal(held[original.stem], original)
