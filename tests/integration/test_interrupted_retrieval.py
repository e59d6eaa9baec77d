"""Killing drimbox during a retrieval leaves no partial instance visible; a restart resumes cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from drimbox.config import load_settings
from drimbox.daemon import build_node
from tests.conftest import NodeFactory, orthanc_peer
from tests.support.datasets import CT, StudySpec, write_study
from tests.support.peers import Orthanc

DAY = date(2026, 11, 20)


def test_kill_during_cget_then_resume(orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path) -> None:
    spec = StudySpec(series=[(CT, "CT", 60)], rows=256, columns=256)
    files = write_study(spec, tmp_path / "ct")
    orthanc.upload(files)
    node = make_node({"main": orthanc_peer(orthanc)})
    node.index_peer("main", DAY, DAY)
    config = node.config_path  # type: ignore[attr-defined]
    store_root = node.store.root

    child = subprocess.Popen(
        [sys.executable, "-m", "drimbox.cli", "--config", str(config), "retrieve", spec.study_uid],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(store_root.rglob("*.dcm"))) < 5:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    time.sleep(1)  # retrieval workers notice their parent is gone within 0.2 s and exit
    placed = list(store_root.rglob("*.dcm"))
    time.sleep(1)
    assert list(store_root.rglob("*.dcm")) == placed, "nothing may keep retrieving after the kill"
    assert 5 <= len(placed) < 60, "the kill must land in the middle of the retrieval"

    # Every file visible in the store is a complete instance, and every indexed file exists.
    restarted = build_node(load_settings(config))
    for path in placed:
        restarted.store.inspect(path)
    for held in restarted.index.held(spec.study_uid):
        assert Path(held.path).is_file()
    assert not [p for p in store_root.rglob("*") if p.is_file() and not p.name.endswith((".dcm", ".meta.gz"))]

    # A restart clears the interrupted transfer and the retrieval completes.
    restarted.store.clean_incoming()
    report = restarted.retriever.retrieve(spec.study_uid)
    assert report.failed == 0
    assert {h.sop_uid for h in restarted.index.held(spec.study_uid)} == {f.stem for f in files}
    assert list(restarted.store.incoming.iterdir()) == []
    restarted.index.engine.dispose()
