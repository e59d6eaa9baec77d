"""The listener's own TLS handshake, so that every peer we turn away reaches the audit trail.

Given uvicorn's `ssl` options, asyncio does the handshake inside its SSLProtocol and a refused one
(no certificate, expired, revoked, unknown CA, TLS 1.1) vanishes without a trace; and uvicorn never
tells the application which certificate a connection presented. So uvicorn runs without TLS and its
HTTP protocol is this gate: on a new TCP connection it pauses reading, upgrades with
`loop.start_tls` (which raises the OpenSSL verify error), runs the post-handshake checks in a worker
thread, records every refusal, and only then hands the TLS transport to uvicorn's H11 protocol:
the real application for a verified peer (registered in `peers.registry` for the middleware), the
403 `refusal_app` for a peer refused after the handshake.

Handshakes the peer abandons (it closed or reset the TCP connection, as load-balancer probes do)
are logged, not audited: we refused nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr
from uvicorn.server import ServerState

from drimbox.mtls.checks import PeerChecks, Refusal
from drimbox.mtls.context import ServerContext
from drimbox.mtls.peers import ConnectionKey, RefusedPeer, VerifiedPeer, registry, subject_dn
from drimbox.ports import AuditEvent, AuditTrail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gatekeeping:
    """What every connection of one listener shares."""

    contexts: ServerContext
    checks: PeerChecks
    audit: AuditTrail
    refusal_config: uvicorn.Config  # serves `refusal_app`
    handshake_timeout: float


def gate_protocol(gatekeeping: Gatekeeping) -> type[asyncio.Protocol]:
    """The class to give uvicorn as `Config(http=...)`, bound to one listener's gatekeeping."""

    class _BoundGate(GateProtocol):
        keeping = gatekeeping

    return _BoundGate


class _TrackedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that forgets the connection's peer when the connection ends."""

    def __init__(self, key: ConnectionKey, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key = key

    def connection_lost(self, exc: Exception | None) -> None:
        registry.forget(self._key)
        super().connection_lost(exc)


class _Relay(asyncio.Protocol):
    """Holds what the TLS transport delivers between the end of the handshake and the hand-over
    (asyncio reads once right after the handshake, before our coroutine resumes)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True  # the application answers first; it closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def hand_over(self, transport: asyncio.Transport, target: asyncio.Protocol) -> None:
        target.connection_made(transport)
        transport.set_protocol(target)
        for chunk in self.chunks:
            target.data_received(chunk)
        if self.eof:
            target.eof_received()


class GateProtocol(asyncio.Protocol):
    """uvicorn builds one per TCP connection (same keyword arguments as its H11Protocol)."""

    keeping: ClassVar[Gatekeeping]
    _pending: ClassVar[set[asyncio.Task[None]]] = set()  # keep the handshake tasks alive until they end

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the SSLProtocol start_tls installs, not for us
        task = self.loop.create_task(self._open(transport))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _open(self, raw: asyncio.Transport) -> None:
        keeping, relay = self.keeping, _Relay()
        address = _text(raw.get_extra_info("peername"))
        if raw.is_closing():
            return
        try:
            tls = await self.loop.start_tls(raw, relay, keeping.contexts.current(), server_side=True,
                                            ssl_handshake_timeout=keeping.handshake_timeout)  # fmt: skip
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError) as exc:
            log.info("TLS handshake abandoned by the peer",
                     extra={"event": "mtls.abandoned", "address": address, "reason": type(exc).__name__})  # fmt: skip
            return
        except (ssl.SSLError, ConnectionAbortedError) as exc:
            await self._refused(address, None, Refusal("handshake", handshake_reason(exc, keeping.handshake_timeout)))
            return
        if tls is None:  # closed by the peer right at the end of the handshake
            return
        tls.pause_reading()
        try:
            await self._admit(tls, relay, address)
        except BaseException:
            tls.close()
            raise

    async def _admit(self, tls: asyncio.Transport, relay: _Relay, address: str) -> None:
        keeping = self.keeping
        key: ConnectionKey = (get_local_addr(tls), get_remote_addr(tls))
        kwargs: dict[str, Any] = {"server_state": self.server_state, "_loop": self.loop}
        if not keeping.contexts.mutual:
            relay.hand_over(tls, H11Protocol(config=self.config, app_state=self.app_state, **kwargs))
            tls.resume_reading()
            return
        ssl_object = tls.get_extra_info("ssl_object")
        certificate = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
        refusal = await asyncio.to_thread(keeping.checks.refusal_of, certificate)
        if refusal is not None:
            await self._refused(address, certificate, refusal)
        if relay.lost:  # gone while we checked: nothing to hand over, nothing to register
            return
        if refusal is None:
            registry.put(key, VerifiedPeer.of(certificate, str(ssl_object.version() or "")))
            target = _TrackedH11(key, config=self.config, app_state=self.app_state, **kwargs)
        else:
            registry.put(key, RefusedPeer(subject_dn(certificate), refusal.reason))
            target = _TrackedH11(key, config=keeping.refusal_config, app_state={}, **kwargs)
            self.loop.call_later(keeping.handshake_timeout, tls.close)  # a refused peer does not linger
        relay.hand_over(tls, target)
        tls.resume_reading()

    async def _refused(self, address: str, certificate: x509.Certificate | None, refusal: Refusal) -> None:
        """Audit a refusal (only on a mutual-TLS listener: a plain TLS one refuses no peer), and log it."""
        dn = subject_dn(certificate) if certificate is not None else ""
        detail: dict[str, object] = {"reason": refusal.reason, "stage": refusal.stage, "address": address}
        if certificate is not None:
            detail |= {"dn": dn, "serial": format(certificate.serial_number, "x")}
        log.warning("peer refused", extra={"event": "tls.refused", **detail})
        if not self.keeping.contexts.mutual:
            return
        event = AuditEvent("tls.refused", dn or "unauthenticated", "failure", detail=detail, peer=dn or address)
        try:
            await asyncio.to_thread(self.keeping.audit.record, event)
        except Exception:
            log.exception("could not audit a TLS refusal", extra={"event": "mtls.audit_failed", **detail})


_OPENSSL_MESSAGE = re.compile(r"\] (.+?)(?: \(_ssl\.c:\d+\))?$")


def handshake_reason(exc: BaseException, timeout: float) -> str:
    """OpenSSL's own words: the verify message ("certificate has expired", "certificate revoked",
    "unable to get local issuer certificate") or the error ("peer did not return a certificate",
    "unsupported protocol")."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        found = _OPENSSL_MESSAGE.search(str(exc))
        return found.group(1) if found else str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, ConnectionAbortedError):
        return f"TLS handshake not completed within {timeout:g} s"
    return str(exc)


def _text(address: object) -> str:
    if isinstance(address, list | tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")
