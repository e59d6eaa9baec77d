"""`SoapDmpGateway` against a real local HTTPS server that demands our client certificate.

The server records what it received and answers canned responses, so each test asserts both the
outcome and the request on the wire.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from lxml import etree

from drimbox.dmp.gateway import SoapDmpGateway
from drimbox.dmp.identity import tls_context
from drimbox.dmp.responses import FAILURE, PARTIAL_SUCCESS
from drimbox.dmp.soap import mtom_decode
from drimbox.errors import ConfigError, DmpRefused, DmpUnavailable
from drimbox.publish.submission import DmpEntry, DmpIssue, Withdrawal
from tests.unit.test_dmp_identity import STRUCTURE_ID, Pki, build_pki
from tests.unit.test_dmp_responses import ENTRY, QUERY, fault, fixture_as_mime, registry, soap
from tests.unit.test_dmp_samples import (
    KOS_FILE,
    NS,
    SITE,
    dmp_settings,
    kos_manifest,
    sample_report,
    sample_submission,
)

BASE_PATH = "/si-dmp-server/v2/services"
ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_subject: dict[str, str]


@dataclass
class Answer:
    status: int = 200
    content_type: str = "application/soap+xml; charset=UTF-8"
    body: bytes = b""
    hang: bool = False


@dataclass
class FakeDmp:
    """A DMP stand-in: HTTPS with mandatory client certificates, one canned answer per request."""

    pki: Pki
    requests: list[Received] = field(default_factory=list)
    answers: queue.Queue[Answer] = field(default_factory=queue.Queue)
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FakeDmp:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pki.server_pem, self.pki.server_key)
        context.load_verify_locations(self.pki.ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
        dmp = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                subject = {k: v for rdn in (peer or {}).get("subject", ()) for k, v in rdn}
                dmp.requests.append(Received(self.path, dict(self.headers), body, subject))
                answer = dmp.answers.get_nowait()
                if answer.hang:
                    dmp.release.wait(10)
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}{BASE_PATH}"

    def answer(self, *answers: Answer) -> None:
        for item in answers:
            self.answers.put(item)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def dmp(pki: Pki) -> Iterator[FakeDmp]:
    server = FakeDmp(pki).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(pki: Pki, dmp: FakeDmp) -> Iterator[SoapDmpGateway]:
    with SoapDmpGateway(dmp_settings(pki, url=dmp.url, timeout_seconds=2), SITE) as built:
        yield built


def success() -> Answer:
    content_type, body = fixture_as_mime()
    return Answer(content_type=content_type, body=body)


def dmp_calls(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "drimbox.dmp" and getattr(r, "event", "") == "dmp.call"]


def test_provide_sends_mtom_over_mutual_tls(
    gateway: SoapDmpGateway, dmp: FakeDmp, caplog: pytest.LogCaptureFixture
) -> None:
    dmp.answer(success())
    with caplog.at_level(logging.INFO, logger="drimbox.dmp"):
        gateway.provide(sample_submission())
    [received] = dmp.requests
    assert received.path == f"{BASE_PATH}/repository"
    assert received.client_subject["organizationalUnitName"] == STRUCTURE_ID
    content_type = received.headers["Content-Type"]
    assert content_type.startswith("multipart/related;")
    assert 'action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"' in content_type
    root, parts = mtom_decode(content_type, received.body)
    assert parts["0.2"] == KOS_FILE.read_bytes()
    envelope = etree.fromstring(root)
    assert envelope.findtext("soap:Header/wsa:To", namespaces=NS) == f"{dmp.url}/repository"
    assert envelope.find("soap:Header/wsse:Security/saml2:Assertion", NS) is not None
    [record] = dmp_calls(caplog)
    assert record.levelno == logging.INFO
    assert (record.transaction, record.outcome, record.http_status) == ("ITI-41", "success", 200)  # type: ignore[attr-defined]
    assert record.endpoint == f"{dmp.url}/repository"  # type: ignore[attr-defined]
    assert isinstance(record.duration_ms, int)  # type: ignore[attr-defined]
    assert record.submission_uid == sample_submission().submission_uid  # type: ignore[attr-defined]
    assert "162018885045327" not in caplog.text  # no INS in logs


def test_failure_is_refused_with_the_registry_errors(
    gateway: SoapDmpGateway, dmp: FakeDmp, caplog: pytest.LogCaptureFixture
) -> None:
    errors = (
        f'<rs:RegistryError errorCode="XDSPatientIdDoesNotMatch" codeContext="INS" location="KOS" severity="{ERROR}"/>'
        f'<rs:RegistryError errorCode="XDSRepositoryMetadataError" codeContext="hash" severity="{ERROR}"/>'
    )
    dmp.answer(Answer(body=registry(FAILURE, errors)))
    with pytest.raises(DmpRefused) as caught, caplog.at_level(logging.INFO, logger="drimbox.dmp"):
        gateway.provide(sample_submission())
    assert caught.value.issues == (
        DmpIssue("XDSPatientIdDoesNotMatch", "INS", ERROR, "KOS"),
        DmpIssue("XDSRepositoryMetadataError", "hash", ERROR, ""),
    )
    [record] = dmp_calls(caplog)
    assert (record.levelno, record.outcome) == (logging.WARNING, "refused")  # type: ignore[attr-defined]


def test_partial_success_passes_and_logs_the_warnings(
    gateway: SoapDmpGateway, dmp: FakeDmp, caplog: pytest.LogCaptureFixture
) -> None:
    dmp.answer(Answer(body=registry(PARTIAL_SUCCESS, '<rs:RegistryError errorCode="W" codeContext="odd"/>')))
    with caplog.at_level(logging.INFO, logger="drimbox.dmp"):
        gateway.provide(sample_submission())
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "dmp.warnings"]
    assert [r.issues for r in warnings] == [["W: odd"]]  # type: ignore[attr-defined]


def test_503_is_unavailable(gateway: SoapDmpGateway, dmp: FakeDmp, caplog: pytest.LogCaptureFixture) -> None:
    dmp.answer(Answer(status=503, content_type="text/html", body=b"<html>maintenance</html>"))
    with pytest.raises(DmpUnavailable, match="503"), caplog.at_level(logging.INFO, logger="drimbox.dmp"):
        gateway.provide(sample_submission())
    [record] = dmp_calls(caplog)
    assert (record.outcome, record.http_status) == ("unavailable", 503)  # type: ignore[attr-defined]


def test_a_hanging_dmp_is_unavailable_after_the_timeout(pki: Pki, dmp: FakeDmp) -> None:
    dmp.answer(Answer(hang=True))
    started = time.monotonic()
    settings = dmp_settings(pki, url=dmp.url, timeout_seconds=0.5)
    with SoapDmpGateway(settings, SITE) as gateway, pytest.raises(DmpUnavailable, match="unreachable"):
        gateway.provide(sample_submission())
    assert time.monotonic() - started < 5


def test_a_closed_port_is_unavailable(pki: Pki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://127.0.0.1:{port}{BASE_PATH}"
    with SoapDmpGateway(dmp_settings(pki, url=url), SITE) as gateway, pytest.raises(DmpUnavailable):
        gateway.provide(sample_submission())


def test_without_our_certificate_the_dmp_closes_the_door(pki: Pki, dmp: FakeDmp) -> None:
    client = httpx.Client(verify=tls_context(None, pki.ca_pem), timeout=2)
    with SoapDmpGateway(dmp_settings(pki, url=dmp.url), SITE, client) as gateway, pytest.raises(DmpUnavailable):
        gateway.provide(sample_submission())
    client.close()
    assert dmp.requests == []


def test_find_entry_reads_the_registry(gateway: SoapDmpGateway, dmp: FakeDmp) -> None:
    report = sample_report(kos_manifest())
    dmp.answer(Answer(body=soap(QUERY.format(ENTRY))), Answer(body=soap(QUERY.format(""))))
    found = gateway.find_entry(report.patient.ins, "1.2.3.4", report)
    assert found == DmpEntry(
        "urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11",
        "1.2.3.4",
        "urn:asip:ci-sis:2010:StatusType:Deleted",
        "1.2.250.1.213.4.1.1.2",
    )
    assert gateway.find_entry(report.patient.ins, "1.2.3.5", report) is None
    first = dmp.requests[0]
    assert first.path == f"{BASE_PATH}/registry"
    assert (
        first.headers["Content-Type"]
        == 'application/soap+xml; charset=UTF-8; action="urn:ihe:iti:2007:RegistryStoredQuery"'
    )
    envelope = etree.fromstring(first.body)
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == "urn:ihe:iti:2007:RegistryStoredQuery"
    query = envelope.find("soap:Body/query:AdhocQueryRequest/rim:AdhocQuery", NS)
    assert query is not None and query.get("id") == "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
    assert query.findtext("rim:Slot/rim:ValueList/rim:Value", namespaces=NS) == "('1.2.3.4')"
    resource = envelope.xpath(
        ".//saml2:Attribute[@Name='urn:oasis:names:tc:xacml:2.0:resource:resource-id']/saml2:AttributeValue/text()",
        namespaces=NS,
    )
    assert resource == ["162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"]


def test_withdraw_sends_update_document_set(gateway: SoapDmpGateway, dmp: FakeDmp) -> None:
    dmp.answer(Answer(body=registry("urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")))
    withdrawal = Withdrawal(
        "1.2.250.1.999.1.1.8121.5.7124",
        "urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11",
        sample_report(kos_manifest()),
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    gateway.withdraw(withdrawal)
    [received] = dmp.requests
    assert received.path == f"{BASE_PATH}/registry"
    assert 'action="urn:ihe:iti:2010:UpdateDocumentSet"' in received.headers["Content-Type"]
    envelope = etree.fromstring(received.body)
    assert envelope.findtext("soap:Header/wsa:Action", namespaces=NS) == "urn:ihe:iti:2010:UpdateDocumentSet"
    association = envelope.find("soap:Body/lcm:SubmitObjectsRequest/rim:RegistryObjectList/rim:Association", NS)
    assert association is not None
    assert association.get("associationType") == "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
    assert association.get("targetObject") == withdrawal.entry_uuid
    statuses = association.xpath("rim:Slot/@name", namespaces=NS)
    assert statuses == ["OriginalStatus", "NewStatus"]


SENDER = fault("Sender", "dmp:ERREUR", "VIHF invalide")
RECEIVER = fault("Receiver", reason="indisponible")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, SENDER, DmpRefused),
        (400, SENDER, DmpRefused),
        (500, RECEIVER, DmpUnavailable),
        (500, b"<html>oops</html>", DmpUnavailable),
        (502, b"", DmpUnavailable),
        (400, b"<html>bad request</html>", DmpRefused),
        (403, b"", DmpRefused),
        (408, b"", DmpUnavailable),
        (429, b"", DmpUnavailable),
        (200, b"not xml", DmpUnavailable),
        (200, registry("urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")[:-20], DmpUnavailable),
        (302, registry("urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"), DmpUnavailable),
        (404, registry("urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"), DmpRefused),
    ],
)
def test_http_and_soap_outcomes_map_to_core_errors(
    pki: Pki, status: int, body: bytes, expected: type[Exception]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": "application/soap+xml"})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    with SoapDmpGateway(dmp_settings(pki), SITE, client) as gateway, pytest.raises(expected):
        gateway.provide(sample_submission())


def test_a_broken_mtom_answer_is_unavailable(pki: Pki) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b"--x\r\nno end", headers={"Content-Type": 'multipart/related; boundary="x"'}
        )

    client = httpx.Client(transport=httpx.MockTransport(answer))
    with SoapDmpGateway(dmp_settings(pki), SITE, client) as gateway, pytest.raises(DmpUnavailable, match="unreadable"):
        gateway.provide(sample_submission())


def test_settings_are_checked_at_construction(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"dmp\.signature_pkcs12"):
        SoapDmpGateway(dmp_settings(pki, signature_pkcs12=None), SITE)
    with pytest.raises(ConfigError, match=r"dmp\.auth_pkcs12"):
        SoapDmpGateway(dmp_settings(pki, auth_pkcs12=None), SITE)
    with pytest.raises(ConfigError, match=r"dmp\.signature_pkcs12"):
        SoapDmpGateway(dmp_settings(pki, signature_password="wrong"), SITE)
    plain = SoapDmpGateway(dmp_settings(pki, url="http://127.0.0.1:9/dmp", auth_pkcs12=None), SITE)
    plain.close()
