"""Our C-STORE SCP: real pushers (DCMTK storescu, pynetdicom), and hostile input that must be refused cleanly."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts, _config

from drimbox.daemon import Node
from tests.conftest import BOX_AET, NodeFactory
from tests.support.datasets import CT, DBT, StudySpec, elements_equal, write_study


@pytest.fixture
def box(make_node: NodeFactory) -> Iterator[Node]:
    node = make_node({}, accept_from=("PUSHER", "STORESCU"))
    node.scp.start()
    yield node


def _send_raw(node: Node, path: Path) -> int:
    """C-STORE `path` byte for byte (no decoding on our side), as a hostile or broken modality would."""
    ae = AE(ae_title="PUSHER")
    ae.requested_contexts = StoragePresentationContexts
    host, port = node.scp.address
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(host, port, ae_title=BOX_AET)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return int(status.Status)


def _echo(node: Node) -> int:
    ae = AE(ae_title="PUSHER")
    ae.add_requested_context("1.2.840.10008.1.1")
    host, port = node.scp.address
    assoc = ae.associate(host, port, ae_title=BOX_AET)
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def _nothing_kept(node: Node) -> None:
    assert node.index.counts().instances == 0
    assert [p for p in node.store.root.rglob("*") if p.is_file()] == []
    assert list(node.store.incoming.iterdir()) == []


def test_storescu_pushes_a_tomosynthesis_object(box: Node, tmp_path: Path) -> None:
    spec = StudySpec(series=[(DBT, "MG", 1)], frames=12, rows=128, columns=96)
    [path] = write_study(spec, tmp_path / "dbt")
    host, port = box.scp.address
    result = subprocess.run(
        ["storescu", "--required", "-aec", BOX_AET, host, str(port), str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    [held] = box.index.held(spec.study_uid)
    assert held.sop_class_uid == DBT
    assert elements_equal(held.path, path)
    assert dcmread(held.path).NumberOfFrames == 12


def test_truncated_instance_is_refused_and_nothing_is_kept(box: Node, tmp_path: Path) -> None:
    [path] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=64, columns=64), tmp_path / "ct")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    assert _send_raw(box, path) == 0xC000
    _nothing_kept(box)
    assert _echo(box) == 0x0000


def test_garbage_data_set_is_refused(box: Node, tmp_path: Path) -> None:
    [path] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "ct")
    ds = dcmread(path)
    header_end = len(path.read_bytes()) - len(ds.PixelData) - 200
    data = bytearray(path.read_bytes())
    data[header_end - 300 : header_end] = b"\xff" * 300
    path.write_bytes(bytes(data))
    assert _send_raw(box, path) == 0xC000
    _nothing_kept(box)
    assert _echo(box) == 0x0000


def test_instance_contradicting_its_request_is_refused(box: Node, tmp_path: Path) -> None:
    [path] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "ct")
    ds = dcmread(path)
    announced = ds.file_meta.MediaStorageSOPInstanceUID  # the C-STORE request carries this one
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.save_as(path, enforce_file_format=False)
    assert dcmread(path).file_meta.MediaStorageSOPInstanceUID == announced
    assert _send_raw(box, path) == 0xA900
    _nothing_kept(box)


def test_malformed_uid_is_refused(box: Node, tmp_path: Path) -> None:
    [path] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "ct")
    ds = dcmread(path)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.StudyInstanceUID = "1.2.abc/../../etc"
        ds.save_as(path, enforce_file_format=True)
    assert _send_raw(box, path) == 0xC000
    _nothing_kept(box)
    assert _echo(box) == 0x0000


def test_each_stored_instance_leaves_an_audit_record(box: Node, tmp_path: Path) -> None:
    spec = StudySpec(series=[(CT, "CT", 2)])
    for path in write_study(spec, tmp_path / "ct"):
        assert _send_raw(box, path) == 0x0000
    [bad] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "bad")
    bad.write_bytes(bad.read_bytes()[:-500])
    assert _send_raw(box, bad) == 0xC000
    records = [r.as_dict() for r in box.audit.query(limit=1000, newest_first=False)]
    stored = [r for r in records if r["action"] == "instance.stored"]
    assert [(r["actor"], r["outcome"], r["study_uid"]) for r in stored] == [
        ("PUSHER", "success", spec.study_uid),
        ("PUSHER", "success", spec.study_uid),
        ("PUSHER", "failure", ""),
    ]
    assert stored[0]["patient_id"] == "IPP00000001"


def test_unknown_callers_are_refused(make_node: NodeFactory, tmp_path: Path) -> None:
    # A PACS peer's AE title calling from another address than the configured one: aborted.
    node = make_node({"pacs": {"ae_title": "PACS", "host": "127.0.0.2", "port": 104}}, accept_from=("PUSHER",))
    node.scp.start()
    host, port = node.scp.address
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context("1.2.840.10008.1.1")
    refused = stranger.associate(host, port, ae_title=BOX_AET)
    assert refused.is_rejected
    impostor = AE(ae_title="PACS")
    impostor.add_requested_context("1.2.840.10008.1.1")
    assoc = impostor.associate(host, port, ae_title=BOX_AET)
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    records = [r.as_dict() for r in node.audit.query(limit=1000, newest_first=False)]
    assert [(r["action"], r["actor"], r["outcome"]) for r in records] == [("association.refused", "PACS", "failure")]


def test_a_header_announcing_a_huge_pdu_costs_no_memory(box: Node) -> None:
    import resource
    import socket

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host, port = box.scp.address
    for _ in range(4):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"\x01\x00\xff\xff\xff\xf0" + b"\x00" * 64)  # A-ASSOCIATE-RQ of "4 GiB"
            time.sleep(0.2)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 200 * 1024, f"peak RSS grew by {(after - before) // 1024} MB"
    assert _echo(box) == 0x0000
