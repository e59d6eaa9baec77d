"""What a DICOMweb request may see, as the authorisation dependency decides it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccessScope:
    """The studies a request may see (`None`: all of them) and who is asking, for the audit trail.

    A remote box holding a KOS we published sees that KOS's study only (DRIM-M A8); a study
    outside the scope is answered as if it did not exist (404), so its existence does not leak.
    """

    study_uids: frozenset[str] | None
    subject: str
    patient_id: str = ""  # the INS the KOS was published under, for the audit trail

    def allows(self, study_uid: str) -> bool:
        return self.study_uids is None or study_uid in self.study_uids
