"""Our calls to other boxes (WADO-RS between DRIM-M boxes): mutual TLS, whitelisted hosts only.

We present our ORG authentication certificate, verify the remote box against our trust store (its
certificate must name the host we asked for), and refuse, before any connection, a host that is
not a `db` host of the whitelist in force (DRIM-M A9) — also when a redirect leads elsewhere.
Without a valid whitelist (None) every host is refused: fail closed, as the listener does.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import httpx

from drimbox.errors import PeerRefused
from drimbox.mtls.context import CIPHERS_TLS12
from drimbox.mtls.peers import WhitelistLike

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def peer_ssl_context(certificate: Path, key: Path, trust: Path, *, minimum_version: str = "TLSv1.2") -> ssl.SSLContext:
    """Client context: our certificate (PEM, chain included) and key; servers verified against `trust`
    with their host name checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trust))
    context.minimum_version = _VERSIONS[minimum_version]
    context.set_ciphers(CIPHERS_TLS12)
    context.load_cert_chain(str(certificate), str(key))
    return context


def whitelisted_host_check(current_whitelist: Callable[[], WhitelistLike | None]) -> Callable[[httpx.Request], None]:
    """The httpx request hook that raises `PeerRefused` for a host outside the whitelist in force."""

    def check(request: httpx.Request) -> None:
        host = request.url.host
        whitelist = current_whitelist()
        if whitelist is None:
            raise PeerRefused(f"no valid DRIM-M whitelist in force: not calling {host}")
        if not whitelist.allows_host(host):
            raise PeerRefused(f"{host} is not a DRIMbox (db) host of the DRIM-M whitelist in force")

    return check


def peer_client(
    certificate: Path,
    key: Path,
    trust: Path,
    current_whitelist: Callable[[], WhitelistLike | None],
    *,
    minimum_version: str = "TLSv1.2",
    timeout: float = 30.0,
) -> httpx.Client:
    """An httpx client for other boxes: mutual TLS and the whitelist check on every request."""
    return httpx.Client(
        verify=peer_ssl_context(certificate, key, trust, minimum_version=minimum_version),
        timeout=timeout,
        event_hooks={"request": [whitelisted_host_check(current_whitelist)]},
    )
