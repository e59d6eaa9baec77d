"""Builds the token verifier the settings ask for, behind the verdict cache."""

from __future__ import annotations

import time

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
    if settings.verifier == "jwks":
        inner = JwksVerifier(settings, clock=clock)
    else:
        inner = IntrospectionVerifier(settings, clock=clock)
    return CachingVerifier(inner, settings.cache_seconds, clock)
