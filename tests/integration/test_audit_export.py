"""The audit export over real TLS to the sandbox collector: order, validity, and no loss when the
collector is down (the database is the spool)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drimbox.audit.export import AuditExporter
from drimbox.audit.syslog import frame, syslog_message
from drimbox.audit.trail import ChainedAuditTrail
from drimbox.config import AuditSettings
from drimbox.index import db
from drimbox.ports import AuditEvent
from drimbox.sandbox.pki import PkiFiles, create_pki
from drimbox.sandbox.syslog import SyslogCollector, SyslogEntry

STRUCTURE = "499700367909006"
SCHEMA = Path(__file__).parents[1] / "fixtures" / "dicom-audit" / "dicom2024d.xsd"
INS = "279035121518989"
PEER_DN = "CN=drimbox.other.test,OU=499700367909007,O=CABINET B,C=FR"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return create_pki(tmp_path_factory.mktemp("pki"), STRUCTURE)


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[ChainedAuditTrail]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    db.upgrade(engine)
    yield ChainedAuditTrail(engine)
    engine.dispose()


@pytest.fixture
def collector(pki: PkiFiles) -> Iterator[SyslogCollector]:
    server = SyslogCollector(pki.server_cert, pki.server_key, client_ca=pki.ca_bundle, schema=SCHEMA).start()
    yield server
    server.stop()


def _settings(pki: PkiFiles, port: int, **changes: object) -> AuditSettings:
    values: dict[str, object] = {
        "syslog_host": "127.0.0.1", "syslog_port": port, "syslog_ca": pki.ca_bundle,
        "syslog_certificate": pki.organisation.auth_cert, "syslog_key": pki.organisation.auth_key,
        "syslog_app_name": "drimbox-test", "export_batch": 3, "export_retry_seconds": 0.05,
    }  # fmt: skip
    return AuditSettings.model_validate(values | changes)


@pytest.fixture
def running() -> Iterator[Callable[[AuditExporter], None]]:
    """Run exporters in threads; stop and join them at the end of the test."""
    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(exporter: AuditExporter) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=exporter.run, args=(stop,), daemon=True)
        thread.start()
        started.append((stop, thread))

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _events(count: int, first: int = 0) -> list[AuditEvent]:
    """A mix of the trail's actions, each with its own study UID so arrival order can be read back."""
    shapes = [
        ("dicomweb.retrieve", "810000000001", "success", PEER_DN),
        ("tls.refused", "unauthenticated", "failure", "127.0.0.1:50000"),
        ("hl7.received", "RIS", "success", ""),
        ("publication.sent", "drimbox", "success", ""),
        ("dicomweb.access", "810000000002", "failure", PEER_DN),
        ("instance.stored", "ORTHANC", "success", "127.0.0.1:4242"),
        ("whitelist.refresh", "system", "success", ""),
        ("brand.new.action", "system", "success", ""),
    ]
    events = []
    for n in range(first, first + count):
        action, actor, outcome, peer = shapes[n % len(shapes)]
        events.append(AuditEvent(action, actor, outcome, patient_id=INS, study_uid=f"1.2.826.0.1.{n}", peer=peer,
                                 detail={"reason": "refused <&>"} if outcome == "failure" else {"n": n}))  # fmt: skip
    return events


def _failures(exporter: AuditExporter) -> int:
    value = exporter.status()["failures"]
    assert isinstance(value, int)
    return value


def _study(entry: SyslogEntry) -> str:
    found = entry.xml().xpath(
        "ParticipantObjectIdentification[ParticipantObjectIDTypeCode/@csd-code='110180']/@ParticipantObjectID"
    )
    assert isinstance(found, list) and len(found) == 1
    return str(found[0])


def test_every_record_arrives_in_order_and_valid(trail: ChainedAuditTrail, pki: PkiFiles,
                                                 collector: SyslogCollector,
                                                 running: Callable[[AuditExporter], None]) -> None:  # fmt: skip
    events = _events(8)
    for event in events:
        trail.record(event)
    exporter = AuditExporter(trail, _settings(pki, collector.port), STRUCTURE, "drimbox.site.test", idle_seconds=0.05)
    running(exporter)

    received = collector.wait_for(8)
    assert collector.problems() == []
    assert [_study(entry) for entry in received] == [event.study_uid for event in events]
    records = trail.records_after(0, 100)
    for entry, record in zip(received, records, strict=True):
        assert (entry.facility, entry.severity) == (10, 5 if record.outcome == "success" else 4)
        assert (entry.hostname, entry.app_name, entry.msgid, entry.structured_data, entry.bom) == (
            "drimbox.site.test", "drimbox-test", "IHE+RFC-3881", "-", True)  # fmt: skip
        assert entry.timestamp == record.recorded_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert entry.xml().find("AuditSourceIdentification").get("AuditSourceID") == STRUCTURE  # type: ignore[union-attr]
        # our client certificate was presented and verified
        assert f"organizationalUnitName={STRUCTURE}" in entry.client
    _until(lambda: exporter.status()["exported_up_to"] == 8, "the cursor to reach the head")
    assert exporter.status() | {"last_error_at": None} == {
        "connected": True, "collector": f"127.0.0.1:{collector.port}", "exported_up_to": 8, "head": 8, "backlog": 0,
        "sent": 8, "failures": 0, "last_error": "", "last_error_at": None,
    }  # fmt: skip
    assert collector.connections == 1


def test_collector_down_for_a_while_loses_nothing(trail: ChainedAuditTrail, pki: PkiFiles,
                                                  collector: SyslogCollector,
                                                  running: Callable[[AuditExporter], None]) -> None:  # fmt: skip
    first = _events(3)
    for event in first:
        trail.record(event)
    exporter = AuditExporter(trail, _settings(pki, collector.port), STRUCTURE, "drimbox.site.test", idle_seconds=0.05)
    running(exporter)
    collector.wait_for(3)
    _until(lambda: exporter.status()["exported_up_to"] == 3, "the first records to be exported")

    collector.stop()
    during = _events(5, first=3)
    for event in during[:4]:
        trail.record(event)
    _until(lambda: _failures(exporter) >= 3, "several failed attempts")
    assert (exporter.status()["exported_up_to"], exporter.status()["backlog"]) == (3, 4)
    trail.record(during[4])
    _until(lambda: _failures(exporter) >= 6, "more failed attempts")
    status = exporter.status()
    assert (status["connected"], status["exported_up_to"], status["backlog"]) == (False, 3, 5)
    assert "Connection" in str(status["last_error"]) or "refused" in str(status["last_error"])
    assert len(collector.messages()) == 3

    collector.start()
    received = collector.wait_for(8)
    _until(lambda: exporter.status()["exported_up_to"] == trail.head()[0], "the cursor to catch up")
    assert [_study(entry) for entry in collector.messages()] == [e.study_uid for e in first + during]
    assert collector.problems() == []
    assert len(received) == 8 and exporter.status()["backlog"] == 0


def test_an_unverified_collector_gets_nothing(trail: ChainedAuditTrail, pki: PkiFiles, collector: SyslogCollector,
                                              running: Callable[[AuditExporter], None]) -> None:  # fmt: skip
    trail.record(_events(1)[0])
    exporter = AuditExporter(trail, _settings(pki, collector.port, syslog_ca=None), STRUCTURE, "drimbox.site.test",
                             idle_seconds=0.05)  # fmt: skip
    running(exporter)
    _until(lambda: _failures(exporter) >= 2, "refused handshakes")
    status = exporter.status()
    assert "CERTIFICATE_VERIFY_FAILED" in str(status["last_error"])
    assert (status["exported_up_to"], status["backlog"]) == (0, 1)
    assert collector.messages() == []


def _raw_client(pki: PkiFiles, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    context.load_cert_chain(str(pki.organisation.auth_cert), str(pki.organisation.auth_key))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (b"012 <85>1 - h a - m -", "bad MSG-LEN"),
        (b"abc <85>1 - h a - m -", "bad MSG-LEN"),
        (b"1234567890 x", "MSG-LEN longer than 9 digits"),
        (b"5 hello", "not an RFC 5424 message"),
        (frame(b"<85>2 - h a - m - x"), "not an RFC 5424 message"),
        (frame(b"<192>1 - h a - m - x"), "PRI 192"),
    ],
)
def test_the_collector_hangs_up_on_a_bad_frame(pki: PkiFiles, collector: SyslogCollector, stream: bytes,
                                               problem: str) -> None:  # fmt: skip
    with _raw_client(pki, collector.port) as client:
        client.sendall(stream)
        assert client.recv(100) == b""  # closed by the collector
    _until(lambda: bool(collector.problems()), "the problem to be recorded")
    assert problem in collector.problems()[0]
    assert collector.messages() == []


def test_the_collector_reports_a_message_that_is_not_an_audit_message(pki: PkiFiles,
                                                                      collector: SyslogCollector) -> None:  # fmt: skip
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    with _raw_client(pki, collector.port) as client:
        for body in (b"not xml", b"<AuditMessage><EventIdentification/></AuditMessage>"):
            client.sendall(frame(syslog_message(body, timestamp=now, hostname="h", app_name="a", success=True)))
        received = collector.wait_for(2)
    assert "not UTF-8 XML" in received[0].problems[0]
    assert "no EventIdentification/EventID with a csd-code" in received[1].problems
    assert any(problem.startswith("schema:") for problem in received[1].problems)
