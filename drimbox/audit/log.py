"""An AuditTrail that writes one structured log record per event, on its own logger.

Patient identifiers go only to this logger (`drimbox.audit`), never to the operational logs,
so a site can route and retain them separately.
"""

from __future__ import annotations

import logging

from drimbox.ports import AuditEvent

log = logging.getLogger("drimbox.audit")


class LogAuditTrail:
    """Audit records as JSON log lines on the `drimbox.audit` logger."""

    def record(self, event: AuditEvent) -> None:
        log.info(
            event.action,
            extra={
                "event": event.action,
                "actor": event.actor,
                "outcome": event.outcome,
                "patient_id": event.patient_id,
                "study_uid": event.study_uid,
                "detail": event.detail,
            },
        )
