"""The whitelist keeper against a real HTTPS publisher on 127.0.0.1 (sandbox PKI, real TLS): a
good list goes into force, an altered, unsigned or unreachable one never replaces it, every
attempt is audited, the kept list survives a restart, and an unconfirmed list turns stale."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drimbox.config import WhitelistSettings
from drimbox.ports import AuditEvent
from drimbox.sandbox.pki import PkiFiles, create_pki, load_certificates
from drimbox.sandbox.whitelist import ListPublisher, publish_whitelist, sign_whitelist
from drimbox.whitelist import WhitelistKeeper

UNSIGNED = (Path(__file__).parent.parent / "fixtures" / "drim-m-data" / "whitelist-unsigned-test.xml").read_bytes()
DN_1 = "CN=db1.sandbox.example,OU=499700367909001,O=CABINET UN,ST=Paris (75),C=FR"


class Trail:
    """An AuditTrail that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def results(self) -> list[tuple[str, str]]:
        return [(e.outcome, str(e.detail["result"])) for e in self.events if e.action == "whitelist.refresh"]


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _domain(n: int) -> dict[str, object]:
    # every domain says Identifiant 1, as older ANS lists repeat it: boxes are told apart by db and DN
    return {"identifier": "1", "db": f"db{n}.sandbox.example", "vi": f"vi{n}.sandbox.example",
            "denomination": "SANDBOX", "operator_dn": DN_1.replace("db1.", f"db{n}."),
            "support_contact": "support@sandbox.example",
            "updated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), "499700367909006")


@pytest.fixture
def publisher(pki: PkiFiles) -> Iterator[tuple[ListPublisher, str]]:
    served_list = ListPublisher()
    url, served = publish_whitelist(served_list, pki)
    yield served_list, url
    served.stop()


@pytest.fixture
def clock(pki: PkiFiles) -> Clock:
    return Clock(load_certificates(pki.whitelist_cert)[0].not_valid_before_utc + dt.timedelta(hours=2))


def _settings(pki: PkiFiles, url: str, **changes: object) -> WhitelistSettings:
    values: dict[str, object] = {
        "url": url, "trust_anchors": pki.root_cert, "crl_files": list(pki.crls), "ca_bundle": pki.ca_bundle,
        "max_age_hours": 48, "timeout_seconds": 10,
    }  # fmt: skip
    return WhitelistSettings.model_validate(values | changes)


def _sign(pki: PkiFiles, generated: dt.datetime, *numbers: int) -> bytes:
    return sign_whitelist([_domain(n) for n in numbers], pki, generated)


def test_refresh_accepts_then_keeps_the_list_through_refusals_and_failures(
    pki: PkiFiles, publisher: tuple[ListPublisher, str], clock: Clock, tmp_path: Path
) -> None:
    served, url = publisher
    first = _sign(pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), 1, 2)
    served.body = first
    trail = Trail()
    keeper = WhitelistKeeper(_settings(pki, url), tmp_path, trail, clock=clock)

    result = keeper.refresh()
    assert result.outcome == "accepted", result.reason
    status = keeper.status()
    assert (status["stale"], status["domains"], status["last_result"], status["age_hours"]) == (False, 2, "accepted", 0)
    in_force = keeper.current()
    assert in_force is not None and in_force.allows_dn(DN_1) and in_force.allows_host("DB2.sandbox.example")
    assert (tmp_path / "whitelist.xml").read_bytes() == first

    served.body = first.replace(b"OU=499700367909001", b"OU=499700367909009")  # one byte of a Domaine
    result = keeper.refresh()
    assert result.outcome == "refused" and "the list was altered" in result.reason
    assert keeper.current() is in_force and (tmp_path / "whitelist.xml").read_bytes() == first
    assert keeper.status()["last_error"] == result.reason

    served.body = UNSIGNED
    assert keeper.refresh().reason == "no signature: the list is unsigned"

    served.body, served.status = b"oops", 503
    result = keeper.refresh()
    assert result.outcome == "download_failed" and "503" in result.reason
    served.status = 200

    served.body = first
    assert keeper.refresh().outcome == "unchanged"

    newer = _sign(pki, dt.datetime(2026, 5, 2, tzinfo=dt.UTC), 1, 2, 3)
    served.body = newer
    assert keeper.refresh().outcome == "accepted"
    current = keeper.current()
    assert current is not None and len(current.domains) == 3

    assert trail.results() == [
        ("success", "accepted"), ("failure", "refused"), ("failure", "refused"),
        ("failure", "download_failed"), ("success", "unchanged"), ("success", "accepted"),
    ]  # fmt: skip
    altered = trail.events[1].detail
    assert altered["in_force_digest"] == in_force.digest and altered["url"] == url
    assert altered["offered_digest"] != in_force.digest
    assert served.hits == 6

    restarted = WhitelistKeeper(_settings(pki, url), tmp_path, Trail(), clock=clock)
    assert restarted.current() is None
    loaded = restarted.load()
    assert loaded is not None and loaded.digest == current.digest
    assert restarted.status()["confirmed_at"] == keeper.status()["confirmed_at"]
    state = json.loads((tmp_path / "whitelist-state.json").read_text())
    assert state["digest"] == current.digest and state["last_result"] == "accepted"


def test_download_refused_without_the_publisher_ca(
    pki: PkiFiles, publisher: tuple[ListPublisher, str], clock: Clock, tmp_path: Path
) -> None:
    served, url = publisher
    served.body = _sign(pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), 1)
    keeper = WhitelistKeeper(_settings(pki, url, ca_bundle=None), tmp_path, Trail(), clock=clock)
    result = keeper.refresh()
    assert result.outcome == "download_failed" and "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert keeper.current() is None and served.hits == 0


def test_list_turns_stale_when_not_confirmed_for_max_age(
    pki: PkiFiles, publisher: tuple[ListPublisher, str], clock: Clock, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    served, url = publisher
    served.body = _sign(pki, dt.datetime(2026, 5, 1, tzinfo=dt.UTC), 1)
    keeper = WhitelistKeeper(_settings(pki, url, max_age_hours=48), tmp_path, Trail(), clock=clock)
    assert keeper.refresh().ok
    start = clock.now
    clock.now = start + dt.timedelta(hours=47)
    assert keeper.status()["stale"] is False
    clock.now = start + dt.timedelta(hours=49)
    assert keeper.status()["stale"] is True and keeper.status()["age_hours"] == 49

    served.status = 500  # the publisher is down: the run loop tries, fails, and warns about staleness
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="drimbox.whitelist.keeper"):
        loop = threading.Thread(target=keeper.run, args=(stop,))
        loop.start()
        for _ in range(500):
            if any(getattr(r, "event", "") == "whitelist.stale" for r in caplog.records):
                break
            stop.wait(0.01)
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    stale = [r for r in caplog.records if getattr(r, "event", "") == "whitelist.stale"]
    assert stale and stale[0].age_hours == 49
    assert keeper.status()["last_result"] == "download_failed" and keeper.current() is not None

    served.status = 200  # the same list again: confirmed, fresh again
    assert keeper.refresh().outcome == "unchanged"
    assert keeper.status()["stale"] is False


def test_load_falls_back_to_the_initial_file_and_keeps_it(pki: PkiFiles, clock: Clock, tmp_path: Path) -> None:
    initial = tmp_path / "initial.xml"
    initial.write_bytes(_sign(pki, dt.datetime(2026, 4, 1, tzinfo=dt.UTC), 1, 2))
    folder = tmp_path / "state"
    settings = _settings(pki, "", initial_file=initial)
    keeper = WhitelistKeeper(settings, folder, Trail(), clock=clock)
    loaded = keeper.load()
    assert loaded is not None and len(loaded.domains) == 2
    assert (folder / "whitelist.xml").read_bytes() == initial.read_bytes()
    assert keeper.refresh().outcome == "skipped"
    status = keeper.status()
    assert status["confirmed_at"] is None and status["generated_at"] == "2026-04-01T00:00:00Z"

    (folder / "whitelist.xml").write_bytes(UNSIGNED)  # a damaged kept copy is not trusted
    assert WhitelistKeeper(settings, folder, Trail(), clock=clock).load() == loaded
    initial.write_bytes(UNSIGNED)
    (folder / "whitelist.xml").write_bytes(UNSIGNED)
    assert WhitelistKeeper(settings, folder, Trail(), clock=clock).load() is None
