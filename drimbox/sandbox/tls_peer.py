"""Who is on the other end of a TLS connection, told to the sandbox's ASGI apps.

uvicorn verifies a client certificate during the handshake but never tells the application whose
it was, so a stand-in for Pro Santé Connect could not check that the caller of its introspection
endpoint is the client it claims to be (RFC 8705 §2.1). `ClientCertificateH11` reads the verified
certificate once per connection and puts it in every request's scope the way the ASGI TLS
extension does (`scope["extensions"]["tls"]["client_cert_name"]`, an RFC 4514 string).
`serve_with_client_certificates` runs an app with it, asking for a certificate without requiring
one, so that a caller without a certificate reaches the app and gets an OAuth answer (401
invalid_client) rather than a broken handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Receive, Scope, Send

from drimbox.sandbox.http import AbortIdleH11, Served, serve_in_thread

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}  # as the ASGI TLS extension numbers them


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, object] | None:
    """The ASGI TLS extension for one connection; None when it is not TLS."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der) if der else None
    return {
        "server_cert": None,
        # Python 3.11 gives the leaf only; the handshake has verified its chain to the trusted CA.
        "client_cert_chain": [certificate.public_bytes(serialization.Encoding.PEM).decode()] if certificate else [],
        "client_cert_name": certificate.subject.rfc4514_string() if certificate else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class _WithTls:
    """Adds one connection's TLS facts to the scope of each request it carries."""

    def __init__(self, app: Any, tls: dict[str, object]) -> None:
        self._app, self._tls = app, tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["extensions"] = {**scope.get("extensions", {}), "tls": self._tls}
        await self._app(scope, receive, send)


class ClientCertificateH11(AbortIdleH11):
    """uvicorn's h11 protocol, telling the app which certificate the client presented.

    asyncio creates the protocol when the handshake is over, so the peer certificate is known in
    `connection_made`; the app is wrapped for this connection only. An idle connection is
    dropped at stop (`AbortIdleH11`).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            self.app = _WithTls(self.app, tls)


def serve_with_client_certificates(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: Path,
    keyfile: Path,
    client_ca: Path,
    start_timeout: float = 10.0,
) -> Served:
    """Serve `app` over HTTPS in a thread until `stop()`, asking clients for a certificate that
    chains to `client_ca` (a presented certificate that does not is refused in the handshake)."""
    return serve_in_thread(app, host, port, certfile=certfile, keyfile=keyfile, client_ca=client_ca,
                           start_timeout=start_timeout, http=ClientCertificateH11,
                           client_certificate=ssl.CERT_OPTIONAL)  # fmt: skip
