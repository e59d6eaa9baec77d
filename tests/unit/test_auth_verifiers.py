"""Token verification (DRIM-M A7) against the PSC sandbox over real sockets: introspection, JWKS,
the professional's identity, the verdict cache, the circuit breaker, and the checks made before
any network call."""

from __future__ import annotations

import base64
import datetime
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from drimbox.auth import (
    CachingVerifier,
    CircuitBreaker,
    IntrospectionVerifier,
    JwksVerifier,
    make_verifier,
    professional_identity,
)
from drimbox.auth.breaker import server_error
from drimbox.config import AuthSettings
from drimbox.errors import TokenRejected, VerifierUnavailable
from drimbox.ports import Principal
from drimbox.sandbox.oidc import PRACTITIONERS, PscSandbox, SandboxClient, SandboxPractitioner
from tests.support.clock import START, FakeClock

# A secret with characters RFC 6749 §2.3.1 form-encodes inside Basic credentials.
BOX = SandboxClient("drimbox-source", "sécret+/: de test")
VIEWER = SandboxClient("viewer-app", "viewer-secret", ("http://127.0.0.1:9/callback",))
HELENE, FRANCOIS = (p.subject_name_id for p in PRACTITIONERS)
# A pharmacist: a profession without savoir-faire, practising in an officine.
PHARMACIST = SandboxPractitioner(
    "810000000003", "Zoé", "Martin", profession="21", specialty="", site_name="Pharmacie du Port", structure_id="0B123"
)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def psc(clock: FakeClock) -> Iterator[PscSandbox]:
    sandbox = PscSandbox(
        clients=[BOX, VIEWER], practitioners=[*PRACTITIONERS, PHARMACIST], clock=clock, token_seconds=300
    )
    served = sandbox.serve()
    yield sandbox
    served.stop()


@pytest.fixture(autouse=True)
def _fresh(clock: FakeClock, psc: PscSandbox) -> None:
    clock.now = START
    psc.calls.clear()
    psc.introspection_profile = False
    psc.failing_status = None


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def introspection_settings(psc: PscSandbox, secret: str = BOX.client_secret, **extra: Any) -> AuthSettings:
    url = f"{psc.issuer}/token/introspect"
    return AuthSettings(introspection_url=url, client_id=BOX.client_id, client_secret=secret, **extra)


def jwks_settings(psc: PscSandbox, **extra: Any) -> AuthSettings:
    return AuthSettings(verifier="jwks", jwks_url=f"{psc.issuer}/jwks", issuer=psc.issuer, **extra)


@pytest.fixture
def introspection(psc: PscSandbox, clock: FakeClock) -> Iterator[IntrospectionVerifier]:
    with IntrospectionVerifier(introspection_settings(psc), clock=clock) as verifier:
        yield verifier


@pytest.fixture
def jwks(psc: PscSandbox, clock: FakeClock) -> Iterator[JwksVerifier]:
    with JwksVerifier(jwks_settings(psc), clock=clock) as verifier:
        yield verifier


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compact(header: dict[str, object], claims: dict[str, object], sign: Callable[[bytes], bytes] | None = None) -> str:
    """A JWT built by hand, for what PyJWT refuses to make (an HMAC keyed with a public key)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'signature')}"


def forge(psc: PscSandbox, key: Any, alg: str = "RS256", kid: str | None = None, **claims: Any) -> str:
    """A token signed with `key`; claims given as None are left out."""
    body = {"iss": psc.issuer, "sub": "x", "SubjectNameID": HELENE, "exp": int(START) + 300, "jti": "forged"} | claims
    present = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(present, key, algorithm=alg, headers={"kid": kid or psc.kid})


# -- introspection ---------------------------------------------------------------------------------


def test_introspection_accepts_a_valid_token(psc: PscSandbox, introspection: IntrospectionVerifier) -> None:
    principal = introspection.verify(psc.issue_token(FRANCOIS, client_id=VIEWER.client_id))
    assert principal.subject == FRANCOIS
    assert principal.client_id == VIEWER.client_id
    assert principal.expires_at == int(START) + 300
    assert principal.claims["active"] is True and principal.claims["iss"] == psc.issuer
    assert psc.calls["/token/introspect"] == 1


def test_introspection_rejects_an_expired_token(
    psc: PscSandbox, introspection: IntrospectionVerifier, clock: FakeClock
) -> None:
    token = psc.issue_token(expires_in=60)
    clock.now += 61
    with pytest.raises(TokenRejected, match="not active"):
        introspection.verify(token)


def test_introspection_rejects_a_revoked_token(psc: PscSandbox, introspection: IntrospectionVerifier) -> None:
    token = psc.issue_token()
    assert introspection.verify(token).subject == HELENE
    assert psc.revoke(token)
    with pytest.raises(TokenRejected, match="not active"):
        introspection.verify(token)


def test_introspection_rejects_forged_and_unsigned_tokens(
    psc: PscSandbox, introspection: IntrospectionVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    for token in (forge(psc, other_key), forge(psc, None, alg="none")):
        with pytest.raises(TokenRejected, match="not active"):
            introspection.verify(token)
    assert psc.calls["/token/introspect"] == 2


@pytest.mark.parametrize(
    ("token", "reason"),
    [("", "empty"), ("a" * 8193, "longer than 8192"), ("abc def", "b64token"), ("tok€n", "b64token"), ("=abc", "b64")],
)
def test_malformed_tokens_are_rejected_before_any_call(
    psc: PscSandbox, introspection: IntrospectionVerifier, jwks: JwksVerifier, token: str, reason: str
) -> None:
    for verifier in (introspection, jwks):
        with pytest.raises(TokenRejected, match=reason):
            verifier.verify(token)
    assert not psc.calls


def test_wrong_client_secret_is_our_misconfiguration(psc: PscSandbox, clock: FakeClock) -> None:
    with (
        IntrospectionVerifier(introspection_settings(psc, secret="wrong"), clock=clock) as verifier,
        pytest.raises(VerifierUnavailable, match=r"refused our client credentials \(HTTP 401\).*client_secret"),
    ):
        verifier.verify(psc.issue_token())


def test_provider_down_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with (
        IntrospectionVerifier(AuthSettings(introspection_url=f"{url}/introspect", timeout_seconds=2)) as verifier,
        pytest.raises(VerifierUnavailable, match="unreachable"),
    ):
        verifier.verify("abc.def.ghi")
    token = compact({"alg": "RS256", "kid": "k1"}, {"iss": url, "exp": int(START) + 60})
    with JwksVerifier(AuthSettings(verifier="jwks", jwks_url=f"{url}/jwks", issuer=url)) as verifier:
        for _ in range(2):  # the second attempt is within 30 s: answered from the last failure
            with pytest.raises(VerifierUnavailable, match="unreachable"):
                verifier.verify(token)


@pytest.mark.parametrize(
    ("status", "body", "error", "reason"),
    [
        (200, b"<html>maintenance</html>", VerifierUnavailable, "other than JSON"),
        (200, b"[true]", VerifierUnavailable, "not an object"),
        (502, b"{}", VerifierUnavailable, "HTTP 502"),
        (200, b'{"active": "true", "sub": "x"}', TokenRejected, "not active"),
        (200, b'{"active": true}', TokenRejected, "no subject"),
        (200, b'{"active": true, "sub": "x", "exp": NaN}', TokenRejected, "not a number"),
        (200, b'{"active": true, "sub": "x", "exp": 1799999999}', TokenRejected, "expired"),
    ],
)
def test_introspection_answers_are_judged_strictly(
    status: int, body: bytes, error: type[Exception], reason: str
) -> None:
    """Answers the sandbox never gives; a mock transport stands in for a broken provider."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    settings = AuthSettings(introspection_url="http://psc.invalid/introspect")
    with (
        IntrospectionVerifier(settings, client=httpx.Client(transport=transport), clock=FakeClock()) as verifier,
        pytest.raises(error, match=reason),
    ):
        verifier.verify("token")


def test_introspection_sends_rfc7662_form_with_basic_auth(psc: PscSandbox) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"active": True, "SubjectNameID": HELENE, "sub": "uuid"})

    settings = introspection_settings(psc)
    with IntrospectionVerifier(settings, client=httpx.Client(transport=httpx.MockTransport(answer))) as verifier:
        assert verifier.verify("abc").subject == HELENE
    [request] = seen
    assert request.content == b"token=abc&token_type_hint=access_token"
    credentials = base64.b64encode(b"drimbox-source:s%C3%A9cret%2B%2F%3A+de+test").decode()
    assert request.headers["authorization"] == f"Basic {credentials}"


# -- JWKS ------------------------------------------------------------------------------------------


def test_jwks_accepts_a_valid_token(psc: PscSandbox, jwks: JwksVerifier) -> None:
    principal = jwks.verify(psc.issue_token(FRANCOIS))
    assert principal.subject == FRANCOIS and principal.client_id == BOX.client_id
    assert principal.claims["sub"] == PRACTITIONERS[1].sub
    jwks.verify(psc.issue_token())
    assert psc.calls["/jwks"] == 1  # keys are kept


def test_jwks_rejects_expired_tokens_after_the_leeway(psc: PscSandbox, jwks: JwksVerifier, clock: FakeClock) -> None:
    token = psc.issue_token(expires_in=60)
    clock.now += 60 + 29
    assert jwks.verify(token).subject == HELENE
    clock.now += 2
    with pytest.raises(TokenRejected, match="expired"):
        jwks.verify(token)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"}, "not issued by"),
        ({"exp": None}, "lacks the 'exp' claim"),
        ({"exp": "tomorrow"}, "not a number"),
        ({"nbf": int(START) + 120}, "not yet valid"),
        ({"SubjectNameID": None, "sub": None}, "no subject"),
    ],
)
def test_jwks_checks_claims(psc: PscSandbox, jwks: JwksVerifier, claims: dict[str, Any], reason: str) -> None:
    """Tokens signed with the provider's own key, so only the claim under test is wrong."""
    with pytest.raises(TokenRejected, match=reason):
        jwks.verify(forge(psc, psc._key, **claims))


def test_jwks_checks_the_audience_when_configured(psc: PscSandbox, clock: FakeClock) -> None:
    with JwksVerifier(jwks_settings(psc, audience="drimbox-source"), clock=clock) as verifier:
        assert verifier.verify(psc.issue_token(audience="drimbox-source")).subject == HELENE
        with pytest.raises(TokenRejected, match="audience"):
            verifier.verify(psc.issue_token(audience="another-box"))


def test_jwks_rejects_forged_none_and_hmac_tokens(
    psc: PscSandbox, jwks: JwksVerifier, other_key: rsa.RSAPrivateKey
) -> None:
    public_pem = psc._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    with pytest.raises(TokenRejected, match="signature does not verify"):
        jwks.verify(forge(psc, other_key))
    with pytest.raises(TokenRejected, match="algorithm 'none' not accepted"):
        jwks.verify(forge(psc, None, alg="none"))
    claims = {"iss": psc.issuer, "SubjectNameID": HELENE, "exp": int(START) + 60}
    confused = compact({"alg": "HS256", "kid": psc.kid}, claims, lambda data: hmac.digest(public_pem, data, "sha256"))
    with pytest.raises(TokenRejected, match="algorithm 'HS256' not accepted"):  # the RS/HS confusion attack
        jwks.verify(confused)
    with pytest.raises(TokenRejected, match="not a JWT"):
        jwks.verify("abc.def.ghi")


def test_unknown_kid_refetches_at_most_every_30_seconds(
    psc: PscSandbox, jwks: JwksVerifier, clock: FakeClock, other_key: rsa.RSAPrivateKey
) -> None:
    jwks.verify(psc.issue_token())
    clock.now += 31
    for _ in range(3):
        with pytest.raises(TokenRejected, match="does not publish"):
            jwks.verify(forge(psc, other_key, kid="rotated-key"))
    assert psc.calls["/jwks"] == 2
    clock.now += 31
    with pytest.raises(TokenRejected, match="does not publish"):
        jwks.verify(forge(psc, other_key, kid="rotated-key"))
    assert psc.calls["/jwks"] == 3


def test_jwks_accepts_es256_and_skips_unusable_keys() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    keys = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        public | {"kid": "enc", "use": "enc"},
        public | {"kid": "ec"},
    ]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"keys": keys}))
    settings = AuthSettings(verifier="jwks", jwks_url="https://psc.invalid/jwks", issuer="https://psc.invalid")
    claims = {"iss": "https://psc.invalid", "sub": "uuid", "exp": int(START) + 60}
    with JwksVerifier(settings, client=httpx.Client(transport=transport), clock=FakeClock()) as verifier:
        assert verifier.verify(jwt.encode(claims, key, "ES256", headers={"kid": "ec"})).subject == "uuid"
        with pytest.raises(TokenRejected, match="does not publish"):
            verifier.verify(jwt.encode(claims, key, "ES256", headers={"kid": "enc"}))


# -- the professional's identity (SubjectRefPro) ------------------------------------------------------


def test_identity_from_an_introspection_answer_that_carries_the_profile(
    psc: PscSandbox, introspection: IntrospectionVerifier
) -> None:
    psc.introspection_profile = True
    principal = introspection.verify(psc.issue_token(PHARMACIST.subject_name_id))
    assert (principal.subject, principal.profession, principal.structure) == ("810000000003", "21", "0B123")
    assert psc.calls["/userinfo"] == 0


def test_identity_from_userinfo_when_the_introspection_lacks_it(psc: PscSandbox, clock: FakeClock) -> None:
    userinfo = f"{psc.issuer}/userinfo"
    with IntrospectionVerifier(introspection_settings(psc), clock=clock, userinfo_url=userinfo) as verifier:
        principal = verifier.verify(psc.issue_token(FRANCOIS))
        assert (principal.subject, principal.profession, principal.structure) == (FRANCOIS, "10/SM44", "1130012345")
        assert principal.claims["SubjectRefPro"] == PRACTITIONERS[1].userinfo()["SubjectRefPro"]
        assert principal.claims["active"] is True  # the introspection answer is kept beside it
        assert psc.calls["/userinfo"] == 1
        psc.introspection_profile = True  # the answer has it: no second call
        assert verifier.verify(psc.issue_token(PHARMACIST.subject_name_id)).profession == "21"
        assert psc.calls["/userinfo"] == 1


def test_identity_is_empty_without_profile_nor_userinfo(psc: PscSandbox, introspection: IntrospectionVerifier) -> None:
    principal = introspection.verify(psc.issue_token())
    assert (principal.subject, principal.profession, principal.structure) == (HELENE, "", "")
    assert psc.calls["/userinfo"] == 0


@pytest.mark.parametrize(
    ("status", "body", "error", "reason"),
    [
        (401, {"error": "invalid_token"}, TokenRejected, "refused the token"),
        (502, {}, VerifierUnavailable, "HTTP 502"),
        (200, ["not", "an", "object"], VerifierUnavailable, "not an object"),
        (200, PRACTITIONERS[1].userinfo(), VerifierUnavailable, "someone other"),  # OIDC Core §5.3.2
        (200, {"given_name": "Hélène"}, VerifierUnavailable, "someone other"),  # names nobody
    ],
)
def test_userinfo_answers_are_judged(status: int, body: object, error: type[Exception], reason: str) -> None:
    """A provider whose userinfo misbehaves, which the sandbox never does."""
    helene = PRACTITIONERS[0]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/introspect":
            return httpx.Response(200, json={"active": True, "sub": helene.sub, "SubjectNameID": HELENE})
        assert request.headers["authorization"] == "Bearer the-token"
        return httpx.Response(status, json=body)

    settings = AuthSettings(introspection_url="http://psc.invalid/introspect")
    client = httpx.Client(transport=httpx.MockTransport(answer))
    userinfo = "http://psc.invalid/userinfo"
    with (
        IntrospectionVerifier(settings, client=client, clock=FakeClock(), userinfo_url=userinfo) as verifier,
        pytest.raises(error, match=reason),
    ):
        verifier.verify("the-token")


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (PRACTITIONERS[0].userinfo(), ("10/SM44", "1130012345")),
        (PHARMACIST.userinfo(), ("21", "0B123")),
        (
            {
                "SubjectRefPro": {
                    "exercices": [{"codeProfession": "10", "activities": [{"siretSite": "12345678900011"}]}]
                }
            },
            ("10", "12345678900011"),
        ),
        ({"SubjectRefPro": {"exercices": [{"codeProfession": " 40 ", "activities": []}]}}, ("40", "")),
        ({}, ("", "")),
        ({"SubjectRefPro": "10/SM44"}, ("", "")),
        ({"SubjectRefPro": {"exercices": []}}, ("", "")),
        ({"SubjectRefPro": {"exercices": {"codeProfession": "10"}}}, ("", "")),
        ({"SubjectRefPro": {"exercices": [{"codeSavoirFaire": "SM44", "activities": "1130012345"}]}}, ("", "")),
        ({"SubjectRefPro": {"exercices": [{"codeProfession": 10, "activities": [None]}]}}, ("", "")),
    ],
)
def test_professional_identity_reads_psc_shapes(profile: dict[str, object], expected: tuple[str, str]) -> None:
    assert professional_identity(profile) == expected


# -- cache -----------------------------------------------------------------------------------------


def test_cache_spares_the_second_call_but_never_outlives_exp(psc: PscSandbox, clock: FakeClock) -> None:
    settings = introspection_settings(psc, cache_seconds=600)
    verifier = make_verifier(settings, clock=clock)
    try:
        token = psc.issue_token(expires_in=120)
        assert verifier.verify(token).subject == HELENE
        clock.now += 100
        assert verifier.verify(token).subject == HELENE
        assert psc.calls["/token/introspect"] == 1
        clock.now += 20  # at exp: the cached verdict is dropped, the provider says inactive
        with pytest.raises(TokenRejected):
            verifier.verify(token)
        assert psc.calls["/token/introspect"] == 2
    finally:
        verifier.close()


def test_cache_seconds_bounds_reuse_and_rejections_are_not_cached(psc: PscSandbox, clock: FakeClock) -> None:
    verifier = make_verifier(introspection_settings(psc, cache_seconds=60), clock=clock)
    try:
        token = psc.issue_token()
        verifier.verify(token)
        clock.now += 61
        verifier.verify(token)
        assert psc.calls["/token/introspect"] == 2
        psc.revoke(token)
        clock.now += 61
        for _ in range(2):
            with pytest.raises(TokenRejected):
                verifier.verify(token)
        assert psc.calls["/token/introspect"] == 4
    finally:
        verifier.close()


def test_make_verifier_builds_a_cached_jwks_verifier(psc: PscSandbox, clock: FakeClock) -> None:
    verifier = make_verifier(jwks_settings(psc), clock=clock)
    try:
        assert isinstance(verifier.inner, JwksVerifier)
        assert verifier.verify(psc.issue_token(FRANCOIS)).subject == FRANCOIS
    finally:
        verifier.close()


class CountingVerifier:
    def __init__(self, expires_at: float | None = None) -> None:
        self.calls = 0
        self.expires_at = expires_at
        self.lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        with self.lock:
            self.calls += 1
        return Principal(subject=token, expires_at=self.expires_at)


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    inner = CountingVerifier()
    cache = CachingVerifier(inner, 60, FakeClock(), max_entries=2)
    for token in ("a", "b", "c", "b", "a"):
        cache.verify(token)
    assert len(cache) == 2
    assert inner.calls == 4  # "b" was cached, "a" had been evicted by "c"


def test_cache_is_thread_safe() -> None:
    inner = CountingVerifier(expires_at=START + 30)
    cache = CachingVerifier(inner, 60, FakeClock(), max_entries=50)
    tokens = [f"t{i}" for i in range(100)]

    def work() -> None:
        for token in tokens * 3:
            assert cache.verify(token).subject == token

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50


def test_token_already_expired_is_not_cached() -> None:
    inner = CountingVerifier(expires_at=START - 1)
    cache = CachingVerifier(inner, 60, FakeClock())
    cache.verify("a")
    cache.verify("a")
    assert inner.calls == 2 and len(cache) == 0


class ExpiringVerifier:
    """Accepts any token until `exp` on `clock`, as a provider would, and counts its calls."""

    def __init__(self, clock: FakeClock, exp: float) -> None:
        self.clock, self.exp, self.calls = clock, exp, 0

    def verify(self, token: str) -> Principal:
        self.calls += 1
        if self.clock() >= self.exp:
            raise TokenRejected("token expired")
        return Principal(subject=token, expires_at=self.exp)


def test_a_cached_token_past_exp_is_refused() -> None:
    clock = FakeClock()
    inner = ExpiringVerifier(clock, exp=START + 120)
    cache = CachingVerifier(inner, 600, clock)
    cache.verify("token")
    clock.now += 119.9
    assert cache.verify("token").subject == "token" and inner.calls == 1
    clock.now = START + 120
    assert len(cache) == 1  # still held, but no longer good
    with pytest.raises(TokenRejected, match="expired"):
        cache.verify("token")
    assert inner.calls == 2 and len(cache) == 0


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(max_entries=st.integers(1, 6), tokens=st.lists(st.sampled_from("abcdefghij"), max_size=40))
def test_the_cache_never_holds_more_than_max_entries(max_entries: int, tokens: list[str]) -> None:
    cache = CachingVerifier(CountingVerifier(), 60, FakeClock(), max_entries=max_entries)
    for token in tokens:
        assert cache.verify(token).subject == token
        assert len(cache) <= max_entries
    assert len(cache) == min(len(set(tokens)), max_entries)


# -- circuit breaker -------------------------------------------------------------------------------


def refused() -> str:
    raise httpx.ConnectError("connection refused")


def test_breaker_opens_after_consecutive_failures_and_a_trial_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("PSC", threshold=3, cool_down=30, clock=clock)
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            breaker.call(refused)
    assert breaker.call(lambda: "up") == "up"  # a success in between: failures must be consecutive
    for _ in range(3):
        with pytest.raises(httpx.ConnectError):
            breaker.call(refused)
    assert breaker.health() == {
        "state": "open",
        "consecutive_failures": 3,
        "last_error": "ConnectError('connection refused')",
        "retry_at": START + 30,
    }
    attempts: list[int] = []
    with pytest.raises(VerifierUnavailable, match=r"after 3 consecutive failures .*next attempt in 30 s"):
        breaker.call(lambda: attempts.append(1))
    clock.now += 29
    with pytest.raises(VerifierUnavailable, match="next attempt in 1 s"):
        breaker.call(lambda: attempts.append(1))
    assert not attempts  # refused without calling
    clock.now += 1
    with pytest.raises(httpx.ConnectError):  # the half-open trial fails: a full cool-down again
        breaker.call(refused)
    assert breaker.health()["state"] == "open" and breaker.health()["retry_at"] == START + 60
    clock.now += 30
    assert breaker.call(lambda: "back") == "back"
    assert breaker.health() == {
        "state": "closed",
        "consecutive_failures": 0,
        "last_error": "ConnectError('connection refused')",
        "retry_at": None,
    }


def test_breaker_counts_5xx_as_failures_and_other_answers_as_life() -> None:
    breaker = CircuitBreaker("PSC", threshold=2, cool_down=30, clock=FakeClock())
    assert breaker.call(lambda: httpx.Response(503), server_error).status_code == 503
    assert breaker.call(lambda: httpx.Response(401), server_error).status_code == 401
    assert breaker.health()["consecutive_failures"] == 0
    for status in (500, 504):
        breaker.call(lambda status=status: httpx.Response(status), server_error)
    assert breaker.health()["state"] == "open" and breaker.health()["last_error"] == "HTTP 504"


def test_half_open_breaker_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("PSC", threshold=1, cool_down=10, clock=clock)
    with pytest.raises(httpx.ConnectError):
        breaker.call(refused)
    clock.now += 10
    started, release, results = threading.Event(), threading.Event(), []

    def slow_trial() -> str:
        started.set()
        release.wait(10)
        return "up"

    trial = threading.Thread(target=lambda: results.append(breaker.call(slow_trial)))
    trial.start()
    try:
        assert started.wait(10)
        assert breaker.health()["state"] == "half-open"
        with pytest.raises(VerifierUnavailable, match="trial call is in progress"):
            breaker.call(lambda: "another")
    finally:
        release.set()
        trial.join(10)
    assert results == ["up"] and breaker.health()["state"] == "closed"


def test_introspection_breaker_opens_on_an_outage_and_closes_after_the_cool_down(
    psc: PscSandbox, clock: FakeClock
) -> None:
    verifier = make_verifier(introspection_settings(psc), clock=clock)
    try:
        token = psc.issue_token()
        psc.failing_status = 503
        for _ in range(5):
            with pytest.raises(VerifierUnavailable, match="HTTP 503"):
                verifier.verify(token)
        psc.failing_status = None
        with pytest.raises(VerifierUnavailable, match="suspended after 5 consecutive failures"):
            verifier.verify(token)
        assert psc.calls["/token/introspect"] == 5  # the sixth never left
        health = verifier.health()
        assert health["verifier"] == "introspection" and health["state"] == "open"
        assert (health["consecutive_failures"], health["last_error"], health["cached_verdicts"]) == (5, "HTTP 503", 0)
        clock.now += 30
        assert verifier.verify(token).subject == HELENE
        assert psc.calls["/token/introspect"] == 6
        assert verifier.health()["state"] == "closed" and verifier.health()["cached_verdicts"] == 1
    finally:
        verifier.close()


def test_our_refused_credentials_do_not_open_the_breaker(psc: PscSandbox, clock: FakeClock) -> None:
    """A 401 proves PSC is up; the operator must see 'check auth.client_secret', not 'PSC down'."""
    with IntrospectionVerifier(introspection_settings(psc, secret="wrong"), clock=clock) as verifier:
        for _ in range(6):
            with pytest.raises(VerifierUnavailable, match="refused our client credentials"):
                verifier.verify(psc.issue_token())
        assert psc.calls["/token/introspect"] == 6
        assert verifier.health()["state"] == "closed"


def test_jwks_download_goes_through_the_breaker(psc: PscSandbox, clock: FakeClock) -> None:
    breaker = CircuitBreaker("JWKS", threshold=2, cool_down=120, clock=clock)
    with JwksVerifier(jwks_settings(psc), clock=clock, breaker=breaker) as verifier:
        token = psc.issue_token(expires_in=600)
        psc.failing_status = 502
        for _ in range(2):
            with pytest.raises(VerifierUnavailable, match="HTTP 502"):
                verifier.verify(token)
            clock.now += 31  # past the JWKS refetch interval
        psc.failing_status = None
        with pytest.raises(VerifierUnavailable, match="suspended after 2 consecutive failures"):
            verifier.verify(token)
        assert psc.calls["/jwks"] == 2 and verifier.health()["state"] == "open"
        clock.now = START + 31 + 120
        assert verifier.verify(token).subject == HELENE
        assert psc.calls["/jwks"] == 3 and verifier.health() == {"verifier": "jwks"} | breaker.health()
        assert breaker.health()["state"] == "closed"


# -- mutual TLS (RFC 8705) -------------------------------------------------------------------------


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None and name == "127.0.0.1":
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encoding, fmt = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    key_path.write_bytes(key.private_bytes(encoding, fmt, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Sandbox IGC-Santé", ca_key, None)
    paths = {"ca": _write_pair(folder, "ca", ca, ca_key)[0]}
    for stem in ("127.0.0.1", "drimbox-mtls"):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[stem], paths[f"{stem}.key"] = _write_pair(
            folder, stem, _certificate(stem, key, (ca.subject, ca_key)), key
        )
    return paths


@pytest.fixture(scope="module")
def tls_psc(pki: dict[str, Path], clock: FakeClock) -> Iterator[PscSandbox]:
    sandbox = PscSandbox(
        clients=[SandboxClient("drimbox-mtls", tls_client_auth_subject_dn="CN=drimbox-mtls")], clock=clock
    )
    served = sandbox.serve(certfile=pki["127.0.0.1"], keyfile=pki["127.0.0.1.key"], client_ca=pki["ca"])
    yield sandbox
    served.stop()


def _mtls_settings(psc: PscSandbox, pki: dict[str, Path], with_certificate: bool) -> AuthSettings:
    return AuthSettings(
        introspection_url=f"{psc.issuer}/token/introspect",
        client_id="drimbox-mtls",
        client_certificate=pki["drimbox-mtls"] if with_certificate else None,
        client_key=pki["drimbox-mtls.key"] if with_certificate else None,
        ca_bundle=pki["ca"],
    )


def test_introspection_over_mutual_tls(tls_psc: PscSandbox, pki: dict[str, Path], clock: FakeClock) -> None:
    assert tls_psc.issuer.startswith("https://")
    token = tls_psc.issue_token()
    with IntrospectionVerifier(_mtls_settings(tls_psc, pki, with_certificate=True), clock=clock) as verifier:
        assert verifier.verify(token).subject == HELENE
    with (
        IntrospectionVerifier(_mtls_settings(tls_psc, pki, with_certificate=False), clock=clock) as verifier,
        pytest.raises(VerifierUnavailable),
    ):
        verifier.verify(token)
