"""Bearer tokens of remote professionals (DRIM-M A7), checked against Pro Santé Connect.

`make_verifier(settings.auth)` gives the one object the DICOMweb boundary calls: `verify(token)`
returns a `Principal` or raises `TokenRejected` (answer 401) or `VerifierUnavailable` (answer 503);
`health()` tells the status page whether Pro Santé Connect is being called (its circuit breaker).
"""

from drimbox.auth.breaker import CircuitBreaker
from drimbox.auth.cache import MAX_TOKEN_BYTES, CachingVerifier, check_bearer_syntax
from drimbox.auth.factory import make_verifier
from drimbox.auth.identity import professional_identity
from drimbox.auth.introspection import IntrospectionVerifier
from drimbox.auth.jwks import JwksVerifier

__all__ = [
    "MAX_TOKEN_BYTES",
    "CachingVerifier",
    "CircuitBreaker",
    "IntrospectionVerifier",
    "JwksVerifier",
    "check_bearer_syntax",
    "make_verifier",
    "professional_identity",
]
