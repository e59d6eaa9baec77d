"""Protocols the core calls and the boundaries implement; `daemon.py` plugs one into the other."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class AuditEvent:
    """One access to patient data or one security-relevant event.

    `action` is a short verb phrase (`instance.stored`, `study.retrieved`, `pacs.indexed`);
    `actor` says who caused it (an AE title, a user, `system`); `outcome` is `success` or
    `failure`.
    """

    action: str
    actor: str
    outcome: str = "success"
    patient_id: str = ""
    study_uid: str = ""
    detail: dict[str, object] = field(default_factory=dict)


class AuditTrail(Protocol):
    """Where every access to patient data is recorded (DRIM-M §6)."""

    def record(self, event: AuditEvent) -> None: ...


class StudySource(Protocol):
    """Brings instances from the PACS into our store (C-GET or C-MOVE, per peer)."""

    def fetch_series(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        """Yield each instance file as soon as it is on disk, so serving can start early."""
        ...

    def fetch_study(self, study_uid: str) -> Iterator[Path]:
        """Yield each instance file of the study as soon as it is on disk."""
        ...
