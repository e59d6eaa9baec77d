"""What the listener checks once OpenSSL accepted a client certificate: the whitelist, then OCSP.

Order: the whitelist first (local and cheap, and an unknown peer then costs no OCSP request), then
OCSP when `revocation` includes it. Blocking (OCSP is network): the gate calls `refusal_of` from a
worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from drimbox.config import TlsSettings
from drimbox.mtls.ocsp import OcspChecker
from drimbox.mtls.peers import WhitelistLike, subject_dn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """Why a peer is turned away: `stage` (handshake, whitelist, revocation) and the reason the
    audit trail records and the peer is told."""

    stage: str
    reason: str


class PeerChecks:
    """The post-handshake checks of one listener."""

    def __init__(
        self,
        settings: TlsSettings,
        current_whitelist: Callable[[], WhitelistLike | None],
        ocsp: OcspChecker | None = None,
    ) -> None:
        self.settings = settings
        self.current_whitelist = current_whitelist
        self.ocsp = ocsp

    def refusal_of(self, certificate: x509.Certificate) -> Refusal | None:
        """None when the peer may talk to us, else why not."""
        dn = subject_dn(certificate)
        if self.settings.whitelist_peers:
            whitelist = self.current_whitelist()
            if whitelist is None:
                return Refusal("whitelist", "no valid DRIM-M whitelist in force: every peer is refused")
            if not whitelist.allows_dn(dn):
                return Refusal("whitelist", "certificate subject is not an operator DN of the DRIM-M whitelist")
        if self.ocsp is not None and "ocsp" in self.settings.revocation:
            return self._revocation(certificate, dn)
        return None

    def _revocation(self, certificate: x509.Certificate, dn: str) -> Refusal | None:
        assert self.ocsp is not None
        answer = self.ocsp.check(certificate)
        if answer.good:
            return None
        if answer.status != "unavailable":
            return Refusal("revocation", answer.reason)
        if self.settings.revocation_fail_open:
            log.warning("OCSP unavailable, peer let in (revocation_fail_open)",
                        extra={"event": "mtls.ocsp_fail_open", "dn": dn, "reason": answer.reason})  # fmt: skip
            return None
        return Refusal("revocation", f"revocation status unknown: {answer.reason}")
