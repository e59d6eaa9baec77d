"""Write a `Manifest` as a DICOM Key Object Selection document (DRIM-M §4.3, PS3.3 A.35.4, TID 2010).

The DRIM-M sample (`ko.dcm`) is followed attribute by attribute, except where it departs from
the standard (decisions: "KOS golden file"):

* SpecificCharacterSet is `ISO_IR 192` (UTF-8): patient and physician names carry accents that
  Latin-1 cannot always hold, and one character set for every KOS keeps encoding predictable.
* ContentTemplateSequence names TID 2010 (DCMR), as the SR Document Content module requires when
  a template is used; the document title meaning is the standard's "Manifest".
* The TEXT item "Key Object Description" comes before the references: TID 2010 orders its rows.
  A reference to a non-image object (SR, PDF) is a COMPOSITE item, not IMAGE.
* The birth place is not written in PatientComments (a PoC artefact, not an INS trait a KOS needs).
* The OtherPatientIDsSequence item also names its IssuerOfPatientID, as the top level does.

Building validates: every value fits its VR, every UID is one, and the evidence is not empty,
so what leaves here is a file a PACS or a validator accepts.
"""

from __future__ import annotations

from datetime import datetime
from io import BytesIO

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from drimbox.errors import DrimboxError
from drimbox.kos.model import KOS_SOP_CLASS, Manifest, ManifestPatient, ManifestRequest, ManifestSeries
from drimbox.kos.text import describe
from drimbox.uids import is_valid_uid

__all__ = [
    "KEY_OBJECT_DESCRIPTION",
    "MANIFEST_TITLE",
    "InvalidManifest",
    "describe",
    "encode_manifest",
    "manifest_dataset",
    "reference_item",
]

#: Document title of an IHE XDS-I.b manifest (CID 7010).
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
#: Concept name of the TEXT content item (TID 2010 row 4).
KEY_OBJECT_DESCRIPTION = ("113012", "DCM", "Key Object Description")
#: ISO 8824 OID type for UniversalEntityIDType.
ISO = "ISO"


class InvalidManifest(DrimboxError, ValueError):
    """A manifest that would make an invalid KOS; the message names the attribute and the value."""


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest as Part-10 bytes, Explicit VR Little Endian; the same manifest gives the same bytes."""
    buffer = BytesIO()
    manifest_dataset(manifest).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def manifest_dataset(manifest: Manifest) -> Dataset:
    """The KOS dataset (with its file meta) for `manifest`; InvalidManifest when it cannot be valid."""
    _check(manifest)
    ds = Dataset()
    ds.file_meta = _file_meta(manifest)
    created = manifest.created
    offset = created.strftime("%z")
    _set(ds, "SpecificCharacterSet", "ISO_IR 192")
    _set(ds, "InstanceCreationDate", _da(created))
    _set(ds, "InstanceCreationTime", _tm(created))
    _set(ds, "SOPClassUID", KOS_SOP_CLASS)
    _set(ds, "SOPInstanceUID", manifest.sop_instance_uid)
    _set(ds, "StudyDate", manifest.study_date)
    _set(ds, "SeriesDate", _da(created))
    _set(ds, "ContentDate", _da(created))
    _set(ds, "StudyTime", manifest.study_time)
    _set(ds, "SeriesTime", _tm(created))
    _set(ds, "ContentTime", _tm(created))
    _set(ds, "AccessionNumber", "")
    _set(ds, "Modality", "KO")
    _set(ds, "Manufacturer", manifest.manufacturer)
    _set(ds, "InstitutionName", manifest.institution_name)
    _set(ds, "ReferringPhysicianName", manifest.referring_physician)
    _set(ds, "TimezoneOffsetFromUTC", offset)
    _set(ds, "StudyDescription", manifest.study_description)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    _patient(ds, manifest.patient)
    _set(ds, "StudyInstanceUID", manifest.study_uid)
    _set(ds, "SeriesInstanceUID", manifest.series_instance_uid)
    _set(ds, "StudyID", manifest.study_id)
    _set(ds, "SeriesNumber", manifest.series_number)
    _set(ds, "InstanceNumber", manifest.instance_number)
    _document(ds, manifest)
    return ds


def _document(ds: Dataset, manifest: Manifest) -> None:
    """SR Document Content (root CONTAINER of TID 2010) and Key Object Document modules."""
    _set(ds, "ValueType", "CONTAINER")
    ds.ConceptNameCodeSequence = Sequence([_code(*MANIFEST_TITLE)])
    template = Dataset()
    _set(template, "MappingResource", "DCMR")
    _set(template, "TemplateIdentifier", "2010")
    ds.ContentTemplateSequence = Sequence([template])
    _set(ds, "ContinuityOfContent", "SEPARATE")
    if manifest.request is not None:
        ds.ReferencedRequestSequence = Sequence([_request(manifest.request)])
    study = Dataset()
    study.ReferencedSeriesSequence = Sequence([_evidence_series(s) for s in manifest.series])
    _set(study, "StudyInstanceUID", manifest.study_uid)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    items = []
    if manifest.description:
        text = Dataset()
        _set(text, "RelationshipType", "CONTAINS")
        _set(text, "ValueType", "TEXT")
        text.ConceptNameCodeSequence = Sequence([_code(*KEY_OBJECT_DESCRIPTION)])
        _set(text, "TextValue", manifest.description)
        items.append(text)
    for series in manifest.series:
        items += [reference_item(i.sop_class_uid, i.sop_instance_uid) for i in series.instances]
    ds.ContentSequence = Sequence(items)


def reference_item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """A CONTAINS content item referencing one object: IMAGE, WAVEFORM or COMPOSITE by SOP class (TID 2010).

    The SOP class is judged by its registered name; a class pydicom does not know is COMPOSITE,
    which any composite object may be.
    """
    name = UID(sop_class_uid).name
    value_type = "IMAGE" if "Image Storage" in name else "WAVEFORM" if "Waveform" in name else "COMPOSITE"
    item = Dataset()
    item.ReferencedSOPSequence = Sequence([_sop(sop_class_uid, sop_instance_uid)])
    _set(item, "RelationshipType", "CONTAINS")
    _set(item, "ValueType", value_type)
    return item


def _patient(ds: Dataset, patient: ManifestPatient) -> None:
    """The INS as PatientID with its issuer, and again in OtherPatientIDsSequence (DRIM-M §4.3)."""
    _set(ds, "PatientName", patient.name)
    _set(ds, "PatientID", patient.ins)
    _set(ds, "IssuerOfPatientID", patient.issuer_name)
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([_entity(patient.ins_oid)])
    _set(ds, "PatientBirthDate", patient.birth_date)
    _set(ds, "PatientSex", patient.sex)
    _set(ds, "OtherPatientNames", patient.name)
    other = Dataset()
    _set(other, "PatientID", patient.ins)
    _set(other, "IssuerOfPatientID", patient.issuer_name)
    _set(other, "TypeOfPatientID", "TEXT")
    other.IssuerOfPatientIDQualifiersSequence = Sequence([_entity(patient.ins_oid)])
    ds.OtherPatientIDsSequence = Sequence([other])


def _request(request: ManifestRequest) -> Dataset:
    """The Referenced Request item: accession and placer order, each with its issuer OID."""
    item = Dataset()
    _set(item, "AccessionNumber", request.accession_number)
    if request.accession_issuer:
        item.IssuerOfAccessionNumberSequence = Sequence([_entity(request.accession_issuer)])
    item.ReferencedStudySequence = Sequence()
    _set(item, "StudyInstanceUID", request.study_uid)
    _set(item, "RequestedProcedureDescription", request.requested_procedure_description)
    item.RequestedProcedureCodeSequence = Sequence()
    if request.placer_order_issuer:
        item.OrderPlacerIdentifierSequence = Sequence([_entity(request.placer_order_issuer)])
    _set(item, "RequestedProcedureID", request.requested_procedure_id)
    _set(item, "PlacerOrderNumberImagingServiceRequest", request.placer_order)
    _set(item, "FillerOrderNumberImagingServiceRequest", "")
    return item


def _evidence_series(series: ManifestSeries) -> Dataset:
    item = Dataset()
    _set(item, "RetrieveURL", series.retrieve_url)
    item.ReferencedSOPSequence = Sequence([_sop(i.sop_class_uid, i.sop_instance_uid) for i in series.instances])
    _set(item, "SeriesInstanceUID", series.series_uid)
    return item


def _file_meta(manifest: Manifest) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(manifest.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    _set(item, "CodeValue", value)
    _set(item, "CodingSchemeDesignator", scheme)
    _set(item, "CodeMeaning", meaning)
    return item


def _entity(oid: str) -> Dataset:
    item = Dataset()
    _set(item, "UniversalEntityID", oid)
    _set(item, "UniversalEntityIDType", ISO)
    return item


def _sop(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    _set(item, "ReferencedSOPClassUID", sop_class_uid)
    _set(item, "ReferencedSOPInstanceUID", sop_instance_uid)
    return item


def _set(ds: Dataset, keyword: str, value: str | int) -> None:
    """Set `keyword`, refusing a value its VR does not allow (length, characters) instead of warning."""
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - keywords are literals of this module
        raise KeyError(keyword)
    vr = dictionary_VR(tag)
    try:
        validate_value(vr, str(value) if isinstance(value, int) else value, config.RAISE)
    except ValueError as exc:
        raise InvalidManifest(f"{keyword}: {exc}") from exc
    setattr(ds, keyword, value)


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    """HHMMSS, with the fraction only when there is one, so a read-back gives the same datetime."""
    return moment.strftime("%H%M%S.%f" if moment.microsecond else "%H%M%S")


def _check(manifest: Manifest) -> None:
    """Refuse what the IOD or DRIM-M forbids before writing anything."""
    if manifest.created.utcoffset() is None:
        raise InvalidManifest("created must carry its UTC offset (TimezoneOffsetFromUTC)")
    uids = {
        "SOPInstanceUID": manifest.sop_instance_uid,
        "SeriesInstanceUID": manifest.series_instance_uid,
        "StudyInstanceUID": manifest.study_uid,
        "IssuerOfPatientIDQualifiersSequence/UniversalEntityID": manifest.patient.ins_oid,
    }
    for what, uid in uids.items():
        if not is_valid_uid(uid):
            raise InvalidManifest(f"{what}: {uid!r} is not a valid UID")
    if not manifest.patient.ins:
        raise InvalidManifest("PatientID: the INS is empty")
    if not manifest.series:
        raise InvalidManifest("CurrentRequestedProcedureEvidenceSequence: no series")
    if manifest.request is not None and manifest.request.study_uid != manifest.study_uid:
        raise InvalidManifest(
            f"ReferencedRequestSequence: study {manifest.request.study_uid} is not the KOS study {manifest.study_uid}"
        )
    for number in ("series_number", "instance_number"):
        if not 0 < getattr(manifest, number) < 2**31:
            raise InvalidManifest(f"{number}: {getattr(manifest, number)} is out of range")
    _check_series(manifest.series)


def _check_series(series: tuple[ManifestSeries, ...]) -> None:
    seen_series: set[str] = set()
    seen_instances: set[str] = set()
    for item in series:
        if not is_valid_uid(item.series_uid) or item.series_uid in seen_series:
            raise InvalidManifest(f"SeriesInstanceUID: {item.series_uid!r} is invalid or repeated")
        seen_series.add(item.series_uid)
        if not item.retrieve_url:
            raise InvalidManifest(f"RetrieveURL: series {item.series_uid} has none")
        if not item.instances:
            raise InvalidManifest(f"ReferencedSOPSequence: series {item.series_uid} references no instance")
        for instance in item.instances:
            if not is_valid_uid(instance.sop_class_uid) or not is_valid_uid(instance.sop_instance_uid):
                raise InvalidManifest(f"ReferencedSOPSequence: invalid UID in series {item.series_uid}")
            if instance.sop_instance_uid in seen_instances:
                raise InvalidManifest(f"ReferencedSOPInstanceUID: {instance.sop_instance_uid} is referenced twice")
            seen_instances.add(instance.sop_instance_uid)
