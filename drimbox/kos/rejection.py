"""IHE IOCM rejection notes: the KOS a PACS sends when it rejects instances (DRIM-M §3.6 W6).

A rejection note is a Key Object Selection document whose title is one of CID 7011's rejection
reasons; its evidence lists the rejected instances. The DRIMbox reads one to replace (or
withdraw) the manifest it published for that study. `rejection_note` builds one, so tests and the
sandbox PACS can send what a real PACS sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from drimbox.kos.build import InvalidManifest, reference_item
from drimbox.kos.model import KOS_SOP_CLASS
from drimbox.kos.parse import DICOM_ERRORS, ManifestUnreadable, evidence, title
from drimbox.uids import is_valid_uid

#: IOCM rejection reasons (DCM codes of CID 7011) and their meanings.
REJECTION_REASONS: Mapping[str, str] = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


@dataclass(frozen=True)
class Rejection:
    """What a rejection note withdraws: `rejected` maps each series UID to its rejected SOP instance UIDs.

    `reason` is the DCM code of the note's title (113001, 113037, 113038 or 113039); which reasons
    withdraw a publication rather than replace it is the publication core's choice (DRIM-M §14 q.10).
    """

    reason: str
    study_uid: str
    rejected: Mapping[str, tuple[str, ...]]

    @property
    def instance_count(self) -> int:
        return sum(len(uids) for uids in self.rejected.values())


def read_rejection(dataset: Dataset) -> Rejection | None:
    """The rejection `dataset` notes, or None when it is not an IOCM rejection note.

    ManifestUnreadable when it is one but its evidence cannot be read (no study, two studies, a
    series without instances): a note we cannot apply must not pass for "not a note".
    """
    try:
        if str(dataset.get("SOPClassUID", "")) != KOS_SOP_CLASS:
            return None
        code, scheme = title(dataset)
        if scheme != "DCM" or code not in REJECTION_REASONS:
            return None
        study_uid, study = evidence(dataset)
        rejected: dict[str, tuple[str, ...]] = {}
        for series in study.ReferencedSeriesSequence:
            uid = str(series.get("SeriesInstanceUID", "")).strip()
            sops = tuple(
                str(sop.get("ReferencedSOPInstanceUID", "")).strip()
                for sop in series.get("ReferencedSOPSequence") or []
            )
            if not uid or not sops or not all(sops):
                raise ManifestUnreadable(
                    f"rejection note {code}: series {uid!r} of study {study_uid} lists no instance"
                )
            if not all(is_valid_uid(value) for value in (study_uid, uid, *sops)):
                raise ManifestUnreadable(f"rejection note {code}: an invalid UID in series {uid[:64]!r}")
            rejected[uid] = rejected.get(uid, ()) + sops
    except ManifestUnreadable:
        raise
    except DICOM_ERRORS as exc:
        raise ManifestUnreadable(f"rejection note unreadable: {exc}") from exc
    return Rejection(reason=code, study_uid=study_uid, rejected=rejected)


def rejection_note(
    study_uid: str,
    series: Mapping[str, Sequence[tuple[str, str]]],
    reason: str = "113001",
    patient_id: str = "",
    patient_name: str = "",
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    created: datetime | None = None,
) -> Dataset:
    """An IOCM rejection note for `series` (series UID → [(SOP class UID, SOP instance UID)]) of `study_uid`."""
    if reason not in REJECTION_REASONS:
        raise InvalidManifest(f"rejection reason {reason!r} is not one of {sorted(REJECTION_REASONS)}")
    if not series or not all(series.values()):
        raise InvalidManifest("a rejection note must reject at least one instance in each series it names")
    uids = [study_uid, *series, *(uid for refs in series.values() for ref in refs for uid in ref)]
    if not all(is_valid_uid(uid) for uid in uids):
        raise InvalidManifest("a rejection note names an invalid UID")
    ds = _header(sop_instance_uid or generate_uid(), created or datetime.now(UTC))
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.ConceptNameCodeSequence = DicomSequence([_code(reason, REJECTION_REASONS[reason])])
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = DicomSequence([_series_item(uid, refs) for uid, refs in series.items()])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([study])
    ds.ContentSequence = DicomSequence([reference_item(*ref) for refs in series.values() for ref in refs])
    return ds


def _header(sop_uid: str, moment: datetime) -> Dataset:
    """What every KOS carries besides its title and references; type 2 attributes left empty."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = ds.ContentDate = ds.SeriesDate = moment.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.ContentTime = ds.SeriesTime = moment.strftime("%H%M%S")
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.StudyID = ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.Modality = "KO"
    ds.Manufacturer = "drimbox"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _series_item(series_uid: str, refs: Sequence[tuple[str, str]]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    sops = []
    for sop_class_uid, sop_instance_uid in refs:
        sop = Dataset()
        sop.ReferencedSOPClassUID = sop_class_uid
        sop.ReferencedSOPInstanceUID = sop_instance_uid
        sops.append(sop)
    item.ReferencedSOPSequence = DicomSequence(sops)
    return item
