"""OCSP (RFC 6960) for the client certificates of peer boxes, asked after the handshake.

OpenSSL checks CRLs during the handshake; OCSP we ask ourselves, off the event loop, because the
answer comes over the network. Answers are cached per certificate until the responder's
`nextUpdate` (at most `max_cache_seconds`, at most `cache_size` entries), so a busy peer costs one
request per validity window. An answer counts only when it is signed by the certificate's issuer or
by a responder that issuer delegated (EKU OCSPSigning) and when it is current; anything else is
"unavailable", and the listener then fails closed unless `revocation_fail_open`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

log = logging.getLogger(__name__)

Status = Literal["good", "revoked", "unknown", "unavailable"]
_SKEW = dt.timedelta(minutes=5)  # tolerated clock difference with the responder


@dataclass(frozen=True)
class OcspAnswer:
    """What the responder said about one certificate; `unavailable` when it could not be asked or its
    answer cannot be trusted (then `reason` says why)."""

    status: Status
    reason: str = ""

    @property
    def good(self) -> bool:
        return self.status == "good"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OcspChecker:
    """Asks the responder (`url`, else the certificate's AIA) about certificates issued by `issuers`."""

    def __init__(
        self,
        issuers: Sequence[x509.Certificate],
        *,
        url: str = "",
        timeout: float = 5.0,
        clock: Callable[[], dt.datetime] = _utcnow,
        cache_size: int = 1024,
        max_cache_seconds: float = 3600.0,
    ) -> None:
        self.issuers = list(issuers)
        self.url = url
        self._clock = clock
        self._cache_size = cache_size
        self._max_age = dt.timedelta(seconds=max_cache_seconds)
        self._cache: OrderedDict[tuple[bytes, int], tuple[OcspAnswer, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def check(self, certificate: x509.Certificate) -> OcspAnswer:
        """Blocking (network): call it from a worker thread, never on the event loop."""
        issuer = self._issuer_of(certificate)
        if issuer is None:
            return OcspAnswer("unavailable", "issuer of the certificate not in client_ca (needed for OCSP)")
        request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build()
        key = (request.issuer_key_hash, certificate.serial_number)
        cached = self._cached(key)
        if cached is not None:
            return cached
        url = self.url or _responder_of(certificate)
        if not url:
            return OcspAnswer("unavailable", "no OCSP responder configured nor named by the certificate")
        answer, until = self._ask(url, request, issuer)
        if answer.status != "unavailable":
            self._remember(key, answer, until)
        return answer

    def _ask(self, url: str, request: ocsp.OCSPRequest, issuer: x509.Certificate) -> tuple[OcspAnswer, dt.datetime]:
        now = self._clock()
        body = request.public_bytes(serialization.Encoding.DER)
        try:
            reply = self._http.post(url, content=body, headers={"Content-Type": "application/ocsp-request",
                                                                "Accept": "application/ocsp-response"})  # fmt: skip
        except httpx.HTTPError as exc:
            return OcspAnswer("unavailable", f"OCSP responder unreachable ({type(exc).__name__})"), now
        if reply.status_code != 200:
            return OcspAnswer("unavailable", f"OCSP responder answered HTTP {reply.status_code}"), now
        try:
            response = ocsp.load_der_ocsp_response(reply.content)
        except ValueError:
            return OcspAnswer("unavailable", "OCSP responder answered something that is not an OCSP response"), now
        return _judge(response, request, issuer, now, self._max_age)

    def _issuer_of(self, certificate: x509.Certificate) -> x509.Certificate | None:
        for candidate in self.issuers:
            if candidate.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None

    def _cached(self, key: tuple[bytes, int]) -> OcspAnswer | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            answer, until = entry
            if self._clock() >= until:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return answer

    def _remember(self, key: tuple[bytes, int], answer: OcspAnswer, until: dt.datetime) -> None:
        with self._lock:
            self._cache[key] = (answer, until)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def _judge(
    response: ocsp.OCSPResponse, request: ocsp.OCSPRequest, issuer: x509.Certificate, now: dt.datetime,
    max_age: dt.timedelta,
) -> tuple[OcspAnswer, dt.datetime]:  # fmt: skip
    """The answer an OCSP response gives for `request`, and until when it may be reused."""
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return OcspAnswer("unavailable", f"OCSP responder status {response.response_status.name.lower()}"), now
    problem = _signer_problem(response, issuer, now)
    if problem:
        return OcspAnswer("unavailable", problem), now
    for single in response.responses:
        if (single.serial_number, single.issuer_key_hash, single.issuer_name_hash) != (
            request.serial_number, request.issuer_key_hash, request.issuer_name_hash,
        ):  # fmt: skip
            continue
        if single.this_update_utc > now + _SKEW:
            return OcspAnswer("unavailable", "OCSP answer dated in the future"), now
        next_update = single.next_update_utc
        if next_update is not None and next_update < now - _SKEW:
            return OcspAnswer("unavailable", "OCSP answer out of date (nextUpdate passed)"), now
        until = min(next_update or now + max_age, now + max_age)
        status = single.certificate_status
        if status == ocsp.OCSPCertStatus.GOOD:
            return OcspAnswer("good"), until
        if status == ocsp.OCSPCertStatus.REVOKED:
            return OcspAnswer("revoked", "certificate revoked (OCSP)"), until
        return OcspAnswer("unknown", "certificate unknown to its OCSP responder"), until
    return OcspAnswer("unavailable", "OCSP answer does not mention the certificate"), now


def _signer_problem(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime) -> str:
    """Why the response's signature cannot be trusted, or "" when it can (RFC 6960 §4.2.2.2)."""
    if _is_signer(issuer, response):
        signer = issuer
    else:
        delegates = [cert for cert in response.certificates if _is_signer(cert, response)]
        if not delegates:
            return "OCSP answer signed by neither the issuer nor a responder it delegated"
        signer = delegates[0]
        if not _delegated_by(signer, issuer, now):
            return "OCSP responder certificate not delegated by the issuer, or not valid now"
    if not _signature_valid(signer.public_key(), response):
        return "OCSP answer signature does not verify"
    return ""


def _is_signer(cert: x509.Certificate, response: ocsp.OCSPResponse) -> bool:
    if response.responder_key_hash is not None:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest == response.responder_key_hash
    return cert.subject == response.responder_name


def _delegated_by(delegate: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> bool:
    try:
        delegate.verify_directly_issued_by(issuer)
        usages = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    in_time = delegate.not_valid_before_utc <= now <= delegate.not_valid_after_utc
    return in_time and ExtendedKeyUsageOID.OCSP_SIGNING in usages


def _signature_valid(key: object, response: ocsp.OCSPResponse) -> bool:
    algorithm, data, signature = response.signature_hash_algorithm, response.tbs_response_bytes, response.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _responder_of(certificate: x509.Certificate) -> str:
    """The OCSP URL of the certificate's Authority Information Access, or ""."""
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ""
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.OCSP:
            return str(description.access_location.value)
    return ""
