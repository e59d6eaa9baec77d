"""What the publication core asks of the DMP, and the port the `dmp` boundary implements.

The core decides *what* to send (documents, replacement, withdrawal); the boundary decides *how*
(XDS.b metadata, XAdES, VIHF, SOAP/MTOM, mutual TLS). Idempotency: `unique_id`s are chosen once
and stored before the first attempt, so a resend after a crash is recognisable at the DMP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from drimbox.kos.model import Manifest
from drimbox.report.model import Identifier, Report


@dataclass(frozen=True)
class Submission:
    """One ITI-41 ProvideAndRegisterDocumentSet-b: a KOS (and optionally the CDA report).

    `submission_uid` is the SubmissionSet uniqueId, `signature_uid` the signature document's;
    `kos` are the exact Part-10 bytes whose SHA-1 and size go in the metadata. `replaces` is the
    entryUUID of the DMP entry this KOS replaces (RPLC association), if any. `flags` are the
    HL7 MetaDMPMSS flags (MASQUE_PS, INVISIBLE_PATIENT, ...) that map to confidentiality codes.
    """

    submission_uid: str
    signature_uid: str
    report: Report
    manifest: Manifest
    kos: bytes
    submitted_at: datetime
    flags: Mapping[str, str] = field(default_factory=dict)
    report_document: bytes | None = None
    replaces: str | None = None


@dataclass(frozen=True)
class Withdrawal:
    """One ITI-57 UpdateDocumentSet setting a DMP entry to `urn:asip:ci-sis:2010:StatusType:Deleted`.

    `report` names the patient and the professional the VIHF speaks for.
    """

    submission_uid: str
    entry_uuid: str
    report: Report
    submitted_at: datetime


@dataclass(frozen=True)
class DmpIssue:
    """One RegistryError of a Failure answer: errorCode, codeContext, severity, location."""

    code: str
    context: str = ""
    severity: str = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
    location: str = ""


@dataclass(frozen=True)
class DmpEntry:
    """A DocumentEntry the registry holds, as ITI-18 returns it."""

    entry_uuid: str
    unique_id: str
    status: str = ""
    repository_unique_id: str = ""


class DmpGateway(Protocol):
    """The DMP as the publication core sees it.

    Every method raises `DmpUnavailable` when the outcome is unknown or temporary (network error,
    timeout, HTTP 5xx: retry later) and `DmpRefused` when the DMP answered a definitive Failure.
    """

    def provide(self, submission: Submission) -> None:
        """ITI-41: register the KOS (and the report when present)."""
        ...

    def find_entry(self, patient_ins: Identifier, unique_id: str, report: Report) -> DmpEntry | None:
        """ITI-18 GetDocuments by uniqueId: the entry, or None when the registry has none."""
        ...

    def withdraw(self, withdrawal: Withdrawal) -> None:
        """ITI-57: mark an entry Deleted."""
        ...
