"""Bearer tokens checked as signed JWTs against the provider's published keys (JWKS, RFC 7517).

The alternative to introspection (`auth.verifier = "jwks"`): no call to the provider per token,
but a revoked token stays valid until its `exp`. Only asymmetric algorithms are accepted: with
`none` anyone could mint a token, and with HS* the "key" would be a secret we would have to share.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
import jwt

from drimbox.auth.breaker import CircuitBreaker, server_error
from drimbox.auth.cache import LEEWAY_SECONDS, Clock, check_bearer_syntax, json_object, number_claim, subject_of
from drimbox.auth.identity import professional_identity
from drimbox.config import AuthSettings
from drimbox.errors import ConfigError, TokenRejected, VerifierUnavailable
from drimbox.ports import Principal

ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}  # accepted `alg` -> the JWK `kty` it needs
REFETCH_SECONDS = 30.0  # an unknown `kid` refetches the JWKS at most this often
MAX_KEY_AGE_SECONDS = 3600.0  # keys are refetched this often anyway, so a withdrawn key goes away


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str
    key: Any  # a cryptography public key, as PyJWK builds it


class JwksVerifier:
    """Validates RS256/ES256 JWTs: signature, `iss`, `aud` (when configured), `exp`, `nbf`.

    The key set is fetched on first use (so the box starts while PSC is down), kept for an hour,
    and refetched when a token names an unknown `kid` (the provider rotated its keys), but at most
    once per 30 s so forged `kid`s cannot turn us into a flood of JWKS requests.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        client: httpx.Client | None = None,
        clock: Clock = time.time,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not (settings.jwks_url and settings.issuer):
            raise ConfigError("auth.jwks_url and auth.issuer: required by the jwks verifier")
        self._settings = settings
        self._clock = clock
        self._client = client or httpx.Client(timeout=settings.timeout_seconds, verify=_tls_context(settings))
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self._keys_at: float | None = None
        self._last_attempt = -math.inf
        self._last_error = "not fetched yet"
        self._breaker = breaker or CircuitBreaker("Pro Santé Connect JWKS", clock=clock)

    def verify(self, token: str) -> Principal:
        """The professional `token` speaks for; TokenRejected or VerifierUnavailable otherwise."""
        alg, kid = _header(check_bearer_syntax(token))
        claims = self._decode(token, self._key_for(kid, alg), alg)
        client_id = claims.get("azp", claims.get("client_id"))
        profession, structure = professional_identity(claims)  # when the provider puts SubjectRefPro in tokens
        return Principal(
            subject=subject_of(claims),
            client_id=client_id if isinstance(client_id, str) else "",
            expires_at=number_claim(claims, "exp"),
            claims=MappingProxyType(claims),
            profession=profession,
            structure=structure,
        )

    def health(self) -> dict[str, object]:
        """The circuit breaker's state, for the status page."""
        return {"verifier": "jwks"} | self._breaker.health()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> JwksVerifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        audience = self._settings.audience
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._settings.issuer,
                audience=audience or None,
                # Times are checked below against our own clock (tests move it).
                options={
                    "require": ["exp", "iss"],
                    "verify_aud": bool(audience),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("token signature does not verify") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected(f"token not issued by {self._settings.issuer!r}") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected(f"token not meant for audience {audience!r}") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"malformed token: {exc}") from exc
        self._check_times(claims)
        kind = claims.get("typ")
        if kind is not None and kind != "Bearer":  # Keycloak (PSC) marks id tokens "ID", access tokens "Bearer"
            raise TokenRejected(f"token of type {kind!r} is not an access token")
        return claims

    def _check_times(self, claims: Mapping[str, object]) -> None:
        now = self._clock()
        exp = number_claim(claims, "exp")
        if exp is None or exp + LEEWAY_SECONDS <= now:
            raise TokenRejected("token expired")
        nbf = number_claim(claims, "nbf")
        if nbf is not None and nbf > now + LEEWAY_SECONDS:
            raise TokenRejected("token not yet valid (nbf in the future)")

    def _key_for(self, kid: str | None, alg: str) -> Any:
        """The published key for (`kid`, `alg`), refetching the key set when it is old or lacks it."""
        with self._lock:  # held across the fetch: concurrent requests wait for one download
            now = self._clock()
            known = _pick(self._keys, kid, alg)
            stale = self._keys_at is None or now - self._keys_at >= MAX_KEY_AGE_SECONDS
            if known is None or stale:
                # An old key set still serves a key it has if the provider is down; an unknown
                # key with the provider down is "cannot tell", not "forged".
                self._refresh(now, must=known is None)
                known = _pick(self._keys, kid, alg)
            if self._keys_at is None:
                raise VerifierUnavailable(f"JWKS {self._settings.jwks_url} unavailable: {self._last_error}")
            if known is None:
                raise TokenRejected(f"token signed with a key the provider does not publish (kid {kid!r}, {alg})")
            return known.key

    def _refresh(self, now: float, *, must: bool) -> None:
        if now - self._last_attempt < REFETCH_SECONDS:
            return
        self._last_attempt = now
        try:
            self._keys = self._download()
        except VerifierUnavailable as exc:
            self._last_error = str(exc)
            if must:
                raise
            return
        self._keys_at = now

    def _download(self) -> list[_Key]:
        url = self._settings.jwks_url
        try:
            response = self._breaker.call(
                lambda: self._client.get(url, headers={"Accept": "application/json"}), server_error
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise VerifierUnavailable(f"JWKS {url} unreachable: {exc!r}") from exc
        entries = json_object(response, f"JWKS {url}").get("keys")
        if not isinstance(entries, list):
            raise VerifierUnavailable(f"JWKS {url} has no 'keys' list")
        keys = [key for key in map(_parse_jwk, entries) if key is not None]
        if not keys:
            raise VerifierUnavailable(f"JWKS {url} publishes no RS256 or ES256 signing key")
        return keys


def _header(token: str) -> tuple[str, str | None]:
    """(`alg`, `kid`) from the unverified header, refusing any algorithm but RS256 and ES256."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenRejected("bearer token is not a JWT") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise TokenRejected(f"token algorithm {alg!r} not accepted (only RS256, ES256)")
    if kid is not None and not isinstance(kid, str):
        raise TokenRejected("token header 'kid' is not a string")
    return alg, kid


def _parse_jwk(entry: object) -> _Key | None:
    """A usable signing key from one JWK, or None (encryption keys, other types and curves)."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    kid = entry.get("kid")
    alg = next((name for name, kty in ALGORITHMS.items() if kty == entry.get("kty")), None)
    if alg is None or entry.get("alg", alg) != alg or not (kid is None or isinstance(kid, str)):
        return None
    if alg == "ES256" and entry.get("crv") != "P-256":
        return None
    try:
        return _Key(kid=kid, alg=alg, key=jwt.PyJWK(entry, algorithm=alg).key)
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        return None


def _pick(keys: list[_Key], kid: str | None, alg: str) -> _Key | None:
    """The key named `kid`; a token without `kid` may use the only key of its algorithm."""
    if kid is not None:
        return next((key for key in keys if key.kid == kid and key.alg == alg), None)
    candidates = [key for key in keys if key.alg == alg]
    return candidates[0] if len(candidates) == 1 else None


def _tls_context(settings: AuthSettings) -> ssl.SSLContext | bool:
    if settings.ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"auth.ca_bundle: cannot load {settings.ca_bundle}: {exc}") from exc
