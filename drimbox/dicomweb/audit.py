"""One audit record for every DICOMweb request, written before any patient data leaves.

The record (who: the professional from the token and the remote box's certificate DN; what: the
patient's INS, study, series, instance; the status) is committed when the response starts, so a
request that streamed images can never be missing from the trail, even if the daemon dies during
the transfer. A second record, `dicomweb.completed`, adds what is only known at the end: bytes
sent, duration and whether the transfer finished. Refusals get one record with their reason.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

import anyio

from drimbox.peer import peer_name
from drimbox.ports import AuditEvent, AuditTrail

log = logging.getLogger(__name__)

_SEARCH_LEVELS = frozenset({"studies", "series", "instances"})
_PIXELS = frozenset({"frames", "rendered", "thumbnail", "bulkdata"})

Scope = dict[str, Any]
Message = dict[str, Any]


class AccessAudit:
    """ASGI middleware on the DICOMweb prefix; everything else passes untouched."""

    def __init__(self, app: Any, audit: AuditTrail, prefix: str) -> None:
        self.app = app
        self.audit = audit
        self.prefix = prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        request = _Request(scope, state, self.prefix)
        started = time.monotonic()

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.status = int(message["status"])
                await anyio.to_thread.run_sync(self.audit.record, request.opening_event())
            elif message["type"] == "http.response.zerocopysend":  # (its prefix: a part's header)
                request.sent += int(message.get("count", 0)) + len(message.get("prefix") or b"")
            elif message["type"] == "http.response.body":
                request.sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await send(message)
                    await self._close(request, started, complete=True)
                    return
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        finally:
            if request.status is not None and not request.closed:
                with anyio.CancelScope(shield=True):
                    await self._close(request, started, complete=False)

    async def _close(self, request: _Request, started: float, *, complete: bool) -> None:
        request.closed = True
        if request.status is None or request.status >= 300:
            return
        event = request.closing_event(round((time.monotonic() - started) * 1000, 1), complete)
        try:
            # Shielded: Starlette cancels the request's scope once the last byte is sent, which
            # would otherwise cancel this write before it starts.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.audit.record, event)
        except Exception:
            log.exception("audit record failed", extra={"event": "audit.error", "request": request.id})


class _Request:
    """What one request's records say, read from the scope and what the guard left in `state`."""

    def __init__(self, scope: Scope, state: dict[str, Any], prefix: str) -> None:
        self.scope = scope
        self.state = state
        self.id = uuid.uuid4().hex[:16]
        self.status: int | None = None
        self.sent = 0
        self.closed = False
        parts = scope["path"][len(prefix) :].strip("/").split("/")
        self.action = _action(scope["method"], parts)
        self.uids = _uids(parts)

    @property
    def peer(self) -> str:
        return peer_name(self.scope)

    def opening_event(self) -> AuditEvent:
        status = self.status or 0
        refusal = self.state.get("audit_refusal", "")
        detail: dict[str, object] = {"request": self.id, "status": status, "method": self.scope["method"],
                                     "path": self.scope["path"][:512]}  # fmt: skip
        detail |= {key: value for key, value in self.uids.items() if key != "study_uid"}
        for key in ("profession", "structure"):
            value = self.state.get(f"audit_{key}", "")
            if value:
                detail[key] = value
        if status >= 400:
            detail["reason"] = refusal or f"HTTP {status}"
        return AuditEvent(
            "dicomweb.access" if refusal else self.action,
            self.state.get("audit_actor", "") or "unauthenticated",
            "success" if status < 400 else "failure",
            patient_id=self.state.get("audit_patient", ""),
            study_uid=self.uids.get("study_uid", ""),
            detail=detail,
            peer=self.peer,
        )

    def closing_event(self, duration_ms: float, complete: bool) -> AuditEvent:
        opening = self.opening_event()
        detail: dict[str, object] = {"request": self.id, "status": self.status, "bytes": self.sent,
                                     "duration_ms": duration_ms, "complete": complete,
                                     "of": opening.action}  # fmt: skip
        return AuditEvent("dicomweb.completed", opening.actor, "success" if complete else "failure",
                          opening.patient_id, opening.study_uid, detail, opening.peer)  # fmt: skip


def _action(method: str, parts: list[str]) -> str:
    if method not in ("GET", "HEAD"):
        return "dicomweb.request"
    if parts and parts[-1] in _SEARCH_LEVELS:
        return "dicomweb.search"
    if parts and parts[-1] == "metadata":
        return "dicomweb.metadata"
    if any(part in _PIXELS for part in parts):
        return "dicomweb.pixels"
    return "dicomweb.retrieve"


def _uids(parts: list[str]) -> dict[str, str]:
    """`studies/{s}/series/{se}/instances/{i}` → the UIDs named (truncated: they may be junk)."""
    names = {"studies": "study_uid", "series": "series_uid", "instances": "sop_uid"}
    found: dict[str, str] = {}
    for level, value in itertools.pairwise(parts):
        if level in names and value not in names:
            found[names[level]] = value[:64]
    return found
