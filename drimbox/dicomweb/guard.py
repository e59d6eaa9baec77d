"""Access control in front of every DICOMweb route (DRIM-M A7, A8; decisions: Routes).

Order of checks, and their answers: no or malformed bearer token, or one the verifier rejects →
401; verifier down → 503; token valid but no `KOS-SOPInstanceUID` → 400; a KOS we did not
publish, or one that opens another study than the path names → 404 (or 403, configurable).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Request

from drimbox.bearer import bearer_token as bearer_of
from drimbox.dicomweb.access import AccessScope
from drimbox.dicomweb.problems import Problem
from drimbox.errors import InvalidUID, TokenRejected
from drimbox.ports import AuditEvent, AuditTrail, TokenVerifier
from drimbox.uids import checked_uid

log = logging.getLogger(__name__)

KOS_HEADER = "KOS-SOPInstanceUID"


def bearer_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`, or TokenRejected."""
    return bearer_of(request.headers.get("authorization"))


def kos_guard(
    verifier: TokenVerifier,
    study_of_kos: Callable[[str], str | None],
    audit: AuditTrail,
    mismatch_status: int = 404,
) -> Callable[[Request], AccessScope]:
    """The FastAPI dependency that lets a request through, scoped to the study its KOS opens."""

    def authorize(request: Request) -> AccessScope:
        try:
            principal = verifier.verify(bearer_token(request))
        except TokenRejected as exc:
            _refused(audit, request, "", str(exc))
            raise
        for name in ("study", "series", "sop"):
            if name in request.path_params:
                checked_uid(request.path_params[name], f"{name} UID in the path")
        study = _study_of_request(request, study_of_kos, mismatch_status, audit, principal.subject)
        return AccessScope(frozenset({study}), principal.subject)

    return authorize


def _study_of_request(request: Request, study_of_kos: Callable[[str], str | None], mismatch_status: int,
                      audit: AuditTrail, subject: str) -> str:  # fmt: skip
    value = request.headers.get(KOS_HEADER)
    if value is None or not value.strip():
        _refused(audit, request, subject, "no KOS-SOPInstanceUID")
        raise Problem(400, f"missing {KOS_HEADER}: give the SOP Instance UID of the KOS manifest read from the DMP")
    try:
        kos = checked_uid(value.strip(), KOS_HEADER)
    except InvalidUID as exc:
        _refused(audit, request, subject, "malformed KOS-SOPInstanceUID")
        raise Problem(400, str(exc)) from None
    study = study_of_kos(kos)
    wanted = request.path_params.get("study")
    if study is None or (wanted is not None and wanted != study):
        _refused(audit, request, subject, "KOS does not open this study")
        raise Problem(mismatch_status, f"{KOS_HEADER} does not name a KOS this box published for the study asked for")
    return study


def _refused(audit: AuditTrail, request: Request, subject: str, reason: str) -> None:
    log.info("access refused", extra={"event": "dicomweb.refused", "path": request.url.path, "reason": reason})
    study = str(request.path_params.get("study", ""))[:64]
    audit.record(AuditEvent("dicomweb.access", subject or "unauthenticated", "failure", study_uid=study,
                            detail={"reason": reason}))  # fmt: skip
