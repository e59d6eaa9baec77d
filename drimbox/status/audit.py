"""`GET /audit` and `GET /audit/verify`: the audit trail for the site's operators (DRIM-M §6).

Who saw which patient's images, from which box, and every refusal. Operators only (the
`authenticate` dependency); viewing the trail is itself recorded, since the page shows INS.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from drimbox.ports import AuditEvent, AuditTrail


class AuditReader(Protocol):
    """What the page needs of the trail: a query and a chain check."""

    def query_dicts(self, **criteria: Any) -> list[dict[str, object]]: ...

    def verify_dict(self) -> dict[str, object]: ...


def audit_router(reader: AuditReader, audit: AuditTrail, authenticate: Callable[[Request], Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/audit", summary="Audit records, newest first")
    def records(
        request: Request,
        operator: Any = Depends(authenticate),  # noqa: B008 (a closure's dependency: Annotated cannot name it)
        patient: str = Query(default="", max_length=128, description="INS (or IPP)"),
        study: str = Query(default="", max_length=64),
        action: str = Query(default="", max_length=64, description="an action, or a prefix ending in '.'"),
        outcome: str = Query(default="", pattern="^(|success|failure)$"),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        format: str | None = Query(default=None, pattern="^(json|html)$"),
    ) -> Response:
        since, until = _instant("since", since), _instant("until", until)
        if since is not None and until is not None and since >= until:
            raise HTTPException(400, "since must be before until")
        found = reader.query_dicts(patient_id=patient, study_uid=study, action=action, outcome=outcome,
                                   since=since, until=until, limit=limit)  # fmt: skip
        audit.record(AuditEvent("admin.audit_viewed", _subject(operator), patient_id=patient, study_uid=study,
                                detail={"results": len(found), "action": action}))  # fmt: skip
        wants_json = format == "json" or (format != "html" and "text/html" not in request.headers.get("accept", ""))
        return JSONResponse({"records": found}) if wants_json else HTMLResponse(_html(found))

    @router.get("/audit/verify", summary="Check the audit trail's hash chain")
    def verify(operator: Any = Depends(authenticate)) -> JSONResponse:  # noqa: B008
        report = reader.verify_dict()
        outcome = "success" if report["intact"] else "failure"
        audit.record(AuditEvent("admin.audit_verified", _subject(operator), outcome, detail=dict(report)))
        return JSONResponse(report, status_code=200 if report["intact"] else 409)

    return router


def _instant(name: str, value: datetime | None) -> datetime | None:
    """A bound in UTC (one without an offset is taken as UTC, as the trail stores it): comparable
    with the other bound, and 400 for one with no UTC equivalent (0001-01-01T00:00+00:01)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        raise HTTPException(400, f"{name}: out of the range of dates") from None


def _subject(operator: Any) -> str:
    return str(getattr(operator, "subject", "") or "operator")


_COLUMNS = ("seq", "recorded_at", "action", "outcome", "actor", "peer", "patient_id", "study_uid", "detail")


def _html(found: list[dict[str, object]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(record.get(c, '')))}</td>" for c in _COLUMNS) + "</tr>" for record in found
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>drimbox audit trail</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}} table{{border-collapse:collapse;font-size:.85rem}}
td,th{{border:1px solid #ccc;padding:.25rem .4rem;text-align:left;vertical-align:top}}</style></head><body>
<h1>Audit trail</h1><p>{len(found)} records, newest first. Filter with ?patient=INS&amp;since=2026-11-01.</p>
<table><tr>{head}</tr>{rows}</table></body></html>"""
