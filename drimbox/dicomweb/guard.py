"""Access control in front of every DICOMweb route (DRIM-M A7, A8; decisions: Routes).

Order of checks, and their answers: no or malformed bearer token, or one the verifier rejects →
401; verifier down → 503; token valid but no `KOS-SOPInstanceUID` → 400; a KOS we did not
publish, or one that opens another study than the path names → 404 (or 403, configurable).

The guard writes no audit record itself: it leaves who asked, for which patient, and why a
request was refused on the request, and `AccessAudit` records the outcome with the status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Request

from drimbox.bearer import bearer_token as bearer_of
from drimbox.dicomweb.access import AccessScope
from drimbox.dicomweb.problems import Problem
from drimbox.errors import InvalidUID, TokenRejected, VerifierUnavailable
from drimbox.ports import Principal, TokenVerifier
from drimbox.uids import checked_uid

log = logging.getLogger(__name__)

KOS_HEADER = "KOS-SOPInstanceUID"


def bearer_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`, or TokenRejected."""
    return bearer_of(request.headers.get("authorization"))


def kos_guard(
    verifier: TokenVerifier,
    kos_access: Callable[[str], tuple[str, str] | None],
    mismatch_status: int = 404,
) -> Callable[[Request], AccessScope]:
    """The FastAPI dependency that lets a request through, scoped to the study its KOS opens.

    `kos_access(kos_sop_uid)` gives the study the KOS opens and the patient's INS, or None.
    """

    def authorize(request: Request) -> AccessScope:
        try:
            principal = verifier.verify(bearer_token(request))
        except TokenRejected as exc:
            _refused(request, str(exc))
            raise
        except VerifierUnavailable as exc:
            _refused(request, f"token could not be checked: {exc}")
            raise
        note_principal(request, principal)
        for name in ("study", "series", "sop"):
            if name in request.path_params:
                checked_uid(request.path_params[name], f"{name} UID in the path")
        study, ins = _study_of_request(request, kos_access, mismatch_status)
        request.state.audit_patient = ins
        return AccessScope(frozenset({study}), principal.subject, ins)

    return authorize


def note_principal(request: Request, principal: Principal) -> None:
    """Leave the professional's identity on the request for the audit record."""
    request.state.audit_actor = principal.subject
    request.state.audit_profession = principal.profession
    request.state.audit_structure = principal.structure


def _study_of_request(request: Request, kos_access: Callable[[str], tuple[str, str] | None],
                      mismatch_status: int) -> tuple[str, str]:  # fmt: skip
    value = request.headers.get(KOS_HEADER)
    if value is None or not value.strip():
        _refused(request, "no KOS-SOPInstanceUID")
        raise Problem(400, f"missing {KOS_HEADER}: give the SOP Instance UID of the KOS manifest read from the DMP")
    try:
        kos = checked_uid(value.strip(), KOS_HEADER)
    except InvalidUID as exc:
        _refused(request, "malformed KOS-SOPInstanceUID")
        raise Problem(400, str(exc)) from None
    granted = kos_access(kos)
    wanted = request.path_params.get("study")
    if granted is None or (wanted is not None and wanted != granted[0]):
        _refused(request, "KOS does not open this study")
        raise Problem(mismatch_status, f"{KOS_HEADER} does not name a KOS this box published for the study asked for")
    return granted


def _refused(request: Request, reason: str) -> None:
    log.info("access refused", extra={"event": "dicomweb.refused", "path": request.url.path, "reason": reason})
    request.state.audit_refusal = reason
