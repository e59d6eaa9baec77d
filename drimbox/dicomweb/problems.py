"""Every non-2xx DICOMweb answer carries an RFC 9457 problem body (decisions: Routes).

Errors raised below the routes are mapped here, in one place, to a status and a short detail
that tells the client what to change; nothing internal (paths, SQL, stack) leaks into it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from drimbox.dicomweb.accept import BadAccept, NotAcceptable
from drimbox.errors import (
    AccessDenied,
    DimseError,
    DrimboxError,
    InvalidInstance,
    InvalidUID,
    TokenRejected,
    VerifierUnavailable,
)
from drimbox.store.frames import FrameAccessUnsupported, FrameNotFound, InvalidFrameNumber
from drimbox.store.pixels import RenderError, TranscodeError

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    410: "Gone",
    413: "Payload Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Problem(DrimboxError):
    """An answer that is not 2xx, raised from a route: status, detail and optional headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _status_of(exc: Exception) -> tuple[int, dict[str, str]]:
    if isinstance(exc, Problem):
        return exc.status, exc.headers
    if isinstance(exc, TokenRejected):
        return 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    if isinstance(exc, AccessDenied):
        return 403, {}
    if isinstance(exc, VerifierUnavailable):
        return 503, {"Retry-After": "30"}
    if isinstance(exc, DimseError):
        return 502, {}
    if isinstance(exc, NotAcceptable):
        return 406, {}
    if isinstance(exc, BadAccept | InvalidUID | InvalidFrameNumber):
        return 400, {}
    if isinstance(exc, FrameNotFound):
        return 404, {}
    if isinstance(exc, FrameAccessUnsupported | RenderError | TranscodeError | InvalidInstance):
        return 422, {}  # a stored instance whose pixels cannot be served as asked
    return 500, {}


def install(app: FastAPI) -> None:
    """Map our errors, FastAPI's validation errors and Starlette's 404/405 to problem bodies."""

    async def on_drimbox_error(request: Request, exc: Exception) -> JSONResponse:
        status, headers = _status_of(exc)
        if status >= 500 and not isinstance(exc, VerifierUnavailable):
            log.error("request failed", extra={"event": "http.failed", "path": request.url.path, "reason": str(exc)})
            return problem_response(status, "the box could not answer; see its log", headers)
        return problem_response(status, str(exc), headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return problem_response(400, f"invalid request: {where}")

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def on_anything(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OperationalError):
            log.warning("index unavailable", extra={"event": "http.index_unavailable", "reason": str(exc)[:200]})
            return problem_response(503, "the index is busy or unreachable; retry", {"Retry-After": "5"})
        log.exception("request crashed", extra={"event": "http.crashed", "path": request.url.path})
        return problem_response(500, "the box could not answer; see its log")

    app.add_exception_handler(Exception, on_anything)
    app.add_exception_handler(DrimboxError, on_drimbox_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
