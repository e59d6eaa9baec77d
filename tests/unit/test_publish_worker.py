"""The publication core end to end in one process: inbox → outbox → worker → DMP port.

The PACS and the DMP are in-memory doubles here (the integration tests use Orthanc and the
sandbox DMP); what is checked is the state machine: waiting for images, retries with backoff,
definitive refusals, no double submission after a crash, replacement and deletion order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.config import Hl7Settings, PublicationSettings
from drimbox.errors import DmpRefused, DmpUnavailable, PeerUnreachable
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
REPLACING_CDA = (FIXTURES / "drim-m" / "cda-imaging-report-example.xml").read_bytes()
#: The same report as a first version (the fixture carries a relatedDocument RPLC).
CDA = re.sub(rb"<relatedDocument.*?</relatedDocument>", b"", REPLACING_CDA, flags=re.S)
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
    provide_faults: list[Exception] = field(default_factory=list)
    crash_after_provide: bool = False

    def _fault(self) -> None:
        if self.faults:
            raise self.faults.pop(0)

    def provide(self, submission: Submission) -> None:
        self._fault()
        if self.provide_faults:
            raise self.provide_faults.pop(0)
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
    def __init__(self, folder: Path, concurrency: int = 1) -> None:
        self.concurrency = concurrency
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
            concurrency=self.concurrency,
        )
        return PublicationWorker(self.outbox, self.catalog, self.dmp, self.index, self, settings)

    def message(self, action: ReportAction = ReportAction.PUBLISH, **changes: object) -> ReportMessage:
        fields: dict[str, object] = {
            "control_id": "MSG1", "message_type": "MDM^T02^MDM_T02", "event": "T02", "version": "2.6",
            "action": action, "document": CDA, "document_type": "18748-4", "identity_reliability": "VALI",
            "patient_ids": (PatientIdentifier(REPORT.patient.ins.extension, "ASIP-SANTE-INS-NIR",
                                              REPORT.patient.ins.root, "INS"),),
            "flags": {"DESTDMP": "Y"},
        }  # fmt: skip
        fields.update(changes)
        return ReportMessage(**fields)  # type: ignore[arg-type]

    def send(self, action: ReportAction = ReportAction.PUBLISH, **changes: object) -> int:
        acceptance = self.inbox.accept(self.message(action, **changes))
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
    box.dmp.provide_faults = [DmpUnavailable("HTTP 503"), DmpUnavailable("read timeout")]
    pid = box.send()
    box.worker.run_once()
    first = box.outbox.load(pid)
    assert first.state == State.SENDING and first.attempts == 1
    assert first.next_attempt_at - box.clock.now == timedelta(seconds=30)
    box.clock.advance(seconds=31)
    box.worker.run_once()  # asks the DMP first (the outcome was unknown), then sends again
    second = box.outbox.load(pid)
    assert second.attempts == 2 and second.next_attempt_at - box.clock.now == timedelta(seconds=60)
    box.clock.advance(seconds=61)
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED
    assert len(box.dmp.provided) == 1 and box.outbox.load(pid).attempts == 3


def test_an_answer_lost_after_the_dmp_registered_is_not_a_second_submission(box: Box) -> None:
    box.catalog.hold()
    pid = box.send()
    original = box.dmp.provide

    def registered_then_lost(submission: Submission) -> None:
        original(submission)
        raise DmpUnavailable("read timeout")

    box.dmp.provide = registered_then_lost  # type: ignore[method-assign]
    box.worker.run_once()
    box.dmp.provide = original  # type: ignore[method-assign]
    box.clock.advance(seconds=31)
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED and len(box.dmp.provided) == 1


def test_an_audit_failure_never_reopens_a_finished_publication(box: Box) -> None:
    box.catalog.hold()
    pid = box.send()

    def broken(event: object) -> None:
        raise OSError("disk full")

    box.record = broken  # type: ignore[method-assign]
    box.worker.run_once()
    box.clock.advance(hours=1)
    box.worker.run_once()
    assert box.state(pid) == State.PUBLISHED and len(box.dmp.provided) == 1


def test_a_resent_message_creates_nothing_twice(box: Box) -> None:
    box.catalog.hold()
    first = box.inbox.accept(box.message())
    again = box.inbox.accept(box.message())
    assert again.code == "AA" and again.publications == first.publications and "duplicate" in again.text
    box.worker.run_once()
    assert len(box.dmp.provided) == 1


def test_publications_of_different_studies_run_side_by_side(tmp_path: Path) -> None:
    box = Box(tmp_path, concurrency=3)
    other = box.catalog.hold()
    box.catalog.studies["1.2.3.999"] = PacsStudy("1.2.3.999", other.series, other.patient_id, "",
                                                 accession_number=other.accession_number)  # fmt: skip
    pid = box.send()
    second_cda = CDA.replace(STUDY.encode(), b"1.2.3.999")
    pid2 = box.send(control_id="MSG9", document=second_cda)
    box.worker.run_once()
    assert box.state(pid) == box.state(pid2) == State.PUBLISHED
    assert sorted(s.manifest.study_uid for s in box.dmp.provided) == sorted([STUDY, "1.2.3.999"])


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
    box.catalog.hold()
    box.dmp.provide_faults = [DmpUnavailable("HTTP 503")]
    first = box.send()
    box.worker.run_once()
    assert box.state(first) == State.SENDING
    second = box.send(ReportAction.REPLACE, control_id="MSG2")
    box.worker.run_once()
    assert box.state(second) == State.PENDING, "must not overtake the publication it replaces"
    box.clock.advance(seconds=31)
    box.worker.run_once()
    box.worker.run_once()
    assert box.state(first) == State.REPLACED and box.state(second) == State.PUBLISHED


def test_a_newer_report_supersedes_one_still_waiting_for_images(box: Box) -> None:
    first = box.send()
    box.worker.run_once()
    assert box.state(first) == State.WAITING
    cancel = box.send(ReportAction.DELETE, control_id="MSG3")
    view = box.outbox.load(first)
    assert view.state == State.SKIPPED and f"superseded by publication {cancel}" in view.reason
    box.worker.run_once()
    assert box.state(cancel) == State.SKIPPED and box.dmp.provided == [] and box.dmp.withdrawn == []


def test_identity_that_is_not_qualified_is_refused(box: Box) -> None:
    other_ins = (PatientIdentifier("1", "", REPORT.patient.ins.root, "INS"),)
    for changes in (
        {"identity_reliability": "PROV"},
        {"patient_ids": ()},
        {"patient_ids": (), "identity_reliability": ""},  # a legacy message without PID
        {"patient_ids": other_ins},
    ):
        acceptance = box.inbox.accept(box.message(control_id=f"BAD{len(str(changes))}", **changes))
        assert acceptance.code == "AE" and "identity not qualified" in acceptance.text, changes
    cancel = box.inbox.accept(box.message(ReportAction.DELETE, control_id="OMI1", message_type="OMI^O23^OMI_O23",
                                          document=b"", study_uids=(STUDY,), patient_ids=()))  # fmt: skip
    assert cancel.code == "AE"
    assert box.outbox.counts() == {}


def test_a_replacement_under_another_identity_is_refused(box: Box) -> None:
    box.catalog.hold()
    box.send()
    box.worker.run_once()
    other = CDA.replace(b'extension="279035121518989"', b'extension="180035121518911"')
    pid = box.send(ReportAction.REPLACE, control_id="MSG2", document=other,
                   patient_ids=(PatientIdentifier("180035121518911", "", REPORT.patient.ins.root, "INS"),))  # fmt: skip
    box.worker.run_once()
    view = box.outbox.load(pid)
    assert view.state == State.REFUSED and "another patient" in view.reason
    assert len(box.dmp.provided) == 1


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


def test_iocm_binds_to_the_kos_live_when_processed(box: Box) -> None:
    box.catalog.hold(instances=3)
    first = box.send()
    handler = RejectionHandler(box.outbox, box)
    handler(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.3",)}))  # while the first KOS is not sent yet
    box.worker.run_once()
    box.worker.run_once()
    assert box.state(first) == State.REPLACED
    assert read_manifest(box.dmp.provided[-1].kos).instance_count == 2
    handler(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.3",)}))  # the same note again
    box.worker.run_once()
    assert len(box.dmp.provided) == 2, "a note about instances no longer in the KOS changes nothing"


def test_iocm_after_deletion_does_not_republish(box: Box) -> None:
    box.catalog.hold(instances=3)
    box.send()
    box.worker.run_once()
    box.send(ReportAction.DELETE, control_id="MSG3")
    RejectionHandler(box.outbox, box)(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.1",)}))
    box.worker.run_once()
    box.worker.run_once()
    assert len(box.dmp.provided) == 1 and len(box.dmp.withdrawn) == 1
    assert box.outbox.list(state=State.PUBLISHED) == []


def test_a_pacs_error_during_iocm_waits_instead_of_deleting(box: Box) -> None:
    box.catalog.hold(instances=3)
    box.send()
    box.worker.run_once()
    RejectionHandler(box.outbox, box)(Rejection("113001", STUDY, {"1.2.3.1": ("1.2.3.1.1",)}))
    held = box.catalog.studies

    class Down:
        def study(self, study_uid: str) -> PacsStudy | None:
            raise PeerUnreachable("PACS down")

    box.worker.catalog = Down()
    box.worker.run_once()
    assert box.dmp.withdrawn == [] and box.outbox.list(state=State.WAITING)
    box.worker.catalog = box.catalog
    box.catalog.studies = held
    box.clock.advance(minutes=6)
    box.worker.run_once()
    assert box.dmp.withdrawn == [] and read_manifest(box.dmp.provided[-1].kos).instance_count == 2
