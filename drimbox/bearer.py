"""The bearer token of an HTTP request (RFC 6750 §2.1), shared by every authenticated route."""

from __future__ import annotations

from drimbox.errors import TokenRejected


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value, or TokenRejected (401)."""
    if not header:
        raise TokenRejected("this route needs Authorization: Bearer <token> (a Pro Santé Connect access token)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("the Authorization header must be 'Bearer <token>'")
    return token.strip()
