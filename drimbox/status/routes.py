"""`GET /health` and `GET /status`: what an operator or a monitoring probe needs, no patient data.

`/status` answers JSON to `Accept: application/json` (or `?format=json`) and a small HTML page
otherwise. Its content comes from a snapshot function the daemon provides, so this module knows
nothing of DIMSE or the index.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

Snapshot = Callable[[], dict[str, Any]]


def status_router(snapshot: Snapshot) -> APIRouter:
    """Routes for /health and /status over `snapshot()`."""
    router = APIRouter()

    @router.get("/health", summary="Liveness and component health")
    def health() -> JSONResponse:
        state = snapshot()
        problems = alerts(state)
        body = {"status": "degraded" if problems else "ok", "version": state.get("version"), "alerts": problems}
        return JSONResponse(body)

    @router.get("/status", summary="Version, uptime, PACS peers and index counts")
    def status(request: Request, format: str | None = None) -> Response:
        state = snapshot()
        wants_json = format == "json" or (format != "html" and "application/json" in request.headers.get("accept", ""))
        if wants_json:
            return JSONResponse(state)
        return HTMLResponse(render_html(state))

    return router


def alerts(state: dict[str, Any]) -> list[str]:
    """What an operator must look at: unreachable PACS, a stale or missing whitelist, a token
    provider the breaker stopped calling, audit records the collector has not received."""
    found = [
        f"PACS {peer.get('name')} unreachable" for peer in state.get("peers", []) if peer.get("reachable") is False
    ]
    whitelist = state.get("whitelist") or {}
    if whitelist.get("stale") and (whitelist.get("url") or whitelist.get("domains")):
        found.append(f"whitelist stale ({whitelist.get('age_hours')} h old; last error: {whitelist.get('last_error')})")
    verifier = state.get("token_verifier") or {}
    if verifier.get("state") not in (None, "closed"):
        found.append(f"token provider suspended ({verifier.get('last_error')})")
    export = state.get("audit_export") or {}
    if export and not export.get("connected") and export.get("backlog"):
        found.append(f"audit collector unreachable, {export.get('backlog')} records waiting")
    return found


def render_html(state: dict[str, Any]) -> str:
    """The status page, escaped throughout."""
    esc = html.escape
    peers = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td class='{}'>{}</td><td>{}</td></tr>".format(
            esc(str(p["name"])),
            esc(str(p["ae_title"])),
            esc(f"{p['host']}:{p['port']}"),
            "ok" if p.get("reachable") else "bad",
            "reachable" if p.get("reachable") else ("unknown" if p.get("reachable") is None else "unreachable"),
            esc(str(p.get("detail") or "")),
        )
        for p in state.get("peers", [])
    )
    counts = "".join(
        f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{esc(str(v))}</td></tr>" for k, v in state.get("index", {}).items()
    )
    publications = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
        for k, v in sorted(state.get("publications", {}).items())
    )
    activity = "".join(
        f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{esc(str(v))}</td></tr>"
        for k, v in state.get("last_24h", {}).items()
    )
    last = state.get("last_indexing") or {}
    last_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in last.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drimbox status</title>
<meta http-equiv="refresh" content="30">
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}} table{{border-collapse:collapse;margin-bottom:1.5rem}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}} .ok{{color:#070}} .bad{{color:#b00}}
</style></head><body>
<h1>drimbox — {esc(str(state.get("site", "")))}</h1>
<p>version {esc(str(state.get("version")))} · mode {esc(str(state.get("mode")))} ·
up {esc(str(state.get("uptime_seconds")))} s · DICOM {esc(str(state.get("ae_title")))}</p>
<h2>PACS peers</h2>
<table><tr><th>name</th><th>AE title</th><th>address</th><th>state</th><th>detail</th></tr>{peers}</table>
<h2>Index</h2><table>{counts}</table>
<h2>Publications to the DMP</h2><table>{publications or "<tr><td>none yet</td></tr>"}</table>
<h2>Last 24 hours (from the audit trail)</h2><table>{activity or "<tr><td>none yet</td></tr>"}</table>
<h2>Last indexing</h2><table>{last_rows or "<tr><td>none yet</td></tr>"}</table>
<p><a href="/status?format=json">JSON</a></p>
</body></html>"""
