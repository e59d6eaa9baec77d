"""DRIM-M A7 in production shape: our introspection client authenticates at Pro Santé Connect with
the box's IGC-Santé ORG certificate (RFC 8705 tls_client_auth, §4.11), over real mutual TLS on
127.0.0.1 with the sandbox PKI, learns who the professional is, and stops calling PSC while it is
down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from drimbox.auth import CachingVerifier, IntrospectionVerifier
from drimbox.config import AuthSettings
from drimbox.errors import TokenRejected, VerifierUnavailable
from drimbox.sandbox.http import Served
from drimbox.sandbox.oidc import PRACTITIONERS, PscSandbox, SandboxClient
from drimbox.sandbox.pki import OrganisationFiles, PkiFiles, create_pki, issue_organisation
from tests.support.clock import START, FakeClock

STRUCTURE = "1130012345"
HELENE = PRACTITIONERS[0]


def common_name(certificate: Path) -> str:
    """§4.11: the ORG_AUTH_CLI certificate's CN is the box's PSC client_id."""
    subject = x509.load_pem_x509_certificates(certificate.read_bytes())[0].subject
    return str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE)


@pytest.fixture(scope="module")
def client_id(pki: PkiFiles) -> str:
    return common_name(pki.organisation.auth_cert)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def serve(psc: PscSandbox, pki: PkiFiles, port: int = 0) -> Served:
    return psc.serve(port=port, certfile=pki.server_cert, keyfile=pki.server_key, client_ca=pki.ca_bundle)


@pytest.fixture
def psc(pki: PkiFiles, client_id: str, clock: FakeClock) -> Iterator[PscSandbox]:
    """PSC knows our box by the subject of its ORG certificate, as the DataPass registration does."""
    sandbox = PscSandbox(clients=[SandboxClient.with_certificate(client_id, pki.organisation.auth_cert)], clock=clock)
    served = serve(sandbox, pki)
    yield sandbox
    served.stop()


def settings(psc: PscSandbox, pki: PkiFiles, client_id: str, organisation: OrganisationFiles | None) -> AuthSettings:
    return AuthSettings(
        introspection_url=f"{psc.issuer}/token/introspect",
        client_id=client_id,
        client_certificate=organisation.auth_cert if organisation else None,
        client_key=organisation.auth_key if organisation else None,
        ca_bundle=pki.ca_bundle,
        timeout_seconds=5,
    )


def test_our_org_certificate_gets_the_professional_and_their_identity(
    psc: PscSandbox, pki: PkiFiles, client_id: str, clock: FakeClock
) -> None:
    assert psc.issuer.startswith("https://")
    ours = settings(psc, pki, client_id, pki.organisation)
    with IntrospectionVerifier(ours, clock=clock, userinfo_url=f"{psc.issuer}/userinfo") as introspection:
        verifier = CachingVerifier(introspection, 60, clock)
        principal = verifier.verify(psc.issue_token(client_id=client_id))
        assert (principal.subject, principal.client_id) == (HELENE.subject_name_id, client_id)
        assert (principal.profession, principal.structure) == ("10/SM44", HELENE.structure_id)
        assert psc.calls["/token/introspect"] == 1 and psc.calls["/userinfo"] == 1
        assert verifier.health()["state"] == "closed" and verifier.health()["cached_verdicts"] == 1


def test_a_token_psc_reports_inactive_is_rejected(
    psc: PscSandbox, pki: PkiFiles, client_id: str, clock: FakeClock
) -> None:
    token = psc.issue_token()
    with IntrospectionVerifier(settings(psc, pki, client_id, pki.organisation), clock=clock) as verifier:
        assert verifier.verify(token).subject == HELENE.subject_name_id
        assert psc.revoke(token)
        with pytest.raises(TokenRejected, match="not active"):
            verifier.verify(token)


def test_without_our_certificate_psc_refuses_us(psc: PscSandbox, pki: PkiFiles, client_id: str) -> None:
    """Our misconfiguration (503 to the viewer), not the professional's fault (401)."""
    with (
        IntrospectionVerifier(settings(psc, pki, client_id, None)) as verifier,
        pytest.raises(VerifierUnavailable, match=r"refused our client credentials \(HTTP 401\)"),
    ):
        verifier.verify(psc.issue_token())
    assert psc.calls["/token/introspect"] == 1  # PSC answered: not a broken handshake


def test_another_structures_certificate_is_refused(psc: PscSandbox, pki: PkiFiles, client_id: str) -> None:
    neighbour = issue_organisation(pki.folder, "229900000000", "CLINIQUE VOISINE")
    assert common_name(neighbour.auth_cert) == client_id  # same CN, same CA: only the OU differs
    with (
        IntrospectionVerifier(settings(psc, pki, client_id, neighbour)) as verifier,
        pytest.raises(VerifierUnavailable, match=r"refused our client credentials \(HTTP 401\)"),
    ):
        verifier.verify(psc.issue_token())
    assert psc.calls["/token/introspect"] == 1


def test_breaker_opens_while_psc_is_down_and_closes_after_the_cool_down(
    pki: PkiFiles, client_id: str, clock: FakeClock
) -> None:
    psc = PscSandbox(clients=[SandboxClient.with_certificate(client_id, pki.organisation.auth_cert)], clock=clock)
    served = serve(psc, pki)
    verifier = CachingVerifier(
        IntrospectionVerifier(settings(psc, pki, client_id, pki.organisation), clock=clock), 0, clock
    )
    try:
        token = psc.issue_token()
        assert verifier.verify(token).subject == HELENE.subject_name_id
        served.stop()
        for _ in range(5):
            with pytest.raises(VerifierUnavailable, match="unreachable"):
                verifier.verify(token)
        health = verifier.health()
        assert (health["state"], health["consecutive_failures"], health["retry_at"]) == ("open", 5, START + 30)
        assert "ConnectError" in str(health["last_error"])

        served = serve(psc, pki, port=served.port)  # PSC is back, but the cool-down is not over
        psc.calls.clear()
        clock.now += 29
        with pytest.raises(VerifierUnavailable, match="suspended after 5 consecutive failures"):
            verifier.verify(token)
        assert not psc.calls  # refused without a network call

        clock.now += 1
        assert verifier.verify(token).subject == HELENE.subject_name_id  # the trial
        assert psc.calls["/token/introspect"] == 1
        assert verifier.health()["state"] == "closed" and verifier.health()["consecutive_failures"] == 0
    finally:
        verifier.close()
        served.stop()
