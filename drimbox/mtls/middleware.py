"""Telling the application who is on the other end, and answering a refused peer.

`PeerCertificateMiddleware` puts the verified peer of the request's connection where an ASGI
application looks for it: the ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_name"]`
is the subject DN), `scope["state"]["tls_peer"]` (Starlette's `request.state.tls_peer`), and the
`current_peer()` context variable for the audit of the request. `refusal_app` is the whole
application of a connection the gate turned away after the handshake: every request gets 403 with
an RFC 9457 problem body saying why, then the connection closes.
"""

from __future__ import annotations

import json
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox.mtls.peers import RefusedPeer, VerifiedPeer, registry, scope_key

PROBLEM = "application/problem+json"
_peer: ContextVar[VerifiedPeer | None] = ContextVar("drimbox_tls_peer", default=None)


def current_peer() -> VerifiedPeer | None:
    """The verified peer of the request being served (None over plain HTTP or TLS without client CA)."""
    return _peer.get()


class PeerCertificateMiddleware:
    """Adds the connection's verified peer to each request's scope (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        peer = registry.get(scope_key(scope))
        if isinstance(peer, RefusedPeer):  # the gate hands these to refusal_app; never serve one anyway
            await refusal_app(scope, receive, send)
            return
        if peer is not None:
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": peer.asgi_tls()}
            scope["state"] = {**(scope.get("state") or {}), "tls_peer": peer}
        token = _peer.set(peer)
        try:
            await self.app(scope, receive, send)
        finally:
            _peer.reset(token)


async def refusal_app(scope: Scope, receive: Receive, send: Send) -> None:
    """403 + problem body for every HTTP request of a refused connection; closes it afterwards."""
    if scope["type"] != "http":
        return
    peer = registry.get(scope_key(scope))
    reason = peer.reason if isinstance(peer, RefusedPeer) else "connection refused"
    body = json.dumps({
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": f"this box does not accept your client certificate: {reason}",
    }).encode("utf-8")  # fmt: skip
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
