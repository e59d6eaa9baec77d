"""Token introspection at Pro Santé Connect (RFC 7662), the way DRIM-M A7 expects a source box to
check the bearer token a remote professional's viewer sends.

PSC is the only party that knows whether a token was revoked (the professional logged out, the
card was withdrawn), which signature checks alone cannot tell; hence introspection is the default
and the verdict cache (`cache.py`) keeps its cost down, and a circuit breaker (`breaker.py`) keeps
a PSC outage from costing a timeout per request.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import quote_plus

import httpx

from drimbox.auth.breaker import CircuitBreaker, server_error
from drimbox.auth.cache import LEEWAY_SECONDS, Clock, check_bearer_syntax, json_object, number_claim, subject_of
from drimbox.auth.identity import professional_identity
from drimbox.config import AuthSettings
from drimbox.errors import ConfigError, TokenRejected, VerifierUnavailable
from drimbox.ports import Principal


class IntrospectionVerifier:
    """Asks the introspection endpoint about each token (RFC 7662 §2.1).

    Our client authenticates with its certificate when `client_certificate` is set (RFC 8705
    tls_client_auth, the ORG_AUTH_CLI certificate PSC asks of DRIM-M boxes, with `client_id` in
    the form), else with HTTP Basic when a secret is set (RFC 6749 §2.3.1). The endpoint refusing
    *us* (401/403) is our misconfiguration, not the user's fault, so it is `VerifierUnavailable`.

    When the answer lacks `SubjectRefPro` and `userinfo_url` is set, the userinfo endpoint is asked
    with the token itself for the professional's profession and structure (`Principal.profession`,
    `Principal.structure`). Both calls go through one circuit breaker: they reach one provider.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        client: httpx.Client | None = None,
        clock: Clock = time.time,
        userinfo_url: str = "",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """`client` replaces the one built from the settings (its TLS setup is then the caller's;
        Basic client authentication is still added per request); `clock` lets tests move time;
        `breaker` replaces the default one (5 consecutive failures open it for 30 s)."""
        if not settings.introspection_url:
            raise ConfigError("auth.introspection_url: required by the introspection verifier")
        self._settings = settings
        self._clock = clock
        self._userinfo_url = userinfo_url
        self._breaker = breaker or CircuitBreaker("Pro Santé Connect introspection", clock=clock)
        self._auth = _basic_auth(settings)
        # Without Basic, the client_id goes in the form: mTLS (RFC 8705 §2) or a public client.
        self._form_client_id = "" if self._auth is not None else settings.client_id
        self._client = client or httpx.Client(timeout=settings.timeout_seconds, verify=_tls_context(settings))

    def verify(self, token: str) -> Principal:
        """The professional `token` speaks for; TokenRejected or VerifierUnavailable otherwise."""
        form = {"token": check_bearer_syntax(token), "token_type_hint": "access_token"}
        if self._form_client_id:
            form["client_id"] = self._form_client_id
        answer = self._ask(form)
        principal = principal_from_introspection(answer, self._settings, self._clock())
        if "SubjectRefPro" in answer or not self._userinfo_url:
            return principal
        return _with_profile(principal, self._userinfo(token, answer))

    def health(self) -> dict[str, object]:
        """The circuit breaker's state, for the status page."""
        return {"verifier": "introspection"} | self._breaker.health()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> IntrospectionVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ask(self, form: dict[str, str]) -> Mapping[str, object]:
        url = self._settings.introspection_url
        auth = self._auth or httpx.USE_CLIENT_DEFAULT
        try:
            response = self._breaker.call(
                lambda: self._client.post(url, data=form, auth=auth, headers={"Accept": "application/json"}),
                server_error,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise VerifierUnavailable(f"introspection endpoint {url} unreachable: {exc!r}") from exc
        if response.status_code in (401, 403):
            raise VerifierUnavailable(
                f"introspection endpoint {url} refused our client credentials (HTTP {response.status_code}): "
                "check auth.client_id, auth.client_secret or auth.client_certificate"
            )
        return json_object(response, f"introspection endpoint {url}")

    def _userinfo(self, token: str, introspected: Mapping[str, object]) -> Mapping[str, object]:
        """The OIDC userinfo answer for `token` (OpenID Connect Core §5.3), checked to be about
        the professional the introspection named (§5.3.2: else it must not be used)."""
        url = self._userinfo_url
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            response = self._breaker.call(lambda: self._client.get(url, headers=headers), server_error)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise VerifierUnavailable(f"userinfo endpoint {url} unreachable: {exc!r}") from exc
        if response.status_code == 401:  # active a moment ago: revoked since
            raise TokenRejected("the provider's userinfo endpoint refused the token")
        profile = json_object(response, f"userinfo endpoint {url}")
        if not _same_subject(introspected, profile):
            raise VerifierUnavailable(f"userinfo endpoint {url} describes someone other than the token's subject")
        return profile


def principal_from_introspection(answer: Mapping[str, object], settings: AuthSettings, now: float) -> Principal:
    """Judge an RFC 7662 answer: only `"active": true`, unexpired, names someone, passes.

    `iss` and `aud` are compared only when the settings name them and the answer carries them:
    RFC 7662 makes both optional, and the endpoint is already the issuer's own.
    """
    if answer.get("active") is not True:
        raise TokenRejected("token is not active (expired, revoked or unknown to the provider)")
    exp = number_claim(answer, "exp")
    if exp is not None and exp <= now:
        raise TokenRejected("token expired")
    nbf = number_claim(answer, "nbf")
    if nbf is not None and nbf > now + LEEWAY_SECONDS:
        raise TokenRejected("token not yet valid (nbf in the future)")
    kind = answer.get("typ", answer.get("token_type"))
    if kind is not None and str(kind).lower() not in ("bearer", "access_token"):
        raise TokenRejected(f"a {str(kind)[:20]!r} token is not an access token")
    iss = answer.get("iss")
    if settings.issuer and iss is not None and iss != settings.issuer:
        raise TokenRejected(f"token issued by {iss!r}, not by {settings.issuer!r}")
    aud = answer.get("aud")
    if settings.audience and aud is not None and not _names_audience(aud, settings.audience):
        raise TokenRejected(f"token is not meant for audience {settings.audience!r}")
    client_id = answer.get("client_id")
    profession, structure = professional_identity(answer)
    return Principal(
        subject=subject_of(answer),
        client_id=client_id if isinstance(client_id, str) else "",
        expires_at=exp,
        claims=MappingProxyType(dict(answer)),
        profession=profession,
        structure=structure,
    )


def _with_profile(principal: Principal, profile: Mapping[str, object]) -> Principal:
    """`principal` completed by a userinfo answer; its `SubjectRefPro` joins the claims for the audit."""
    profession, structure = professional_identity(profile)
    claims = dict(principal.claims)
    if "SubjectRefPro" in profile:
        claims["SubjectRefPro"] = profile["SubjectRefPro"]
    return dataclasses.replace(principal, profession=profession, structure=structure, claims=MappingProxyType(claims))


def _same_subject(introspected: Mapping[str, object], profile: Mapping[str, object]) -> bool:
    """Both answers name the same person: every identifier both carry agrees, and there is one."""
    shared = [name for name in ("sub", "SubjectNameID") if name in introspected and name in profile]
    return bool(shared) and all(introspected[name] == profile[name] for name in shared)


def _names_audience(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and audience in aud


def _tls_context(settings: AuthSettings) -> ssl.SSLContext:
    """CA bundle when given (else certifi's, as httpx does), plus our client certificate for RFC 8705."""
    try:
        if settings.ca_bundle is not None:
            context = ssl.create_default_context(cafile=str(settings.ca_bundle))
        else:
            context = httpx.create_ssl_context()
        if settings.client_certificate is not None and settings.client_key is not None:
            context.load_cert_chain(str(settings.client_certificate), str(settings.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"auth.ca_bundle / auth.client_certificate / auth.client_key: cannot load: {exc}") from exc
    return context


def _basic_auth(settings: AuthSettings) -> httpx.BasicAuth | None:
    """client_secret_basic; RFC 6749 §2.3.1 form-encodes id and secret before Base64."""
    if settings.client_certificate is not None or not settings.client_secret:
        return None
    return httpx.BasicAuth(quote_plus(settings.client_id), quote_plus(settings.client_secret))
