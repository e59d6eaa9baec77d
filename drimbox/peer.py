"""Who is on the other end of an HTTP request, as the audit trail names it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def peer_name(scope: Mapping[str, Any]) -> str:
    """The remote box's certificate DN (the ASGI `tls` extension the mutual-TLS listener fills),
    else the client's `address:port`, else ""."""
    tls = scope.get("extensions", {}).get("tls", {})
    if isinstance(tls, dict) and tls.get("client_cert_name"):
        return str(tls["client_cert_name"])
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""
