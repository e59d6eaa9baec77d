"""The sandbox DMP's HTTPS listener: mutual TLS (TLS ≥ 1.2, a client certificate chaining to the
configured CA and not revoked, checked by OpenSSL during the handshake), then one SOAP transaction
per POST on `/si-dmp-server/v2/services/{repository,registry,patients,habilitations}`.

A stdlib `ThreadingHTTPServer` rather than uvicorn, because the checks need the client certificate
of the TLS connection (its OU is the structure id) and the fault modes need the socket itself:
"down" resets the TCP connection before the handshake, "hang" reads the request and never answers
until `stop()` or the next `set_fault()`. Answers to the repository (ITI-41, ITI-43) are MTOM, as
the DMP's CXF sends them; the registry answers in the form it was asked (plain SOAP or MTOM);
faults are plain `application/soap+xml` with HTTP 500.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from cryptography import x509

from drimbox.sandbox.dmp.answers import Reply
from drimbox.sandbox.dmp.envelope import RESPONSE_ACTIONS
from drimbox.sandbox.dmp.mtom import write_message

PREFIX = "/si-dmp-server/v2/services"
MAX_BODY = 64 * 1024 * 1024
_log = logging.getLogger("drimbox.sandbox.dmp")


class Service(Protocol):
    """What the listener asks of the sandbox (DmpSandbox implements it)."""

    def take_down(self) -> bool: ...
    def tls_context(self) -> ssl.SSLContext: ...
    def handshake_failed(self, exc: Exception) -> None: ...
    def answer(
        self, endpoint: str, content_type: str, body: bytes, peer: x509.Certificate, host: str
    ) -> tuple[str, Reply, bool] | None:
        """(transaction, reply, answer as MTOM), or None to close without answering ("hang")."""
        ...


class Listener(ThreadingHTTPServer):
    """Accepts TCP, applies "down", does the TLS handshake in the connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Service) -> None:
        super().__init__(address, _Handler)
        self.sandbox = sandbox
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        if self.sandbox.take_down():
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
            raw.close()
            return
        raw.settimeout(10)
        try:
            tls = self.sandbox.tls_context().wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.sandbox.handshake_failed(exc)
            raw.close()
            return
        with self.lock:
            self.connections.add(tls)
        try:
            tls.settimeout(30)
            _Handler(tls, client_address, self)
        except OSError:
            pass  # the peer went away or stop() closed the connection
        finally:
            with self.lock:
                self.connections.discard(tls)
            _close(tls)

    def shutdown_request(self, request: Any) -> None:
        """The raw socket was handed to TLS (or closed) in finish_request."""

    def close_connections(self) -> None:
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            _close(connection)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "si-dmp-sandbox"
    sys_version = ""
    server: Listener

    def do_POST(self) -> None:
        endpoint = self.path[len(PREFIX) + 1 :] if self.path.startswith(PREFIX + "/") else ""
        if endpoint not in ("repository", "registry", "patients", "habilitations"):
            self._plain(404, "text/plain", b"no such service\n")
            return
        body = self._body()
        if body is None:
            return
        peer = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True))
        sandbox = self.server.sandbox
        outcome = sandbox.answer(
            endpoint, self.headers.get("Content-Type", ""), body, peer, self.headers.get("Host", "")
        )
        if outcome is None:  # "hang": the sandbox held the request and released it without an answer
            self.close_connection = True
            return
        transaction, reply, mtom = outcome
        if reply.status == 503:
            self._plain(503, "text/html; charset=utf-8", reply.content)
        elif mtom and reply.status == 200:
            content_type, data = write_message(reply.content, reply.attachments, RESPONSE_ACTIONS.get(transaction, ""))
            self._plain(200, content_type, data)
        else:
            self._plain(reply.status, "application/soap+xml; charset=UTF-8", reply.content)

    def do_GET(self) -> None:
        self._plain(405, "text/plain", b"POST a SOAP 1.2 message\n", {"Allow": "POST"})

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("sandbox DMP: " + format, *args)

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked()
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._plain(411, "text/plain", b"Content-Length required\n")
            return None
        if int(length) > MAX_BODY:
            self._plain(413, "text/plain", b"request too large\n")
            return None
        return self.rfile.read(int(length))

    def _chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1000).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                self._plain(413, "text/plain", b"request too large\n")
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(10)

    def _plain(self, status: int, content_type: str, data: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if status == 503:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()
