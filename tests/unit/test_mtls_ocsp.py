"""The OCSP checker against the sandbox responder over real HTTP: what counts as an answer, how long
it is reused (clock pinned), and the post-handshake checks' order."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from drimbox.config import TlsSettings
from drimbox.mtls.checks import PeerChecks
from drimbox.mtls.ocsp import OcspChecker
from drimbox.sandbox.ocsp import OcspResponder
from drimbox.sandbox.pki import (
    PkiFiles,
    create_pki,
    issue_dated_organisation,
    issue_ocsp_responder,
    issue_organisation,
    load_certificates,
    revoke,
)

STRUCTURE = "499700367909006"
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)  # pinned once: the sandbox certificates are valid around now


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def responder(pki: PkiFiles, clock: Clock) -> Iterator[OcspResponder]:
    with OcspResponder(pki, clock=clock) as running:
        yield running


def checker(
    pki: PkiFiles, url: str, clock: Clock, *, max_cache_seconds: float = 3600, cache_size: int = 1024
) -> OcspChecker:
    return OcspChecker(load_certificates(pki.ca_bundle), url=url, timeout=2, clock=clock,
                       max_cache_seconds=max_cache_seconds, cache_size=cache_size)  # fmt: skip


def leaf(path: Path) -> x509.Certificate:
    return load_certificates(path)[0]


def test_good_then_revoked_and_the_answer_is_reused_until_next_update(
    pki: PkiFiles, responder: OcspResponder, clock: Clock
) -> None:
    other = issue_organisation(pki.folder, "555555555", "CABINET CACHE")
    ocsp = checker(pki, responder.url, clock)
    assert ocsp.check(leaf(other.auth_cert)).status == "good"
    revoke(pki, other.auth_cert)
    clock.now = T0 + dt.timedelta(minutes=59)
    assert ocsp.check(leaf(other.auth_cert)).status == "good"  # the cached answer, still current
    assert responder.requests == 1
    clock.now = T0 + dt.timedelta(hours=1)  # the answer's nextUpdate
    answer = ocsp.check(leaf(other.auth_cert))
    assert (answer.status, answer.reason, responder.requests) == ("revoked", "certificate revoked (OCSP)", 2)
    ocsp.close()


def test_cache_is_bounded_in_age_and_size(pki: PkiFiles, responder: OcspResponder, clock: Clock) -> None:
    first, second = leaf(pki.organisation.auth_cert), leaf(issue_organisation(pki.folder, "666", "X").auth_cert)
    ocsp = checker(pki, responder.url, clock, max_cache_seconds=60, cache_size=1)
    ocsp.check(first)
    clock.now = T0 + dt.timedelta(seconds=60)
    ocsp.check(first)
    assert responder.requests == 2  # max age reached before nextUpdate
    ocsp.check(second)
    ocsp.check(first)  # pushed out by `second`
    assert responder.requests == 4
    ocsp.close()


def test_an_answer_whose_next_update_has_passed_is_not_trusted(pki: PkiFiles, clock: Clock) -> None:
    late = Clock()
    late.now = T0 - dt.timedelta(hours=2)
    with OcspResponder(pki, clock=late) as stale:
        answer = checker(pki, stale.url, clock).check(leaf(pki.organisation.auth_cert))
    assert (answer.status, answer.reason) == ("unavailable", "OCSP answer out of date (nextUpdate passed)")


class Tampering(OcspResponder):
    """Flips one bit of each answer's signature, as a man in the middle of plain-HTTP OCSP could."""

    def answer(self, der_request: bytes) -> bytes:
        der = super().answer(der_request)
        signature = ocsp.load_der_ocsp_response(der).signature
        return der.replace(signature, bytes([signature[0] ^ 1]) + signature[1:])


def test_forged_answers_are_not_trusted(pki: PkiFiles, clock: Clock, tmp_path_factory: pytest.TempPathFactory) -> None:
    stranger = create_pki(tmp_path_factory.mktemp("stranger"), STRUCTURE)
    with OcspResponder(pki, clock=clock, signer=_signer(*issue_ocsp_responder(stranger))) as forger:
        answer = checker(pki, forger.url, clock).check(leaf(pki.organisation.auth_cert))
    assert (answer.status, answer.reason) == (
        "unavailable", "OCSP responder certificate not delegated by the issuer, or not valid now"
    )  # fmt: skip
    with Tampering(pki, clock=clock) as tampering:
        answer = checker(pki, tampering.url, clock).check(leaf(pki.organisation.auth_cert))
    assert (answer.status, answer.reason) == ("unavailable", "OCSP answer signature does not verify")


def test_unreachable_responder_and_unknown_issuer_are_unavailable(
    pki: PkiFiles, responder: OcspResponder, clock: Clock, tmp_path_factory: pytest.TempPathFactory
) -> None:
    foreign = create_pki(tmp_path_factory.mktemp("foreign"), STRUCTURE).organisation
    answer = checker(pki, responder.url, clock).check(leaf(foreign.auth_cert))
    assert (answer.status, responder.requests) == ("unavailable", 0)
    assert "issuer of the certificate not in client_ca" in answer.reason
    url = responder.url
    responder.stop()
    answer = checker(pki, url, clock).check(leaf(pki.organisation.auth_cert))
    assert answer.status == "unavailable" and answer.reason.startswith("OCSP responder unreachable")
    no_url = checker(pki, "", clock).check(leaf(pki.organisation.auth_cert))
    assert no_url.reason == "no OCSP responder configured nor named by the certificate"


@dataclass
class ListInForce:
    dns: set[str]

    def allows_dn(self, dn: str) -> bool:
        return dn in self.dns

    def allows_host(self, host: str) -> bool:
        return False


def test_whitelist_is_checked_before_ocsp(pki: PkiFiles, responder: OcspResponder, clock: Clock) -> None:
    settings = TlsSettings(certificate=pki.server_cert, key=pki.server_key, client_ca=pki.ca_bundle,
                           revocation="ocsp", ocsp_url=responder.url)  # fmt: skip
    checks = PeerChecks(settings, lambda: ListInForce(set()), checker(pki, responder.url, clock))
    refusal = checks.refusal_of(leaf(pki.organisation.auth_cert))
    assert refusal is not None and refusal.stage == "whitelist" and responder.requests == 0
    dn = leaf(pki.organisation.auth_cert).subject.rfc4514_string()
    checks = PeerChecks(settings, lambda: ListInForce({dn}), checker(pki, responder.url, clock))
    assert checks.refusal_of(leaf(pki.organisation.auth_cert)) is None and responder.requests == 1


def test_sandbox_issues_dated_certificates_and_a_delegated_responder(pki: PkiFiles) -> None:
    start, end = T0 - dt.timedelta(days=10), T0 - dt.timedelta(days=1)
    dated = issue_dated_organisation(pki.folder, "dated", "777", "CABINET DATE", start, end, ocsp_url="http://x/ocsp")
    cert = leaf(dated.auth_cert)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in access] == ["http://x/ocsp"]
    responder = leaf(issue_ocsp_responder(pki)[0])
    assert list(responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    responder.verify_directly_issued_by(leaf(pki.intermediate_cert))


def _signer(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return leaf(cert_path), key
