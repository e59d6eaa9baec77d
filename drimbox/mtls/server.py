"""The HTTP listener's TLS, as the daemon starts it: plain HTTP, TLS, or mutual TLS (DRIM-M A9).

`MutualTlsServer(settings, audit, current_whitelist).server(app, host=..., port=..., ...)` replaces
`uvicorn.Server(uvicorn.Config(app, ssl_...=...))`: without a certificate it is exactly that without
TLS; with one, uvicorn runs without its own TLS and the gate (`gate.py`) does the handshake, the
checks and the audit of refusals; with `client_ca`, the application is wrapped in
`PeerCertificateMiddleware` so that it sees the peer's DN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import uvicorn
from cryptography import x509
from starlette.types import ASGIApp

from drimbox.config import TlsSettings
from drimbox.mtls.checks import PeerChecks
from drimbox.mtls.context import ServerContext
from drimbox.mtls.gate import Gatekeeping, gate_protocol
from drimbox.mtls.middleware import PeerCertificateMiddleware, refusal_app
from drimbox.mtls.ocsp import OcspChecker
from drimbox.mtls.peers import WhitelistLike
from drimbox.ports import AuditTrail


class MutualTlsServer:
    """One HTTP listener's TLS policy; build once, then `server()` or `config()` for uvicorn.

    `current_whitelist` is called for each new connection (the list in force may change daily);
    None means no valid list, and then every peer is refused while `whitelist_peers` holds.
    `reload_interval` bounds how often CRL files are looked at; `ocsp` replaces the checker built
    from the settings (tests inject one with a pinned clock).
    """

    def __init__(
        self,
        settings: TlsSettings,
        audit: AuditTrail,
        current_whitelist: Callable[[], WhitelistLike | None],
        *,
        handshake_timeout: float = 10.0,
        reload_interval: float = 5.0,
        ocsp: OcspChecker | None = None,
    ) -> None:
        self.settings = settings
        self._gatekeeping: Gatekeeping | None = None
        self._ocsp: OcspChecker | None = None
        if settings.certificate is None:
            return
        contexts = ServerContext(settings, reload_interval=reload_interval)
        if ocsp is None and settings.client_ca is not None and "ocsp" in settings.revocation:
            issuers = x509.load_pem_x509_certificates(settings.client_ca.read_bytes())
            ocsp = OcspChecker(issuers, url=settings.ocsp_url, timeout=settings.ocsp_timeout_seconds)
        self._ocsp = ocsp
        refusal = uvicorn.Config(refusal_app, http="h11", interface="asgi3", lifespan="off", log_config=None,
                                 access_log=False, proxy_headers=False, server_header=False)  # fmt: skip
        refusal.load()
        checks = PeerChecks(settings, current_whitelist, ocsp)
        self._gatekeeping = Gatekeeping(contexts, checks, audit, refusal, handshake_timeout)

    @property
    def mutual(self) -> bool:
        return self.settings.client_ca is not None

    def config(self, app: ASGIApp, **options: Any) -> uvicorn.Config:
        """uvicorn's Config serving `app`; `options` are uvicorn's (host, port, log_config, ...), never
        `ssl_*` (TLS is ours) nor `http` (the gate is the HTTP protocol)."""
        unwanted = sorted(key for key in options if key.startswith("ssl_") or key in ("http", "http2"))
        if unwanted:
            raise ValueError(f"MutualTlsServer sets TLS and the HTTP protocol itself; drop {', '.join(unwanted)}")
        if self._gatekeeping is None:
            # h11, not whatever uvicorn finds installed: our zero-copy sending extends its h11 cycle
            return uvicorn.Config(app, http="h11", **options)
        if self.mutual:
            app = PeerCertificateMiddleware(app)
        return uvicorn.Config(app, http=gate_protocol(self._gatekeeping), **options)

    def server(self, app: ASGIApp, **options: Any) -> uvicorn.Server:
        return uvicorn.Server(self.config(app, **options))

    def close(self) -> None:
        """Release the OCSP client (after the server stopped)."""
        if self._ocsp is not None:
            self._ocsp.close()
