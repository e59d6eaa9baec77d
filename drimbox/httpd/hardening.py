"""What the HTTP listener enforces before any route runs: sizes, rates, strict headers, and the
security headers every answer carries.

A DRIMbox faces the whole DRIM-M network; one misbehaving (or hostile) peer must not be able to
exhaust it. Limits are per peer: the remote box's certificate DN when mutual TLS named it, else
the client address. Answers are RFC 9457 problem bodies and never include internals.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from typing import Any

from drimbox.config import LimitSettings

Scope = dict[str, Any]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")
# Headers that must appear at most once (RFC 9110 §5.3: a list is not allowed for them).
_SINGLE = frozenset({b"authorization", b"content-length", b"host", b"kos-sopinstanceuid", b"content-type"})


class RateLimiter:
    """A token bucket per peer (`requests_per_minute`, bursts of `burst`), for at most
    `max_peers` peers at once (the least recently seen are forgotten)."""

    def __init__(self, per_minute: int, burst: int, *, max_peers: int = 10_000, clock: Any = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_peers = max_peers
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, peer: str) -> float:
        """0 when the request may go, else the seconds until it could."""
        now = self.clock()
        with self._lock:
            tokens, seen = self._buckets.pop(peer, (self.burst, now))
            tokens = min(self.burst, tokens + (now - seen) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[peer] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        return wait


class Hardening:
    """ASGI middleware wrapping the whole application."""

    def __init__(self, app: Any, limits: LimitSettings, *, https: bool, limiter: RateLimiter | None = None) -> None:
        self.app = app
        self.limits = limits
        self.headers = SECURITY_HEADERS + ((HSTS,) if https else ())
        self.limiter = limiter or RateLimiter(limits.requests_per_minute, limits.burst)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is not None:
            status, detail, extra = refusal
            await _problem(send, status, detail, self.headers + extra)
            return
        exchange = _Exchange(send, self.headers)
        await self.app(scope, self._bounded(receive, exchange), exchange.send)

    def _check(self, scope: Scope) -> tuple[int, str, tuple[tuple[bytes, bytes], ...]] | None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in headers) > self.limits.max_header_bytes:
            return 431, f"request headers exceed {self.limits.max_header_bytes} bytes", ()
        seen: set[bytes] = set()
        for name, value in headers:
            if name in _SINGLE and name in seen:
                return 400, f"header {name.decode('latin-1')} given more than once", ()
            seen.add(name)
            if name == b"content-length" and (not value.isdigit() or len(value) > 18):
                return 400, "Content-Length is not a number", ()
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                return 413, f"request body larger than {self.limits.max_body_bytes} bytes", ()
        wait = self.limiter.take(_peer(scope))
        if wait > 0:
            retry = ((b"retry-after", str(math.ceil(wait)).encode()),)
            return 429, "too many requests from this peer; slow down", retry
        return None

    def _bounded(self, receive: Any, exchange: _Exchange) -> Any:
        """Stop a chunked body once it passes the limit (a Content-Length was checked already):
        answer 413 ourselves and tell the application the client went away."""
        remaining = self.limits.max_body_bytes

        async def bounded() -> dict[str, Any]:
            nonlocal remaining
            if exchange.refused:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                remaining -= len(message.get("body", b""))
                if remaining < 0 and not exchange.started:
                    await exchange.refuse(413, f"request body larger than {self.limits.max_body_bytes} bytes")
                    return {"type": "http.disconnect"}
            return message

        return bounded


class _Exchange:
    """One request's answer: adds the security headers, or replaces it by our own refusal."""

    def __init__(self, send: Any, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self._send = send
        self.headers = headers
        self.started = False
        self.refused = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.refused:
            return  # the application's answer to a request we already refused goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [header for header in self.headers if header[0] not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await self._send(message)

    async def refuse(self, status: int, detail: str) -> None:
        self.refused = self.started = True
        await _problem(self._send, status, detail, self.headers)


def _peer(scope: Scope) -> str:
    tls = scope.get("extensions", {}).get("tls", {})
    if isinstance(tls, dict) and tls.get("client_cert_name"):
        return f"dn:{tls['client_cert_name']}"
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "unknown"


async def _problem(send: Any, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...]) -> None:
    body = json.dumps({"type": "about:blank", "status": status, "detail": detail}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
