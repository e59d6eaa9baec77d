"""The operator's commands for trust: `drimbox whitelist status|refresh`, `drimbox audit [verify]`,
`drimbox stats`, run as a site's IT team runs them (subprocess, real HTTPS publisher, SQLite)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

from drimbox.sandbox.pki import create_pki
from drimbox.sandbox.whitelist import ListPublisher, publish_whitelist, sign_whitelist
from tests.conftest import write_config
from tests.integration.test_cli_and_status import drimbox
from tests.support.peers import free_port

DN = "CN=db2.sandbox.example,OU=499700367909002,O=CABINET DEUX,ST=Paris (75),C=FR"


def _domain(n: int) -> dict[str, object]:
    return {"identifier": str(n), "db": f"db{n}.sandbox.example", "vi": f"vi{n}.sandbox.example",
            "denomination": "SANDBOX", "operator_dn": DN.replace("db2.", f"db{n}."),
            "support_contact": "support@sandbox.example",
            "updated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}  # fmt: skip


def test_whitelist_refresh_audit_verify_and_stats(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki", "499700367909006")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    good = sign_whitelist([_domain(2), _domain(3)], pki, now - dt.timedelta(hours=1))
    publisher = ListPublisher(good)
    url, served = publish_whitelist(publisher, pki)
    extra = "\n".join([
        "[whitelist]", f'url = "{url}"', f'trust_anchors = "{pki.root_cert}"', f'ca_bundle = "{pki.ca_bundle}"',
    ])  # fmt: skip
    config = write_config(tmp_path, peers={}, dimse_port=free_port(), http_port=free_port(), extra=extra)
    try:
        first = drimbox("--config", str(config), "whitelist", "refresh")
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("accepted")
        status = json.loads(drimbox("--config", str(config), "whitelist", "status", "--json").stdout)
        assert status["domains"] == 2 and not status["stale"]

        altered = good.replace(b"db3.sandbox.example", b"db9.sandbox.example", 1)
        publisher.body = altered
        second = drimbox("--config", str(config), "whitelist", "refresh")
        assert second.returncode == 1 and second.stdout.startswith("refused"), second.stdout
        again = json.loads(drimbox("--config", str(config), "whitelist", "status", "--json").stdout)
        assert again["digest"] == status["digest"] and again["domains"] == 2
    finally:
        served.stop()

    listed = drimbox("--config", str(config), "audit", "--action", "whitelist.", "--json")
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("whitelist.refresh", "success"),
        ("whitelist.refresh", "failure"),
    ]
    assert "altered" in json.dumps(records[1]["detail"])

    verified = drimbox("--config", str(config), "audit", "verify")
    assert verified.returncode == 0 and "intact: 2 records" in verified.stdout, verified.stdout + verified.stderr
    stats = drimbox(
        "--config", str(config), "stats", "--since", "today", "--until", (now + dt.timedelta(days=1)).date().isoformat()
    )
    assert (
        stats.returncode == 0 and stats.stdout.splitlines()[0] == "Date;Identifiant_DRIMbox;Nombre_Appel;Statut_Appel"
    )

    with sqlite3.connect(tmp_path / "data" / "drimbox.db") as database:
        database.execute("UPDATE audit_record SET outcome = 'success' WHERE seq = 2")
    broken = drimbox("--config", str(config), "audit", "verify")
    assert broken.returncode == 1
    assert "broken at record 2" in broken.stderr and "altered" in broken.stderr


def test_operator_pages_and_configuration_changes_are_audited(tmp_path: Path) -> None:
    from drimbox.config import load_settings
    from drimbox.daemon import Daemon, build_app
    from tests.integration.test_dicomweb_orthanc import TOKEN, OneTokenVerifier

    ports = free_port(), free_port()

    def start(burst: int, operators: list[str]) -> Daemon:
        extra = f"[limits]\nburst = {burst}"
        config = write_config(tmp_path, peers={}, dimse_port=ports[0], http_port=ports[1], extra=extra)
        text = config.read_text().replace("[auth]\n", f"[auth]\noperators = {operators!r}\n".replace("'", '"'), 1)
        config.write_text(text)
        daemon = Daemon(load_settings(config), index_at_start=False)
        daemon.start_background()
        return daemon

    first = start(600, [])
    first.stop()
    second = start(50, ["810000000001"])
    try:
        changes = second.node.audit.query(action="config.changed", newest_first=False)
        assert [r.detail["first_start"] for r in changes] == [True, False]
        assert changes[1].detail["keys"] == ["auth.operators", "limits.burst"]
        import httpx

        app = build_app(second.node, OneTokenVerifier())
        transport = httpx.ASGITransport(app=app)
        import anyio

        async def pages() -> list[int]:
            async with httpx.AsyncClient(transport=transport, base_url="http://box") as client:
                ok = await client.get("/audit?format=json", headers={"Authorization": f"Bearer {TOKEN}"})
                bad = await client.get("/audit", headers={"Authorization": "Bearer nope"})
                # Bounds with and without an offset compare; one with no UTC equivalent is a 400.
                mixed = await client.get("/audit?since=2026-01-01T00:00:00&until=2099-01-01T00:00:00%2B01:00",
                                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
                early = await client.get("/audit?since=0001-01-01T00:00:00%2B00:01",
                                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
                assert "out of the range" in early.text
                return [ok.status_code, bad.status_code, mixed.status_code, early.status_code]

        assert anyio.run(pages) == [200, 401, 200, 400]
        viewed = [r.action for r in second.node.audit.query(action="admin.", newest_first=False)]
        assert viewed == ["admin.viewed", "admin.audit_viewed"] * 2 + ["admin.viewed"]  # the 400 shows nothing
        [refused] = second.node.audit.query(action="auth.refused")
        assert refused.detail["reason"] == "inactive token"
    finally:
        second.stop()
