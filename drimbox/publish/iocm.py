"""IOCM rejection notes (PACS → us): recompute the manifest of a published study.

A rejection note removes instances from a study. When the study carries a live KOS of ours,
a new intent replaces it (without the rejected instances) or, when nothing remains, deletes it
(DRIM-M W6). The note itself is not kept in the store.
"""

from __future__ import annotations

import logging

from drimbox.kos.rejection import Rejection
from drimbox.ports import AuditEvent, AuditTrail
from drimbox.publish.outbox import Intent, Outbox, State
from drimbox.report.message import ReportAction

log = logging.getLogger(__name__)


class RejectionHandler:
    """Called by the C-STORE SCP for each rejection note it receives."""

    def __init__(self, outbox: Outbox, audit: AuditTrail) -> None:
        self.outbox = outbox
        self.audit = audit

    def __call__(self, rejection: Rejection, sender: str = "") -> None:
        rejected = tuple(uid for uids in rejection.rejected.values() for uid in uids)
        current = next(
            (
                p
                for p in self.outbox.list(study_uid=rejection.study_uid, limit=20, history=False)
                if p.active or p.state == State.PUBLISHED
            ),
            None,
        )
        detail: dict[str, object] = {"reason": rejection.reason, "rejected": len(rejected)}
        if current is None:
            log.info(
                "rejection note for a study we have not published",
                extra={"event": "iocm.ignored", "study_uid": rejection.study_uid, "peer": sender},
            )
        else:
            # Bound to the KOS live when the worker reaches it (publications of a study run in order).
            ids = self.outbox.add(
                [
                    Intent(
                        rejection.study_uid,
                        ReportAction.REPLACE,
                        current.ins,
                        current.ins_root,
                        origin="iocm",
                        rejected=rejected,
                        message_id=current.message_id,
                    )
                ]
            )
            detail["publication"] = ids[0]
            log.info(
                "rejection note: manifest to recompute",
                extra={"event": "iocm.received", "study_uid": rejection.study_uid, "publication": ids[0]},
            )
        self.audit.record(
            AuditEvent(
                action="iocm.rejection",
                actor=sender or "pacs",
                study_uid=rejection.study_uid,
                patient_id=current.ins if current else "",
                detail=detail,
            )
        )
