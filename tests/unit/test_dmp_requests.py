"""The other request shapes: visibility flags, CDA report, replacement, device author, refusals before
sending, ITI-57 withdrawal, ITI-18 query, times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from lxml import etree

from drimbox.config import SiteSettings
from drimbox.dmp import codes
from drimbox.dmp.entries import INVALID_METADATA
from drimbox.dmp.metadata import get_documents_query, update_availability_request
from drimbox.errors import DmpRefused
from drimbox.kos.model import ManifestPatient
from drimbox.publish.submission import Withdrawal
from drimbox.report.model import Identifier
from tests.unit.test_dmp_identity import STRUCTURE_ID, Pki, build_pki
from tests.unit.test_dmp_metadata import _objects, _q, _values
from tests.unit.test_dmp_samples import (
    FIXTURES,
    NS,
    SITE,
    capture,
    dmp_settings,
    kos_manifest,
    sample_report,
    sample_submission,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


# --- other shapes --------------------------------------------------------------------------------


def test_visibility_flags_become_confidentiality_codes(pki: Pki) -> None:
    flags = {"MASQUE_PS": "Y", "INVISIBLE_PATIENT": "n", "INVISIBLE_REP_LEGAUX": "Y", "CONNEXION_SECRETE": "Y"}
    sent = capture(dmp_settings(pki), lambda gateway: gateway.provide(sample_submission(flags=flags)))
    kos = _objects(sent.envelope)["KOS"]
    scheme = f"rim:Classification[@classificationScheme='{codes.ENTRY_CONFIDENTIALITY}']"
    assert [c.get("nodeRepresentation") for c in kos.findall(scheme, NS)] == [
        "N",
        "MASQUE_PS",
        "INVISIBLE_REPRESENTANTS_LEGAUX",
    ]
    secret = sent.envelope.find(
        f".//saml2:Attribute[@Name='{CONFIDENTIALITY}']/saml2:AttributeValue/hl7:ConfidentialityCode", NS
    )
    assert secret is not None and secret.get("code") == "INVISIBLE_REPRESENTANTS_LEGAUX"


CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"


def test_report_document_replacement_and_ipp(pki: Pki) -> None:
    manifest = kos_manifest()
    report = sample_report(
        manifest,
        patient=sample_report(manifest).patient.__class__(
            ins=Identifier("1.2.250.1.213.1.4.10", "162018885045327"),
            ipp=Identifier("1.2.250.1.999.7", "IPP42"),
            birth_family="PAT-SIX",
            given="Alain",
        ),
    )
    cda = b"<ClinicalDocument xmlns='urn:hl7-org:v3'/>"
    submission = sample_submission(report=report, report_document=cda, replaces="urn:uuid:0d6d1b8e-old")
    sent = capture(dmp_settings(pki), lambda gateway: gateway.provide(submission))
    objects = sent.envelope.find(".//rim:RegistryObjectList", NS)
    entries = objects.findall("rim:ExtrinsicObject", NS)
    cda_entry = next(e for e in entries if _values(e, "size") == (str(len(cda)),))
    assert cda_entry.get("mimeType") == "text/xml"
    codes_of = {
        (c.get("classificationScheme"), c.get("nodeRepresentation"))
        for c in cda_entry.findall("rim:Classification", NS)
    }
    assert {
        (codes.ENTRY_TYPE, "18748-4"),
        (codes.ENTRY_CLASS, "10"),
        (codes.ENTRY_FORMAT, "urn:ihe:iti:xds-sd:pdf:2008"),
    } <= codes_of
    unique = cda_entry.find(f"rim:ExternalIdentifier[@identificationScheme='{codes.ENTRY_UNIQUE_ID}']", NS)
    assert unique is not None and unique.get("value") == "1.2.250.1.213.1.1.1.45.2^CR-2021-0001"
    assert _values(cda_entry, "sourcePatientId") == ("IPP42^^^&1.2.250.1.999.7&ISO^PI",)
    include = sent.envelope.find(f".//xdsb:Document[@id='{cda_entry.get('id')}']/xop:Include", NS)
    assert include is not None and sent.parts[include.get("href", "")[4:]] == cda
    kos_id = _objects(sent.envelope)["KOS"].get("id")
    replace = objects.find(f"rim:Association[@associationType='{codes.REPLACES}']", NS)
    assert replace is not None and (replace.get("sourceObject"), replace.get("targetObject")) == (
        kos_id,
        "urn:uuid:0d6d1b8e-old",
    )
    members = objects.findall(f"rim:Association[@associationType='{codes.HAS_MEMBER}']", NS)
    assert {m.get("targetObject") for m in members} == {e.get("id") for e in entries}
    manifest_uris = etree.fromstring(sent.parts["0.3"]).xpath("//ds:Manifest/ds:Reference/@URI", namespaces=NS)
    assert "urn:oid:1.2.250.1.213.1.1.1.45.2^CR-2021-0001" in manifest_uris


def test_device_author_is_written_as_the_validator_sample(pki: Pki) -> None:
    sent = capture(dmp_settings(pki, author="device"), lambda gateway: gateway.provide(sample_submission()))
    authors = sent.envelope.xpath(".//rim:Slot[@name='authorPerson']/rim:ValueList/rim:Value/text()", namespaces=NS)
    assert set(authors) == {f"3{STRUCTURE_ID}/01.12.12^DRIMbox^^^^^^^&1.2.250.1.71.4.2.1&ISO^U^^^EI"}
    validator = etree.parse(FIXTURES / "drim-m-data" / "xds-validator-sample.xml")
    theirs = validator.xpath("(//rim:Slot[@name='authorPerson'])[1]/rim:ValueList/rim:Value/text()", namespaces=NS)[0]
    assert next(len(v.split("^")) for v in authors) == len(theirs.split("^"))
    assert theirs.split("^")[-4:] == authors[0].split("^")[-4:]


@pytest.mark.parametrize(
    ("changes", "location"),
    [
        ({"submission_uid": "not-an-oid"}, "submission_uid"),
        ({"signature_uid": ""}, "signature_uid"),
        ({"kos": b""}, "Document"),
    ],
)
def test_invalid_submissions_are_refused_before_sending(pki: Pki, changes: dict[str, Any], location: str) -> None:
    with pytest.raises(DmpRefused) as caught:
        capture(dmp_settings(pki), lambda gateway: gateway.provide(sample_submission(**changes)))
    assert [(i.code, i.location) for i in caught.value.issues] == [(INVALID_METADATA, location)]


def test_a_kos_for_another_patient_is_refused(pki: Pki) -> None:
    manifest = kos_manifest()
    other = manifest.__class__(
        **{**manifest.__dict__, "patient": ManifestPatient("299999999999999", "1.2.250.1.213.1.4.10", "X")}
    )
    with pytest.raises(DmpRefused, match="different patients"):
        capture(dmp_settings(pki), lambda gateway: gateway.provide(sample_submission(manifest=other)))


def test_an_author_without_profession_code_takes_the_default_role(pki: Pki) -> None:
    manifest = kos_manifest()
    report = sample_report(manifest)
    anonymous = report.author.__class__(**{**report.author.__dict__, "role": None})
    submission = sample_submission(report=sample_report(manifest, author=anonymous))
    sent = capture(dmp_settings(pki, default_author_role="G15_10/SM26"), lambda gateway: gateway.provide(submission))
    roles = sent.envelope.findall(f".//saml2:Attribute[@Name='{ROLE}']/saml2:AttributeValue/hl7:Role", NS)
    assert [(r.get("code"), r.get("displayName")) for r in roles] == [("10", "Medecin"), ("SM26", "SM26")]
    with pytest.raises(DmpRefused, match="profession code"):
        capture(dmp_settings(pki, default_author_role=""), lambda gateway: gateway.provide(submission))


ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"


def test_withdrawal_is_an_update_availability_status(pki: Pki) -> None:
    report = sample_report(kos_manifest())
    withdrawal = Withdrawal(
        "1.2.250.1.999.1.1.8121.5.7123",
        "urn:uuid:1b7a3c2e-0000-4000-8000-000000000001",
        report,
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    request = update_availability_request(withdrawal, dmp_settings(pki), SITE)
    assert _q(request.tag) == "lcm:SubmitObjectsRequest"
    package = request.find("rim:RegistryObjectList/rim:RegistryPackage", NS)
    association = request.find("rim:RegistryObjectList/rim:Association", NS)
    assert package is not None and association is not None
    assert association.get("associationType") == "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
    assert (association.get("sourceObject"), association.get("targetObject")) == (
        package.get("id"),
        withdrawal.entry_uuid,
    )
    assert _values(association, "OriginalStatus") == ("urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",)
    assert _values(association, "NewStatus") == ("urn:asip:ci-sis:2010:StatusType:Deleted",)
    unique = package.find(f"rim:ExternalIdentifier[@identificationScheme='{codes.SUBMISSION_SET_UNIQUE_ID}']", NS)
    assert unique is not None and unique.get("value") == withdrawal.submission_uid
    assert _values(package, "submissionTime") == ("20240102030405",)


def test_get_documents_query() -> None:
    request = get_documents_query("1.3.2.751468943.3.1234.56838.231114144457.1.1.1")
    option = request.find("query:ResponseOption", NS)
    query = request.find("rim:AdhocQuery", NS)
    assert option is not None and option.get("returnType") == "LeafClass"
    assert query is not None and query.get("id") == "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
    assert [s.get("name") for s in query] == ["$XDSDocumentEntryUniqueId"]
    assert _values(query, "$XDSDocumentEntryUniqueId") == ("('1.3.2.751468943.3.1234.56838.231114144457.1.1.1')",)


def test_default_source_id_is_a_stable_oid(pki: Pki) -> None:
    from drimbox.dmp.metadata import default_source_id
    from drimbox.uids import is_valid_uid

    value = default_source_id(SITE)
    assert value == default_source_id(SiteSettings(structure_id=STRUCTURE_ID, name="other name"))
    assert value.startswith("2.25.") and is_valid_uid(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20210104102200+0100", "20210104092200"),
        ("202101041022+0100", "202101040922"),
        ("20210104+0100", "20210104"),
        ("20210104102200.123-0230", "20210104125200"),
        ("20210104102200", "20210104102200"),
        ("2021", "2021"),
        ("", ""),
        ("garbage", ""),
        ("2021010", ""),
    ],
)
def test_hl7_times_become_utc_xds_times(value: str, expected: str) -> None:
    from drimbox.dmp.ebrim import xds_time_from_hl7

    assert xds_time_from_hl7(value) == expected
