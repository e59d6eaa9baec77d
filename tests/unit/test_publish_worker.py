"""The publication core end to end in one process: inbox → outbox → worker → DMP port.

The PACS and the DMP are in-memory doubles here (the integration tests use Orthanc and the
sandbox DMP); what is checked is the state machine: waiting for images, retries with backoff,
definitive refusals, no double submission after a crash, replacement and deletion order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.config import Hl7Settings, PublicationSettings
from drimbox.errors import DmpRefused, DmpUnavailable
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.kos.parse import read_manifest
from drimbox.kos.rejection import Rejection
from drimbox.publish.assembly import PacsInstance, PacsSeries, PacsStudy
from drimbox.publish.inbox import PublicationInbox
from drimbox.publish.iocm import RejectionHandler
from drimbox.publish.outbox import Outbox, State
from drimbox.publish.submission import DmpEntry, DmpIssue, Submission, Withdrawal
from drimbox.publish.worker import APPROVED, DELETED, PublicationWorker, WorkerSettings
from drimbox.report.cda import read_report
from drimbox.report.message import PatientIdentifier, ReportAction, ReportMessage
from drimbox.report.model import TEST_INS_ROOTS, Identifier, Report

FIXTURES = Path(__file__).parent.parent / "fixtures"
CDA = (FIXTURES / "drim-m" / "cda-imaging-report-example.xml").read_bytes()
REPORT = read_report(CDA)
STUDY = REPORT.studies[0].study_uid
CT = "1.2.840.10008.5.1.4.1.1.2"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Catalog:
    """The PACS: the test decides what it holds."""

    def __init__(self) -> None:
        self.studies: dict[str, PacsStudy] = {}

    def study(self, study_uid: str) -> PacsStudy | None:
        return self.studies.get(study_uid)

    def hold(self, instances: int = 3, accession: str | None = None) -> PacsStudy:
        assert REPORT.accession is not None and REPORT.patient.ipp is not None
        instances_ = tuple(PacsInstance(CT, f"1.2.3.1.{n}", n) for n in range(1, instances + 1))
        study = PacsStudy(
            STUDY,
            (PacsSeries("1.2.3.1", instances_, "CT", "Crâne", 1),),
            patient_id=REPORT.patient.ipp.extension,
            accession_number=REPORT.accession.extension if accession is None else accession,
        )
        self.studies[STUDY] = study
        return study


@dataclass
class Dmp:
    """A registry that remembers entries; each call pops a scripted fault first, if any."""

    entries: dict[str, DmpEntry] = field(default_factory=dict)
    provided: list[Submission] = field(default_factory=list)
    withdrawn: list[Withdrawal] = field(default_factory=list)
    faults: list[Exception] = field(default_factory=list)
    crash_after_provide: bool = False

    def _fault(self) -> None:
        if self.faults:
            raise self.faults.pop(0)

    def provide(self, submission: Submission) -> None:
        self._fault()
        self.provided.append(submission)
        uid = submission.manifest.sop_instance_uid
        self.entries[uid] = DmpEntry(f"urn:uuid:entry-{len(self.provided)}", uid, APPROVED)
        if submission.replaces:
            for key, entry in self.entries.items():
                if entry.entry_uuid == submission.replaces:
                    self.entries[key] = DmpEntry(
                        entry.entry_uuid, key, "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
                    )
        if self.crash_after_provide:
            raise SystemExit("killed after the DMP answered")

    def find_entry(self, patient_ins: Identifier, unique_id: str, report: Report) -> DmpEntry | None:
        self._fault()
        return self.entries.get(unique_id)

    def withdraw(self, withdrawal: Withdrawal) -> None:
        self._fault()
        self.withdrawn.append(withdrawal)
        for key, entry in self.entries.items():
            if entry.entry_uuid == withdrawal.entry_uuid:
                self.entries[key] = DmpEntry(entry.entry_uuid, key, DELETED)


class Box:
    def __init__(self, folder: Path) -> None:
        engine = db.make_engine(f"sqlite:///{folder / 'index.db'}")
        db.upgrade(engine)
        self.index = IndexRepository(engine)
        self.clock = Clock()
        self.outbox = Outbox(engine, clock=self.clock)
        self.catalog = Catalog()
        self.dmp = Dmp()
        self.audit: list[object] = []
        settings = PublicationSettings(ins_roots=list(TEST_INS_ROOTS))
        self.inbox = PublicationInbox(self.outbox, Hl7Settings(), settings, self)
        self.worker = self.new_worker()

    def record(self, event: object) -> None:
        self.audit.append(event)

    def new_worker(self) -> PublicationWorker:
        settings = WorkerSettings(
            wado_prefix="https://db1.example.fr/dicom-web",
            institution_name="Test site",
            wait_for_images=timedelta(hours=24),
            images_retry=timedelta(minutes=5),
            retry_base=timedelta(seconds=30),
            retry_max=timedelta(hours=1),
            give_up=timedelta(hours=72),
        )
        return PublicationWorker(self.outbox, self.catalog, self.dmp, self.index, self, settings)

    def send(self, action: ReportAction = ReportAction.PUBLISH, **changes: object) -> int:
        fields: dict[str, object] = {
            "control_id": "MSG1",
            "message_type": "MDM^T02^MDM_T02",
            "event": "T02",
            "version": "2.6",
            "action": action,
            "document": CDA,
            "document_type": "18748-4",
            "identity_reliability": "VALI",
            "patient_ids": (
                PatientIdentifier(REPORT.patient.ins.extension, "ASIP-SANTE-INS-NIR", REPORT.patient.ins.root, "INS"),
            ),
            "flags": {"DESTDMP": "Y"},
        }
        fields.update(changes)
        acceptance = self.inbox.accept(ReportMessage(**fields))  # type: ignore[arg-type]
        assert acceptance.code == "AA", acceptance
        return acceptance.publications[0]

    def state(self, publication_id: int) -> str:
        return self.outbox.load(publication_id).state


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_a_report_is_published_once_with_a_kos_pointing_at_our_wado(box: Box) -> None:
    box.catalog.hold(instances=3)
    pid = box.send()
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED
    [submission] = box.dmp.provided
    manifest = read_manifest(submission.kos)
    assert manifest.patient.ins == REPORT.patient.ins.extension
    assert [s.retrieve_url for s in manifest.series] == [
        f"https://db1.example.fr/dicom-web/studies/{STUDY}/series/1.2.3.1"
    ]
    assert manifest.instance_count == 3
    assert box.index.study_of_kos(manifest.sop_instance_uid) == STUDY
    box.worker.run_once()
    assert len(box.dmp.provided) == 1


def test_publication_waits_for_images_then_completes(box: Box) -> None:
    pid = box.send()
    box.worker.run_once()
    view = box.outbox.load(pid)
    assert view.state == State.WAITING and "not in the PACS" in view.reason
    box.catalog.hold()
    box.worker.run_once()
    assert box.state(pid) == State.WAITING, "not due before images_retry"
    box.clock.advance(minutes=6)
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED


def test_accession_mismatch_keeps_it_waiting_and_gives_up_after_the_window(box: Box) -> None:
    box.catalog.hold(accession="OTHER")
    pid = box.send()
    box.worker.run_once()
    assert "accession number differs" in box.outbox.load(pid).reason
    box.clock.advance(hours=25)
    box.worker.run_once()
    view = box.outbox.load(pid)
    assert view.state == State.FAILED and "gave up waiting" in view.reason
    assert box.dmp.provided == []


def test_network_errors_retry_with_growing_delays_and_send_once(box: Box) -> None:
    box.catalog.hold()
    box.dmp.faults = [DmpUnavailable("connection refused"), DmpUnavailable("HTTP 503")]
    pid = box.send()
    box.worker.run_once()
    first = box.outbox.load(pid)
    assert first.state == State.READY and first.next_attempt_at - box.clock.now == timedelta(seconds=30)
    box.clock.advance(seconds=31)
    box.worker.run_once()
    second = box.outbox.load(pid)
    assert second.next_attempt_at - box.clock.now == timedelta(seconds=60)
    box.clock.advance(seconds=61)
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED
    assert len(box.dmp.provided) == 1 and box.outbox.load(pid).attempts == 3


def test_a_failure_answer_is_final_and_keeps_the_dmp_codes(box: Box) -> None:
    box.catalog.hold()
    box.dmp.faults = [DmpRefused("Failure", (DmpIssue("XDSPatientIdDoesNotMatch", "patient ids differ"),))]
    pid = box.send()
    box.worker.run_once()
    view = box.outbox.load(pid)
    assert view.state == State.REFUSED
    assert view.dmp_issues[0]["code"] == "XDSPatientIdDoesNotMatch"
    box.clock.advance(hours=1)
    box.worker.run_once()
    assert box.dmp.provided == []


def test_a_crash_after_the_dmp_accepted_is_not_sent_twice(box: Box) -> None:
    box.catalog.hold()
    box.dmp.crash_after_provide = True
    pid = box.send()
    with pytest.raises(SystemExit):
        box.worker.run_once()
    assert box.state(pid) == State.SENDING
    box.dmp.crash_after_provide = False
    box.new_worker().run_once()  # the restarted daemon
    view = box.outbox.load(pid)
    assert view.state == State.PUBLISHED
    assert len(box.dmp.provided) == 1
    assert any("not resent" in detail for _, _, detail in box.outbox.load(pid, history=True).history)


def test_replacement_links_the_old_entry_and_retires_its_kos(box: Box) -> None:
    box.catalog.hold()
    first = box.send()
    box.worker.run_once()
    old_kos = box.outbox.load(first).kos_sop_uid
    second = box.send(ReportAction.REPLACE, control_id="MSG2", event="T10")
    box.worker.run_once()
    assert box.state(second) == State.PUBLISHED and box.state(first) == State.REPLACED
    assert box.dmp.provided[1].replaces == "urn:uuid:entry-1"
    assert box.index.study_of_kos(old_kos) is None
    assert box.index.study_of_kos(box.outbox.load(second).kos_sop_uid) == STUDY


def test_a_new_report_for_a_published_study_replaces_by_default(box: Box) -> None:
    box.catalog.hold()
    first = box.send()
    box.worker.run_once()
    second = box.send(control_id="MSG2")
    box.worker.run_once()
    assert box.state(first) == State.REPLACED and box.dmp.provided[1].replaces == "urn:uuid:entry-1"
    assert box.state(second) == State.PUBLISHED


def test_deletion_sets_the_entry_deleted_and_closes_access(box: Box) -> None:
    box.catalog.hold()
    first = box.send()
    box.worker.run_once()
    kos = box.outbox.load(first).kos_sop_uid
    gone = box.send(ReportAction.DELETE, control_id="MSG3", event="T04")
    box.worker.run_once()
    assert box.state(gone) == State.DELETED and box.state(first) == State.WITHDRAWN
    assert [w.entry_uuid for w in box.dmp.withdrawn] == ["urn:uuid:entry-1"]
    assert box.index.study_of_kos(kos) is None


def test_intents_for_one_study_run_in_order(box: Box) -> None:
    first = box.send()
    second = box.send(ReportAction.REPLACE, control_id="MSG2")
    box.worker.run_once()
    assert box.state(first) == State.WAITING and box.state(second) == State.PENDING
    box.catalog.hold()
    box.clock.advance(minutes=6)
    box.worker.run_once()
    box.worker.run_once()
    assert box.state(first) == State.REPLACED and box.state(second) == State.PUBLISHED


def test_identity_that_is_not_qualified_is_refused(box: Box) -> None:
    for changes in (
        {"identity_reliability": "PROV"},
        {"patient_ids": ()},
        {"patient_ids": (PatientIdentifier("1", "", REPORT.patient.ins.root, "INS"),)},
    ):
        acceptance = box.inbox.accept(
            ReportMessage(
                control_id="BAD",
                message_type="MDM^T02^MDM_T02",
                event="T02",
                version="2.6",
                action=ReportAction.PUBLISH,
                document=CDA,
                document_type="18748-4",
                identity_reliability=str(changes.get("identity_reliability", "VALI")),
                patient_ids=changes.get(
                    "patient_ids",
                    (PatientIdentifier(REPORT.patient.ins.extension, "", REPORT.patient.ins.root, "INS"),),
                ),  # type: ignore[arg-type]
            )
        )
        assert acceptance.code == "AE" and "identity not qualified" in acceptance.text
    assert box.outbox.counts() == {}


def test_iocm_rejection_replaces_then_deletes_when_nothing_remains(box: Box) -> None:
    box.catalog.hold(instances=3)
    first = box.send()
    box.worker.run_once()
    handler = RejectionHandler(box.outbox, box)
    handler(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.3",)}))
    box.worker.run_once()
    replaced = box.dmp.provided[-1]
    assert read_manifest(replaced.kos).instance_count == 2 and replaced.replaces == "urn:uuid:entry-1"
    assert box.state(first) == State.REPLACED
    handler(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.1", "1.2.3.1.2")}))
    box.worker.run_once()
    assert [w.entry_uuid for w in box.dmp.withdrawn] == ["urn:uuid:entry-2"]
    assert box.outbox.list(state=State.PUBLISHED) == []
