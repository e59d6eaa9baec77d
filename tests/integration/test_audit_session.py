"""A scripted session on real parts (Orthanc, sandbox DMP over mutual TLS, MLLP, HTTP, a syslog
collector over TLS): publish a report, three retrievals, two refusals. The audit trail holds exactly
those accesses, the collector received every record as a valid PS3.15 message, a collector outage
loses nothing, and changing a stored record makes `drimbox audit verify` fail."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from drimbox.config import load_settings
from drimbox.daemon import Daemon, build_app
from drimbox.kos.parse import read_manifest
from drimbox.publish.outbox import State
from drimbox.sandbox.http import serve_in_thread
from drimbox.sandbox.pki import PkiFiles
from drimbox.sandbox.syslog import SyslogCollector
from tests.integration.test_cli_and_status import drimbox
from tests.integration.test_dicomweb_orthanc import TOKEN, OneTokenVerifier
from tests.support.datasets import CT, StudySpec, write_study
from tests.support.peers import Orthanc
from tests.support.publication import (
    ACCESSION,
    STUDY_UID,
    ack_code,
    box_config,
    kos_entries,
    make_pki,
    message,
    send,
    start_dmp,
    wait_for,
)

SCHEMA = Path(__file__).parents[1] / "fixtures" / "dicom-audit" / "dicom2024d.xsd"
INS = "279035121518989"
PROFESSIONAL = "810000000001"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def collector(pki: PkiFiles) -> Iterator[SyslogCollector]:
    server = SyslogCollector(pki.server_cert, pki.server_key, schema=SCHEMA).start()
    yield server
    server.stop()


def test_scripted_session_is_audited_exported_and_tamper_evident(
    tmp_path: Path, orthanc: Orthanc, pki: PkiFiles, collector: SyslogCollector
) -> None:
    dmp = start_dmp(tmp_path / "dmp", pki)
    spec = StudySpec(study_uid=STUDY_UID, accession=ACCESSION, series=[(CT, "CT", 3)])
    files = write_study(spec, tmp_path / "study")
    orthanc.upload(files)
    audit = "\n".join([
        "[audit]", 'syslog_host = "127.0.0.1"', f"syslog_port = {collector.port}", f'syslog_ca = "{pki.ca_bundle}"',
        "export_retry_seconds = 0.1",
    ])  # fmt: skip
    config = box_config(tmp_path / "box", orthanc, dmp, pki, extra=audit)
    daemon = Daemon(load_settings(config), index_at_start=False)
    daemon.start_background()
    http = serve_in_thread(build_app(daemon.node, OneTokenVerifier()))
    trail = daemon.node.audit
    try:
        # 1. Publication
        assert ack_code(send(daemon.publishing.mllp.address[1], message("mdm-t02-imaging-report-initial.er7"))) == "AA"
        outbox = daemon.node.outbox
        wait_for(lambda: bool(outbox.list()) and outbox.list()[0].state == State.PUBLISHED, what="publication")
        kos = read_manifest(kos_entries(dmp)[0].document).sop_instance_uid
        published = trail.query(action="kos.", newest_first=False)
        assert [(r.action, r.outcome, r.patient_id, r.study_uid) for r in published] == [
            ("kos.publish", "success", INS, STUDY_UID)
        ]
        [received] = trail.query(action="report.received")
        assert received.outcome == "success" and received.patient_id == INS
        daemon.node.index_peer("main", full=True)
        before = trail.head()[0]

        # 2. Three retrievals, two refusals
        base = f"http://127.0.0.1:{http.port}/dicom-web/studies/{STUDY_UID}"
        first = dcmread(files[0])
        series, sop = first.SeriesInstanceUID, first.SOPInstanceUID
        good = {"Authorization": f"Bearer {TOKEN}", "KOS-SOPInstanceUID": kos}
        dicom = good | {"Accept": "multipart/related; type=application/dicom"}
        with httpx.Client(timeout=60) as client:
            answers = [
                client.get(f"{base}/metadata", headers=good),
                client.get(f"{base}/series/{series}", headers=dicom),
                client.get(f"{base}/series/{series}/instances/{sop}", headers=dicom),
                client.get(f"{base}/metadata", headers=good | {"Authorization": "Bearer not-a-valid-token"}),
                client.get(f"{base}/metadata", headers=good | {"KOS-SOPInstanceUID": "1.2.3.4.5"}),
            ]  # fmt: skip
        assert [a.status_code for a in answers] == [200, 200, 200, 401, 404]
        sizes = [a.num_bytes_downloaded for a in answers[:3]]  # on the wire (metadata is gzipped)

        web = [r for r in trail.records_after(before, 1000) if r.action.startswith("dicomweb.")]
        assert [(r.action, r.outcome, r.actor, r.patient_id, r.study_uid, r.detail["status"]) for r in web] == [
            ("dicomweb.metadata", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.completed", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.retrieve", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.completed", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.retrieve", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.completed", "success", PROFESSIONAL, INS, STUDY_UID, 200),
            ("dicomweb.access", "failure", "unauthenticated", "", STUDY_UID, 401),
            ("dicomweb.access", "failure", PROFESSIONAL, "", STUDY_UID, 404),
        ]
        assert [r.detail["bytes"] for r in web if r.action == "dicomweb.completed"] == sizes
        assert web[2].detail["series_uid"] == series and web[4].detail["sop_uid"] == sop
        assert web[6].detail["reason"] == "inactive token"
        assert web[7].detail["reason"] == "KOS does not open this study"
        assert all(r.peer.startswith("127.0.0.1:") for r in web)
        [pulled] = trail.query(action="study.retrieved")
        assert pulled.outcome == "success" and pulled.actor == "main"

        # 3. Every record reached the collector, valid, in order
        head = trail.head()[0]
        received_all = collector.wait_for(head, timeout=30)
        assert collector.problems() == []
        assert len(received_all) == head

        # 4. The collector goes down: records wait in the database, then all arrive, none lost
        collector.stop()
        with httpx.Client(timeout=60) as client:
            assert client.get(f"{base}/metadata", headers=good).status_code == 200
        wait_for(lambda: daemon.exporter is not None and daemon.exporter.status()["backlog"] >= 2, what="backlog")
        collector.start()
        new_head = trail.head()[0]
        everything = collector.wait_for(new_head, timeout=30)
        assert collector.problems() == []
        ids = [entry.xml() for entry in everything]
        assert len(ids) >= new_head
    finally:
        http.stop()
        daemon.stop()
        dmp.stop()

    # 5. Tampering is detected by the operator's command
    verified = drimbox("--config", str(config), "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    with sqlite3.connect(tmp_path / "box" / "data" / "drimbox.db") as database:
        database.execute("UPDATE audit_record SET actor = 'nobody' WHERE action = 'dicomweb.retrieve'")
    broken = drimbox("--config", str(config), "audit", "verify")
    assert broken.returncode == 1 and "altered" in broken.stderr
