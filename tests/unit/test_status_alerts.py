"""/health turns "degraded" with a reason an operator can act on."""

from __future__ import annotations

from drimbox.status.routes import alerts


def test_each_component_problem_is_named() -> None:
    assert alerts({"peers": [{"name": "main", "reachable": True}]}) == []
    assert alerts({"whitelist": {"stale": True, "url": "", "domains": 0}}) == []  # none configured
    found = alerts({
        "peers": [{"name": "main", "reachable": False}],
        "whitelist": {"stale": True, "url": "https://ans.example/lb.xml", "age_hours": 50.0, "last_error": "HTTP 503"},
        "token_verifier": {"state": "open", "last_error": "timeout"},
        "audit_export": {"connected": False, "backlog": 12},
    })  # fmt: skip
    assert found == [
        "PACS main unreachable",
        "whitelist stale (50.0 h old; last error: HTTP 503)",
        "token provider suspended (timeout)",
        "audit collector unreachable, 12 records waiting",
    ]
