"""IOCM rejection notes: what a PACS sends when it rejects instances, built and read back."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from drimbox.kos.build import InvalidManifest, encode_manifest
from drimbox.kos.parse import ManifestUnreadable, read_manifest
from drimbox.kos.rejection import REJECTION_REASONS, Rejection, read_rejection, rejection_note
from tests.unit.test_kos import SAMPLE, kos_problems

STUDY = "1.2.826.0.1.3680043.10.1234.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
REJECTED = {
    f"{STUDY}.1": [(CT, f"{STUDY}.1.1"), (CT, f"{STUDY}.1.3")],
    f"{STUDY}.2": [(SR, f"{STUDY}.2.1")],
}


def _written(ds: Dataset) -> Dataset:
    """`ds` as a PACS would send it: Part-10 bytes, read back."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("reason", sorted(REJECTION_REASONS))
def test_a_rejection_note_reads_back(reason: str) -> None:
    note = rejection_note(STUDY, REJECTED, reason, patient_id="IPP1", patient_name="DUPRÉ^Hélène")

    rejection = read_rejection(_written(note))

    assert rejection == Rejection(
        reason=reason,
        study_uid=STUDY,
        rejected={f"{STUDY}.1": (f"{STUDY}.1.1", f"{STUDY}.1.3"), f"{STUDY}.2": (f"{STUDY}.2.1",)},
    )
    assert rejection.instance_count == 3
    assert note.ConceptNameCodeSequence[0].CodeMeaning == REJECTION_REASONS[reason]


def test_a_rejection_note_is_a_valid_kos() -> None:
    note = rejection_note(
        STUDY,
        REJECTED,
        sop_instance_uid=f"{STUDY}.77.1",
        series_instance_uid=f"{STUDY}.77",
        created=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
    )

    assert kos_problems(_written(note)) == set()
    assert (note.SOPInstanceUID, note.SeriesInstanceUID, note.ContentDate) == (
        f"{STUDY}.77.1",
        f"{STUDY}.77",
        "20260301",
    )


def test_a_drim_m_manifest_or_an_image_is_not_a_rejection() -> None:
    manifest = dcmread(BytesIO(encode_manifest(read_manifest(SAMPLE.read_bytes()))))
    image = Dataset()
    image.SOPClassUID = CT
    of_interest = rejection_note(STUDY, REJECTED)
    of_interest.ConceptNameCodeSequence[0].CodeValue = "113000"  # "Of Interest": a KOS, not a rejection
    other_scheme = rejection_note(STUDY, REJECTED)
    other_scheme.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99LOCAL"

    for dataset in (manifest, dcmread(SAMPLE), image, Dataset(), of_interest, other_scheme):
        assert read_rejection(dataset) is None


def test_a_rejection_note_we_cannot_apply_is_unreadable_not_ignored() -> None:
    two_studies = rejection_note(STUDY, REJECTED)
    evidence = two_studies.CurrentRequestedProcedureEvidenceSequence
    evidence.append(evidence[0])
    empty_series = rejection_note(STUDY, REJECTED)
    del empty_series.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence

    with pytest.raises(ManifestUnreadable, match="2 studies"):
        read_rejection(two_studies)
    with pytest.raises(ManifestUnreadable, match="lists no instance"):
        read_rejection(empty_series)


@pytest.mark.parametrize(
    ("study", "series", "reason", "message"),
    [
        (STUDY, REJECTED, "113030", "rejection reason"),
        (STUDY, {}, "113001", "at least one instance"),
        (STUDY, {f"{STUDY}.1": []}, "113001", "at least one instance"),
        ("not-a-uid", REJECTED, "113001", "invalid UID"),
    ],
)
def test_an_invalid_rejection_note_is_not_built(
    study: str, series: dict[str, list[tuple[str, str]]], reason: str, message: str
) -> None:
    with pytest.raises(InvalidManifest, match=message):
        rejection_note(study, series, reason)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_note_naming_an_invalid_uid_is_unreadable() -> None:
    note = rejection_note("1.2.3", {"1.2.3.4": [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5")]})
    series = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    series["SeriesInstanceUID"].value = "1/3.6"  # as a damaged file carries it (no setter validation)
    with pytest.raises(ManifestUnreadable, match="invalid UID"):
        read_rejection(note)
