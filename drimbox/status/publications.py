"""`GET /publications` and `GET /publications/{id}`: each publication's state and history.

For the site's operators: why a report is not on the DMP yet (images missing, accession
number mismatch, DMP down or refusing, with the DMP's error codes). Patient data (the INS)
stays out of the list; the routes need a bearer token like every non-status route.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from drimbox.publish.outbox import MessageView, Outbox, State

Authenticate = Callable[[Request], object]


def publications_router(outbox: Callable[[], Outbox], authenticate: Authenticate) -> APIRouter:
    router = APIRouter(dependencies=[Depends(authenticate)])

    @router.get("/publications", summary="Publications to the DMP, newest first")
    def publications(
        request: Request,
        state: str | None = Query(default=None, max_length=16),
        study: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=100, ge=1, le=1000),
        format: str | None = None,
    ) -> Response:
        if state is not None and state not in {s.value for s in State}:
            raise HTTPException(400, f"unknown state {state!r}; one of {', '.join(s.value for s in State)}")
        box = outbox()
        items = [p.summary() for p in box.list(state=state, study_uid=study, limit=limit)]
        refused = [_message(m) for m in box.messages(limit=20, refused_only=True)]
        body = {"counts": box.counts(), "publications": items, "refused_messages": refused}
        wants_json = format == "json" or (format != "html" and "text/html" not in request.headers.get("accept", ""))
        return JSONResponse(body) if wants_json else HTMLResponse(_html(body))

    @router.get("/publications/{publication_id}", summary="One publication with its whole history")
    def publication(publication_id: int = Path(ge=1, le=2**63 - 1)) -> JSONResponse:
        try:
            return JSONResponse(outbox().load(publication_id, history=True).summary())
        except KeyError:
            raise HTTPException(404, f"no publication {publication_id}") from None

    return router


def _message(message: MessageView) -> dict[str, Any]:
    """A refused report message as operators see it: what came, when, from whom, why (no patient data)."""
    return {
        "id": message.id, "received_at": message.received_at.isoformat(timespec="seconds"),
        "control_id": message.control_id, "type": message.message_type, "sender": message.sender,
        "ack": message.outcome, "reason": message.outcome_text,
    }  # fmt: skip


def _html(body: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(p[k] if p[k] is not None else ''))}</td>" for k in _COLUMNS) + "</tr>"
        for p in body["publications"]
    )
    counts = " · ".join(f"{esc(k)}: {v}" for k, v in sorted(body["counts"].items()))
    head = "".join(f"<th>{esc(k)}</th>" for k in _COLUMNS)
    refused = "".join(
        "<tr>"
        + "".join(f"<td>{esc(str(m[k]))}</td>" for k in ("received_at", "control_id", "type", "ack", "reason"))
        + "</tr>"
        for m in body["refused_messages"]
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>drimbox publications</title>
<meta http-equiv="refresh" content="15"><style>body{{font-family:system-ui,sans-serif;margin:2rem}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}}</style>
</head><body><h1>Publications to the DMP</h1><p>{counts}</p>
<table><tr>{head}</tr>{rows}</table>
<h2>Refused report messages</h2>
<table><tr><th>received</th><th>control id</th><th>type</th><th>ACK</th><th>reason</th></tr>{refused}</table>
</body></html>"""


_COLUMNS = ("id", "study_uid", "action", "state", "reason", "attempts", "updated_at")
