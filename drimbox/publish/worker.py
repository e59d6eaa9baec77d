"""The publication worker: moves each outbox intent to the DMP, once, whatever happens in between.

Steps of a publish/replace: assemble the study (wait while images arrive), build and store the
KOS bytes (never rebuilt afterwards: a resend carries the same bytes and the same uniqueIds),
find the entry it replaces, mark `sending` *before* the call, call, record the answer. On
restart an intent found in `sending` is first looked up at the DMP (ITI-18 by the KOS uniqueId):
if the DMP already has it the intent is finished without a second submission. Network errors
and 5xx retry with exponential backoff; a Failure answer is definitive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from drimbox.errors import DimseError, DmpRefused, DmpUnavailable, DrimboxError, ReportRefused
from drimbox.index.repository import IndexRepository
from drimbox.kos.build import encode_manifest
from drimbox.kos.model import Manifest
from drimbox.kos.parse import read_manifest
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.publish.assembly import NotReady, StudyCatalog, assemble, remaining_instances
from drimbox.publish.manifests import compose
from drimbox.publish.outbox import Outbox, PublicationView, State
from drimbox.publish.submission import DmpGateway, DmpIssue, Submission, Withdrawal
from drimbox.report.cda import read_report
from drimbox.report.message import ReportAction
from drimbox.report.model import Identifier, Report

log = logging.getLogger(__name__)

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"


@dataclass(frozen=True)
class WorkerSettings:
    """What the worker needs from configuration (kept flat so tests can set each value)."""

    wado_prefix: str
    institution_name: str
    wait_for_images: timedelta
    images_retry: timedelta
    retry_base: timedelta
    retry_max: timedelta
    give_up: timedelta
    replacement: str = "explicit-or-new-report"
    include_report: bool = False
    check_accession: bool = True
    check_patient_id: bool = True
    kos_series_number: int = 9999
    concurrency: int = 1


Outcome = Callable[[PublicationView], None]


class PublicationWorker:
    """Processes due intents; `run_forever` in a thread, or `run_once` from tests and the CLI."""

    def __init__(
        self,
        outbox: Outbox,
        catalog: StudyCatalog,
        gateway: DmpGateway,
        index: IndexRepository,
        audit: AuditTrail,
        settings: WorkerSettings,
        on_finished: Outcome | None = None,
    ) -> None:
        self.outbox = outbox
        self.catalog = catalog
        self.gateway = gateway
        self.index = index
        self.audit = audit
        self.settings = settings
        self.on_finished = on_finished
        self._stop = threading.Event()

    @property
    def now(self) -> datetime:
        return self.outbox.clock()

    def run_forever(self, poll_seconds: float) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("publication worker step failed", extra={"event": "publication.error"})
                busy = 0
            if not busy:
                self._stop.wait(poll_seconds)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        """Process every intent due now; returns how many were looked at."""
        due = self.outbox.due(limit=max(20, 4 * self.settings.concurrency))
        if self.settings.concurrency > 1 and len(due) > 1:
            # `due` holds at most one publication per study: they may run side by side.
            with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="publication") as pool:
                list(pool.map(self._step, due))
        else:
            for publication_id in due:
                self._step(publication_id)
        return len(due)

    def _step(self, publication_id: int) -> None:
        if self._stop.is_set():
            return
        publication = self.outbox.load(publication_id)
        try:
            self.process(publication)
        except DrimboxError as exc:
            log.exception("publication failed", extra={"event": "publication.error", "publication": publication_id})
            self._end(self.outbox.load(publication_id), State.FAILED, f"{exc.__class__.__name__}: {exc}")
        except Exception as exc:
            # A bug or a passing fault (database busy): retried with backoff, bounded by give_up.
            log.exception(
                "publication step crashed", extra={"event": "publication.error", "publication": publication_id}
            )
            self._retry(publication, f"internal error {exc.__class__.__name__}: {exc}")

    def process(self, p: PublicationView) -> None:
        if p.origin == "iocm" and p.state == State.PENDING and p.kos is None and p.action == ReportAction.REPLACE:
            resolved = self._iocm_target(p)
            if resolved is None:
                return
            p = resolved
        try:
            report = self._report(p)
        except ReportRefused as exc:
            self._end(p, State.FAILED, f"report unreadable: {exc}")
            return
        if report is None:
            self._end(p, State.SKIPPED, "no report names this study's patient: nothing to do")
            return
        # Every DMP call below ends here when it fails: a Failure answer is final, anything else retried.
        try:
            if p.action == ReportAction.DELETE:
                self._delete(p, report)
            else:
                self._publish(p, report)
        except DmpRefused as exc:
            self._refused(p, exc)
        except DmpUnavailable as exc:
            self._retry(p, f"DMP unavailable: {exc}")

    def _iocm_target(self, p: PublicationView) -> PublicationView | None:
        """Bind a rejection to the KOS live *now*: its report, and every instance rejected so far."""
        live = self.outbox.live(p.study_uid, before=p.id)
        if live is None:
            self._end(p, State.SKIPPED, "no published KOS for this study any more: nothing to recompute")
            return None
        referenced = {i.sop_instance_uid for s in read_manifest(live.kos or b"").series for i in s.instances}
        if not referenced & set(p.rejected):
            self._end(p, State.SKIPPED, "the rejected instances are not in the published KOS")
            return None
        rejected = list(dict.fromkeys(live.rejected + p.rejected))
        self.outbox.advance(
            p.id,
            p.state,
            f"recomputing publication {live.id} without {len(rejected)} instance(s)",
            message_id=live.message_id,
            rejected=rejected,
            ins=live.ins,
            ins_root=live.ins_root,
        )
        return self.outbox.load(p.id)

    # --- publish / replace ----------------------------------------------------------------

    def _publish(self, p: PublicationView, report: Report) -> None:
        if p.state in (State.PENDING, State.WAITING):
            kos = self._build(p, report)
            if kos is None:
                return
            p = self.outbox.load(p.id)
        if p.attempts > 0 and self._already_there(p, report):
            return
        if not self._decide_replacement(p):
            return
        p = self.outbox.load(p.id)
        replaced = p.replaced_entry_uuid
        self.outbox.advance(p.id, State.SENDING, f"sending (attempt {p.attempts + 1})", attempts=p.attempts + 1)
        submission = Submission(
            submission_uid=p.submission_uid,
            signature_uid=p.signature_uid,
            report=report,
            manifest=self._manifest_of(p),
            kos=p.kos or b"",
            submitted_at=self.now,
            flags=self._flags(p),
            report_document=self.outbox.document(p.message_id)
            if self.settings.include_report and p.message_id and p.origin == "report"
            else None,
            replaces=replaced or None,
        )
        self.gateway.provide(submission)
        self._published(self.outbox.load(p.id))

    def _build(self, p: PublicationView, report: Report) -> bytes | None:
        rejected = frozenset(p.rejected)
        try:
            current = self.catalog.study(p.study_uid)
        except DimseError as exc:
            self._wait(p, f"PACS unavailable: {exc}")
            return None
        if p.origin == "iocm" and p.action == ReportAction.REPLACE and remaining_instances(current, rejected) == 0:
            # Nothing left after the rejection: the manifest must go, not wait.
            self.outbox.advance(
                p.id, State.PENDING, "no instance left after rejection: deleting instead", action=ReportAction.DELETE
            )
            self._delete(self.outbox.load(p.id), report)
            return None
        try:
            study = assemble(
                current, report, p.study_uid, rejected, self.settings.check_accession, self.settings.check_patient_id
            )
        except NotReady as exc:
            self._wait(p, exc.reason)
            return None
        manifest = compose(
            report,
            study,
            sop_instance_uid=p.kos_sop_uid,
            series_instance_uid=p.kos_series_uid,
            created=self.now,
            wado_prefix=self.settings.wado_prefix,
            institution_name=self.settings.institution_name,
            series_number=self.settings.kos_series_number,
        )
        kos = encode_manifest(manifest)
        detail = f"KOS built: {len(manifest.series)} series, {manifest.instance_count} instances, {len(kos)} bytes"
        self.outbox.advance(p.id, State.READY, detail, kos=kos, next_attempt_at=self.now)
        return kos

    def _decide_replacement(self, p: PublicationView) -> bool:
        """Find the live publication this one replaces and its entryUUID (once); False = stop here."""
        if p.replaces_id is not None:
            return True
        live = self.outbox.live(p.study_uid, before=p.id)
        if live is None:
            if p.action == ReportAction.REPLACE:
                self.outbox.advance(p.id, p.state, "nothing published for this study yet: publishing as new")
            return True
        if (live.ins, live.ins_root) != (p.ins, p.ins_root):
            self._end(
                p,
                State.REFUSED,
                f"the study's KOS (publication {live.id}) names another patient: delete it first, then publish",
            )
            return False
        if p.action == ReportAction.PUBLISH and self.settings.replacement == "explicit":
            self._end(p, State.REFUSED, f"study already published (KOS {live.kos_sop_uid}); send a replacement")
            return False
        entry = self.gateway.find_entry(Identifier(p.ins_root, p.ins), live.kos_sop_uid, self._report_of(live))
        if entry is None or entry.status not in ("", APPROVED):
            # The DMP no longer shows it as current: publish as new, retire ours locally.
            state = entry.status if entry else "absent"
            self.outbox.advance(
                p.id,
                p.state,
                f"replaced entry {live.kos_sop_uid} is {state} at the DMP: publishing as new",
                replaces_id=live.id,
            )
            return True
        self.outbox.advance(
            p.id,
            p.state,
            f"replaces publication {live.id} (entry {entry.entry_uuid})",
            replaces_id=live.id,
            replaced_entry_uuid=entry.entry_uuid,
        )
        return True

    def _already_there(self, p: PublicationView, report: Report) -> bool:
        """After a crash mid-call: does the DMP already hold this KOS? Then finish without resending."""
        try:
            entry = self.gateway.find_entry(Identifier(p.ins_root, p.ins), p.kos_sop_uid, report)
        except DmpRefused:
            entry = None
        if entry is None:
            return False
        self.outbox.advance(p.id, State.SENDING, f"the DMP already holds entry {entry.entry_uuid}: not resent")
        self._published(self.outbox.load(p.id), entry.entry_uuid)
        return True

    def _published(self, p: PublicationView, entry_uuid: str = "") -> None:
        self.index.grant_kos(p.kos_sop_uid, p.study_uid)
        if p.replaces_id is not None:
            old = self.outbox.load(p.replaces_id)
            self.index.revoke_kos(old.kos_sop_uid)
            if old.state == State.PUBLISHED:
                self.outbox.advance(old.id, State.REPLACED, f"replaced by publication {p.id}")
        self._end(p, State.PUBLISHED, "accepted by the DMP", entry_uuid=entry_uuid or p.entry_uuid)

    # --- delete ---------------------------------------------------------------------------

    def _delete(self, p: PublicationView, report: Report) -> None:
        target = self._followed(p)
        if target is None:
            self._end(p, State.SKIPPED, "nothing published for this study: nothing to delete")
            return
        if (target.ins, target.ins_root) != (p.ins, p.ins_root):
            self._end(p, State.REFUSED, "the deletion does not name the patient of the published KOS")
            return
        entry = self.gateway.find_entry(Identifier(target.ins_root, target.ins), target.kos_sop_uid, report)
        if entry is None or entry.status == DELETED:
            self._deleted(p, target, "the DMP no longer holds the entry")
            return
        self.outbox.advance(
            p.id,
            State.SENDING,
            f"deleting entry {entry.entry_uuid} (attempt {p.attempts + 1})",
            attempts=p.attempts + 1,
            replaces_id=target.id,
            replaced_entry_uuid=entry.entry_uuid,
        )
        self.gateway.withdraw(Withdrawal(p.submission_uid, entry.entry_uuid, report, self.now))
        self._deleted(p, target, f"entry {entry.entry_uuid} set to Deleted")

    def _deleted(self, p: PublicationView, target: PublicationView, detail: str) -> None:
        self.index.revoke_kos(target.kos_sop_uid)
        if target.state == State.PUBLISHED:
            self.outbox.advance(target.id, State.WITHDRAWN, f"deleted by publication {p.id}")
        self._end(p, State.DELETED, detail, replaces_id=target.id)

    # --- outcomes -------------------------------------------------------------------------

    def _wait(self, p: PublicationView, reason: str) -> None:
        if self.now - p.created_at > self.settings.wait_for_images:
            self._end(p, State.FAILED, f"gave up waiting: {reason}")
            return
        if p.state != State.WAITING or p.reason != reason:
            log.warning(
                "publication waits",
                extra={"event": "publication.waiting", "publication": p.id, "study_uid": p.study_uid, "reason": reason},
            )
        self.outbox.advance(
            p.id,
            State.WAITING,
            reason if reason != p.reason else "",
            reason=reason,
            next_attempt_at=self.now + self.settings.images_retry,
        )

    def _retry(self, p: PublicationView, reason: str) -> None:
        """Try again later. A row found `sending` stays so: the outcome of that attempt is unknown,
        and the next step asks the DMP before sending anything (never a blind resend)."""
        p = self.outbox.load(p.id)
        if not p.active:
            return
        if self.now - p.created_at > self.settings.give_up:
            unknown = " (the outcome of the last attempt is unknown: check the DMP)" if p.attempts else ""
            self._end(p, State.FAILED, f"gave up after {p.attempts} attempts: {reason}{unknown}")
            return
        delay = min(self.settings.retry_base * (2 ** max(p.attempts - 1, 0)), self.settings.retry_max)
        if p.state == State.SENDING:
            state = State.SENDING
        elif p.kos is not None and p.action != ReportAction.DELETE:
            state = State.READY
        else:
            state = State.PENDING
        log.warning(
            "publication will retry",
            extra={
                "event": "publication.retry",
                "publication": p.id,
                "reason": reason,
                "delay_s": delay.total_seconds(),
            },
        )
        self.outbox.advance(
            p.id,
            state,
            f"{reason}; next try in {int(delay.total_seconds())} s",
            reason=reason,
            next_attempt_at=self.now + delay,
        )

    def _refused(self, p: PublicationView, exc: DmpRefused) -> None:
        p = self.outbox.load(p.id)
        issues = [_issue(i) for i in exc.issues]
        codes = ", ".join(i["code"] for i in issues) or "no error code"
        self._end(p, State.REFUSED, f"refused by the DMP ({codes}): {exc}", dmp_issues=issues)

    def _end(self, p: PublicationView, state: State, detail: str, **fields: object) -> None:
        self.outbox.advance(p.id, state, detail, **fields)
        level = logging.INFO if state in (State.PUBLISHED, State.DELETED, State.SKIPPED) else logging.ERROR
        log.log(
            level,
            "publication finished",
            extra={"event": f"publication.{state}", "publication": p.id, "study_uid": p.study_uid, "reason": detail},
        )
        self._audit(
            AuditEvent(
                action=f"kos.{p.action}",
                actor="drimbox",
                outcome="success" if state in (State.PUBLISHED, State.DELETED, State.SKIPPED) else "failure",
                patient_id=p.ins,
                study_uid=p.study_uid,
                detail={"publication": p.id, "state": str(state), "kos": p.kos_sop_uid, "detail": detail},
            )
        )
        if self.on_finished is not None:
            try:
                self.on_finished(self.outbox.load(p.id))
            except Exception:
                log.exception("publication outcome hook failed", extra={"event": "publication.hook_error"})

    def _audit(self, event: AuditEvent) -> None:
        try:
            self.audit.record(event)
        except Exception:
            log.exception("audit record failed", extra={"event": "audit.error"})

    # --- inputs ---------------------------------------------------------------------------

    def _report(self, p: PublicationView) -> Report | None:
        """The report this intent acts for: its own CDA, else the one of the publication it follows."""
        document = self.outbox.document(p.message_id) if p.message_id else None
        if document:
            return read_report(document)
        followed = self._followed(p)
        return self._report_of(followed) if followed is not None else None

    def _followed(self, p: PublicationView) -> PublicationView | None:
        """The publication this one replaces or deletes: the one it recorded, else the live one."""
        return self.outbox.load(p.replaces_id) if p.replaces_id else self.outbox.live(p.study_uid, before=p.id)

    def _report_of(self, p: PublicationView) -> Report:
        document = self.outbox.document(p.message_id) if p.message_id else None
        if not document:
            raise ReportRefused(f"publication {p.id} has no stored report")
        return read_report(document)

    def _flags(self, p: PublicationView) -> dict[str, str]:
        message = self.outbox.message(p.message_id) if p.message_id else None
        return message.flags if message else {}

    def _manifest_of(self, p: PublicationView) -> Manifest:
        return read_manifest(p.kos or b"")


def _issue(issue: object) -> dict[str, str]:
    if isinstance(issue, DmpIssue):
        return {"code": issue.code, "context": issue.context, "severity": issue.severity, "location": issue.location}
    return {"code": str(issue), "context": "", "severity": "", "location": ""}
