"""Inputs shared by the DMP tests, derived from the DRIM-M fixtures: the sample KOS as a `Manifest`, the
report behind the DMP sample, a `Submission`, settings, and the DMP sample itself read part by part."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from lxml import etree

from drimbox.config import DmpSettings, SiteSettings
from drimbox.dmp import codes
from drimbox.dmp.gateway import SoapDmpGateway
from drimbox.dmp.soap import mtom_decode
from drimbox.kos.model import Manifest, ManifestPatient, ManifestRequest, ManifestSeries, ReferencedInstance
from drimbox.publish.submission import Submission
from drimbox.report.model import Code, Identifier, Patient, Professional, Report, ReportedStudy
from tests.unit.test_dmp_identity import AUTH_PASSWORD, SIGN_PASSWORD, STRUCTURE_ID, Pki

FIXTURES = Path(__file__).parents[1] / "fixtures"
SAMPLE = FIXTURES / "drim-m" / "xds-provide-and-register-example.xml"
KOS_FILE = FIXTURES / "drim-m" / "kos-manifest-example.dcm"
KOS_SHA1 = "58408c116b51497c0f2084c90da3c85c7098455a"
SUBMISSION_UID = "1.2.250.1.999.1.1.8121.5.7122"
SIGNATURE_UID = "2.25.253872960909518376796861585574417771331"
UID_ROOT = "1.2.250.1.999.1.1.8121"
NS = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "saml2": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "xop": "http://www.w3.org/2004/08/xop/include",
    "xades": "http://uri.etsi.org/01903/v1.1.1#",
    "hl7": "urn:hl7-org:v3",
}


# --- fixture-derived inputs ----------------------------------------------------------------------


def kos_manifest() -> Manifest:
    """The sample KOS as the model holds it, read with pydicom (modality MR as the sample's eventCode)."""
    ds = pydicom.dcmread(KOS_FILE)
    offset = int(ds.TimezoneOffsetFromUTC)
    zone = timezone(timedelta(hours=offset // 100, minutes=offset % 100))
    created = datetime.strptime(ds.InstanceCreationDate + ds.InstanceCreationTime, "%Y%m%d%H%M%S").replace(tzinfo=zone)
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    series = tuple(
        ManifestSeries(
            series_uid=item.SeriesInstanceUID,
            retrieve_url=item.RetrieveURL,
            instances=tuple(
                ReferencedInstance(sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID)
                for sop in item.ReferencedSOPSequence
            ),
            modality="MR",
        )
        for item in evidence.ReferencedSeriesSequence
    )
    request = ds.ReferencedRequestSequence[0]
    return Manifest(
        sop_instance_uid=ds.SOPInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        study_uid=ds.StudyInstanceUID,
        created=created,
        patient=ManifestPatient(
            ins=ds.PatientID,
            ins_oid=ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID,
            name=str(ds.PatientName),
            birth_date=ds.PatientBirthDate,
            sex=ds.PatientSex,
        ),
        series=series,
        request=ManifestRequest(
            study_uid=request.StudyInstanceUID,
            accession_number=request.AccessionNumber,
            accession_issuer=request.IssuerOfAccessionNumberSequence[0].UniversalEntityID,
            placer_order=request.PlacerOrderNumberImagingServiceRequest,
            placer_order_issuer=request.OrderPlacerIdentifierSequence[0].UniversalEntityID,
        ),
        study_description=ds.StudyDescription,
    )


def sample_report(manifest: Manifest, **changes: Any) -> Report:
    """The report behind the sample: patient PAT-SIX Alain, author and legal authenticator KIT DOC0036790."""
    doctor = Professional(
        id=Identifier(codes.RPPS_ROOT, "899700367909"),
        family="DOC0036790",
        given="KIT",
        role=Code("G15_10/SM44", "1.2.250.1.213.1.1.4.5", "Médecin - Radio-diagnostic (SM)"),
        organisation=Identifier(codes.STRUCTURE_ROOT, STRUCTURE_ID),
        organisation_name="BCOM",
    )
    values: dict[str, Any] = {
        "document_id": Identifier("1.2.250.1.213.1.1.1.45.2", "CR-2021-0001"),
        "code": Code("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale"),
        "title": "CR d'imagerie médicale",
        "effective_time": "20210108111700+0100",
        "confidentiality": codes.NORMAL,
        "language": "fr-FR",
        "patient": Patient(
            ins=Identifier("1.2.250.1.213.1.4.10", "162018885045327"),
            ipp=None,
            birth_family="PAT-SIX",
            given="Alain",
            sex="M",
            birth_date="19960124",
        ),
        "author": doctor,
        "legal_authenticator": doctor,
        "order": Identifier("2.16.840.1.113883.6.96", "12989855966"),
        "accession": Identifier("1.2.840.113619.6.196", "7252295367250016"),
        "studies": (
            ReportedStudy(
                study_uid=manifest.study_uid,
                translations=(
                    Code("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance"),
                    Code("63337009", codes.SNOMED_CT, "Abdomen + pelvis"),
                ),
                start="20210104102200+0100",
                stop="20210104170500+0100",
            ),
        ),
        "facility_type": Code("SA01", codes.FACILITY_TYPE_SYSTEM, "Etablissement public de santé"),
        "practice_setting": Code("AMBULATOIRE", codes.PRACTICE_SETTING_SYSTEM, "Ambulatoire"),
    }
    values.update(changes)
    return Report(**values)


def sample_submission(**changes: Any) -> Submission:
    manifest = kos_manifest()
    values: dict[str, Any] = {
        "submission_uid": SUBMISSION_UID,
        "signature_uid": SIGNATURE_UID,
        "report": sample_report(manifest),
        "manifest": manifest,
        "kos": KOS_FILE.read_bytes(),
        "submitted_at": datetime(2023, 11, 14, 13, 44, 58, tzinfo=UTC),
        "flags": {"MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N"},
    }
    values.update(changes)
    return Submission(**values)


def dmp_settings(pki: Pki, url: str = "https://dmp.example.fr/si-dmp-server/v2/services", **extra: Any) -> DmpSettings:
    values: dict[str, Any] = {
        "url": url,
        "auth_pkcs12": pki.auth_p12,
        "auth_password": AUTH_PASSWORD,
        "signature_pkcs12": pki.sign_p12,
        "signature_password": SIGN_PASSWORD,
        "ca_bundle": pki.ca_pem,
        "source_id": UID_ROOT,
        "uid_root": UID_ROOT,
        "lps_id": "01.12.12",
        "homologation_id": "BCO-465897-tmp2",
    }
    values.update(extra)
    return DmpSettings(**values)


SITE = SiteSettings(structure_id=STRUCTURE_ID, name="BCOM")


@dataclass
class Captured:
    """One HTTP request the gateway sent, and its MTOM parts."""

    request: httpx.Request
    envelope: etree._Element
    parts: dict[str, bytes]


def capture(settings: DmpSettings, call: Any, answer: bytes | None = None) -> Captured:
    """Run `call(gateway)` against an in-memory DMP that answers Success, and return what it received."""
    seen: list[httpx.Request] = []
    success = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        b'<rs:RegistryResponse xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0" '
        b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/></s:Body></s:Envelope>'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=answer or success, headers={"Content-Type": "application/soap+xml"})

    with SoapDmpGateway(settings, SITE, httpx.Client(transport=httpx.MockTransport(handler))) as gateway:
        call(gateway)
    request = seen[0]
    content_type = request.headers["Content-Type"]
    if content_type.startswith("multipart/related"):
        root, parts = mtom_decode(content_type, request.content)
    else:
        root, parts = request.content, {}
    return Captured(request, etree.fromstring(root), parts)


# --- the sample, read leniently (its MIME lost its line structure when it was pretty-printed) -----


@dataclass
class SamplePart:
    headers: dict[str, str]
    body: bytes


def sample_parts() -> dict[str, SamplePart]:
    text = SAMPLE.read_bytes()
    parts: dict[str, SamplePart] = {}
    for chunk in text.split(b"--MIMEBoundary_Bound")[1:]:
        if chunk.startswith(b"--"):
            break
        lines = chunk.strip().split(b"\n")
        headers: dict[str, str] = {}
        while lines and lines[0].strip():
            name, _, value = lines.pop(0).decode().strip().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b"\n".join(lines).strip()
        parts[headers["content-id"].strip("<>")] = SamplePart(headers, body)
    return parts


@pytest.fixture(scope="module")
def sample() -> dict[str, SamplePart]:
    return sample_parts()


def test_the_sample_itself_carries_the_fixture_kos(sample: dict[str, SamplePart]) -> None:
    """Guard on the reference: its base64 part is exactly kos-manifest-example.dcm."""
    kos = base64.b64decode(b"".join(sample["0.2"].body.split()))
    assert kos == KOS_FILE.read_bytes()
    assert hashlib.sha1(kos).hexdigest() == KOS_SHA1
    assert len(kos) == 8450
