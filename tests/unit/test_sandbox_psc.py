"""The Pro Santé Connect sandbox over real sockets: the authorization code flow end to end, the
requests a strict provider refuses, and tls_client_auth over real mutual TLS with the sandbox PKI."""

from __future__ import annotations

import base64
import datetime
import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.types import Options

from drimbox.auth import IntrospectionVerifier, JwksVerifier
from drimbox.config import AuthSettings
from drimbox.errors import TokenRejected
from drimbox.sandbox.http import serve_in_thread
from drimbox.sandbox.oidc import PRACTITIONERS, PscSandbox, SandboxClient, _same_dn
from drimbox.sandbox.pki import OrganisationFiles, PkiFiles, create_pki, issue_organisation
from tests.support.clock import START, FakeClock

REDIRECT = "http://127.0.0.1:9/callback"
VIEWER = SandboxClient("viewer-app", "viewer-secret", (REDIRECT,))
BOX = SandboxClient("drimbox-source", "box-secret")
VERIFIER = "k" * 43 + "-._~verifier"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
HELENE, FRANCOIS = PRACTITIONERS


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def psc(clock: FakeClock) -> Iterator[PscSandbox]:
    sandbox = PscSandbox(clients=[VIEWER, BOX], clock=clock)
    served = sandbox.serve()
    yield sandbox
    served.stop()


@pytest.fixture
def http(psc: PscSandbox, clock: FakeClock) -> Iterator[httpx.Client]:
    clock.now = START
    with httpx.Client(base_url=psc.issuer, follow_redirects=False, timeout=5) as client:
        yield client


def authorize(http: httpx.Client, **changes: str | None) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": VIEWER.client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid scope_all",
        "state": "état-42",
        "nonce": "n-0S6_WzA2Mj",
        "acr_values": "eidas1",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    } | changes
    return http.get("/auth", params={name: value for name, value in params.items() if value is not None})


def redirected(response: httpx.Response) -> dict[str, str]:
    """The parameters a /auth answer sends back to the client through its redirect_uri."""
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return {name: values[0] for name, values in parse_qs(location.query).items()}


def exchange(http: httpx.Client, code: str, **changes: str | None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": VERIFIER}
    form = {name: value for name, value in (form | changes).items() if value is not None}
    return http.post("/token", data=form, auth=(VIEWER.client_id, VIEWER.client_secret))


def introspect(http: httpx.Client, token: str) -> dict[str, object]:
    response = http.post("/token/introspect", data={"token": token}, auth=(BOX.client_id, BOX.client_secret))
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def error_of(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    assert "location" not in response.headers
    error: str = response.json()["error"]
    return error


def test_discovery_names_every_endpoint(psc: PscSandbox, http: httpx.Client) -> None:
    document = http.get("/.well-known/openid-configuration").json()
    assert document["issuer"] == psc.issuer
    for key, path in [("token_endpoint", "/token"), ("introspection_endpoint", "/token/introspect")]:
        assert document[key] == f"{psc.issuer}{path}"
    keys = http.get(document["jwks_uri"]).json()["keys"]
    assert [(key["kid"], key["kty"], key["alg"]) for key in keys] == [(psc.kid, "RSA", "RS256")]


def test_authorization_code_flow_end_to_end(psc: PscSandbox, http: httpx.Client) -> None:
    answer = redirected(authorize(http))
    assert answer["state"] == "état-42" and answer["iss"] == psc.issuer
    response = exchange(http, answer["code"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == psc.token_seconds

    public_key = jwt.PyJWK(psc.jwk).key
    times: Options = {"verify_exp": False, "verify_iat": False}  # the sandbox runs on a fake clock
    id_token = jwt.decode(tokens["id_token"], public_key, ["RS256"], audience=VIEWER.client_id, options=times)
    assert id_token["nonce"] == "n-0S6_WzA2Mj" and id_token["SubjectNameID"] == HELENE.subject_name_id
    access = jwt.decode(tokens["access_token"], public_key, ["RS256"], options=times | Options(verify_aud=False))
    assert (access["iss"], access["sub"], access["nonce"]) == (psc.issuer, HELENE.sub, "n-0S6_WzA2Mj")
    assert access["exp"] == int(START) + psc.token_seconds

    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    profile = http.get("/userinfo", headers=bearer).json()
    assert profile["SubjectNameID"] == "810000000001"
    assert (profile["given_name"], profile["family_name"]) == ("Hélène", "Lefèvre")
    [practice] = profile["SubjectRefPro"]["exercices"]
    assert (practice["codeProfession"], practice["codeSavoirFaire"], practice["nomDexercice"]) == (
        "10",
        "SM44",
        "Lefèvre",
    )
    assert practice["activities"][0]["codeSecteurDactivite"] == "SA07"

    state = introspect(http, tokens["access_token"])
    assert state["active"] is True and state["SubjectNameID"] == "810000000001"
    assert (state["client_id"], state["iss"], state["token_type"]) == (VIEWER.client_id, psc.issuer, "Bearer")

    revoke = http.post("/revoke", data={"token": tokens["access_token"]}, auth=(VIEWER.client_id, VIEWER.client_secret))
    assert revoke.status_code == 200
    assert introspect(http, tokens["access_token"]) == {"active": False}
    assert http.get("/userinfo", headers=bearer).status_code == 401


def test_flow_tokens_pass_our_verifiers(psc: PscSandbox, http: httpx.Client, clock: FakeClock) -> None:
    tokens = exchange(http, redirected(authorize(http, login_hint=FRANCOIS.subject_name_id))["code"]).json()
    settings = AuthSettings(
        introspection_url=f"{psc.issuer}/token/introspect", client_id=BOX.client_id, client_secret=BOX.client_secret
    )
    with IntrospectionVerifier(settings, clock=clock) as verifier:
        assert verifier.verify(tokens["access_token"]).subject == FRANCOIS.subject_name_id
        with pytest.raises(TokenRejected):  # an id token is not an access token
            verifier.verify(tokens["id_token"])
    jwks = AuthSettings(verifier="jwks", jwks_url=f"{psc.issuer}/jwks", issuer=psc.issuer, audience=VIEWER.client_id)
    with JwksVerifier(jwks, clock=clock) as verifier:
        assert verifier.verify(tokens["access_token"]).subject == FRANCOIS.subject_name_id
        with pytest.raises(TokenRejected, match="type 'ID' is not an access token"):
            verifier.verify(tokens["id_token"])


def test_client_secret_post_is_accepted_but_not_two_methods(http: httpx.Client) -> None:
    code = redirected(authorize(http, code_challenge=None, code_challenge_method=None))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    credentials = {"client_id": VIEWER.client_id, "client_secret": VIEWER.client_secret}
    both = http.post("/token", data=form | credentials, auth=(VIEWER.client_id, VIEWER.client_secret))
    assert error_of(both) == "invalid_request"
    assert http.post("/token", data=form | credentials).status_code == 200


def test_reused_code_is_refused_and_revokes_its_tokens(http: httpx.Client) -> None:
    code = redirected(authorize(http))["code"]
    first = exchange(http, code).json()
    assert error_of(exchange(http, code)) == "invalid_grant"
    assert introspect(http, first["access_token"]) == {"active": False}


def test_expired_code_is_refused(http: httpx.Client, clock: FakeClock, psc: PscSandbox) -> None:
    code = redirected(authorize(http))["code"]
    clock.now += psc.code_seconds
    assert error_of(exchange(http, code)) == "invalid_grant"


def test_wrong_redirect_uri_is_refused(http: httpx.Client) -> None:
    assert error_of(authorize(http, redirect_uri="http://evil.example/callback")) == "invalid_request"
    code = redirected(authorize(http))["code"]
    assert error_of(exchange(http, code, redirect_uri="http://127.0.0.1:9/other")) == "invalid_grant"


def test_unknown_client_is_refused(http: httpx.Client) -> None:
    assert error_of(authorize(http, client_id="intruder")) == "unauthorized_client"
    code = redirected(authorize(http))["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": VERIFIER}
    response = http.post("/token", data=form, auth=("intruder", "guess"))
    assert error_of(response, 401) == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    wrong_secret = http.post("/token", data=form, auth=(VIEWER.client_id, "guess"))
    assert error_of(wrong_secret, 401) == "invalid_client"
    assert exchange(http, code).status_code == 200  # the failed attempts did not burn the code


@pytest.mark.parametrize(
    ("verifier", "error"),
    [("x" * 43, "invalid_grant"), (None, "invalid_grant"), ("short", "invalid_grant")],
)
def test_pkce_verifier_must_match(http: httpx.Client, verifier: str | None, error: str) -> None:
    code = redirected(authorize(http))["code"]
    assert error_of(exchange(http, code, code_verifier=verifier)) == error


def test_verifier_without_challenge_is_refused(http: httpx.Client) -> None:
    code = redirected(authorize(http, code_challenge=None, code_challenge_method=None))["code"]
    assert error_of(exchange(http, code)) == "invalid_request"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"nonce": None}, "invalid_request"),
        ({"state": ""}, "invalid_request"),
        ({"acr_values": "eidas2"}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"login_hint": "899999999999"}, "invalid_request"),
    ],
)
def test_bad_authorization_requests_go_back_with_an_error(
    http: httpx.Client, changes: dict[str, str | None], error: str
) -> None:
    answer = redirected(authorize(http, **changes))
    assert answer["error"] == error and "code" not in answer
    assert answer.get("state") == ("état-42" if changes.get("state", "kept") else None)


def test_unknown_and_repeated_parameters_are_refused(http: httpx.Client) -> None:
    assert error_of(authorize(http, prompt="none")) == "invalid_request"
    query = f"client_id={VIEWER.client_id}&client_id={VIEWER.client_id}&redirect_uri={REDIRECT}"
    assert error_of(http.get(f"/auth?{query}")) == "invalid_request"
    form = {"grant_type": "authorization_code", "code": "x", "redirect_uri": REDIRECT, "extra": "1"}
    assert error_of(http.post("/token", data=form, auth=(VIEWER.client_id, VIEWER.client_secret))) == "invalid_request"
    as_json = http.post("/token", json=form, auth=(VIEWER.client_id, VIEWER.client_secret))
    assert error_of(as_json) == "invalid_request"
    assert error_of(exchange(http, "unknown-code")) == "invalid_grant"
    grant = {"grant_type": "client_credentials", "code": "x", "redirect_uri": REDIRECT}
    response = http.post("/token", data=grant, auth=(VIEWER.client_id, VIEWER.client_secret))
    assert error_of(response) == "unsupported_grant_type"


def test_introspection_needs_client_authentication(psc: PscSandbox, http: httpx.Client, clock: FakeClock) -> None:
    token = psc.issue_token()
    assert error_of(http.post("/token/introspect", data={"token": token}), 401) == "invalid_client"
    assert error_of(http.post("/token/introspect", data={"token": token}, auth=(BOX.client_id, "nope")), 401)
    assert introspect(http, token)["active"] is True
    assert introspect(http, "not-a-token") == {"active": False}
    clock.now += psc.token_seconds
    assert introspect(http, token) == {"active": False}


def test_revoke_refuses_another_clients_token(psc: PscSandbox, http: httpx.Client) -> None:
    token = psc.issue_token(client_id=BOX.client_id)
    response = http.post("/revoke", data={"token": token}, auth=(VIEWER.client_id, VIEWER.client_secret))
    assert error_of(response) == "unauthorized_client"
    assert introspect(http, token)["active"] is True


def test_userinfo_needs_a_bearer_token(psc: PscSandbox, http: httpx.Client) -> None:
    missing = http.get("/userinfo")
    assert missing.status_code == 401 and "error=" not in missing.headers["www-authenticate"]
    wrong = http.get("/userinfo", headers={"Authorization": "Bearer abc"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    token = psc.issue_token(FRANCOIS.subject_name_id)
    profile = http.get("/userinfo", headers={"Authorization": f"Bearer {token}"}).json()
    assert profile["SubjectRefPro"]["exercices"][0]["activities"][0]["raisonSocialeSite"] == "Clinique Sainte-Thérèse"


def test_issue_token_refuses_unknown_practitioners(psc: PscSandbox) -> None:
    with pytest.raises(ValueError, match="810000000001"):
        psc.issue_token("899999999999")


def test_serve_in_thread_stops_and_frees_the_port(psc: PscSandbox) -> None:
    port, stop = serve_in_thread(psc.app)
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{port}/jwks").status_code == 200
    stop()
    stop()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_introspection_profile_and_outage_switches(psc: PscSandbox, http: httpx.Client) -> None:
    token = psc.issue_token(FRANCOIS.subject_name_id)
    assert "SubjectRefPro" not in introspect(http, token)  # the default: the profile is userinfo's
    psc.introspection_profile = True
    try:
        assert introspect(http, token)["SubjectRefPro"] == FRANCOIS.userinfo()["SubjectRefPro"]
    finally:
        psc.introspection_profile = False
    psc.failing_status = 503
    try:
        response = http.post("/token/introspect", data={"token": token}, auth=(BOX.client_id, BOX.client_secret))
        assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
    finally:
        psc.failing_status = None
    assert introspect(http, token)["active"] is True


# -- tls_client_auth (RFC 8705 §2.1) over real mutual TLS ---------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), "1130012345")


@pytest.fixture(scope="module")
def other_structure(pki: PkiFiles) -> OrganisationFiles:
    return issue_organisation(pki.folder, "229900000000", "CLINIQUE VOISINE")


@pytest.fixture(scope="module")
def tls_psc(pki: PkiFiles, clock: FakeClock) -> Iterator[PscSandbox]:
    box = SandboxClient.with_certificate("DRIMbox", pki.organisation.auth_cert)
    sandbox = PscSandbox(clients=[box, BOX], clock=clock)
    served = sandbox.serve(certfile=pki.server_cert, keyfile=pki.server_key, client_ca=pki.ca_bundle)
    yield sandbox
    served.stop()


def tls_client(pki: PkiFiles, organisation: OrganisationFiles | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    if organisation is not None:
        context.load_cert_chain(organisation.auth_cert, organisation.auth_key)
    return httpx.Client(verify=context, timeout=5)


def test_registered_subject_is_that_of_the_org_certificate(pki: PkiFiles) -> None:
    client = SandboxClient.with_certificate("DRIMbox", pki.organisation.auth_cert)
    assert client.tls_client_auth_subject_dn == "CN=DRIMbox,OU=1130012345,O=CABINET D'IMAGERIE SANDBOX,C=FR"
    assert not client.client_secret


def test_certificate_client_must_present_its_own_certificate(
    tls_psc: PscSandbox, pki: PkiFiles, other_structure: OrganisationFiles, clock: FakeClock
) -> None:
    clock.now = START
    tls_psc.calls.clear()
    token = tls_psc.issue_token()
    url = f"{tls_psc.issuer}/token/introspect"
    form = {"token": token, "client_id": "DRIMbox"}
    with tls_client(pki, pki.organisation) as ours:
        answer = ours.post(url, data=form)
        assert answer.status_code == 200 and answer.json()["active"] is True
        # A certificate does not replace a secret, and a secret does not replace the certificate.
        assert error_of(ours.post(url, data={"token": token}), 401) == "invalid_client"
        assert error_of(ours.post(url, data=form | {"client_secret": "x"}), 401) == "invalid_client"
    with tls_client(pki, None) as anonymous:
        refused = anonymous.post(url, data=form)
        assert error_of(refused, 401) == "invalid_client" and "none presented" in refused.json()["error_description"]
        # Clients with a secret, and everything that is not client authentication, need no certificate.
        assert anonymous.post(url, data={"token": token}, auth=(BOX.client_id, BOX.client_secret)).status_code == 200
        assert anonymous.get(f"{tls_psc.issuer}/jwks").status_code == 200
    with tls_client(pki, other_structure) as neighbour:  # same CA, another structure's certificate
        refused = neighbour.post(url, data=form)
        assert error_of(refused, 401) == "invalid_client" and "not the one registered" in refused.text
    assert tls_psc.calls["/token/introspect"] == 6


def test_same_subject_from_another_ca_fails_the_handshake(tls_psc: PscSandbox, pki: PkiFiles, tmp_path: Path) -> None:
    """A self-signed certificate copying our subject DN: the DN alone is no credential."""
    subject = x509.load_pem_x509_certificates(pki.organisation.auth_cert.read_bytes())[0].subject
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    forged = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "forged.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    (tmp_path / "forged.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    context.load_cert_chain(tmp_path / "forged.pem", tmp_path / "forged.key")
    tls_psc.calls.clear()
    with httpx.Client(verify=context, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.post(f"{tls_psc.issuer}/token/introspect", data={"token": "x", "client_id": "DRIMbox"})
    assert not tls_psc.calls


@pytest.mark.parametrize(
    ("registered", "matches"),
    [
        ("CN=DRIMbox,OU=1130012345,O=CABINET D'IMAGERIE SANDBOX,C=FR", True),
        ("CN=drimbox,OU=1130012345,O=Cabinet d'imagerie  sandbox,C=fr", True),  # RFC 4517 caseIgnoreMatch
        ("CN=DRIMbox,OU=229900000000,O=CABINET D'IMAGERIE SANDBOX,C=FR", False),
        ("C=FR,O=CABINET D'IMAGERIE SANDBOX,OU=1130012345,CN=DRIMbox", False),  # order is part of a DN
        ("CN=DRIMbox", False),
        ("not a DN", False),
        ("", False),
    ],
)
def test_subject_dn_comparison(registered: str, matches: bool) -> None:
    presented = "CN=DRIMbox,OU=1130012345,O=CABINET D'IMAGERIE SANDBOX,C=FR"
    assert _same_dn(presented, registered) is matches
