"""Mutual TLS between boxes (DRIM-M A9), as a remote box meets it: real TLS on 127.0.0.1 with the
sandbox PKI, uvicorn behind the gate, refusals read back from the audit trail."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from drimbox.config import TlsSettings
from drimbox.errors import PeerRefused
from drimbox.mtls.client import peer_client
from drimbox.mtls.middleware import current_peer
from drimbox.mtls.peers import WhitelistLike, registry
from drimbox.mtls.server import MutualTlsServer
from drimbox.ports import AuditEvent
from drimbox.sandbox.ocsp import OcspResponder
from drimbox.sandbox.pki import (
    OrganisationFiles,
    PkiFiles,
    create_pki,
    issue_dated_organisation,
    issue_organisation,
    revoke,
)

STRUCTURE = "499700367909006"
OUR_DN = f"CN=DRIMbox,OU={STRUCTURE},O=CABINET D'IMAGERIE SANDBOX,C=FR"


@dataclass
class ListInForce:
    """A whitelist in force: operator DNs and `db` hosts."""

    dns: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)

    def allows_dn(self, dn: str) -> bool:
        return dn in self.dns

    def allows_host(self, host: str) -> bool:
        return host in self.hosts


class CollectedAudit:
    """An AuditTrail that keeps the events; `refusals()` waits for the gate's record (the client may
    see the refusal before the server has written it)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._changed = threading.Condition()

    def record(self, event: AuditEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def refusals(self, count: int = 1) -> list[AuditEvent]:
        with self._changed:
            self._changed.wait_for(lambda: len(self._refused()) >= count, timeout=10)
            return self._refused()

    def _refused(self) -> list[AuditEvent]:
        return [event for event in self.events if event.action == "tls.refused"]


async def whoami(request: Request) -> JSONResponse:
    tls = request.scope.get("extensions", {}).get("tls", {})
    state = getattr(request.state, "tls_peer", None)
    peer = current_peer()
    return JSONResponse({
        "dn": tls.get("client_cert_name"),
        "state_dn": state.dn if state else None,
        "context_dn": peer.dn if peer else None,
        "tls_version": tls.get("tls_version"),
        "scheme": request.url.scheme,
    })  # fmt: skip


APP = Starlette(routes=[Route("/whoami", whoami)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE)


def mutual(pki: PkiFiles, **changes: object) -> TlsSettings:
    values: dict[str, object] = {
        "certificate": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca_bundle,
        "revocation": "crl", "crl_files": list(pki.crls),
    } | changes  # fmt: skip
    return TlsSettings.model_validate(values)


@contextlib.contextmanager
def serving(server: MutualTlsServer) -> Iterator[int]:
    """Run the listener in a thread on a free port of 127.0.0.1; stop it afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = server.config(APP, log_config=None, log_level="warning", access_log=False, lifespan="off",
                           timeout_graceful_shutdown=2)  # fmt: skip
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert uvicorn_server.started, "the listener did not start"
        yield int(sock.getsockname()[1])
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        server.close()


def client_context(pki: PkiFiles, organisation: OrganisationFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    if organisation is not None:
        context.load_cert_chain(organisation.auth_cert, organisation.auth_key)
    return context


def get(port: int, context: ssl.SSLContext, scheme: str = "https") -> httpx.Response:
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(f"{scheme}://127.0.0.1:{port}/whoami")


def start(pki: PkiFiles, audit: CollectedAudit, whitelist: WhitelistLike | None, **changes: object) -> MutualTlsServer:
    return MutualTlsServer(mutual(pki, **changes), audit, lambda: whitelist, reload_interval=0)


def test_a_whitelisted_peer_is_served_and_the_application_sees_its_dn(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    with serving(start(pki, audit, ListInForce({OUR_DN}))) as port:
        answer = get(port, client_context(pki, pki.organisation))
        assert answer.status_code == 200
        assert answer.json() == {"dn": OUR_DN, "state_dn": OUR_DN, "context_dn": OUR_DN, "tls_version": 0x0304,
                                 "scheme": "https"}  # fmt: skip
    assert audit.events == []  # accepted connections are not audited one by one
    assert len(registry) == 0  # forgotten when the connection closed


def test_a_peer_outside_the_whitelist_gets_403_and_is_audited(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    with serving(start(pki, audit, ListInForce({"CN=someone else,C=FR"}))) as port:
        answer = get(port, client_context(pki, pki.organisation))
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["connection"] == "close"
    assert answer.json()["status"] == 403 and "not an operator DN" in answer.json()["detail"]
    [event] = audit.refusals()
    assert (event.actor, event.outcome, event.peer) == (OUR_DN, "failure", OUR_DN)
    assert event.detail["stage"] == "whitelist" and event.detail["dn"] == OUR_DN
    assert "not an operator DN of the DRIM-M whitelist" in str(event.detail["reason"])
    assert str(event.detail["address"]).startswith("127.0.0.1:")


def test_without_a_valid_whitelist_every_peer_is_refused(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    with serving(start(pki, audit, None)) as port:
        assert get(port, client_context(pki, pki.organisation)).status_code == 403
    [event] = audit.refusals()
    assert "no valid DRIM-M whitelist in force" in str(event.detail["reason"])


def test_whitelist_not_required_lets_any_valid_peer_in(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    with serving(start(pki, audit, None, whitelist_peers=False)) as port:
        assert get(port, client_context(pki, pki.organisation)).json()["dn"] == OUR_DN


@pytest.fixture(scope="module")
def expired(pki: PkiFiles) -> OrganisationFiles:
    now = dt.datetime.now(dt.UTC)
    return issue_dated_organisation(pki.folder, "expired", "111111111", "CABINET EXPIRE",
                                    now - dt.timedelta(days=400), now - dt.timedelta(days=1))  # fmt: skip


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> OrganisationFiles:
    return create_pki(tmp_path_factory.mktemp("other-pki"), STRUCTURE).organisation


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("none", "peer did not return a certificate"),
        ("expired", "certificate has expired"),
        ("stranger", "unable to get local issuer certificate"),
        ("tls1.1", "unsupported protocol"),
    ],
)
def test_handshake_refusals_are_audited_with_openssl_reason(
    pki: PkiFiles, expired: OrganisationFiles, stranger: OrganisationFiles, client: str, reason: str
) -> None:
    organisation = {"none": None, "expired": expired, "stranger": stranger, "tls1.1": pki.organisation}[client]
    context = client_context(pki, organisation)
    if client == "tls1.1":
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    audit = CollectedAudit()
    everyone = ListInForce({OUR_DN, "CN=DRIMbox,OU=111111111,O=CABINET EXPIRE,C=FR"})
    with serving(start(pki, audit, everyone)) as port:
        with pytest.raises(httpx.TransportError):
            get(port, context)
        [event] = audit.refusals()
    assert (event.action, event.actor, event.outcome) == ("tls.refused", "unauthenticated", "failure")
    assert event.detail["reason"] == reason and event.detail["stage"] == "handshake"
    assert event.peer == event.detail["address"] and event.peer.startswith("127.0.0.1:")


def test_a_peer_that_never_finishes_the_handshake_is_refused_and_audited(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    server = MutualTlsServer(mutual(pki), audit, lambda: ListInForce({OUR_DN}), handshake_timeout=0.5)
    with serving(server) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        [event] = audit.refusals()
        assert silent.recv(1) == b""  # closed by the listener
        address = f"127.0.0.1:{silent.getsockname()[1]}"
    assert event.detail == {"reason": "TLS handshake not completed within 0.5 s", "stage": "handshake",
                            "address": address}  # fmt: skip


def test_concurrent_peers_each_see_their_own_dn(pki: PkiFiles) -> None:
    other = issue_organisation(pki.folder, "888888888", "CABINET VOISIN")
    other_dn = "CN=DRIMbox,OU=888888888,O=CABINET VOISIN,C=FR"
    seen: list[tuple[str, str]] = []

    def call(organisation: OrganisationFiles, dn: str) -> None:
        seen.append((dn, get(port, client_context(pki, organisation)).json()["dn"]))

    with serving(start(pki, CollectedAudit(), ListInForce({OUR_DN, other_dn}))) as port:
        threads = [
            threading.Thread(target=call, args=pair) for pair in [(pki.organisation, OUR_DN), (other, other_dn)] * 4
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(seen) == 8 and all(expected == got for expected, got in seen)


def test_a_revoked_certificate_is_refused_once_the_crl_is_updated(pki: PkiFiles) -> None:
    revoked = issue_organisation(pki.folder, "222222222", "CABINET REVOQUE")
    dn = "CN=DRIMbox,OU=222222222,O=CABINET REVOQUE,C=FR"
    audit = CollectedAudit()
    with serving(start(pki, audit, ListInForce({dn}))) as port:
        assert get(port, client_context(pki, revoked)).json()["dn"] == dn
        revoke(pki, revoked.auth_cert)  # rewrites both CRL files: the listener reloads, no restart
        with pytest.raises(httpx.TransportError):
            get(port, client_context(pki, revoked))
        [event] = audit.refusals()
        assert get(port, client_context(pki, pki.organisation)).status_code == 403  # not whitelisted: still served
    assert event.detail["reason"] == "certificate revoked"


def test_a_der_crl_is_accepted(pki: PkiFiles, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = [tmp_path / "root.crl", tmp_path / "intermediate.crl"]
    for pem, target in zip(pki.crls, der, strict=True):
        target.write_bytes(x509.load_pem_x509_crl(pem.read_bytes()).public_bytes(serialization.Encoding.DER))
    with serving(start(pki, CollectedAudit(), ListInForce({OUR_DN}), crl_files=der)) as port:
        assert get(port, client_context(pki, pki.organisation)).status_code == 200


# -- OCSP ----------------------------------------------------------------------------------------


@pytest.fixture
def responder(pki: PkiFiles) -> Iterator[OcspResponder]:
    with OcspResponder(pki) as running:
        yield running


def ocsp_server(
    pki: PkiFiles, audit: CollectedAudit, whitelist: ListInForce, url: str, **changes: object
) -> MutualTlsServer:
    return start(pki, audit, whitelist, revocation="ocsp", crl_files=[], ocsp_url=url, ocsp_timeout_seconds=2,
                 **changes)  # fmt: skip


def test_ocsp_good_is_served_and_revoked_is_refused(pki: PkiFiles, responder: OcspResponder) -> None:
    revoked = issue_organisation(pki.folder, "333333333", "CABINET OCSP REVOQUE")
    revoked_dn = "CN=DRIMbox,OU=333333333,O=CABINET OCSP REVOQUE,C=FR"
    revoke(pki, revoked.auth_cert)
    audit = CollectedAudit()
    with serving(ocsp_server(pki, audit, ListInForce({OUR_DN, revoked_dn}), responder.url)) as port:
        assert get(port, client_context(pki, pki.organisation)).json()["dn"] == OUR_DN
        answer = get(port, client_context(pki, revoked))
    assert answer.status_code == 403 and "certificate revoked (OCSP)" in answer.json()["detail"]
    [event] = audit.refusals()
    assert (event.actor, event.detail["stage"], event.detail["reason"]) == (revoked_dn, "revocation",
                                                                            "certificate revoked (OCSP)")  # fmt: skip
    assert responder.requests == 2


def test_ocsp_responder_named_by_the_certificate(pki: PkiFiles, responder: OcspResponder) -> None:
    now = dt.datetime.now(dt.UTC)
    with_aia = issue_dated_organisation(pki.folder, "aia", "444444444", "CABINET AIA", now - dt.timedelta(hours=1),
                                        now + dt.timedelta(days=30), ocsp_url=responder.url)  # fmt: skip
    dn = "CN=DRIMbox,OU=444444444,O=CABINET AIA,C=FR"
    with serving(ocsp_server(pki, CollectedAudit(), ListInForce({dn}), "")) as port:
        assert get(port, client_context(pki, with_aia)).json()["dn"] == dn
    assert responder.requests == 1


@pytest.mark.parametrize("fail_open", [False, True])
def test_ocsp_responder_down_fails_closed_unless_configured_open(
    pki: PkiFiles, responder: OcspResponder, fail_open: bool
) -> None:
    responder.stop()
    audit = CollectedAudit()
    server = ocsp_server(pki, audit, ListInForce({OUR_DN}), responder.url, revocation_fail_open=fail_open)
    with serving(server) as port:
        answer = get(port, client_context(pki, pki.organisation))
    if fail_open:
        assert answer.status_code == 200 and audit.events == []
        return
    assert answer.status_code == 403
    [event] = audit.refusals()
    assert str(event.detail["reason"]).startswith("revocation status unknown: OCSP responder unreachable")


# -- plain TLS and plain HTTP keep working -------------------------------------------------------


def test_tls_without_client_ca_serves_anyone_and_audits_nothing(pki: PkiFiles) -> None:
    audit = CollectedAudit()
    settings = TlsSettings(certificate=pki.server_cert, key=pki.server_key)
    with serving(MutualTlsServer(settings, audit, lambda: None)) as port:
        answer = get(port, client_context(pki, None))
        assert answer.json()["dn"] is None and answer.json()["scheme"] == "https"
        with pytest.raises(httpx.TransportError):
            get(port, client_context(pki, None), scheme="http")  # plain HTTP on a TLS port: handshake fails
    assert audit.events == []


def test_without_certificate_the_listener_is_plain_http(pki: PkiFiles) -> None:
    with serving(MutualTlsServer(TlsSettings(), CollectedAudit(), lambda: None)) as port:
        answer = httpx.get(f"http://127.0.0.1:{port}/whoami", timeout=10)
    assert answer.json()["scheme"] == "http" and answer.json()["dn"] is None


def test_ssl_options_are_refused(pki: PkiFiles) -> None:
    with pytest.raises(ValueError, match="ssl_certfile"):
        MutualTlsServer(mutual(pki), CollectedAudit(), lambda: None).config(APP, ssl_certfile="x.pem")


# -- our outgoing calls --------------------------------------------------------------------------


def test_outgoing_client_calls_a_whitelisted_box_and_refuses_others(pki: PkiFiles) -> None:
    org = pki.organisation
    outbound = ListInForce(hosts={"localhost"})
    with (
        serving(start(pki, CollectedAudit(), ListInForce({OUR_DN}))) as port,
        peer_client(org.auth_cert, org.auth_key, pki.ca_bundle, lambda: outbound) as client,
    ):
        assert client.get(f"https://localhost:{port}/whoami").json()["dn"] == OUR_DN
        with pytest.raises(PeerRefused, match=r"127\.0\.0\.1 is not a DRIMbox"):
            client.get(f"https://127.0.0.1:{port}/whoami")
    with (
        closed_port() as port,
        peer_client(org.auth_cert, org.auth_key, pki.ca_bundle, lambda: None) as client,
        pytest.raises(PeerRefused, match="no valid DRIM-M whitelist"),  # raised before any connection
    ):
        client.get(f"https://localhost:{port}/whoami")


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port nobody listens on: connecting would fail with ConnectError, not PeerRefused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
