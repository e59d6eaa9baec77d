"""What every verifier shares: the bearer syntax gate (RFC 6750), claim reading and the verdict cache.

The gate runs before any network call or hashing, so junk sent at the DICOMweb port costs a
regular expression, never a request to Pro Santé Connect.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import httpx

from drimbox.errors import TokenRejected, VerifierUnavailable
from drimbox.ports import Principal, TokenVerifier

MAX_TOKEN_BYTES = 8192
LEEWAY_SECONDS = 30.0  # clock skew tolerated on `exp` and `nbf` of a JWT, and on `nbf` when introspecting
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

Clock = Callable[[], float]


def check_bearer_syntax(token: str) -> str:
    """Return `token` if it can be an RFC 6750 bearer token, else raise TokenRejected.

    PSC access tokens are JWTs of 1-2 KiB; 8 KiB leaves room for many claims and keeps an
    attacker from making us hash or forward megabytes.
    """
    if not token:
        raise TokenRejected("empty bearer token")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"bearer token longer than {MAX_TOKEN_BYTES} bytes")
    if not _B64TOKEN.fullmatch(token):
        raise TokenRejected("bearer token has characters outside the RFC 6750 b64token set")
    return token


def json_object(response: httpx.Response, what: str) -> dict[str, object]:
    """The JSON object a provider endpoint answered with HTTP 200; anything else means the
    provider cannot tell us now (VerifierUnavailable), never that the token is bad."""
    if response.status_code != 200:
        raise VerifierUnavailable(f"{what} answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError as exc:
        raise VerifierUnavailable(f"{what} answered something other than JSON") from exc
    if not isinstance(answer, dict):
        raise VerifierUnavailable(f"{what} answered JSON that is not an object")
    return answer


def subject_of(claims: Mapping[str, object]) -> str:
    """PSC puts the professional's national id (IdNat_PS) in `SubjectNameID`; `sub` is its
    internal account id, used only when a provider has no SubjectNameID."""
    for name in ("SubjectNameID", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    raise TokenRejected("token names no subject (SubjectNameID or sub)")


def number_claim(claims: Mapping[str, object], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2) as a float, None when absent; a JSON `true` is no date."""
    value = claims.get(name)
    if value is None:
        return None
    # Python's json module reads NaN and Infinity, which would compare as "never expires".
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"token claim {name!r} is not a number")
    return float(value)


class CachingVerifier:
    """Reuses a successful verdict for a while, so a viewer's hundreds of WADO-RS requests per
    study cost one introspection call rather than hundreds.

    A verdict is kept for `cache_seconds` at most and never past the token's own `exp`: a cached
    answer may be up to `cache_seconds` late to notice a revocation, which is the price of the
    cache (set `auth.cache_seconds = 0` to ask every time). Rejections are not cached: a bad token
    never becomes good, so caching would only spare calls for a client retrying a dead token,
    while holding memory for strings an attacker chooses. Keys are SHA-256 digests, so the cache
    never holds a usable token. At most `max_entries` verdicts are kept; the oldest go first.
    """

    def __init__(
        self,
        inner: TokenVerifier,
        cache_seconds: float,
        clock: Clock = time.time,
        *,
        max_entries: int = 10_000,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.inner = inner
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        """The cached verdict while it holds, else the inner verifier's (then cached)."""
        key = hashlib.sha256(check_bearer_syntax(token).encode("ascii")).digest()
        cached = self._lookup(key)
        if cached is not None:
            return cached
        # The lock is not held across the inner call: one slow introspection must not stall
        # every other request. Two concurrent misses for one token both ask; that is harmless.
        principal = self.inner.verify(token)
        self._store(key, principal)
        return principal

    def health(self) -> dict[str, object]:
        """For the status page: how many verdicts are cached, plus the inner verifier's own health
        (its circuit breaker: `state` closed/open/half-open, `consecutive_failures`, `last_error`)."""
        inner: Callable[[], dict[str, object]] | None = getattr(self.inner, "health", None)
        return (inner() if inner is not None else {}) | {"cached_verdicts": len(self)}

    def close(self) -> None:
        """Close the inner verifier's HTTP client, if it has one."""
        close: Callable[[], None] | None = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _lookup(self, key: bytes) -> Principal | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            principal, valid_until = entry
            if now < valid_until:
                return principal
            del self._entries[key]
            return None

    def _store(self, key: bytes, principal: Principal) -> None:
        now = self._clock()
        valid_until = now + self._cache_seconds
        if principal.expires_at is not None:
            valid_until = min(valid_until, principal.expires_at)
        if valid_until <= now:
            return
        with self._lock:
            self._entries[key] = (principal, valid_until)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
