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
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from drimbox.sandbox.http import Served

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


class ClientCertificateH11(H11Protocol):
    """uvicorn's h11 protocol, telling the app which certificate the client presented.

    asyncio creates the protocol when the handshake is over, so the peer certificate is known in
    `connection_made`; the app is wrapped for this connection only.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            self.app = _WithTls(self.app, tls)

    def shutdown(self) -> None:
        """Drop an idle keep-alive connection at once when the server stops.

        uvicorn closes it gracefully, but a TLS close waits for the client's close_notify, which
        an idle client (a pooled httpx connection) never sends: the server would wait out its
        graceful timeout and leave the socket open behind the closed event loop.
        """
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


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
    config = uvicorn.Config(
        app,
        http=ClientCertificateH11,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(client_ca),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
    )
    config.load()  # here, so a bad certificate path raises to the caller
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = int(sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-mtls-{bound}", daemon=True)
    lock = threading.Lock()

    def stop() -> None:
        with lock:
            server.should_exit = True
            thread.join(timeout=start_timeout)
            sock.close()

    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            stop()
            raise RuntimeError(f"sandbox HTTPS server on {host}:{port} did not start")
        time.sleep(0.01)
    return Served(port=bound, stop=stop)
