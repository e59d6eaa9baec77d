"""Protocols the core calls and the boundaries implement; `daemon.py` plugs one into the other."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class AuditEvent:
    """One access to patient data or one security-relevant event.

    `action` is a short verb phrase (`instance.stored`, `study.retrieved`, `pacs.indexed`);
    `actor` says who caused it (an AE title, a professional's national id, `system`); `outcome`
    is `success` or `failure`; `patient_id` is the INS when known (else the IPP); `peer` is the
    remote box's certificate DN (or address) when the event came over the network.
    """

    action: str
    actor: str
    outcome: str = "success"
    patient_id: str = ""
    study_uid: str = ""
    detail: dict[str, object] = field(default_factory=dict)
    peer: str = ""


class AuditTrail(Protocol):
    """Where every access to patient data is recorded (DRIM-M §6)."""

    def record(self, event: AuditEvent) -> None: ...


@runtime_checkable
class TransactionalAuditTrail(AuditTrail, Protocol):
    """A trail that can write a record inside the caller's database transaction, so the record
    and the work it describes are committed together."""

    def record_in(self, connection: Any, event: AuditEvent) -> int: ...


class StudySource(Protocol):
    """Brings instances from the PACS into our store (C-GET or C-MOVE, per peer)."""

    def fetch_series(self, study_uid: str, series_uid: str) -> Iterator[Path]:
        """Yield each instance file as soon as it is on disk, so serving can start early."""
        ...

    def fetch_study(self, study_uid: str) -> Iterator[Path]:
        """Yield each instance file of the study as soon as it is on disk."""
        ...


@dataclass(frozen=True)
class Principal:
    """The professional a verified bearer token speaks for.

    `subject` is the PSC SubjectNameID (or `sub`); `expires_at` (epoch seconds) bounds how long
    a verdict may be cached; `claims` keeps the rest (e.g. `SubjectRefPro`) for the audit trail.
    """

    subject: str
    client_id: str = ""
    expires_at: float | None = None
    claims: Mapping[str, object] = field(default_factory=dict)
    profession: str = ""  # e.g. "10" (médecin) with its savoir-faire "SM44", from SubjectRefPro
    structure: str = ""  # the activity's structure id (FINESS/SIRET), from SubjectRefPro


class TokenVerifier(Protocol):
    """Checks a bearer token (DRIM-M A7): introspection at Pro Santé Connect, or JWT + JWKS.

    Raises `TokenRejected` for a token that is not valid now, `VerifierUnavailable` when it cannot
    tell (the provider is down): the caller answers 401 for one and 503 for the other.
    """

    def verify(self, token: str) -> Principal: ...
