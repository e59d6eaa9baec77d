"""UID validation and the cleaning of C-FIND answers into records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from drimbox.errors import InvalidUID
from drimbox.index.records import SeriesRecord, StudyRecord, normalize_name
from drimbox.uids import checked_uid, is_valid_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.1", "2.25.48417295308053270656783099304093473293", "0.1"])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1", "1..2", "1.02", "1.2.", ".1.2", "1.2.a", "1.2/../3", "1.2 3", "1." + "1" * 64, "１.２"]
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID):
        checked_uid(uid)


def test_uid_padding_is_stripped() -> None:
    assert checked_uid("1.2.3\x00") == "1.2.3"


@given(st.text(max_size=80))
def test_any_text_is_either_a_uid_or_refused(value: str) -> None:
    try:
        result = checked_uid(value)
    except InvalidUID:
        return
    assert is_valid_uid(result)
    assert "/" not in result and ".." not in result


def test_normalised_names_drop_accents_and_case() -> None:
    assert normalize_name("Lefèvre^Françoise") == "LEFEVRE^FRANCOISE"
    assert normalize_name("THÉVENOT^Éloïse") == "THEVENOT^ELOISE"


def test_study_record_clips_and_tolerates_bad_numbers() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "IPP1"
    with pytest.warns(UserWarning, match="exceeds the maximum length"):  # what a careless PACS sends
        ds.StudyDescription = "X" * 200
        ds.AccessionNumber = "A" * 40
    ds.NumberOfStudyRelatedSeries = "3"
    record = StudyRecord.from_dataset(ds)
    assert len(record.description) == 64 and len(record.accession_number) == 16
    assert record.series_count == 3 and record.instance_count is None


def test_record_with_bad_uid_is_refused() -> None:
    ds = Dataset()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.SeriesInstanceUID = "1.2.x"
    with pytest.raises(InvalidUID):
        SeriesRecord.from_dataset(ds)


def test_counts_outside_32_bits_are_ignored() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.NumberOfStudyRelatedInstances = "20231201123"
    ds.NumberOfStudyRelatedSeries = "2"
    record = StudyRecord.from_dataset(ds)
    assert record.instance_count is None and record.series_count == 2


def test_transfer_syntax_preferences_never_choose_lossy_first() -> None:
    from drimbox.dimse.contexts import LOSSLESS, LOSSY, SCP_TRANSFER_SYNTAXES, UNCOMPRESSED, retrieve_syntaxes

    order = [str(uid) for uid in SCP_TRANSFER_SYNTAXES]
    assert max(order.index(str(u)) for u in LOSSLESS + UNCOMPRESSED) < min(order.index(str(u)) for u in LOSSY)
    assert not set(retrieve_syntaxes([])) & set(LOSSY)
    stored_lossy = retrieve_syntaxes(["1.2.840.10008.1.2.4.50"])
    assert stored_lossy[0] == "1.2.840.10008.1.2.4.50"


def test_record_keywords_list_everything_the_records_read(tmp_path: Path) -> None:
    """The intake reuses study and series records keyed by the bytes of these attributes: one
    read and not listed would let a record of another instance stand for this one."""
    from pydicom import dcmread

    from drimbox.index.records import SERIES_KEYWORDS, STUDY_KEYWORDS
    from tests.support.datasets import CT, StudySpec, write_study

    read: list[str] = []

    class Spy(Dataset):
        def get(self, key: Any, default: Any = None) -> Any:
            read.append(str(key))
            return super().get(key, default)

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path)
    spy = Spy(dcmread(source))
    StudyRecord.from_dataset(spy)
    charset = {"(0008,0005)"}  # pydicom's own look-up of SpecificCharacterSet, part of both keys
    assert read and set(read) - charset <= set(STUDY_KEYWORDS)
    read.clear()
    SeriesRecord.from_dataset(spy)
    assert read and set(read) - charset <= set(SERIES_KEYWORDS)
