"""Judging report messages: which become publication intents, which are refused and why.

The RIS gets AA only once the intents are in the outbox. Identity is checked here, before
anything is queued: a report whose INS is not a qualified identity (PID-32 VALI, INS OID
accepted, the same INS in PID-3 and in the CDA) is refused with AE and an alert, because a
manifest published under a doubtful identity would show images under the wrong patient.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from sqlalchemy import Connection

from drimbox.config import Hl7Settings, PublicationSettings
from drimbox.errors import ReportRefused
from drimbox.ports import AuditEvent, AuditTrail, TransactionalAuditTrail
from drimbox.publish.outbox import Intent, Outbox
from drimbox.report.cda import read_report
from drimbox.report.message import (
    HL7_DATA_TYPE_ERROR,
    HL7_REQUIRED_FIELD_MISSING,
    HL7_TABLE_VALUE_NOT_FOUND,
    Acceptance,
    ReportAction,
    ReportMessage,
)
from drimbox.report.model import Report
from drimbox.uids import is_valid_uid

log = logging.getLogger(__name__)

QUALIFIED_IDENTITY = "VALI"
_INS = re.compile(r"\d{5}(?:\d{2}|2[AB])\d{6}\d{2}")


class PublicationInbox:
    """The `ReportInbox` the MLLP listener feeds."""

    def __init__(self, outbox: Outbox, hl7: Hl7Settings, publication: PublicationSettings, audit: AuditTrail) -> None:
        self.outbox = outbox
        self.hl7 = hl7
        self.settings = publication
        self.audit = audit

    def accept(self, message: ReportMessage) -> Acceptance:
        earlier = self.outbox.accepted_message(_sender(message), message.control_id, message.document)
        if earlier is not None:
            # The RIS resends when an ACK was lost: the intents exist already, never twice.
            text = f"duplicate of message {earlier[0]} (same sender, control id and document): already queued"
            return Acceptance("AA", text, publications=earlier[1])
        try:
            acceptance, intents, report = self._judge(message)
        except ReportRefused as exc:
            acceptance, intents, report = Acceptance("AE", str(exc), HL7_DATA_TYPE_ERROR, exc.location), [], None
        accepted = acceptance.code == "AA"
        _, ids = self.outbox.record(
            control_id=message.control_id,
            message_type=message.message_type,
            sender=_sender(message),
            outcome=acceptance.code,
            text=acceptance.text,
            document_id=report_id(report, message),
            flags=dict(message.flags),
            document=message.document if accepted and message.document else None,
            raw=None if accepted else message.raw,
            intents=intents,
            also=self._audit_in(message, report, acceptance),
        )
        if not isinstance(self.audit, TransactionalAuditTrail):
            self.audit.record(_received(message, report, acceptance, ids))
        return Acceptance(acceptance.code, acceptance.text, acceptance.error_code, acceptance.error_location, ids)

    def refuse(self, raw: bytes, control_id: str, acceptance: Acceptance) -> None:
        self.outbox.record(
            control_id=control_id, message_type="", sender="", outcome=acceptance.code, text=acceptance.text, raw=raw
        )
        log.warning(
            "report message refused",
            extra={"event": "hl7.refused", "control_id": control_id, "ack": acceptance.code, "reason": acceptance.text},
        )

    def _audit_in(
        self, message: ReportMessage, report: Report | None, acceptance: Acceptance
    ) -> Callable[[Connection, tuple[int, ...]], None] | None:
        """The audit record written in the message's own transaction, when the trail can."""
        audit = self.audit
        if not isinstance(audit, TransactionalAuditTrail):
            return None

        def write(connection: Connection, ids: tuple[int, ...]) -> None:
            audit.record_in(connection, _received(message, report, acceptance, ids))

        return write

    # --- judging --------------------------------------------------------------------------

    def _judge(self, message: ReportMessage) -> tuple[Acceptance, list[Intent], Report | None]:
        if not message.document:
            return self._order(message)
        if message.document_type not in self.hl7.imaging_document_types:
            text = (
                f"document type {message.document_type or '(none)'} is not an imaging report "
                f"({', '.join(self.hl7.imaging_document_types)}): no KOS is published for it"
            )
            if self.hl7.other_document_types == "ignore":
                return Acceptance("AA", text), [], None
            return Acceptance("AE", text, HL7_TABLE_VALUE_NOT_FOUND, "OBX^1^3"), [], None
        if message.flags.get("DESTDMP", "Y").upper() == "N":
            return Acceptance("AA", "DESTDMP=N: the report is not meant for the DMP, nothing published"), [], None
        report = read_report(message.document)
        self._check_identity(message, report)
        action = _action(message, report)
        intents = [
            Intent(study.study_uid, action, report.patient.ins.extension, report.patient.ins.root)
            for study in report.studies
        ]
        studies = ", ".join(i.study_uid for i in intents)
        return Acceptance("AA", f"{action} queued for {len(intents)} study(ies): {studies}"), intents, report

    def _order(self, message: ReportMessage) -> tuple[Acceptance, list[Intent], Report | None]:
        """An order message (OMI^O23): a cancellation de-publishes the exam; a new order is noted."""
        if message.action != ReportAction.DELETE:
            return Acceptance("AA", "order noted"), [], None
        if not message.study_uids:
            return (
                Acceptance(
                    "AE", "cancellation without a study instance UID (IPC-3)", HL7_REQUIRED_FIELD_MISSING, "IPC^1^3"
                ),
                [],
                None,
            )
        ins = _pid_ins(message)
        if not ins[0] or message.identity_reliability != QUALIFIED_IDENTITY:
            return (
                Acceptance(
                    "AE",
                    "identity not qualified: a cancellation needs the INS in PID-3 and PID-32 VALI",
                    HL7_DATA_TYPE_ERROR,
                    "PID^1^3",
                ),
                [],
                None,
            )
        if not all(is_valid_uid(uid) for uid in message.study_uids):
            return Acceptance("AE", "IPC-3 is not a valid study instance UID", HL7_DATA_TYPE_ERROR, "IPC^1^3"), [], None
        intents = [Intent(uid, ReportAction.DELETE, ins[0], ins[1], origin="order") for uid in message.study_uids]
        return Acceptance("AA", f"cancellation queued for {len(intents)} study(ies)"), intents, None

    def _check_identity(self, message: ReportMessage, report: Report) -> None:
        ins = report.patient.ins
        problems = []
        if ins.root not in self.settings.ins_roots:
            problems.append(f"INS OID {ins.root} is not an accepted INS namespace")
        if not _INS.fullmatch(ins.extension):
            problems.append("the INS of the CDA is not 13 digits and a 2-digit key")
        if message.identity_reliability != QUALIFIED_IDENTITY:
            problems.append(f"PID-32 is {message.identity_reliability or 'empty'}, not VALI (qualified identity)")
        value, root = _pid_ins(message)
        if not value:
            problems.append("PID-3 carries no INS")
        elif (value, root) != (ins.extension, ins.root):
            problems.append("the INS in PID-3 differs from the INS in the CDA")
        if problems:
            log.error(
                "report refused: identity not qualified",
                extra={"event": "publication.alert", "control_id": message.control_id, "reason": "; ".join(problems)},
            )
            raise ReportRefused("identity not qualified: " + "; ".join(problems), "PID^1^3")


def _action(message: ReportMessage, report: Report) -> ReportAction:
    if message.action == ReportAction.PUBLISH and (report.replaces is not None or message.replaces_hint):
        return ReportAction.REPLACE
    return message.action


def _pid_ins(message: ReportMessage) -> tuple[str, str]:
    for pid in message.patient_ids:
        if pid.type_code.upper() == "INS" or pid.namespace.upper().startswith("ASIP-SANTE-INS"):
            return pid.value, pid.oid
    return "", ""


def _received(message: ReportMessage, report: Report | None, acceptance: Acceptance,
              ids: tuple[int, ...]) -> AuditEvent:  # fmt: skip
    return AuditEvent(
        action="report.received",
        actor=_sender(message) or "ris",
        outcome="success" if acceptance.code == "AA" else "failure",
        patient_id=report.patient.ins.extension if report else "",
        study_uid=_studies(report, message),
        detail={"control_id": message.control_id, "type": message.message_type, "ack": acceptance.code,
                "text": acceptance.text, "publications": list(ids)},
    )  # fmt: skip


def _sender(message: ReportMessage) -> str:
    return "@".join(part for part in (message.sending_application, message.sending_facility) if part)


def report_id(report: Report | None, message: ReportMessage) -> str:
    if report is not None:
        doc = report.document_id
        return f"{doc.root}^{doc.extension}" if doc.extension else doc.root
    return message.document_id


def _studies(report: Report | None, message: ReportMessage) -> str:
    return ",".join(s.study_uid for s in report.studies) if report else ",".join(message.study_uids)
