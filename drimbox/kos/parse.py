"""Read a DRIM-M KOS (ours or another box's) back into a `Manifest` (DRIM-M §4.3).

Lenient where the DRIM-M sample is sloppy (implicit VR, no template, any code meaning case,
series without Retrieve URL), strict on what makes it a manifest: the KOS SOP class, the
113030 (DCM) title, one study of evidence that is the document's own study. Modality and
description of each series come from the Key Object Description text, the only place a KOS
holds them.
"""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from drimbox.errors import DrimboxError
from drimbox.kos.model import (
    INS_ISSUER_NAME,
    KOS_SOP_CLASS,
    Manifest,
    ManifestPatient,
    ManifestRequest,
    ManifestSeries,
    ReferencedInstance,
)
from drimbox.kos.text import series_lines

MANIFEST_CODE = ("113030", "DCM")
KEY_OBJECT_DESCRIPTION_CODE = ("113012", "DCM")

#: What pydicom raises on a damaged file or a value it cannot decode (zlib.error: a file that
#: declares the Deflated transfer syntax but whose body does not inflate).
DICOM_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    EOFError,
    OSError,
    OverflowError,
    NotImplementedError,
    struct.error,
    zlib.error,
)


class ManifestUnreadable(DrimboxError):
    """Bytes or a dataset that is not a DRIM-M KOS manifest; the message says what is missing."""


def read_manifest(source: bytes | Dataset) -> Manifest:
    """The manifest `source` (Part-10 bytes or a dataset) holds; ManifestUnreadable otherwise."""
    try:
        ds = source if isinstance(source, Dataset) else dcmread(BytesIO(source))
        return _manifest(ds)
    except ManifestUnreadable:
        raise
    except DICOM_ERRORS as exc:
        raise ManifestUnreadable(f"not a readable DICOM KOS: {exc}") from exc


def title(ds: Dataset) -> tuple[str, str]:
    """(CodeValue, CodingSchemeDesignator) of the document title, ("", "") when there is none."""
    items = ds.get("ConceptNameCodeSequence") or []
    if not items:
        return "", ""
    return _text(items[0], "CodeValue"), _text(items[0], "CodingSchemeDesignator")


def evidence(ds: Dataset) -> tuple[str, Dataset]:
    """The one study item of CurrentRequestedProcedureEvidenceSequence: (study UID, item)."""
    studies = ds.get("CurrentRequestedProcedureEvidenceSequence") or []
    if len(studies) != 1:
        raise ManifestUnreadable(f"CurrentRequestedProcedureEvidenceSequence holds {len(studies)} studies, not 1")
    study = studies[0]
    uid = _text(study, "StudyInstanceUID")
    if not uid:
        raise ManifestUnreadable("the evidence study has no StudyInstanceUID")
    if not study.get("ReferencedSeriesSequence"):
        raise ManifestUnreadable(f"the evidence of study {uid} names no series")
    return uid, study


def _manifest(ds: Dataset) -> Manifest:
    if _text(ds, "SOPClassUID") != KOS_SOP_CLASS:
        raise ManifestUnreadable(f"SOP class {_text(ds, 'SOPClassUID')!r} is not Key Object Selection")
    if title(ds) != MANIFEST_CODE:
        raise ManifestUnreadable(f"document title {title(ds)} is not (113030, DCM) Manifest")
    study_uid, study = evidence(ds)
    if study_uid != _text(ds, "StudyInstanceUID"):
        raise ManifestUnreadable(f"evidence study {study_uid} is not the KOS study {_text(ds, 'StudyInstanceUID')}")
    description = _description(ds)
    named = series_lines(description)
    return Manifest(
        sop_instance_uid=_required(ds, "SOPInstanceUID"),
        series_instance_uid=_required(ds, "SeriesInstanceUID"),
        study_uid=study_uid,
        created=_created(ds),
        patient=_patient(ds),
        series=tuple(_series(item, named) for item in study.ReferencedSeriesSequence),
        request=_request(ds),
        series_number=_number(ds, "SeriesNumber"),
        instance_number=_number(ds, "InstanceNumber"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        institution_name=_text(ds, "InstitutionName"),
        manufacturer=_text(ds, "Manufacturer"),
        description=description,
    )


def _series(item: Dataset, named: dict[str, tuple[str, str]]) -> ManifestSeries:
    uid = _required(item, "SeriesInstanceUID")
    instances = tuple(
        ReferencedInstance(_required(sop, "ReferencedSOPClassUID"), _required(sop, "ReferencedSOPInstanceUID"))
        for sop in item.get("ReferencedSOPSequence") or []
    )
    if not instances:
        raise ManifestUnreadable(f"series {uid} references no instance")
    modality, description = named.get(uid, ("", ""))
    return ManifestSeries(
        series_uid=uid,
        retrieve_url=_text(item, "RetrieveURL"),
        instances=instances,
        modality=modality,
        description=description,
    )


def _patient(ds: Dataset) -> ManifestPatient:
    """The INS and its OID, from the top level or, failing that, the OtherPatientIDsSequence item."""
    oid = _entity_id(ds, "IssuerOfPatientIDQualifiersSequence")
    if not oid:
        for other in ds.get("OtherPatientIDsSequence") or []:
            if _text(other, "PatientID") == _text(ds, "PatientID"):
                oid = _entity_id(other, "IssuerOfPatientIDQualifiersSequence")
                break
    return ManifestPatient(
        ins=_required(ds, "PatientID"),
        ins_oid=oid,
        name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
        issuer_name=_text(ds, "IssuerOfPatientID") or INS_ISSUER_NAME,
    )


def _request(ds: Dataset) -> ManifestRequest | None:
    items = ds.get("ReferencedRequestSequence") or []
    if not items:
        return None
    item = items[0]
    return ManifestRequest(
        study_uid=_text(item, "StudyInstanceUID") or _text(ds, "StudyInstanceUID"),
        accession_number=_text(item, "AccessionNumber"),
        accession_issuer=_entity_id(item, "IssuerOfAccessionNumberSequence"),
        placer_order=_text(item, "PlacerOrderNumberImagingServiceRequest"),
        placer_order_issuer=_entity_id(item, "OrderPlacerIdentifierSequence"),
        requested_procedure_id=_text(item, "RequestedProcedureID"),
        requested_procedure_description=_text(item, "RequestedProcedureDescription"),
    )


def _description(ds: Dataset) -> str:
    """TextValue of the (113012, DCM) TEXT item, wherever it sits in the root ContentSequence."""
    for item in ds.get("ContentSequence") or []:
        if _text(item, "ValueType") == "TEXT" and title(item) == KEY_OBJECT_DESCRIPTION_CODE:
            return str(item.get("TextValue", "") or "")
    return ""


def _created(ds: Dataset) -> datetime:
    """InstanceCreation (else Content) date and time, in the KOS's UTC offset.

    DICOM leaves the offset unknown when TimezoneOffsetFromUTC is absent; UTC is assumed so the
    result stays comparable with other aware datetimes.
    """
    date = _text(ds, "InstanceCreationDate") or _text(ds, "ContentDate")
    time = _text(ds, "InstanceCreationTime") or _text(ds, "ContentTime") or "000000"
    if len(date) != 8 or not date.isdigit():
        raise ManifestUnreadable(f"InstanceCreationDate {date!r} is not a DICOM date")
    try:
        clock = _clock(time)
        day = datetime.strptime(date, "%Y%m%d")
        zone = _zone(_text(ds, "TimezoneOffsetFromUTC"))
    except ValueError as exc:
        raise ManifestUnreadable(f"InstanceCreationDate/Time {date!r} {time!r}: {exc}") from exc
    return day.replace(hour=clock[0], minute=clock[1], second=clock[2], microsecond=clock[3], tzinfo=zone)


def _clock(value: str) -> tuple[int, int, int, int]:
    """A DICOM TM (HH, HHMM, HHMMSS, HHMMSS.FFFFFF; the PS3.5 colon form too)."""
    whole, _, fraction = value.replace(":", "").partition(".")
    if len(whole) not in (2, 4, 6) or not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"{value!r} is not a DICOM time")
    hour, minute, second = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"{value!r} is not a DICOM time")
    return hour, minute, min(second, 59), int(fraction[:6].ljust(6, "0")) if fraction else 0


def _zone(value: str) -> timezone:
    if not value:
        return UTC
    if len(value) != 5 or value[0] not in "+-" or not value[1:].isdigit():
        raise ValueError(f"TimezoneOffsetFromUTC {value!r} is not ±HHMM")
    sign = -1 if value[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(value[1:3]), minutes=int(value[3:5])))


def _entity_id(ds: Dataset, keyword: str) -> str:
    items = ds.get(keyword) or []
    return _text(items[0], "UniversalEntityID") if items else ""


def _number(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    return int(value) if value not in (None, "") else 1


def _required(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise ManifestUnreadable(f"{keyword} is missing")
    return value


def _text(ds: Dataset, keyword: str) -> str:
    """A single-valued attribute as text ("" when absent or empty); names keep their `^`."""
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip("\x00 ")
