"""Plain records of what a C-FIND answer or a stored file tells about a patient, study, series, instance.

Values are cleaned on the way in (text decoded, clipped to the column size, UIDs checked), so a
PACS sending an over-long or malformed value cannot break an insert or poison the index.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from drimbox.uids import checked_uid


def normalize_name(name: str) -> str:
    """Upper case, accents removed: the form fuzzy person-name matching compares (`Hélène` → `HELENE`)."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def text(ds: Dataset, keyword: str, size: int = 64) -> str:
    """The element's value as text (multi-values joined by backslash), clipped to `size`."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not stop indexing: treat it as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).replace("\x00", "").strip()[:size]


def integer(ds: Dataset, keyword: str) -> int | None:
    """The element's value as an int, or None when absent or not a number."""
    raw = text(ds, keyword, 32)
    try:
        number = int(float(raw)) if raw else None
    except (ValueError, OverflowError):
        return None
    # the index's integer columns are 32-bit; a modality's "20231201123" is no count we can use
    return number if number is not None and -(2**31) <= number < 2**31 else None


@dataclass(frozen=True)
class PatientRecord:
    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    other_ids: tuple[dict[str, str], ...] = ()

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PatientRecord:
        others = []
        for item in ds.get("OtherPatientIDsSequence") or []:
            others.append(
                {
                    "id": text(item, "PatientID"),
                    "issuer": text(item, "IssuerOfPatientID"),
                    "type": text(item, "TypeOfPatientID", 16),
                }
            )
        return cls(
            patient_id=text(ds, "PatientID"),
            issuer=text(ds, "IssuerOfPatientID"),
            name=text(ds, "PatientName", 324),
            birth_date=text(ds, "PatientBirthDate", 8),
            sex=text(ds, "PatientSex", 16),
            other_ids=tuple(others),
        )

    def other_ids_json(self) -> str:
        return json.dumps(list(self.other_ids), ensure_ascii=False)


#: Every attribute StudyRecord.from_dataset reads (with its PatientRecord's), and SeriesRecord's:
#: the intake reuses a record for the next instances whose values of these are the same bytes.
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYWORDS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    patient: PatientRecord
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    description: str = ""
    referring_physician: str = ""
    modalities: str = ""
    series_count: int | None = None
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyRecord:
        return cls(
            study_uid=checked_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
            patient=PatientRecord.from_dataset(ds),
            study_date=text(ds, "StudyDate", 8),
            study_time=text(ds, "StudyTime", 16),
            accession_number=text(ds, "AccessionNumber", 16),
            study_id=text(ds, "StudyID", 16),
            description=text(ds, "StudyDescription"),
            referring_physician=text(ds, "ReferringPhysicianName", 324),
            modalities=text(ds, "ModalitiesInStudy", 128),
            series_count=integer(ds, "NumberOfStudyRelatedSeries"),
            instance_count=integer(ds, "NumberOfStudyRelatedInstances"),
        )


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    body_part: str = ""
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesRecord:
        return cls(
            series_uid=checked_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
            modality=text(ds, "Modality", 16),
            series_number=integer(ds, "SeriesNumber"),
            description=text(ds, "SeriesDescription"),
            body_part=text(ds, "BodyPartExamined", 16),
            instance_count=integer(ds, "NumberOfSeriesRelatedInstances"),
        )


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    sop_class_uid: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    transfer_syntax_uid: str = ""

    @classmethod
    def from_dataset(
        cls,
        ds: Dataset,
        transfer_syntax_uid: str = "",
        sop_uid: str = "",
        sop_class_uid: str = "",
        shape: ImageShape | None = None,
    ) -> InstanceRecord:
        """`sop_uid`, `sop_class_uid`, `shape`: already read (a stored file's), else from `ds`."""
        rows, columns, frames = shape or image_shape(ds)
        return cls(
            sop_uid=sop_uid or checked_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
            sop_class_uid=sop_class_uid or text(ds, "SOPClassUID"),
            instance_number=integer(ds, "InstanceNumber"),
            rows=rows,
            columns=columns,
            number_of_frames=frames,
            transfer_syntax_uid=transfer_syntax_uid or text(ds, "AvailableTransferSyntaxUID"),
        )


#: Rows, Columns, NumberOfFrames
ImageShape = tuple[int | None, int | None, int | None]
SHAPE_KEYWORDS = ("Rows", "Columns", "NumberOfFrames")


def image_shape(ds: Dataset) -> ImageShape:
    return integer(ds, "Rows"), integer(ds, "Columns"), integer(ds, "NumberOfFrames")


@dataclass(frozen=True)
class StoredFile:
    """A complete instance file that has just entered our store."""

    path: str
    size: int


@dataclass(frozen=True)
class InstanceEntry:
    """Everything the index learns from one stored instance file, from patient down."""

    study: StudyRecord
    series: SeriesRecord
    instance: InstanceRecord
    file: StoredFile

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax_uid: str, file: StoredFile) -> InstanceEntry:
        return cls(
            study=StudyRecord.from_dataset(ds),
            series=SeriesRecord.from_dataset(ds),
            instance=InstanceRecord.from_dataset(ds, transfer_syntax_uid),
            file=file,
        )
