"""Small, valid DICOM instances built in the test itself (fast; no committed data needed)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
MG = "1.2.840.10008.5.1.4.1.1.1.2"
DBT = "1.2.840.10008.5.1.4.1.1.13.1.3"


@dataclass
class StudySpec:
    """A study to build: one patient, N series of M instances each."""

    patient_id: str = "IPP00000001"
    patient_name: str = "DUPRÉ^Hélène"
    study_date: str = "20261120"
    study_time: str = "101500"
    study_uid: str = field(default_factory=generate_uid)
    accession: str = "ACC0001"
    series: list[tuple[str, str, int]] = field(default_factory=lambda: [(CT, "CT", 3)])
    rows: int = 32
    columns: int = 32
    frames: int = 1


def build_instance(
    spec: StudySpec, series_uid: str, sop_class: str, modality: str, number: int, series_number: int
) -> Dataset:
    meta = FileMetaDataset()
    sop_uid = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = "CIS-TEST"
    ds.PatientBirthDate = "19650412"
    ds.PatientSex = "F"
    other = Dataset()
    other.PatientID = "265049912345678"
    other.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.AccessionNumber = spec.accession
    ds.StudyID = "1"
    ds.StudyDescription = "TEST ÉTUDE"
    ds.ReferringPhysicianName = "MERCIER^Aurélie"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.Modality = modality
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    rng = np.random.default_rng(number + 1000 * series_number)
    pixels = rng.integers(0, 4095, size=(spec.frames, spec.rows, spec.columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_study(spec: StudySpec, folder: Path) -> list[Path]:
    """Write the study's instances under `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for series_number, (sop_class, modality, count) in enumerate(spec.series, start=1):
        series_uid = generate_uid()
        for number in range(1, count + 1):
            ds = build_instance(spec, series_uid, sop_class, modality, number, series_number)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def pixel_hash(path: Path | str) -> str:
    """SHA-256 of the Pixel Data bytes, whatever the file meta says."""
    return hashlib.sha256(dcmread(path).PixelData).hexdigest()


def elements_equal(a: Path | str, b: Path | str) -> bool:
    """Every element equal and Pixel Data byte-equal (file meta may differ): decisions, Byte-identical."""
    first, second = dcmread(a), dcmread(b)
    return first == second and first.PixelData == second.PixelData
