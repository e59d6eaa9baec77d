"""Builds the token verifier the settings ask for, behind the verdict cache."""

from __future__ import annotations

import time

from drimbox.auth.breaker import CircuitBreaker
from drimbox.auth.cache import CachingVerifier, Clock
from drimbox.auth.introspection import IntrospectionVerifier
from drimbox.auth.jwks import JwksVerifier
from drimbox.config import AuthSettings


def make_verifier(settings: AuthSettings, *, clock: Clock = time.time) -> CachingVerifier:
    """The verifier for `auth.verifier`, wrapped in a cache of `auth.cache_seconds`.

    Returns the `CachingVerifier` itself (a `TokenVerifier`) so the daemon can `close()` it at
    shutdown, which closes the HTTP client underneath.
    """
    inner: IntrospectionVerifier | JwksVerifier
    breaker = CircuitBreaker(settings.verifier, threshold=settings.breaker_failures,
                             cool_down=settings.breaker_cool_down_seconds, clock=clock)  # fmt: skip
    if settings.verifier == "jwks":
        inner = JwksVerifier(settings, clock=clock, breaker=breaker)
    else:
        inner = IntrospectionVerifier(settings, clock=clock, userinfo_url=settings.userinfo_url, breaker=breaker)
    return CachingVerifier(inner, settings.cache_seconds, clock)
