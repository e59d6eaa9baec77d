#!/usr/bin/env python3
"""Generate synthetic DICOM studies, as a French site's PACS would hold them.

Study kinds (uncompressed, Explicit VR Little Endian, DICOM Part 10 files):

  ffdm  Screening mammography, 4 images (R CC, L CC, R MLO, L MLO), Digital
        Mammography X-Ray Image Storage - For Presentation, 16-bit (BitsStored 12-14).
  dbt   Breast tomosynthesis (Breast Tomosynthesis Image Storage), one multi-frame
        instance per view with shared and per-frame functional groups.
  ct    Chest CT, one small instance per slice (measures per-instance overhead).
  tiny  Many one-instance studies with a 16 x 16 image, to fill an index quickly
        (2 studies per patient: a current one and a prior 2 years older).

Sizes (--size):
  full    FFDM 4096 x 3328 (~27 MB per image); DBT 4 views x 60 frames of 2457 x 1890
          (~557 MB per view); CT 500 slices of 512 x 512. About 3 GB per default run.
  sample  FFDM 512 x 416; DBT 1 view x 8 frames of 256 x 196; CT 24 slices of
          256 x 256. About 6 MB per default run (the committed sample_dicom/ set).
  --dbt-views, --dbt-frames and --ct-slices override the size; --scale multiplies
  the DBT frames and CT slices. DBT frames are generated one at a time into a temporary
  file next to the output, so memory stays small even at full size.

Identity: PatientName (French, with accents, ISO_IR 100), PatientID = the site's IPP
with IssuerOfPatientID "CIS-SYNTH", and an INS in OtherPatientIDsSequence: a NIR-like
number (sex, birth year and month, valid key) under the *test* INS-NIR OID
1.2.250.1.213.1.4.10, so the identities can never be mistaken for real ones.

Every value (UIDs "2.25.<uuid5>", names, dates, pixels) derives from --seed: two runs
with the same arguments write byte-identical files. All people are fictitious.

Output layout under OUT:
  manifest.json                what was written (UIDs, identifiers, sizes); merged on re-run
  ffdm-000/IM0001.dcm ...      one directory per large study
  dbt-000/BTO0001.dcm ...
  ct-000/CT0001.dcm ...
  tiny/00000000-00000999/...   tiny studies, by batch (add batches with --tiny-start)

Examples:
  make_studies.py out/                                  # 1 FFDM, 1 DBT, 1 CT, full size
  make_studies.py out/ --scale 0.1                      # 6 DBT frames per view, 50 CT slices
  make_studies.py out/ --ffdm 0 --dbt 0 --ct 0 --tiny 1000
  make_studies.py out/ --ffdm 0 --dbt 0 --ct 0 --tiny 19000 --tiny-start 1000
  make_studies.py sample_dicom --size sample --base-date 2026-11-20 --spread-days 0 --seed 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

F32 = npt.NDArray[np.float32]
Log = Callable[[str], None]
Shape = tuple[int, int]

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

UID_NAMESPACE = uuid.UUID("6f1c3c52-3f55-4d6e-9a7e-2f0f3b8f1d10")
IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(UID_NAMESPACE, "drimbox/tools/make_studies").int)

LOCAL_ISSUER = "CIS-SYNTH"
INS_ISSUER = "ASIP-SANTE-INS-NIR"
INS_NIR_TEST_OID = "1.2.250.1.213.1.4.10"  # INS-NIR *test* assigning authority (real NIR: .4.8)

# Every string below must be encodable in Latin-1: SpecificCharacterSet is ISO_IR 100.
CHARSET = "ISO_IR 100"
SURNAMES = [
    "DUPRÉ", "LEFÈVRE", "GAUTHIER", "MÜLLER", "BÉRANGER", "GRÉGOIRE", "NOËL", "LEMAÎTRE",
    "CÔTÉ", "FRANÇOIS", "HÉBERT", "MÉNARD", "THÉVENOT", "ROUSSEAU", "DELÉPINE", "FAURÉ",
]  # fmt: skip
GIVEN_NAMES = {
    "F": ["Hélène", "Françoise", "Éloïse", "Zoé", "Anaïs", "Maëlle", "Noémie", "Agnès",
          "Bérénice", "Inès", "Geneviève", "Chloé", "Léa", "Cécile"],
    "M": ["Jérôme", "François", "Benoît", "Gaël", "Loïc", "Hervé", "Stéphane", "Raphaël",
          "Jérémie", "Joël", "André", "Noël"],
}  # fmt: skip
PHYSICIANS = ["MERCIER^Aurélie", "GARNIER^Benoît", "CHEVALIER^Gaëlle", "BLANC^Jérôme", "FAVRE^Cécile"]
DEPARTMENTS = ["75", "69", "13", "33", "59", "31", "44", "67", "35", "06", "29", "63"]
INSTITUTION = "CENTRE D'IMAGERIE SYNTHÉTIQUE"
MANUFACTURER = "SYNTHETIC MODALITY"

MAMMO_VIEWS = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
BREAST_CODE = ("76752008", "Breast")
DESC_FFDM = "MAMMOGRAPHIE BILATÉRALE DE DÉPISTAGE"
DESC_DBT = "TOMOSYNTHÈSE MAMMAIRE"
DESC_CT = "TDM THORACIQUE"
TINY_KINDS = [
    ("MG", MG_FOR_PRESENTATION, DESC_FFDM),
    ("MG", MG_FOR_PRESENTATION, "MAMMOGRAPHIE BILATÉRALE"),
    ("CT", CT_IMAGE, DESC_CT),
    ("DX", DX_FOR_PRESENTATION, "RADIOGRAPHIE DU THORAX"),
]


@dataclass(frozen=True)
class Profile:
    """Image sizes of one --size choice (full keeps realistic sizes)."""

    ffdm_shape: Shape
    dbt_shape: Shape
    dbt_views: int
    dbt_frames: int
    ct_size: int
    ct_slices: int
    ct_thickness_mm: float


PROFILES = {
    "full": Profile((4096, 3328), (2457, 1890), 4, 60, 512, 500, 1.25),
    "sample": Profile((512, 416), (256, 196), 1, 8, 256, 24, 5.0),
}
FULL = PROFILES["full"]


# ---------------------------------------------------------------- small helpers


def uid(seed: int, *parts: object) -> str:
    """Deterministic 2.25 UID: a name-based (v5) UUID of the seed and the given parts."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "/".join(str(p) for p in (seed, *parts))).int)


def stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def rng_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, stable_int(key)])


def ds_num(value: float) -> str:
    """A DS value (at most 16 characters)."""
    return f"{value:.6g}"


def pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def item(**attrs: Any) -> Dataset:
    """A sequence item with the given keyword attributes."""
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def seq(**attrs: Any) -> Sequence:
    """A one-item sequence."""
    return Sequence([item(**attrs)])


def code_item(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


# ---------------------------------------------------------------- identities


@dataclass(frozen=True)
class Patient:
    name: str
    ipp: str
    ins: str
    sex: str
    birth_date: dt.date


@dataclass(frozen=True)
class Study:
    patient: Patient
    uid: str
    date: dt.date
    time: dt.time
    accession: str
    study_id: str
    referring: str
    description: str
    frame_of_reference: str


def nir(sex: str, birth: dt.date, rng: np.random.Generator) -> str:
    """NIR-like 15-digit number: sex, YY, MM, department, commune, order, key."""
    department = pick(rng, DEPARTMENTS)
    commune, order = int(rng.integers(1, 1000)), int(rng.integers(1, 1000))
    body = f"{1 if sex == 'M' else 2}{birth:%y%m}{department}{commune:03d}{order:03d}"
    return f"{body}{97 - int(body) % 97:02d}"


def make_patient(seed: int, key: str, sex: str, ages: tuple[int, int], reference: dt.date) -> Patient:
    """A patient whose identity depends only on the seed and key (stable across their studies)."""
    rng = rng_for(seed, "patient/" + key)
    name = f"{pick(rng, SURNAMES)}^{pick(rng, GIVEN_NAMES[sex])}"
    name.encode("latin-1")  # fail loudly rather than write replacement characters
    age_days = 365 * int(rng.integers(ages[0], ages[1] + 1)) + int(rng.integers(365))
    birth = reference - dt.timedelta(days=age_days)
    ipp = f"IPP{stable_int(f'{seed}/ipp/{key}') % 10**8:08d}"
    return Patient(name, ipp, nir(sex, birth, rng), sex, birth)


def make_study(
    seed: int, key: str, rng: np.random.Generator, patient: Patient, description: str, date: dt.date
) -> Study:
    time = dt.time(int(rng.integers(8, 18)), int(rng.integers(60)), int(rng.integers(60)))
    return Study(
        patient=patient,
        uid=uid(seed, key, "study"),
        date=date,
        time=time,
        accession=f"ACC{stable_int(f'{seed}/{key}/acc') % 10**9:09d}",
        study_id=str(int(rng.integers(1, 99999))),
        referring=pick(rng, PHYSICIANS),
        description=description,
        frame_of_reference=uid(seed, key, "for"),
    )


def study_date(rng: np.random.Generator, base: dt.date, spread_days: int) -> dt.date:
    return base - dt.timedelta(days=int(rng.integers(0, spread_days + 1)))


def age_at(birth: dt.date, day: dt.date) -> str:
    years = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


# ---------------------------------------------------------------- datasets


def patient_module(ds: Dataset, patient: Patient, day: dt.date) -> None:
    ds.PatientName = patient.name
    ds.PatientID = patient.ipp
    ds.IssuerOfPatientID = LOCAL_ISSUER
    ds.PatientBirthDate = f"{patient.birth_date:%Y%m%d}"
    ds.PatientSex = patient.sex
    ds.PatientAge = age_at(patient.birth_date, day)
    qualifiers = seq(UniversalEntityID=INS_NIR_TEST_OID, UniversalEntityIDType="ISO")
    ds.OtherPatientIDsSequence = seq(
        PatientID=patient.ins,
        IssuerOfPatientID=INS_ISSUER,
        TypeOfPatientID="TEXT",
        IssuerOfPatientIDQualifiersSequence=qualifiers,
    )


def new_instance(
    sop_class: str,
    sop_uid: str,
    study: Study,
    modality: str,
    series: tuple[str, int, str],
    number: int,
    seconds_after: int,
) -> Dataset:
    """Dataset with file meta, patient, study, series, equipment and instance attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    meta.ImplementationVersionName = "DRIMBOX_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = CHARSET
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    patient_module(ds, study.patient, study.date)
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = f"{study.date:%Y%m%d}"
    ds.StudyTime = f"{study.time:%H%M%S}"
    ds.AccessionNumber = study.accession
    ds.StudyID = study.study_id
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.description
    ds.Modality = modality
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series
    ds.InstanceNumber = number
    ds.InstitutionName = INSTITUTION
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "SYNTH-" + modality
    ds.StationName = "SYNTH01"
    ds.DeviceSerialNumber = "0000001"
    ds.SoftwareVersions = "1.0"
    when = dt.datetime.combine(study.date, study.time) + dt.timedelta(seconds=seconds_after)
    for prefix in ("Series", "Acquisition", "Content", "InstanceCreation"):
        setattr(ds, prefix + "Date", f"{when:%Y%m%d}")
        setattr(ds, prefix + "Time", f"{when:%H%M%S}")
    return ds


def set_pixels(
    ds: Dataset,
    data: bytes | BinaryIO,
    shape: Shape,
    bits: int,
    *,
    signed: bool = False,
    frames: int | None = None,
) -> None:
    """Image pixel module for 16-bit MONOCHROME2 little-endian data (bytes, or a file to stream)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = data
    ds["PixelData"].VR = "OW"


def write(ds: Dataset, path: str) -> int:
    ds.save_as(path, enforce_file_format=True)
    return os.path.getsize(path)


def breast_attrs(ds: Dataset, laterality: str, view: str) -> None:
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.ViewCodeSequence = Sequence([code_item(*VIEW_CODES[view])])
    ds.AnatomicRegionSequence = Sequence([code_item(*BREAST_CODE)])
    ds.BodyPartExamined = "BREAST"
    row = "A" if laterality == "L" else "P"
    column = ("R" if laterality == "L" else "L") if view == "CC" else ("FR" if laterality == "L" else "FL")
    ds.PatientOrientation = [row, column]


# ---------------------------------------------------------------- pixels


def resize_bilinear(coarse: F32, shape: Shape) -> F32:
    """Bilinear upsampling of a small grid to `shape` (rows, columns)."""
    (h, w), (out_h, out_w) = coarse.shape, shape
    ys = np.linspace(0, h - 1, out_h, dtype=np.float32)
    y0 = ys.astype(np.intp)
    wy = (ys - y0)[:, None]
    rows = coarse[y0] * (1 - wy) + coarse[np.minimum(y0 + 1, h - 1)] * wy
    xs = np.linspace(0, w - 1, out_w, dtype=np.float32)
    x0 = xs.astype(np.intp)
    wx = xs - x0
    out: F32 = rows[:, x0] * (1 - wx) + rows[:, np.minimum(x0 + 1, w - 1)] * wx
    return out


def texture(rng: np.random.Generator, shape: Shape) -> F32:
    """Smooth multi-scale texture in [0, 1]."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    for cells, weight in ((6, 0.5), (24, 0.3), (96, 0.2)):
        grid = (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w)))
        out += weight * resize_bilinear(rng.random(grid, dtype=np.float32), shape)
    return out


def breast_mask(shape: Shape, laterality: str, view: str) -> F32:
    """1 inside the breast (soft edge), chest wall on the left for R, on the right for L."""
    h, w = shape
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    cx = 0.0 if laterality == "R" else float(w - 1)
    cy, ax, ay = (0.5 * h, 0.62 * w, 0.40 * h) if view == "CC" else (0.42 * h, 0.70 * w, 0.50 * h)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1.0 - r) * 25.0, 0.0, 1.0)


def breast_pixels(rng: np.random.Generator, mask: F32, tex: F32, bits: int, noise: float) -> F32:
    """Breast image in stored values: background, textured tissue and quantum-like noise."""
    vmax = (1 << bits) - 1
    img = (vmax * (0.03 + mask * (0.30 + 0.45 * tex))).astype(np.float32, copy=False)
    img += rng.standard_normal(mask.shape, dtype=np.float32) * (vmax * (0.002 + noise * mask))
    return np.clip(img, 0, vmax, out=img)


def ct_slice(rng: np.random.Generator, z: float, size: int) -> F32:
    """HU image of a crude thorax phantom at relative height z in [0, 1]."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # -0.5 .. 0.5 across the field of view
    yy, xx = axis[:, None], axis[None, :]

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> npt.NDArray[np.bool_]:
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1

    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = ellipse(0, 0, 0.42, 0.30)
    hu[body] = 40.0
    lung_rx = 0.12 * (0.7 + 0.3 * np.sin(np.pi * z))
    hu[ellipse(-0.17, -0.02, lung_rx, 0.18) | ellipse(0.17, -0.02, lung_rx, 0.18)] = -820.0
    hu[ellipse(0, 0.2, 0.04, 0.045)] = 700.0  # spine
    hu[np.broadcast_to((yy > 0.36) & (yy < 0.38), hu.shape)] = 200.0  # table
    hu += rng.standard_normal((size, size), dtype=np.float32) * np.where(body, 12.0, 3.0).astype(np.float32)
    return hu


# ---------------------------------------------------------------- study writers


@dataclass(frozen=True)
class Options:
    seed: int
    out: str
    profile: Profile
    base_date: dt.date
    spread_days: int
    log: Log


def start_study(
    opts: Options, key: str, kind: str, sex: str, ages: tuple[int, int], description: str
) -> tuple[np.random.Generator, Study, str]:
    """The study's rng, identity and (created) output directory."""
    rng = rng_for(opts.seed, key)
    patient = make_patient(opts.seed, key, sex, ages, opts.base_date)
    study = make_study(opts.seed, key, rng, patient, description, study_date(rng, opts.base_date, opts.spread_days))
    index = int(key.rsplit("/", 1)[1])
    study_dir = os.path.join(opts.out, f"{kind}-{index:03d}")
    os.makedirs(study_dir, exist_ok=True)
    return rng, study, study_dir


def manifest_entry(
    study: Study,
    kind: str,
    study_dir: str,
    series: list[str],
    sop_class: str,
    instances: int,
    frames: int,
    size: int,
    shape: Shape,
    bits: int,
) -> dict[str, Any]:
    label = os.path.basename(study_dir)
    return {
        "label": label,
        "kind": kind,
        "dir": label,
        "StudyInstanceUID": study.uid,
        "SeriesInstanceUIDs": series,
        "PatientID": study.patient.ipp,
        "INS": study.patient.ins,
        "PatientName": study.patient.name,
        "AccessionNumber": study.accession,
        "StudyDate": f"{study.date:%Y%m%d}",
        "SOPClassUID": sop_class,
        "instances": instances,
        "frames": frames,
        "bytes": size,
        "rows": shape[0],
        "columns": shape[1],
        "bits_stored": bits,
    }


def make_ffdm(opts: Options, index: int) -> dict[str, Any]:
    key = f"ffdm/{index}"
    rng, study, study_dir = start_study(opts, key, "ffdm", "F", (50, 74), DESC_FFDM)
    shape = opts.profile.ffdm_shape
    imager_spacing = 0.07 * FULL.ffdm_shape[1] / shape[1]
    bits = int(rng.integers(12, 15))
    series = (uid(opts.seed, key, "series"), 1, "MAMMO 2D")
    total = 0
    for n, (lat, view) in enumerate(MAMMO_VIEWS, start=1):
        ds = new_instance(MG_FOR_PRESENTATION, uid(opts.seed, key, "sop", n), study, "MG", series, n, 60 * n)
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BurnedInAnnotation = "NO"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.DetectorType = "DIRECT"
        ds.KVP = str(28 + n % 3)
        ds.ExposureTime = str(int(rng.integers(800, 1600)))
        ds.XRayTubeCurrent = str(int(rng.integers(80, 200)))
        ds.Exposure = str(int(rng.integers(80, 250)))
        ds.BodyPartThickness = f"{rng.uniform(35, 70):.1f}"
        ds.CompressionForce = f"{rng.uniform(60, 140):.1f}"
        ds.AnodeTargetMaterial = "TUNGSTEN"
        ds.FilterMaterial = "RHODIUM"
        ds.ImagerPixelSpacing = [ds_num(imager_spacing)] * 2
        ds.PixelSpacing = [ds_num(imager_spacing / 1.07)] * 2
        ds.EstimatedRadiographicMagnificationFactor = "1.07"
        ds.OrganDose = f"{rng.uniform(0.8, 2.2):.3f}"
        ds.EntranceDoseInmGy = f"{rng.uniform(3.0, 9.0):.3f}"
        breast_attrs(ds, lat, view)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.WindowCenter = ds.WindowWidth = str((1 << bits) // 2)
        ds.VOILUTFunction = "SIGMOID"
        ds.PresentationLUTShape = "IDENTITY"
        ds.LossyImageCompression = "00"
        pixels = breast_pixels(rng, breast_mask(shape, lat, view), texture(rng, shape), bits, 0.008)
        set_pixels(ds, pixels.astype("<u2").tobytes(), shape, bits)
        path = os.path.join(study_dir, f"IM{n:04d}.dcm")
        total += write(ds, path)
        opts.log(f"  {path}")
    n_views = len(MAMMO_VIEWS)
    return manifest_entry(
        study, "ffdm", study_dir, [series[0]], MG_FOR_PRESENTATION, n_views, n_views, total, shape, bits
    )


def dbt_multiframe_modules(ds: Dataset, seed: int, key: str, lat: str, frames: int, bits: int, spacing: float) -> None:
    """Enhanced multi-frame attributes: dimensions, shared and per-frame functional groups."""
    slice_mm = 1.0
    dim_org_uid = uid(seed, key, "dimorg")
    ds.DimensionOrganizationSequence = seq(DimensionOrganizationUID=dim_org_uid)
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = seq(
        DimensionOrganizationUID=dim_org_uid,
        DimensionIndexPointer=0x00200032,  # Image Position (Patient)
        FunctionalGroupPointer=0x00209113,  # Plane Position Sequence
        DimensionDescriptionLabel="Slice position",
    )
    ds.SharedFunctionalGroupsSequence = seq(
        PixelMeasuresSequence=seq(
            PixelSpacing=[ds_num(spacing)] * 2,
            SliceThickness=ds_num(slice_mm),
            SpacingBetweenSlices=ds_num(slice_mm),
        ),
        PlaneOrientationSequence=seq(ImageOrientationPatient=[0, 1 if lat == "R" else -1, 0, 0, 0, -1]),
        FrameVOILUTSequence=seq(WindowCenter=str((1 << bits) // 2), WindowWidth=str((1 << bits) - 1)),
        PixelValueTransformationSequence=seq(RescaleIntercept="0", RescaleSlope="1", RescaleType="US"),
        FrameAnatomySequence=seq(AnatomicRegionSequence=Sequence([code_item(*BREAST_CODE)]), FrameLaterality=lat),
    )
    thickness = float(ds.BodyPartThickness)
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        item(
            FrameContentSequence=seq(FrameAcquisitionNumber=1, DimensionIndexValues=[f + 1]),
            PlanePositionSequence=seq(ImagePositionPatient=[ds_num(thickness * f / max(frames - 1, 1)), "0", "0"]),
            XRay3DFrameTypeSequence=seq(FrameType=["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "NONE"]),
        )
        for f in range(frames)
    )


def write_dbt_frames(
    buf: BinaryIO, rng: np.random.Generator, shape: Shape, lat: str, view: str, frames: int, bits: int
) -> None:
    """Append one view's frames to `buf`, one frame at a time (a full-size view is ~557 MB)."""
    mask = breast_mask(shape, lat, view)
    tex_a, tex_b = texture(rng, shape), texture(rng, shape)
    for f in range(frames):
        t = np.float32(f / max(frames - 1, 1))
        buf.write(breast_pixels(rng, mask, (1 - t) * tex_a + t * tex_b, bits, 0.01).astype("<u2").tobytes())


def make_dbt(opts: Options, index: int, views: int, frames: int) -> dict[str, Any]:
    key = f"dbt/{index}"
    rng, study, study_dir = start_study(opts, key, "dbt", "F", (50, 74), DESC_DBT)
    shape, bits = opts.profile.dbt_shape, 12
    series = (uid(opts.seed, key, "series"), 2, "TOMOSYNTHÈSE")
    total = 0
    for n in range(1, views + 1):
        lat, view = MAMMO_VIEWS[(n - 1) % len(MAMMO_VIEWS)]
        ds = new_instance(BREAST_TOMOSYNTHESIS, uid(opts.seed, key, "sop", n), study, "MG", series, n, 90 * n)
        ds.ImageType = ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "NONE"]
        ds.FrameOfReferenceUID = study.frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ContentQualification = "PRODUCT"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.AcquisitionContextSequence = Sequence()
        ds.BodyPartThickness = f"{rng.uniform(35, 70):.1f}"
        ds.CompressionForce = f"{rng.uniform(60, 140):.1f}"
        breast_attrs(ds, lat, view)
        ds.VolumetricProperties = "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"
        ds.ReconstructionAlgorithmSequence = seq(ReconstructionAlgorithm="FILTER_BACK_PROJ")
        dbt_multiframe_modules(ds, opts.seed, key, lat, frames, bits, 0.1 * FULL.dbt_shape[1] / shape[1])
        path = os.path.join(study_dir, f"BTO{n:04d}.dcm")
        # Pixel Data is a buffered value (pydicom >= 3): streamed from a temporary file when written.
        with tempfile.TemporaryFile(dir=study_dir) as buf:
            write_dbt_frames(buf, rng, shape, lat, view, frames, bits)
            buf.seek(0)
            set_pixels(ds, buf, shape, bits, frames=frames)
            total += write(ds, path)
        opts.log(f"  {path}")
    return manifest_entry(
        study, "dbt", study_dir, [series[0]], BREAST_TOMOSYNTHESIS, views, views * frames, total, shape, bits
    )


def make_ct(opts: Options, index: int, slices: int) -> dict[str, Any]:
    key = f"ct/{index}"
    sex = "F" if index % 2 == 0 else "M"
    rng, study, study_dir = start_study(opts, key, "ct", sex, (40, 85), DESC_CT)
    size, thickness, intercept = opts.profile.ct_size, opts.profile.ct_thickness_mm, -1024
    spacing = 360.0 / size  # 360 mm field of view
    series = (uid(opts.seed, key, "series"), 3, f"THORAX {thickness:g} MM")
    total = 0
    for n in range(1, slices + 1):
        ds = new_instance(CT_IMAGE, uid(opts.seed, key, "sop", n), study, "CT", series, n, 5 + n // 50)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = study.frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "FFS"
        ds.ScanOptions = "HELICAL MODE"
        ds.KVP = "120"
        ds.XRayTubeCurrent = str(int(rng.integers(150, 350)))
        ds.ConvolutionKernel = "STANDARD"
        ds.SliceThickness = ds.SpacingBetweenSlices = ds_num(thickness)
        z = ds_num(-thickness * n)
        ds.ImagePositionPatient = [ds_num(-180 + spacing / 2)] * 2 + [z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.PixelSpacing = [ds_num(spacing)] * 2
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(intercept), "1", "HU"
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
        stored = np.clip(np.rint(ct_slice(rng, n / slices, size) - intercept), -2048, 4095)
        set_pixels(ds, stored.astype("<i2").tobytes(), (size, size), 12, signed=True)
        total += write(ds, os.path.join(study_dir, f"CT{n:04d}.dcm"))
        if n % 100 == 0 or n == slices:
            opts.log(f"  {study_dir}: {n}/{slices}")
    return manifest_entry(study, "ct", study_dir, [series[0]], CT_IMAGE, slices, slices, total, (size, size), 12)


def make_tiny(opts: Options, start: int, count: int) -> dict[str, Any]:
    """`count` one-instance studies, indices start..start+count-1, 2 studies per patient."""
    batch_dir = os.path.join("tiny", f"{start:08d}-{start + count - 1:08d}")
    os.makedirs(os.path.join(opts.out, batch_dir), exist_ok=True)
    pixels = (np.random.default_rng([opts.seed, 7]).random((16, 16)) * 4000).astype("<u2").tobytes()
    study_uids, patient_ids, total = [], [], 0
    for i in range(start, start + count):
        key = f"tiny/{i}"
        rng = rng_for(opts.seed, key)
        modality, sop_class, description = TINY_KINDS[i % len(TINY_KINDS)]
        sex = "M" if (i // 2) % 4 == 3 else "F"  # patients 4k+1 have a CT + a DX; others are MG
        patient = make_patient(opts.seed, f"tiny-patient/{i // 2}", sex, (50, 74), opts.base_date)
        date = study_date(rng, opts.base_date, opts.spread_days) - dt.timedelta(days=730 * (i % 2))
        study = make_study(opts.seed, key, rng, patient, description, date)
        series = (uid(opts.seed, key, "series"), 1, description)
        ds = new_instance(sop_class, uid(opts.seed, key, "sop", 1), study, modality, series, 1, 30)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        if modality in ("MG", "DX"):
            ds.PresentationIntentType = "FOR PRESENTATION"
        set_pixels(ds, pixels, (16, 16), 12)
        total += write(ds, os.path.join(opts.out, batch_dir, f"{i:08d}.dcm"))
        study_uids.append(study.uid)
        patient_ids.append(patient.ipp)
        if (i - start + 1) % 2000 == 0:
            opts.log(f"  tiny: {i - start + 1}/{count}")
    return {
        "start": start,
        "count": count,
        "dir": batch_dir,
        "bytes": total,
        "StudyInstanceUIDs": study_uids,
        "PatientIDs": patient_ids,
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("out", help="output directory (created if missing)")
    ap.add_argument("--seed", type=int, default=1, help="seed for every generated value (default 1)")
    ap.add_argument("--size", choices=sorted(PROFILES), default="full", help="image sizes (default full)")
    ap.add_argument("--ffdm", type=int, default=1, metavar="N", help="number of FFDM studies (default 1)")
    ap.add_argument("--dbt", type=int, default=1, metavar="N", help="number of DBT studies (default 1)")
    ap.add_argument("--dbt-views", type=int, metavar="N", help="DBT views per study (full 4, sample 1)")
    ap.add_argument("--dbt-frames", type=int, metavar="N", help="frames per DBT view (full 60, sample 8)")
    ap.add_argument("--ct", type=int, default=1, metavar="N", help="number of CT studies (default 1)")
    ap.add_argument("--ct-slices", type=int, metavar="N", help="slices per CT study (full 500, sample 24)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply DBT frames and CT slices (default 1)")
    ap.add_argument("--tiny", type=int, default=0, metavar="N", help="number of tiny index-filler studies")
    ap.add_argument(
        "--tiny-start",
        type=int,
        default=0,
        metavar="I",
        help="index of the first tiny study, to add batches without overlap (default 0)",
    )
    ap.add_argument(
        "--base-date",
        type=dt.date.fromisoformat,
        default=dt.date(2025, 1, 6),
        metavar="YYYY-MM-DD",
        help="latest study date (default 2025-01-06)",
    )
    ap.add_argument(
        "--spread-days",
        type=int,
        default=365,
        metavar="N",
        help="study dates spread over N days before --base-date (default 365)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return ap.parse_args(argv)


def update_manifest(out: str, seed: int, studies: list[dict[str, Any]], batch: dict[str, Any] | None) -> str:
    """Merge the new studies / tiny batch into OUT/manifest.json (replacing same labels / starts)."""
    path = os.path.join(out, "manifest.json")
    manifest: dict[str, Any] = {"studies": [], "tiny_batches": []}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    labels = {s["label"] for s in studies}
    kept = [s for s in manifest["studies"] if s["label"] not in labels]
    manifest["studies"] = sorted(kept + studies, key=lambda s: str(s["label"]))
    if batch is not None:
        kept = [b for b in manifest["tiny_batches"] if b["start"] != batch["start"]]
        manifest["tiny_batches"] = sorted([*kept, batch], key=lambda b: int(b["start"]))
    manifest["seed"] = seed
    manifest["generator"] = "tools/make_studies.py"
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    os.replace(path + ".tmp", path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.size]

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    opts = Options(args.seed, args.out, profile, args.base_date, args.spread_days, log)
    views = profile.dbt_views if args.dbt_views is None else args.dbt_views
    frames = max(1, round((profile.dbt_frames if args.dbt_frames is None else args.dbt_frames) * args.scale))
    slices = max(1, round((profile.ct_slices if args.ct_slices is None else args.ct_slices) * args.scale))
    os.makedirs(args.out, exist_ok=True)
    studies: list[dict[str, Any]] = []
    batch = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a value pydicom cannot encode in ISO_IR 100
        for i in range(args.ffdm):
            log(f"ffdm {i}")
            studies.append(make_ffdm(opts, i))
        for i in range(args.dbt):
            log(f"dbt {i} ({views} views x {frames} frames)")
            studies.append(make_dbt(opts, i, views, frames))
        for i in range(args.ct):
            log(f"ct {i} ({slices} slices)")
            studies.append(make_ct(opts, i, slices))
        if args.tiny > 0:
            log(f"tiny {args.tiny} from {args.tiny_start}")
            batch = make_tiny(opts, args.tiny_start, args.tiny)
    log(f"manifest: {update_manifest(args.out, args.seed, studies, batch)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
