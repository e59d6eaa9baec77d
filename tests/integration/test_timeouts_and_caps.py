"""Idle (not total) timeouts and association caps, against real peers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from drimbox.config import load_settings
from drimbox.daemon import build_node
from drimbox.dimse.contexts import VERIFICATION
from drimbox.errors import QueryFailed
from tests.conftest import BOX_AET, NodeFactory, orthanc_peer
from tests.support.datasets import CT, StudySpec, write_study
from tests.support.peers import Orthanc
from tests.support.scp import FindScp

DAY = date(2026, 11, 20)


def _with_idle_timeout(node_config: Path, seconds: float) -> Path:
    text = node_config.read_text().replace("idle_timeout = 30", f"idle_timeout = {seconds}")
    node_config.write_text(text)
    return node_config


class SilentPacs(FindScp):
    """Accepts the association and the C-FIND, then sends nothing for `silence` seconds."""

    ae_title = "SILENT"

    def __init__(self, silence: float) -> None:
        self.silence = silence
        super().__init__()

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        time.sleep(self.silence)
        yield 0x0000, None


def test_a_silent_pacs_is_given_up_after_the_idle_timeout(make_node: NodeFactory) -> None:
    pacs = SilentPacs(silence=6)
    try:
        node = make_node({"silent": pacs.peer()})
        config = _with_idle_timeout(node.config_path, 1)  # type: ignore[attr-defined]
        quick = build_node(load_settings(config))
        started = time.monotonic()
        with pytest.raises(QueryFailed):
            quick.index_peer("silent", DAY, DAY)
        assert time.monotonic() - started < 6, "three attempts of ~1 s idle each, not the PACS's 6 s silence"
        quick.close()
    finally:
        pacs.stop()


def test_a_transfer_longer_than_the_idle_timeout_completes(
    orthanc: Orthanc, make_node: NodeFactory, tmp_path: Path
) -> None:
    spec = StudySpec(series=[(CT, "CT", 400)], rows=256, columns=256)  # ~0.7-1 s at ~2 ms per instance
    orthanc.upload(write_study(spec, tmp_path / "ct"))
    node = make_node({"main": orthanc_peer(orthanc, retrieve_processes=1)})
    config = _with_idle_timeout(node.config_path, 0.3)  # type: ignore[attr-defined]
    slow = build_node(load_settings(config))
    try:
        slow.index_peer("main", DAY, DAY)
        report = slow.retriever.retrieve(spec.study_uid)
    finally:
        slow.close()
    assert report.seconds > 0.3, "the transfer must outlast the idle timeout for this test to mean anything"
    assert (report.stored, report.failed) == (400, 0)


def test_associations_beyond_the_per_peer_cap_are_aborted(make_node: NodeFactory) -> None:
    node = make_node({}, accept_from=("MODALITY", "OTHER"))
    node.scp.start()
    host, port = node.scp.address
    cap = node.settings.dimse.max_associations_per_peer
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    open_ones = [ae.associate(host, port, ae_title=BOX_AET) for _ in range(cap)]
    try:
        assert all(a.is_established for a in open_ones)
        extra = ae.associate(host, port, ae_title=BOX_AET)
        deadline = time.monotonic() + 5
        while extra.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not extra.is_established and extra.is_aborted
        other = AE(ae_title="OTHER")
        other.add_requested_context(VERIFICATION)
        another_peer = other.associate(host, port, ae_title=BOX_AET)
        assert another_peer.is_established, "the cap is per calling AE title"
        assert another_peer.send_c_echo().Status == 0x0000
        another_peer.release()
    finally:
        for assoc in open_ones:
            assoc.release()
