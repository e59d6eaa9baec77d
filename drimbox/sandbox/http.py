"""One uvicorn server in a background thread, for the sandbox's HTTP stand-ins (PSC, DMP, ...).

Tests and `drimbox demo` need real sockets (the code under test speaks HTTP through httpx, TLS
included) without a subprocess per service. We bind the socket ourselves so that port 0 works
and the port is known before the server starts.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol


class Served(NamedTuple):
    """A running server: the port it listens on and how to stop it (idempotent)."""

    port: int
    stop: Callable[[], None]


class AbortIdleH11(H11Protocol):
    """Drop an idle keep-alive connection at once when the server stops.

    uvicorn closes it gracefully, but a TLS close waits for the client's close_notify, which an
    idle pooled client never sends: the socket would outlive the stopped server and its loop.
    """

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    client_ca: Path | None = None,
    start_timeout: float = 10.0,
    http: type[H11Protocol] = AbortIdleH11,
    client_certificate: int = ssl.CERT_REQUIRED,
) -> Served:
    """Serve `app` on (`host`, `port`) until `stop()`; returns once the server accepts connections.

    `certfile`/`keyfile` serve HTTPS; `client_ca` then also asks for a client certificate
    chaining to it (mutual TLS, as the national services ask of a DRIM-M box): required, or
    optional with `client_certificate=ssl.CERT_OPTIONAL`. `http` is uvicorn's protocol class.
    """
    config = uvicorn.Config(
        app,
        http=http,
        log_config=None,  # leave the process's logging configuration alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=client_certificate if client_ca else ssl.CERT_NONE,
    )
    config.load()  # here rather than in the thread, so a bad certificate path raises to the caller
    server = uvicorn.Server(config)
    sock = _listening_socket(host, port)
    bound = int(sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-http-{bound}", daemon=True)
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
            raise RuntimeError(f"sandbox HTTP server on {host}:{port} did not start")
        time.sleep(0.01)
    return Served(port=bound, stop=stop)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
