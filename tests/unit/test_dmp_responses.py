"""What the DMP answers, read as core errors: Success, Failure with RegistryErrors, SOAP faults, garbage;
and MTOM packaging both ways."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drimbox.dmp.responses import (
    FAILURE,
    PARTIAL_SUCCESS,
    SUCCESS,
    query_entries,
    registry_response,
)
from drimbox.dmp.soap import Part, mtom_decode, mtom_encode, soap_payload
from drimbox.errors import DmpRefused, DmpUnavailable
from drimbox.publish.submission import DmpEntry, DmpIssue

FIXTURE = Path(__file__).parents[1] / "fixtures" / "drim-m" / "xds-registry-response-example.xml"
SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
RS_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"


def soap(body: str) -> bytes:
    envelope = f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    return b'<?xml version="1.0"?>' + envelope.encode()


def registry(status: str, errors: str = "") -> bytes:
    error_list = f"<rs:RegistryErrorList>{errors}</rs:RegistryErrorList>" if errors else ""
    return soap(f'<rs:RegistryResponse xmlns:rs="{RS_NS}" status="{status}">{error_list}</rs:RegistryResponse>')


def fixture_as_mime() -> tuple[str, bytes]:
    """The DMP's answer with the MIME line breaks its copy lost restored (headers, blank line, CRLF)."""
    text = FIXTURE.read_bytes()
    envelope = text[text.index(b"<soap:Envelope") : text.index(b"</soap:Envelope>") + len(b"</soap:Envelope>")]
    boundary = "uuid:ac95cc6e-f93f-413d-950c-4bf9dc273d8a"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
            "Content-Transfer-Encoding: binary\r\n"
            "Content-ID: <root.message@cxf.apache.org>\r\n\r\n"
        ).encode()
        + envelope
        + f"\r\n--{boundary}--".encode()
    )
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        'start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"'
    )
    return content_type, body


def test_the_dmp_success_answer() -> None:
    content_type, body = fixture_as_mime()
    outcome = registry_response(soap_payload(content_type, body))
    assert outcome.status == SUCCESS
    assert outcome.issues == ()
    assert not outcome.partial


def test_failure_carries_every_registry_error() -> None:
    answer = registry(
        FAILURE,
        f'<rs:RegistryError errorCode="XDSRepositoryMetadataError" codeContext="hash does not match" '
        f'location="urn:uuid:kos" severity="{ERROR}"/>'
        f'<rs:RegistryError errorCode="DMPPatientNotFound" codeContext="INS inconnu" severity="{ERROR}"/>',
    )
    with pytest.raises(DmpRefused) as caught:
        registry_response(answer)
    assert caught.value.issues == (
        DmpIssue("XDSRepositoryMetadataError", "hash does not match", ERROR, "urn:uuid:kos"),
        DmpIssue("DMPPatientNotFound", "INS inconnu", ERROR, ""),
    )
    assert "XDSRepositoryMetadataError" in str(caught.value)


def test_a_busy_registry_is_retried_not_refused() -> None:
    busy = registry(FAILURE, f'<rs:RegistryError errorCode="XDSRegistryBusy" codeContext="later" severity="{ERROR}"/>')
    with pytest.raises(DmpUnavailable, match="busy"):
        registry_response(busy)
    mixed = registry(
        FAILURE,
        f'<rs:RegistryError errorCode="XDSRegistryBusy" severity="{ERROR}"/>'
        f'<rs:RegistryError errorCode="XDSRegistryMetadataError" severity="{ERROR}"/>',
    )
    with pytest.raises(DmpRefused):
        registry_response(mixed)


def test_partial_success_is_a_success_with_its_warnings() -> None:
    answer = registry(PARTIAL_SUCCESS, f'<rs:RegistryError errorCode="W1" codeContext="odd" severity="{WARNING}"/>')
    outcome = registry_response(answer)
    assert outcome.partial
    assert outcome.issues == (DmpIssue("W1", "odd", WARNING),)


def fault(code: str, subcode: str = "", reason: str = "refused") -> bytes:
    sub = f"<soap:Subcode><soap:Value xmlns:dmp='urn:dmp'>{subcode}</soap:Value></soap:Subcode>" if subcode else ""
    return soap(
        f"<soap:Fault><soap:Code><soap:Value>soap:{code}</soap:Value>{sub}</soap:Code>"
        f"<soap:Reason><soap:Text xml:lang='fr'>{reason}</soap:Text></soap:Reason></soap:Fault>"
    )


def test_a_sender_fault_is_refused_with_its_subcode() -> None:
    with pytest.raises(DmpRefused) as caught:
        registry_response(fault("Sender", "dmp:VIHF_INVALIDE", "Jeton VIHF invalide"))
    assert caught.value.issues == (DmpIssue("dmp:VIHF_INVALIDE", "Jeton VIHF invalide", location="soap:Fault"),)


def test_a_receiver_fault_is_unavailable() -> None:
    with pytest.raises(DmpUnavailable, match="Receiver"):
        registry_response(fault("Receiver", reason="base indisponible"))


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"garbage \x00\xff",
        b"<html><body>502 Bad Gateway</body></html>",
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>',
        soap(""),
        registry("urn:example:Unknown"),
        soap('<q:AdhocQueryResponse xmlns:q="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" status="x"/>'),
    ],
)
def test_unreadable_answers_are_unavailable(answer: bytes) -> None:
    with pytest.raises(DmpUnavailable):
        registry_response(answer)


def test_a_document_type_declaration_is_refused() -> None:
    """SOAP 1.2 forbids DTDs; an entity must not turn an unknown status into Success."""
    answer = registry("&s;").replace(
        b"<soap:Envelope",
        f'<!DOCTYPE soap:Envelope [<!ENTITY s "{SUCCESS}">]><soap:Envelope'.encode(),
    )
    with pytest.raises(DmpUnavailable, match="DTD"):
        registry_response(answer)


QUERY = (
    '<query:AdhocQueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
    'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" '
    'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"><rim:RegistryObjectList>{}'
    "</rim:RegistryObjectList></query:AdhocQueryResponse>"
)
ENTRY = (
    '<rim:ExtrinsicObject id="urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11" mimeType="application/dicom" '
    'status="urn:asip:ci-sis:2010:StatusType:Deleted" objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">'
    '<rim:Slot name="repositoryUniqueId"><rim:ValueList><rim:Value>1.2.250.1.213.4.1.1.2</rim:Value>'
    "</rim:ValueList></rim:Slot>"
    '<rim:ExternalIdentifier id="urn:uuid:e1" registryObject="urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11" '
    'identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427" value="1^^^&amp;1.2&amp;ISO^NH"/>'
    '<rim:ExternalIdentifier id="urn:uuid:e2" registryObject="urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11" '
    'identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab" value="1.2.3.4"/>'
    "</rim:ExtrinsicObject>"
)


def test_a_query_answer_gives_the_entry() -> None:
    assert query_entries(soap(QUERY.format(ENTRY))) == (
        DmpEntry(
            entry_uuid="urn:uuid:4a1b8b5e-9d0e-4c66-9a3a-1f9e2c7d0a11",
            unique_id="1.2.3.4",
            status="urn:asip:ci-sis:2010:StatusType:Deleted",
            repository_unique_id="1.2.250.1.213.4.1.1.2",
        ),
    )


def test_an_empty_query_answer_and_object_refs() -> None:
    assert query_entries(soap(QUERY.format(""))) == ()
    empty = soap(QUERY.format("").replace("<rim:RegistryObjectList></rim:RegistryObjectList>", ""))
    assert query_entries(empty) == ()
    refs = soap(QUERY.format('<rim:ObjectRef id="urn:uuid:0001"/>'))
    assert query_entries(refs) == (DmpEntry("urn:uuid:0001", ""),)


def test_a_failed_query_is_refused() -> None:
    failed = QUERY.format("").replace("ResponseStatusType:Success", "ResponseStatusType:Failure")
    failed = failed.replace(
        "<rim:RegistryObjectList>",
        f'<rs:RegistryErrorList xmlns:rs="{RS_NS}"><rs:RegistryError errorCode="XDSRegistryError" '
        f'codeContext="bad query" severity="{ERROR}"/></rs:RegistryErrorList><rim:RegistryObjectList>',
    )
    with pytest.raises(DmpRefused) as caught:
        query_entries(soap(failed))
    assert [i.code for i in caught.value.issues] == ["XDSRegistryError"]


def test_a_registry_response_is_not_a_query_answer() -> None:
    with pytest.raises(DmpUnavailable, match="AdhocQueryResponse"):
        query_entries(registry(SUCCESS))


# --- MTOM ---------------------------------------------------------------------------------------


def test_mtom_round_trip_keeps_every_byte() -> None:
    binary = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"
    content_type, body = mtom_encode(b"<root/>", [Part("0.2", binary, base64=True), Part("0.3", binary)], "urn:a")
    assert re.search(r'boundary="MIMEBoundary_[0-9a-f]{32}"', content_type)
    root, parts = mtom_decode(content_type, body)
    assert root == b"<root/>"
    assert parts == {"0.2": binary, "0.3": binary}
    assert max(len(line) for line in body.split(b"--MIME")[2].split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76


def test_plain_soap_passes_through() -> None:
    assert soap_payload('application/soap+xml; charset=UTF-8; action="x"', b"<a/>") == b"<a/>"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/related", b"--x\r\n\r\n<a/>\r\n--x--"),
        ('multipart/related; boundary="x"', b"no delimiters at all"),
        ('multipart/related; boundary="x"', b"--x\r\nContent-Type: a/b\r\n\r\n<a/>"),
        ('multipart/related; boundary="x"', b"--x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n--x--"),
        ('multipart/related; boundary="x"', b"--x\r\nContent-Type: a/b<a/>\r\n--x--"),
    ],
)
def test_broken_multipart_is_a_value_error(content_type: str, body: bytes) -> None:
    with pytest.raises(ValueError):
        mtom_decode(content_type, body)


def test_a_part_without_headers_and_lf_line_ends() -> None:
    root, parts = mtom_decode('multipart/related; boundary="x"', b"--x\n\n<a/>\n--x--\n")
    assert (root, parts) == (b"<a/>", {})


@given(st.binary(max_size=400))
def test_any_answer_is_read_or_refused_within_the_error_tree(data: bytes) -> None:
    with contextlib.suppress(DmpRefused, DmpUnavailable):
        registry_response(data)


@given(st.binary(max_size=400), st.sampled_from(["x", "MIMEBoundary_1"]))
def test_any_multipart_is_read_or_a_value_error(data: bytes, boundary: str) -> None:
    with contextlib.suppress(ValueError):
        mtom_decode(f'multipart/related; boundary="{boundary}"', b"--" + boundary.encode() + b"\r\n" + data)


def test_a_boundary_inside_a_line_is_content() -> None:
    body = b"--x\r\nContent-ID: <r>\r\n\r\n<a>--x not a delimiter</a>\r\n--x--\r\n"
    assert mtom_decode('multipart/related; boundary="x"; start="<r>"', body) == (b"<a>--x not a delimiter</a>", {})
