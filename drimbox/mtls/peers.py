"""The verified peer of each live connection, for the ASGI application to read.

uvicorn does not pass the client certificate to the application, so the gate records what it
verified here, keyed by the connection's two addresses exactly as uvicorn puts them in the scope
(`scope["server"]`, `scope["client"]`), and forgets it when the connection closes. Keying on both
addresses keeps two listeners of one process (tests, workers) from mixing their peers.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

Address = tuple[str, int | None]
ConnectionKey = tuple[Address | None, Address | None]

# IANA TLS version numbers, as the ASGI TLS extension wants them
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class WhitelistLike(Protocol):
    """What we ask of the ANS whitelist in force (DRIM-M §4.12): is this certificate DN an operator
    of the list (`DNCertificatOperateur`), is this host one of its `db` hosts."""

    def allows_dn(self, dn: str) -> bool: ...

    def allows_host(self, host: str) -> bool: ...


@dataclass(frozen=True)
class VerifiedPeer:
    """A remote box whose client certificate passed every check of the listener."""

    dn: str  # RFC 4514, most significant last: the form of the whitelist's DNCertificatOperateur
    serial: int
    not_after: dt.datetime
    certificate_pem: str
    tls_version: str = ""

    @classmethod
    def of(cls, certificate: x509.Certificate, tls_version: str = "") -> VerifiedPeer:
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return cls(subject_dn(certificate), certificate.serial_number, certificate.not_valid_after_utc, pem,
                   tls_version)  # fmt: skip

    def asgi_tls(self) -> dict[str, object]:
        """The ASGI TLS extension (`scope["extensions"]["tls"]`) for this connection."""
        return {
            "server_cert": None,
            "client_cert_chain": [self.certificate_pem],
            "client_cert_name": self.dn,
            "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(self.tls_version),
            "cipher_suite": None,
        }


@dataclass(frozen=True)
class RefusedPeer:
    """A peer whose handshake succeeded but that we turn away (whitelist, revocation): the refusal
    answer tells it why, the audit trail already knows."""

    dn: str
    reason: str


def subject_dn(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[ConnectionKey, VerifiedPeer | RefusedPeer] = {}

    def put(self, key: ConnectionKey, peer: VerifiedPeer | RefusedPeer) -> None:
        with self._lock:
            self._peers[key] = peer

    def get(self, key: ConnectionKey) -> VerifiedPeer | RefusedPeer | None:
        with self._lock:
            return self._peers.get(key)

    def forget(self, key: ConnectionKey) -> None:
        with self._lock:
            self._peers.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)


registry = _Registry()
"""One per process: the gate writes it, `PeerCertificateMiddleware` and the refusal answer read it."""


def scope_key(scope: Mapping[str, Any]) -> ConnectionKey:
    """The registry key of an ASGI scope (the addresses uvicorn computed from the same transport)."""
    return (_address(scope.get("server")), _address(scope.get("client")))


def _address(value: object) -> Address | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        return (str(host), None if port is None else int(port))
    return None
