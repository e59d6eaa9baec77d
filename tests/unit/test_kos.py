"""The KOS writer and reader: the DRIM-M sample, a write/read round trip, the golden diff, the IOD."""

from __future__ import annotations

import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from drimbox.kos.build import InvalidManifest, describe, encode_manifest, manifest_dataset
from drimbox.kos.model import (
    KOS_SOP_CLASS,
    Manifest,
    ManifestPatient,
    ManifestRequest,
    ManifestSeries,
    ReferencedInstance,
)
from drimbox.kos.parse import ManifestUnreadable, read_manifest
from drimbox.kos.rejection import rejection_note

SAMPLE = Path(__file__).parents[1] / "fixtures" / "drim-m" / "kos-manifest-example.dcm"
SAMPLE_STUDY = "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.3.116"
SAMPLE_SERIES = (
    "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.6.116",
    "1.3.6.1.4.1.5962.99.1.3711725607.829148806.1687338938407.6.216",
)
MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def _sample() -> Dataset:
    return dcmread(SAMPLE)


def _fresh(**changes: object) -> Manifest:
    """A manifest as the publication composes one: accents, two series, two SOP classes, a request."""
    study = "1.2.826.0.1.3680043.10.1234.1"
    series = (
        ManifestSeries(
            series_uid=f"{study}.1",
            retrieve_url=f"https://db1.example.fr/dicom-web/studies/{study}/series/{study}.1",
            instances=tuple(ReferencedInstance(CT, f"{study}.1.{n}") for n in (1, 2, 3)),
            modality="CT",
            description="Thorax sans injection",
        ),
        ManifestSeries(
            series_uid=f"{study}.2",
            retrieve_url=f"https://db1.example.fr/dicom-web/studies/{study}/series/{study}.2",
            instances=(ReferencedInstance(SR, f"{study}.2.1"),),
            modality="SR",
            description="Dose",
        ),
    )
    manifest = Manifest(
        sop_instance_uid=f"{study}.99.1",
        series_instance_uid=f"{study}.99",
        study_uid=study,
        created=datetime(2026, 3, 1, 9, 5, 7, 250000, tzinfo=timezone(timedelta(hours=1))),
        patient=ManifestPatient(
            ins="279035121518989", ins_oid="1.2.250.1.213.1.4.10", name="DUPRÉ^Hélène", birth_date="19790328", sex="F"
        ),
        series=series,
        request=ManifestRequest(
            study_uid=study,
            accession_number="105234751",
            accession_issuer="1.2.250.1.925.994044785528.27",
            placer_order="984375862",
            placer_order_issuer="1.2.250.1.748.12345678.12",
            requested_procedure_id="RP1",
            requested_procedure_description="Scanner thoracique",
        ),
        series_number=901,
        instance_number=2,
        study_date="20260301",
        study_time="084500",
        study_id="S1",
        study_description="TDM THORAX",
        referring_physician="MERCIER^Aurélie",
        institution_name="Centre d'imagerie Ambroise-Paré",
        description=describe("TDM THORAX", "Scanographie du thorax", series),
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


# --- (a) the DRIM-M sample -------------------------------------------------------------------------


def test_the_drim_m_sample_reads_into_the_model() -> None:
    manifest = read_manifest(SAMPLE.read_bytes())

    assert manifest.sop_instance_uid == "1.3.2.751468943.3.1234.56838.231114144457.1.1.1"
    assert manifest.series_instance_uid == "1.3.2.751468943.3.1234.29023.231114144457.1.1.2"
    assert manifest.study_uid == SAMPLE_STUDY
    assert manifest.created == datetime(2023, 11, 14, 14, 44, 57, tzinfo=timezone(timedelta(hours=2)))
    assert manifest.patient == ManifestPatient(
        ins="162018885045327",
        ins_oid="1.2.250.1.213.1.4.10",
        name="PAT-SIX",
        birth_date="19960124",
        sex="M",
        issuer_name="ASIP-SANTE-INS-NIR",
    )
    assert [s.series_uid for s in manifest.series] == list(SAMPLE_SERIES)
    for series in manifest.series:
        assert series.retrieve_url == (
            f"http://localhost:4200/api/source/studies/{SAMPLE_STUDY}/series/{series.series_uid}"
        )
        assert len(series.instances) == 10
        assert {i.sop_class_uid for i in series.instances} == {MR}
        assert (series.modality, series.description) == ("MR", "T2 Ax Space Iso RT")
    assert (
        manifest.series[0].instances[0].sop_instance_uid == "1.2.276.0.7230010.3.1.4.8323329.1661.1687347921.41307216"
    )
    assert manifest.instance_count == 20
    assert manifest.modalities == ("MR",)
    assert manifest.request == ManifestRequest(
        study_uid=SAMPLE_STUDY,
        accession_number="7252295367250016",
        accession_issuer="1.2.840.113619.6.196",
        placer_order="12989855966",
        placer_order_issuer="2.16.840.1.113883.6.96",
    )
    assert (manifest.series_number, manifest.instance_number) == (59, 1)
    assert (manifest.study_date, manifest.study_time, manifest.study_id) == ("20221215", "194622.300000", "")
    assert (manifest.study_description, manifest.referring_physician) == ("Exam A", "")
    assert (manifest.institution_name, manifest.manufacturer) == ("BCOM", "BCOM")
    assert manifest.description.startswith("Examen : Exam A\nActe =  : Abdomen + pelvis\n")


def test_describe_writes_the_sample_text_byte_for_byte() -> None:
    manifest = read_manifest(SAMPLE.read_bytes())

    assert describe("Exam A", "Abdomen + pelvis", manifest.series) == _sample().ContentSequence[-1].TextValue


def test_describe_keeps_one_line_per_series() -> None:
    series = ManifestSeries("1.2.3", "u", (ReferencedInstance(CT, "1.2.3.4"),), "CT", "two\nlines")
    assert describe("A\nB", "act", [series]) == "Examen : A B\nActe =  : act\nSérie-1.2.3 : CT @  : two lines\n"


# --- (b) write, read back --------------------------------------------------------------------------


def test_a_manifest_survives_write_and_read() -> None:
    manifest = _fresh()

    encoded = encode_manifest(manifest)

    assert read_manifest(encoded) == manifest
    assert read_manifest(manifest_dataset(manifest)) == manifest
    assert encode_manifest(manifest) == encoded  # deterministic: same manifest, same bytes


def test_the_sample_model_survives_write_and_read() -> None:
    manifest = read_manifest(SAMPLE.read_bytes())
    assert read_manifest(encode_manifest(manifest)) == manifest


def test_optional_parts_are_left_out_and_read_back_empty() -> None:
    plain = tuple(replace(s, modality="", description="") for s in _fresh().series)
    manifest = _fresh(request=None, description="", series=plain, created=datetime(2026, 3, 1, 9, 5, 7, tzinfo=UTC))

    ds = dcmread(BytesIO(encode_manifest(manifest)))

    assert "ReferencedRequestSequence" not in ds
    assert [item.ValueType for item in ds.ContentSequence] == ["IMAGE"] * 3 + ["COMPOSITE"]  # the SR is no image
    assert (ds.InstanceCreationTime, ds.TimezoneOffsetFromUTC) == ("090507", "+0000")
    assert read_manifest(ds) == manifest


def test_the_file_is_explicit_vr_and_every_element_has_its_dictionary_vr() -> None:
    """The PoC wrote InstitutionName as CS, PatientComments as PN, times as DA: explicit VR shows ours are right."""
    ds = dcmread(BytesIO(encode_manifest(_fresh())))

    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    wrong = {(keyword_for_tag(e.tag), e.VR) for e in ds.iterall() if dictionary_VR(e.tag) != e.VR}
    assert wrong == set()


# --- (c) golden comparison with the DRIM-M sample --------------------------------------------------

#: Where our KOS differs from `ko.dcm` on purpose (decisions: "KOS golden file"); anything else fails.
INTENDED_DIFFERENCES = {
    # UTF-8 rather than Latin-1: patient and physician names may hold characters Latin-1 lacks.
    ("SpecificCharacterSet", "value"): "ISO_IR 192 instead of ISO_IR 100",
    # TID 2010 is used, so the SR Document Content module requires the template to be named (type 1C).
    ("ContentTemplateSequence", "added"): "TID 2010, DCMR",
    # CID 7010 spells the 113030 meaning "Manifest"; the sample upper-cases it.
    ("ConceptNameCodeSequence[0].CodeMeaning", "value"): "'Manifest' instead of 'MANIFEST'",
    # The birth place (INSEE code) is a PoC artefact in PatientComments, not a KOS attribute.
    ("PatientComments", "missing"): "birth place not written",
    # The item names its issuer as the top level does, so the identifier stands on its own.
    ("OtherPatientIDsSequence[0].IssuerOfPatientID", "added"): "ASIP-SANTE-INS-NIR in the item too",
    # TID 2010 orders its rows: the Key Object Description (row 4) precedes the IMAGE items (row 5).
    ("ContentSequence", "order"): "TEXT item first",
}
# Not a dataset difference: the sample is Implicit VR Little Endian, ours Explicit VR (checked above), which is
# where the PoC's VR mistakes would show; read back, the sample's VRs are the dictionary's, as ours are.

#: Values that depend on the site and the moment, not compared when the manifest is freshly composed.
VOLATILE_VRS = {"UI", "DA", "TM", "DT"}
VOLATILE_KEYWORDS = {
    "Manufacturer",
    "InstitutionName",
    "RetrieveURL",
    "TimezoneOffsetFromUTC",
    "SeriesNumber",
    "InstanceNumber",
    "PatientID",
    "PatientName",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "PlacerOrderNumberImagingServiceRequest",
    "UniversalEntityID",
    "StudyDescription",
    "TextValue",
}


def _value(ds: Dataset, tag: int) -> object:
    value = ds[tag].value
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    return str(value) if value is not None else ""


def _differences(ours: Dataset, sample: Dataset, volatile: bool, path: str = "") -> set[tuple[str, str]]:
    """(attribute path, kind) for each difference, recursing into sequences item by item."""
    found: set[tuple[str, str]] = set()
    for tag in sorted(set(ours.keys()) | set(sample.keys())):
        keyword = keyword_for_tag(tag) or str(tag)
        name = f"{path}{keyword}"
        if tag not in ours or tag not in sample:
            found.add((name, "missing" if tag not in ours else "added"))
            continue
        if ours[tag].VR != sample[tag].VR:
            found.add((name, f"VR {sample[tag].VR} -> {ours[tag].VR}"))
        elif ours[tag].VR == "SQ":
            found |= _item_differences(ours[tag].value, sample[tag].value, volatile, name)
        elif volatile and (ours[tag].VR in VOLATILE_VRS or keyword in VOLATILE_KEYWORDS):
            continue
        elif _value(ours, tag) != _value(sample, tag):
            found.add((name, "value"))
    return found


def _item_differences(ours: Sequence, sample: Sequence, volatile: bool, name: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    if len(ours) != len(sample):
        return {(name, f"{len(sample)} items -> {len(ours)}")}
    if name == "ContentSequence":  # content items are aligned by value type, their order checked apart
        if [i.ValueType for i in ours] != [i.ValueType for i in sample]:
            found.add((name, "order"))
        ours = Sequence(sorted(ours, key=lambda i: i.ValueType))
        sample = Sequence(sorted(sample, key=lambda i: i.ValueType))
    for index, (mine, theirs) in enumerate(zip(ours, sample, strict=True)):
        found |= _differences(mine, theirs, volatile, f"{name}[{index}].")
    return found


def test_the_kos_matches_the_drim_m_sample_except_for_the_intended_differences() -> None:
    ours = manifest_dataset(read_manifest(SAMPLE.read_bytes()))

    assert _differences(ours, _sample(), volatile=False) == set(INTENDED_DIFFERENCES)


def test_a_freshly_composed_kos_has_the_sample_structure() -> None:
    sample_model = read_manifest(SAMPLE.read_bytes())
    study = "1.2.826.0.1.3680043.10.1234.7"
    fresh = replace(
        sample_model,
        sop_instance_uid=f"{study}.99.1",
        series_instance_uid=f"{study}.99",
        study_uid=study,
        created=datetime(2026, 3, 1, 9, 5, 7, tzinfo=timezone(timedelta(hours=1))),
        patient=replace(sample_model.patient, name="DUPRÉ^Hélène", ins="279035121518989"),
        series=tuple(
            replace(s, series_uid=f"{study}.{n}", retrieve_url=f"https://db1.example.fr/dicom-web/studies/{study}")
            for n, s in enumerate(sample_model.series, start=1)
        ),
        request=replace(sample_model.request, study_uid=study) if sample_model.request else None,
        institution_name="Centre d'imagerie Ambroise-Paré",
        manufacturer="drimbox",
        series_number=901,
    )

    assert _differences(manifest_dataset(fresh), _sample(), volatile=True) == set(INTENDED_DIFFERENCES)


def test_the_golden_comparison_sees_an_unintended_difference() -> None:
    ours = manifest_dataset(read_manifest(SAMPLE.read_bytes()))
    ours.ReferencedRequestSequence[0].RequestedProcedureID = "X"
    del ours.OtherPatientNames

    assert _differences(ours, _sample(), volatile=True) - set(INTENDED_DIFFERENCES) == {
        ("ReferencedRequestSequence[0].RequestedProcedureID", "value"),
        ("OtherPatientNames", "missing"),
    }


# --- (d) structural IOD check (PS3.3 A.35.4 Key Object Selection Document) -------------------------

#: Module attributes by type: 1 = present and not empty, 2 = present (PS3.3 C.7.1.1, C.7.2.1, C.7.5.1,
#: C.17.6.1, C.17.6.2, C.17.3, C.12.1).
KOS_TOP_LEVEL = {
    "PatientName": 2,
    "PatientID": 2,
    "PatientBirthDate": 2,
    "PatientSex": 2,
    "StudyInstanceUID": 1,
    "StudyDate": 2,
    "StudyTime": 2,
    "ReferringPhysicianName": 2,
    "StudyID": 2,
    "AccessionNumber": 2,
    "Modality": 1,
    "SeriesInstanceUID": 1,
    "SeriesNumber": 1,
    "ReferencedPerformedProcedureStepSequence": 2,
    "Manufacturer": 2,
    "InstanceNumber": 1,
    "ContentDate": 1,
    "ContentTime": 1,
    "CurrentRequestedProcedureEvidenceSequence": 1,
    "ValueType": 1,
    "ConceptNameCodeSequence": 1,
    "ContinuityOfContent": 1,
    "ContentSequence": 1,
    "SOPClassUID": 1,
    "SOPInstanceUID": 1,
}
REQUEST_ITEM = {
    "StudyInstanceUID": 1,
    "AccessionNumber": 2,
    "PlacerOrderNumberImagingServiceRequest": 2,
    "FillerOrderNumberImagingServiceRequest": 2,
    "RequestedProcedureID": 2,
    "RequestedProcedureDescription": 2,
    "RequestedProcedureCodeSequence": 2,
    "ReferencedStudySequence": 2,
}
CODE_ITEM = {"CodeValue": 1, "CodingSchemeDesignator": 1, "CodeMeaning": 1}
ENTITY_ITEM = {"UniversalEntityID": 1, "UniversalEntityIDType": 1}


def _missing(ds: Dataset, required: dict[str, int], where: str) -> set[str]:
    problems = set()
    for keyword, kind in required.items():
        if keyword not in ds:
            problems.add(f"{where}{keyword}: missing (type {kind})")
        elif kind == 1 and ds[keyword].is_empty:
            problems.add(f"{where}{keyword}: empty (type 1)")
    return problems


def kos_problems(ds: Dataset) -> set[str]:
    """What makes `ds` an invalid KOS (or not a DRIM-M one); empty when it is fine."""
    problems = _missing(ds, KOS_TOP_LEVEL, "")
    if problems:
        return problems
    if ds.SOPClassUID != KOS_SOP_CLASS or ds.Modality != "KO" or ds.ValueType != "CONTAINER":
        problems.add("SOPClassUID/Modality/ValueType: not a KOS")
    if len(ds.ConceptNameCodeSequence) != 1:
        problems.add("ConceptNameCodeSequence: not one item")
    for item in ds.ConceptNameCodeSequence:
        problems |= _missing(item, CODE_ITEM, "ConceptNameCodeSequence/")
    templates = ds.get("ContentTemplateSequence") or []
    if [(t.get("MappingResource"), t.get("TemplateIdentifier")) for t in templates] != [("DCMR", "2010")]:
        problems.add("ContentTemplateSequence: missing or not TID 2010 (DCMR), required when the template is used")
    for item in ds.get("IssuerOfPatientIDQualifiersSequence") or []:
        problems |= _missing(item, ENTITY_ITEM, "IssuerOfPatientIDQualifiersSequence/")
    for item in ds.get("ReferencedRequestSequence") or []:
        problems |= _missing(item, REQUEST_ITEM, "ReferencedRequestSequence/")
    evidence = set()
    for study in ds.CurrentRequestedProcedureEvidenceSequence:
        problems |= _missing(study, {"StudyInstanceUID": 1, "ReferencedSeriesSequence": 1}, "Evidence/")
        for series in study.get("ReferencedSeriesSequence") or []:
            problems |= _missing(series, {"SeriesInstanceUID": 1, "ReferencedSOPSequence": 1}, "Evidence/series/")
            for sop in series.get("ReferencedSOPSequence") or []:
                problems |= _missing(sop, {"ReferencedSOPClassUID": 1, "ReferencedSOPInstanceUID": 1}, "Evidence/sop/")
                evidence.add((sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID))
    content = set()
    for item in ds.ContentSequence:
        problems |= _missing(item, {"RelationshipType": 1, "ValueType": 1}, "ContentSequence/")
        if item.get("ValueType") in ("IMAGE", "WAVEFORM", "COMPOSITE"):
            problems |= _missing(item, {"ReferencedSOPSequence": 1}, f"ContentSequence/{item.ValueType}/")
            refs = item.get("ReferencedSOPSequence") or []
            content |= {(s.ReferencedSOPClassUID, s.ReferencedSOPInstanceUID) for s in refs}
        elif item.get("ValueType") == "TEXT":
            problems |= _missing(item, {"ConceptNameCodeSequence": 1, "TextValue": 1}, "ContentSequence/TEXT/")
    if content != evidence:  # C.17.6.2.1: the evidence lists exactly the objects the content references
        problems.add("CurrentRequestedProcedureEvidenceSequence: does not list exactly the referenced objects")
    return problems


def test_our_kos_passes_the_iod_check() -> None:
    for manifest in (_fresh(), _fresh(request=None, description=""), read_manifest(SAMPLE.read_bytes())):
        assert kos_problems(dcmread(BytesIO(encode_manifest(manifest)))) == set()


def test_the_iod_check_fails_the_sample_and_a_broken_kos() -> None:
    assert kos_problems(_sample()) == {
        "ContentTemplateSequence: missing or not TID 2010 (DCMR), required when the template is used"
    }
    broken = manifest_dataset(_fresh())
    broken.ContentDate = ""
    del broken.ContentSequence[-1].ReferencedSOPSequence
    assert kos_problems(broken) == {"ContentDate: empty (type 1)"}
    broken.ContentDate = "20260301"
    assert kos_problems(broken) == {
        "ContentSequence/COMPOSITE/ReferencedSOPSequence: missing (type 1)",
        "CurrentRequestedProcedureEvidenceSequence: does not list exactly the referenced objects",
    }


# --- builder refusals ------------------------------------------------------------------------------


def _series_with(**changes: object) -> tuple[ManifestSeries, ...]:
    first = replace(_fresh().series[0], **changes)  # type: ignore[arg-type]
    return (first, *_fresh().series[1:])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"created": datetime(2026, 3, 1, 9, 5, 7)}, "UTC offset"),
        ({"sop_instance_uid": "1.2.abc"}, "SOPInstanceUID"),
        ({"study_uid": "01.2"}, "StudyInstanceUID"),
        ({"series": ()}, "no series"),
        ({"series": _series_with(instances=())}, "references no instance"),
        ({"series": _series_with(retrieve_url="")}, "RetrieveURL"),
        ({"series": _series_with(series_uid="x")}, "SeriesInstanceUID"),
        ({"series": _series_with(instances=(ReferencedInstance(CT, "1..2"),))}, "invalid UID"),
        ({"series_number": 0}, "series_number"),
        ({"institution_name": "x" * 65}, "InstitutionName"),
        ({"study_date": "2026-03-01"}, "StudyDate"),
        ({"patient": replace(_fresh().patient, ins="")}, "INS"),
        ({"request": replace(_fresh().request or ManifestRequest(""), study_uid="1.2.3")}, "ReferencedRequestSequence"),
    ],
)
def test_the_builder_refuses_what_would_make_an_invalid_kos(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        encode_manifest(_fresh(**changes))


def test_the_builder_refuses_an_instance_referenced_twice() -> None:
    twice = _fresh().series[0].instances[:1] * 2
    with pytest.raises(InvalidManifest, match="referenced twice"):
        manifest_dataset(_fresh(series=_series_with(instances=twice)))


# --- reader refusals and leniency ------------------------------------------------------------------


def _kos(**edits: object) -> Dataset:
    ds = manifest_dataset(_fresh())
    for keyword, value in edits.items():
        setattr(ds, keyword, value)
    return ds


def test_what_is_not_a_drim_m_manifest_is_unreadable() -> None:
    image = _kos(SOPClassUID=CT)
    two_studies = _kos()
    two_studies.CurrentRequestedProcedureEvidenceSequence.append(
        two_studies.CurrentRequestedProcedureEvidenceSequence[0]
    )
    other_study = _kos()
    other_study.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = "1.2.3"
    no_evidence = _kos()
    del no_evidence.CurrentRequestedProcedureEvidenceSequence
    note = rejection_note(_fresh().study_uid, {"1.2.3.1": [(CT, "1.2.3.1.1")]})
    cases: list[tuple[bytes | Dataset, str]] = [
        (b"not dicom at all", "not a readable DICOM"),
        (image, "not Key Object Selection"),
        (note, "not \\(113030, DCM\\)"),
        (two_studies, "2 studies"),
        (other_study, "is not the KOS study"),
        (no_evidence, "0 studies"),
    ]
    for source, message in cases:
        with pytest.raises(ManifestUnreadable, match=message):
            read_manifest(source)


def test_the_reader_is_lenient_where_the_sample_is() -> None:
    ds = _kos()
    del ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].RetrieveURL
    del ds.TimezoneOffsetFromUTC
    del ds.ContentTemplateSequence
    ds.ConceptNameCodeSequence[0].CodeMeaning = "MANIFEST"
    ds.ContentSequence = Sequence([i for i in ds.ContentSequence if i.ValueType != "TEXT"])

    manifest = read_manifest(ds)

    assert manifest.series[0].retrieve_url == ""
    assert manifest.created == datetime(2026, 3, 1, 9, 5, 7, 250000, tzinfo=UTC)
    assert manifest.description == ""
    assert manifest.modalities == ()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_damaged_kos_reads_or_is_unreadable(data: st.DataObject) -> None:
    encoded = bytearray(encode_manifest(_fresh()))
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(encoded) - 1))
        end = data.draw(st.integers(start, min(len(encoded), start + 8)))
        encoded[start:end] = data.draw(st.binary(max_size=8))
    with warnings.catch_warnings():  # pydicom warns about odd values; only exceptions matter here
        warnings.simplefilter("ignore")
        try:
            manifest = read_manifest(bytes(encoded))
        except ManifestUnreadable as unreadable:
            assert str(unreadable)
        else:
            assert manifest.series
