"""An AuditTrail that appends one JSON line per event to `audit.jsonl` in the data folder.

Patient identifiers go only to this file, never to the operational logs on the console, so a
site can retain and protect it separately. The audit issue replaces this with a hash-chained,
exportable trail behind the same port.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from drimbox.ports import AuditEvent


class LogAuditTrail:
    """Audit records as JSON lines, appended under a lock (one writer per process)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "audit.jsonl"
        self._lock = threading.Lock()

    def record(self, event: AuditEvent) -> None:
        line = json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "action": event.action,
                "actor": event.actor,
                "outcome": event.outcome,
                "patient_id": event.patient_id,
                "study_uid": event.study_uid,
                "detail": event.detail,
            },
            ensure_ascii=False,
            default=str,
        )
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
