"""The CDA reader: every field of the DRIM-M and CI-SIS samples, each refusal, and hostile input."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from drimbox.errors import ReportRefused
from drimbox.report.cda import read_report
from drimbox.report.model import INS_NIR, Code, Identifier, Patient, Professional, ReportedStudy

FIXTURES = Path(__file__).parents[1] / "fixtures"
CDA = FIXTURES / "drim-m" / "cda-imaging-report-example.xml"
NS = {"hl7": "urn:hl7-org:v3"}

RADIOLOGIST = Professional(
    id=Identifier("1.2.250.1.71.4.2.1", "801234560801"),
    family="BIDEAULT",
    given="Jacques",
    prefix="M",
    role=Code("G15_10/SM44", "1.2.250.1.213.1.1.4.5", "Médecin - Radio-diagnostic (SM)"),
    organisation=Identifier("1.2.250.1.71.4.2.2", "101235555"),
    organisation_name="Centre de radiologie Ambroise",
)
LOINC = "2.16.840.1.113883.6.1"
CCAM = "1.2.250.1.213.2.5"
DCM = "1.2.840.10008.2.16.4"
SNOMED = "2.16.840.1.113883.6.96"


def _study(uid: str, code: Code, ccam: Code, region: Code) -> ReportedStudy:
    modality = Code("CT", DCM, "Tomodensitométrie")
    return ReportedStudy(uid, code, (ccam, modality, region), "20210108102500+0100", "20210108111700+0100")


HEAD_NECK = Code("774007", SNOMED, "structure de la tête et/ou du cou")
CONTRAST = "avec injection intraveineuse de produit de contraste"
STUDIES = (
    _study(
        "1.2.250.1.3.152.235.2.12.187636474",
        Code("24727-0", LOINC, "CT Head W contrast IV"),
        Code("ACQH004", CCAM, f"Scanographie du crâne, de son contenu et du tronc, {CONTRAST}"),
        HEAD_NECK,
    ),
    _study(
        "1.2.250.1.3.152.235.2.12.187636475",
        Code("36235-0", LOINC, "CT Neck W contrast IV"),
        Code("LCQH001", CCAM, f"Scanographie des tissus mous du cou, {CONTRAST}"),
        HEAD_NECK,
    ),
    _study(
        "1.2.250.1.3.152.235.2.12.187636476",
        Code("24978-9", LOINC, "CT Thoracic spine"),
        Code("ZBQH001", CCAM, f"Scanographie du thorax, {CONTRAST}"),
        Code("67734004", SNOMED, "segment thoracique du tronc"),
    ),
)


def _fixture() -> bytes:
    return CDA.read_bytes()


def _edited(edit: Callable[[etree._Element], None]) -> bytes:
    """The fixture after `edit` changed its tree (so each variant differs from the sample in one way)."""
    root = etree.fromstring(_fixture())
    edit(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _remove(path: str) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        found = root.findall(path, NS)
        assert found, path
        for element in found:
            parent = element.getparent()
            assert parent is not None
            parent.remove(element)

    return edit


def _embedded_cda(message: str) -> bytes:
    """The CDA of the first OBX (type ED) of an HL7v2 message: the component after `Base64` in OBX-5."""
    text = (FIXTURES / "hl7v2-cisis" / message).read_text(encoding="utf-8")
    obx = next(s for s in re.split(r"[\r\n]+", text) if s.startswith("OBX|") and s.split("|")[2] == "ED")
    components = obx.split("|")[5].split("^")
    index = [c.lower() for c in components].index("base64")
    return base64.b64decode(components[index + 1])


def test_the_drim_m_sample_gives_every_field() -> None:
    report = read_report(_fixture())

    assert report.document_id == Identifier("1.2.250.1.213.1.1.1.45.2")
    assert report.code == Code("18748-4", LOINC, "CR d’imagerie médicale")
    assert report.title == "CR d’imagerie médicale - Scanner Tête + Cou + Thorax avec injection"
    assert report.effective_time == "20210108111700+0100"
    assert report.confidentiality == Code("N", "2.16.840.1.113883.5.25", "Normal")
    assert report.language == "fr-FR"
    assert report.patient == Patient(
        ins=Identifier("1.2.250.1.213.1.4.10", "279035121518989"),
        ipp=Identifier("1.2.3.4.567.8.9.10", "1234567890121"),
        birth_family="PAT-TROIS",
        given="DOMINIQUE",
        used_family="PAT-TROIS",
        used_given="DOMINIQUE",
        sex="F",
        birth_date="19790328",
        birthplace_code="63220",
    )
    assert report.author == RADIOLOGIST
    assert report.legal_authenticator == RADIOLOGIST
    assert report.order == Identifier("1.2.250.1.748.12345678.12", "984375862")
    assert report.accession == Identifier("1.2.250.1.925.994044785528.27", "105234751")
    assert report.studies == STUDIES  # the fourth serviceEvent (CIM-10 Z13.9 screening) has no UID
    assert report.replaces == Identifier("90E1C8EC-F951-4B26-A305-A34848818DD6")
    assert report.facility_type == Code("SA08", "1.2.250.1.71.4.2.4", "Cabinet de groupe")
    assert report.practice_setting == Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire")
    assert report.warnings == ()


def test_the_cisis_mdm_t02_report_reads() -> None:
    report = read_report(_embedded_cda("mdm-t02-imaging-report-initial.er7"))

    assert report.document_id == Identifier("1.2.250.1.71.4.2.2.120456789.71024000081")
    assert report.code.code == "18748-4"
    assert report.patient.ins == Identifier("1.2.250.1.213.1.4.10", "279035121518989")
    assert report.patient.ipp is None  # the sample's IPP id is commented out
    # given BR (first birth first name) and the unqualified list: the list is the INS trait
    assert (report.patient.birth_family, report.patient.given) == ("PAT-TROIS", "DOMINIQUE")
    assert report.patient.used_given == ""
    assert report.author.id == Identifier("1.2.250.1.71.4.2.1", "801234564895")
    assert (report.author.family, report.author.given, report.author.role) == ("Eric", "Thomas", None)
    assert report.author.organisation == Identifier("1.2.250.1.71.4.2.2", "1120456789")
    assert report.legal_authenticator is not None and report.legal_authenticator.organisation is None
    assert report.accession == Identifier("1.2.840.113619.6.197", "7252295367250056")
    assert report.order == Identifier("2.16.840.1.113883.6.96", "12989855963")
    assert [s.study_uid for s in report.studies] == ["1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.0"]
    assert report.studies[0].code == Code("69536005", CCAM, "Tete")
    assert report.practice_setting == Code("ETABLISSEMENT", "1.2.250.1.213.1.1.4.9", "Etablissement de santé")
    assert report.facility_type == Code("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel")
    assert report.replaces is None


def test_the_cisis_mdm_t10_report_replaces_the_t02_one() -> None:
    initial = read_report(_embedded_cda("mdm-t02-imaging-report-initial.er7"))
    replacement = read_report(_embedded_cda("mdm-t10-imaging-report-replace.er7"))

    assert replacement.document_id == Identifier("1.2.250.1.71.4.2.2.120456789.71024000082")
    assert replacement.replaces == initial.document_id


def test_each_service_event_with_a_study_uid_is_a_study() -> None:
    single = read_report(_edited(_remove("hl7:documentationOf[2]")))
    assert [s.study_uid for s in single.studies] == [STUDIES[0].study_uid, STUDIES[2].study_uid]

    def repeat_first(root: etree._Element) -> None:
        first = root.find("hl7:documentationOf", NS)
        assert first is not None
        first.addnext(etree.fromstring(etree.tostring(first)))

    repeated = read_report(_edited(repeat_first))
    assert repeated.studies == STUDIES
    assert any("named twice" in w for w in repeated.warnings)


def test_no_replacement_without_an_rplc_related_document() -> None:
    assert read_report(_edited(_remove("hl7:relatedDocument"))).replaces is None


def test_a_production_ins_is_extracted_not_judged() -> None:
    def production(root: etree._Element) -> None:
        ins = root.find("hl7:recordTarget/hl7:patientRole/hl7:id", NS)
        assert ins is not None
        ins.set("root", INS_NIR)

    assert read_report(_edited(production)).patient.ins == Identifier(INS_NIR, "279035121518989")


def test_the_ipp_is_the_first_other_id_wherever_the_ins_sits() -> None:
    def ipp_first(root: etree._Element) -> None:
        role = root.find("hl7:recordTarget/hl7:patientRole", NS)
        assert role is not None
        ins = role.find("hl7:id", NS)
        assert ins is not None
        role.remove(ins)
        role.insert(1, ins)

    patient = read_report(_edited(ipp_first)).patient
    assert patient.ins.extension == "279035121518989"
    assert patient.ipp == Identifier("1.2.3.4.567.8.9.10", "1234567890121")


def test_practice_setting_falls_back_on_the_author_structure() -> None:
    report = read_report(
        _edited(
            _remove(
                "hl7:documentationOf/hl7:serviceEvent/hl7:performer/hl7:assignedEntity/"
                "hl7:representedOrganization/hl7:standardIndustryClassCode"
            )
        )
    )
    assert report.practice_setting == Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire")


def test_optional_parts_may_be_missing() -> None:
    def strip(root: etree._Element) -> None:
        for path in (
            "hl7:legalAuthenticator",
            "hl7:inFulfillmentOf",
            "hl7:componentOf",
            "hl7:relatedDocument",
            "hl7:title",
            ".//hl7:standardIndustryClassCode",
        ):
            _remove(path)(root)

    report = read_report(_edited(strip))
    assert report.legal_authenticator is None
    assert (report.order, report.accession, report.facility_type, report.practice_setting) == (None, None, None, None)
    assert report.title == ""


@pytest.mark.parametrize(
    ("path", "message", "location"),
    [
        (
            "hl7:recordTarget/hl7:patientRole/hl7:id[@root='1.2.250.1.213.1.4.10']",
            "no INS in recordTarget/patientRole/id",
            "/ClinicalDocument/recordTarget/patientRole/id",
        ),
        ("hl7:recordTarget", "no INS in recordTarget/patientRole/id", "/ClinicalDocument/recordTarget/patientRole"),
        ("hl7:author/hl7:assignedAuthor/hl7:id", "no author id", "/ClinicalDocument/author/assignedAuthor/id"),
        ("hl7:author", "no author id", "/ClinicalDocument/author/assignedAuthor/id"),
        (
            "hl7:documentationOf/hl7:serviceEvent/hl7:id",
            "StudyInstanceUID",
            "/ClinicalDocument/documentationOf/serviceEvent/id",
        ),
        ("hl7:id", "no document id", "/ClinicalDocument/id"),
        ("hl7:code", "no document type code", "/ClinicalDocument/code"),
        ("hl7:effectiveTime", "effectiveTime", "/ClinicalDocument/effectiveTime"),
        ("hl7:confidentialityCode", "confidentialityCode", "/ClinicalDocument/confidentialityCode"),
    ],
)
def test_a_report_that_cannot_be_published_is_refused(path: str, message: str, location: str) -> None:
    with pytest.raises(ReportRefused, match=message) as refused:
        read_report(_edited(_remove(path)))
    assert refused.value.location == location


def test_an_ins_without_value_or_an_author_id_with_null_flavor_is_missing() -> None:
    def empty_ins(root: etree._Element) -> None:
        ins = root.find("hl7:recordTarget/hl7:patientRole/hl7:id", NS)
        assert ins is not None
        del ins.attrib["extension"]

    def null_author(root: etree._Element) -> None:
        author_id = root.find("hl7:author/hl7:assignedAuthor/hl7:id", NS)
        assert author_id is not None
        author_id.attrib.clear()
        author_id.set("nullFlavor", "UNK")

    with pytest.raises(ReportRefused, match="no INS in recordTarget/patientRole/id"):
        read_report(_edited(empty_ins))
    with pytest.raises(ReportRefused, match="no author id"):
        read_report(_edited(null_author))


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"   \n",
        b"%PDF-1.7 not xml",
        b"<ClinicalDocument xmlns='urn:hl7-org:v3'>",
        b"<ClinicalDocument/>",
        b"<Other xmlns='urn:hl7-org:v3'/>",
        b"\xff\xfe\x00garbage",
        "<ClinicalDocument xmlns='urn:hl7-org:v3'><title>é</title></ClinicalDocument>".encode("latin-1"),
    ],
)
def test_what_is_not_a_clinical_document_is_refused(document: bytes) -> None:
    with pytest.raises(ReportRefused) as refused:
        read_report(document)
    assert refused.value.location == "/"


def test_entities_are_neither_resolved_nor_fetched(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    external = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>'
    ).encode()
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&c;</title>'
        b"</ClinicalDocument>"
    )
    for document in (external, laughs):
        with pytest.raises(ReportRefused, match="DOCTYPE") as refused:
            read_report(document)
        assert "SECRET" not in str(refused.value)


def _mangle(text: str) -> str:
    """UTF-8 bytes read as Latin-1: what a misconfigured RIS interface makes of accents."""
    return text.encode("utf-8").decode("latin-1")


def test_double_encoded_utf8_is_repaired_and_reported() -> None:
    source = _fixture().decode("utf-8")
    title = "CR d’imagerie médicale - Scanner Tête + Cou + Thorax avec injection"
    source = source.replace(f"<title>{title}", f"<title>{_mangle(title)}", 1)
    source = source.replace(
        'displayName="Médecin - Radio-diagnostic (SM)"', f'displayName="{_mangle("Médecin - Radio-diagnostic (SM)")}"'
    )
    source = source.replace("<family>BIDEAULT</family>", f"<family>{_mangle('BIDÉAULT')}</family>")
    assert "mÃ©dicale" in source

    report = read_report(source.encode("utf-8"))

    assert report.title == title
    assert report.author.role == RADIOLOGIST.role
    assert report.author.family == "BIDÉAULT"
    assert any("repaired" in w and "/ClinicalDocument/title" in w for w in report.warnings)
    assert any("assignedAuthor/assignedPerson" in w for w in report.warnings)
    assert all("BID" not in w for w in report.warnings)  # warnings name places, never patient or PS data


def test_double_encoding_that_does_not_round_trip_is_reported_and_kept() -> None:
    mixed = f"{_mangle('médicale')} ✓"  # the check mark cannot come from Latin-1: no clean repair
    source = _fixture().decode("utf-8").replace("<title>CR d’imagerie médicale", f"<title>{mixed}", 1)

    report = read_report(source.encode("utf-8"))

    assert report.title.startswith(mixed)
    assert any("left as is" in w for w in report.warnings)


def _small_fixture() -> bytes:
    """The sample without its PDF body, so that mutations land in the header the reader uses."""
    return re.sub(rb"(representation=\"B64\"\s*>)[^<]*", rb"\1JVBERi0=", _fixture())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_report_refused(document: bytes) -> None:
    with pytest.raises(ReportRefused):
        read_report(document)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_report_reads_or_is_refused(data: st.DataObject) -> None:
    document = bytearray(_small_fixture())
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(document) - 1))
        end = data.draw(st.integers(start, min(len(document), start + 40)))
        document[start:end] = data.draw(st.binary(max_size=12))
    try:
        report = read_report(bytes(document))
    except ReportRefused as refused:
        assert str(refused)
    else:
        assert report.patient.ins.extension and report.author.id.root and report.studies
