"""The instance store on its own: completeness check, atomic placement, cleanup of transfers."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from drimbox.errors import InvalidInstance
from drimbox.store import files
from drimbox.store.files import DataSetStart, InstanceStore
from tests.support.datasets import CT, StudySpec, write_study


@pytest.mark.parametrize("fsync", [False, True])
def test_admit_places_a_checked_file(tmp_path: Path, fsync: bool) -> None:
    store = InstanceStore(tmp_path / "data", fsync=fsync)
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    received = store.incoming / "cstore-x.dcm"
    received.write_bytes(source.read_bytes())
    inspected = store.inspect(received)
    place = store.path_for(inspected.study_uid, inspected.series_uid, inspected.sop_uid)
    assert store.admit(received, place) == place
    assert place.read_bytes() == source.read_bytes() and not received.exists()


def test_truncated_pixel_data_is_refused(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=64, columns=64), tmp_path / "src")
    source.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(InvalidInstance, match="truncated"):
        store.inspect(source)


def test_clean_incoming_spares_live_transfers(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    old, live = store.incoming / "cstore-old.dcm", store.incoming / "cstore-live.dcm"
    old.write_bytes(b"x")
    live.write_bytes(b"y")
    past = time.time() - 600
    os.utime(old, (past, past))
    assert store.clean_incoming(older_than=300) == 1
    assert not old.exists() and live.exists()
    assert store.clean_incoming() == 1


def test_remove_never_leaves_the_store(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "data")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    store.remove([str(outside), str(store.root / ".." / ".." / "precious.txt")])
    assert outside.exists()


def test_metadata_inlines_sequences_and_refers_to_bulk_data(tmp_path: Path) -> None:
    from pydicom import Dataset, dcmread
    from pydicom.sequence import Sequence

    from drimbox.store.metadata import metadata_json

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    ds = dcmread(source)
    groups = []
    for number in range(200):  # a per-frame functional groups sequence far above the bulk threshold
        item = Dataset()
        item.FrameLabel = f"frame {number}"
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.save_as(source)
    meta = metadata_json(dcmread(source, defer_size=1024), "https://box/dicom-web/studies/1/series/2/instances/3")
    per_frame = meta["52009230"]
    assert per_frame["vr"] == "SQ" and len(per_frame["Value"]) == 200
    assert meta["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": "https://box/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010",
    }


def test_metadata_from_the_memo_is_what_pydicom_gives(tmp_path: Path) -> None:
    """Later instances of a series take most elements from the memo: the JSON must not change."""
    import json

    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from drimbox.store import metadata

    sources = write_study(StudySpec(series=[(CT, "CT", 3)]), tmp_path / "src")
    for number, source in enumerate(sources):  # a sequence shared by the series, one of each instance's own
        ds = dcmread(source)
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", "CT Thorax"
        ds.ProcedureCodeSequence = Sequence([code])
        source_image = Dataset()
        source_image.ReferencedSOPInstanceUID = f"1.2.3.{number}"
        ds.SourceImageSequence = Sequence([source_image])
        ds.save_as(source)
    store = InstanceStore(tmp_path / "data")
    metadata._MEMO.clear()
    for source in sources:
        inspected = store.inspect(source)
        ours = json.loads(metadata.metadata_text(inspected.dataset, "https://box/i", inspected.elements))
        theirs = dcmread(source).to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e: "bulk")
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if "BulkDataURI" in value:
                assert theirs[key].get("BulkDataURI") == "bulk", key
            elif "BulkDataURI" not in theirs[key]:
                assert value == theirs[key], key
    assert len(metadata._MEMO) > 20  # patient, study, equipment... encoded once, reused twice
    sequences = [key for key in metadata._MEMO if key[1] == "SQ"]
    assert len(sequences) == 5  # the shared ones once (procedure, other patient IDs), each instance's own


def test_metadata_memo_keeps_character_sets_apart(tmp_path: Path) -> None:
    """The same bytes of a name mean another name under another character set."""
    import json

    from pydicom import dcmread

    from drimbox.store import metadata

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    store = InstanceStore(tmp_path / "data")
    names = {}
    for charset, name in (("ISO_IR 192", "é^Anne"), ("ISO_IR 100", "Ã©^Anne")):  # both b"\xc3\xa9^Anne"
        ds = dcmread(source)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        target = tmp_path / f"{charset[-3:]}.dcm"
        ds.save_as(target)
        inspected = store.inspect(target)
        meta = json.loads(metadata.metadata_text(inspected.dataset, "https://box/i", inspected.elements))
        names[charset] = meta["00100010"]["Value"][0]["Alphabetic"]
    assert names == {"ISO_IR 192": "é^Anne", "ISO_IR 100": "Ã©^Anne"}


@pytest.mark.parametrize("trailing", [False, True])
def test_header_from_the_head_of_the_file_is_the_whole_header(
    tmp_path: Path, trailing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above 64 KiB only the head is parsed when the pixel data ends the file; an element after
    it (trailing padding) sends the parse back to the whole file, so nothing is ever missed."""
    from pydicom import dcmread

    from drimbox.store import files

    parsed: list[int] = []
    parse = files._parse
    monkeypatch.setattr(files, "_parse", lambda data, path, *rest: parsed.append(len(data)) or parse(data, path, *rest))

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=256, columns=256), tmp_path / "src")
    if trailing:
        ds = dcmread(source)
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)  # Data Set Trailing Padding
        ds.save_as(source)
    assert source.stat().st_size > 1 << 16
    inspected = InstanceStore(tmp_path / "data").inspect(source)
    full = dcmread(source, defer_size=1024)
    assert list(inspected.elements) == list(full.keys())
    assert (0xFFFCFFFC in inspected.elements) == trailing
    assert inspected.dataset.PixelData == dcmread(source).PixelData
    size = source.stat().st_size
    assert parsed == ([1 << 16, size] if trailing else [1 << 16])


def test_a_truncated_file_above_the_head_is_refused(tmp_path: Path) -> None:
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=256, columns=256), tmp_path / "src")
    source.write_bytes(source.read_bytes()[:-1000])
    with pytest.raises(InvalidInstance, match="truncated"):
        InstanceStore(tmp_path / "data").inspect(source)


def test_a_file_cut_inside_a_short_last_element_is_refused(tmp_path: Path) -> None:
    """pydicom reads what there is of a short value without complaint: the length says more."""
    from pydicom import dcmread

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=8, columns=8), tmp_path / "src")
    ds = dcmread(source)
    del ds.PixelData
    ds.add_new(0x00291010, "LO", "a private value, last")  # (creator-less: only its bytes matter)
    ds.save_as(source)
    source.write_bytes(source.read_bytes()[:-4])
    with pytest.raises(InvalidInstance, match="truncated"):
        InstanceStore(tmp_path / "data").inspect(source)


def test_saved_metadata_gets_the_public_base_url_when_served() -> None:
    """Documents keep their BulkDataURIs relative; serving prefixes the configured URL (JSON-escaped),
    so a change of that URL applies to what is stored. A string value cannot be mistaken for the key."""
    import json

    from drimbox.store import metadata

    saved = json.dumps(
        {
            "7FE00010": {"vr": "OW", "BulkDataURI": "/studies/1/series/2/instances/3/bulkdata/7FE00010"},
            "00081030": {"vr": "LO", "Value": ['"BulkDataURI":"/studies/ in a description']},
        },
        separators=(",", ":"),
    ).encode()
    served = json.loads(metadata.with_prefix(saved, 'https://box.example/dicom-"web"'))
    assert (
        served["7FE00010"]["BulkDataURI"]
        == 'https://box.example/dicom-"web"/studies/1/series/2/instances/3/bulkdata/7FE00010'
    )
    assert served["00081030"]["Value"] == ['"BulkDataURI":"/studies/ in a description']


@pytest.mark.parametrize(
    ("replace_with", "refused"),
    [(None, ""), (b"\xe9", "StudyInstanceUID is not ASCII"), (b" ", "not a valid DICOM UID")],
)
def test_uids_are_taken_from_their_bytes_and_checked(tmp_path: Path, replace_with: bytes | None, refused: str) -> None:
    """The four UIDs of a received file are read as bytes, not through pydicom: ASCII or refused,
    then checked as any UID from outside."""
    from pydicom import dcmread

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    study_uid = str(dcmread(source).StudyInstanceUID)
    data = source.read_bytes()
    assert data.count(study_uid.encode()) == 1
    if replace_with is not None:  # same length: a character in the middle of the UID
        middle = len(study_uid) // 2
        bad = study_uid[:middle].encode() + replace_with + study_uid[middle + 1 :].encode()
        source.write_bytes(data.replace(study_uid.encode(), bad))
    store = InstanceStore(tmp_path / "data")
    if refused:
        with pytest.raises(InvalidInstance, match=refused):
            store.inspect(source)
    else:
        assert store.inspect(source).study_uid == study_uid


def test_metadata_memo_stays_bounded_and_right_when_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drimbox.store import metadata

    sources = write_study(StudySpec(series=[(CT, "CT", 4)]), tmp_path / "src")
    store = InstanceStore(tmp_path / "data")
    inspected = [store.inspect(source) for source in sources]
    metadata._MEMO.clear()
    expected = [metadata.metadata_text(i.dataset, "https://box/i", i.elements) for i in inspected]
    assert len(metadata._MEMO) > 20
    monkeypatch.setattr(metadata, "_MEMO_ENTRIES", 10)
    metadata._MEMO.clear()
    for _ in range(2):
        assert [metadata.metadata_text(i.dataset, "https://box/i", i.elements) for i in inspected] == expected
        assert len(metadata._MEMO) <= 10


def test_an_encapsulated_value_is_bulk_even_when_its_bytes_were_inline_before(tmp_path: Path) -> None:
    """Undefined length is part of the memo's key: the same bytes, encapsulated, are a BulkDataURI."""
    import json

    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    from drimbox.store import metadata

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=2, columns=2), tmp_path / "src")
    encapsulated = dcmread(source)
    encapsulated.file_meta.TransferSyntaxUID = RLELossless
    encapsulated.PixelData = encapsulate([b"\x01\x02\x03\x04"])
    encapsulated["PixelData"].VR = "OB"
    encapsulated.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    store = InstanceStore(tmp_path / "data")
    rle = store.inspect(tmp_path / "rle.dcm")
    raw = rle.elements[rle.dataset["PixelData"].tag]
    native = dcmread(source)
    native.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    native.BitsAllocated, native.BitsStored, native.HighBit = 8, 8, 7
    native.PixelData = raw.value  # the very bytes, with a defined length this time
    native["PixelData"].VR = "OB"
    native.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    metadata._MEMO.clear()
    inline = store.inspect(tmp_path / "native.dcm")
    first = json.loads(metadata.metadata_text(inline.dataset, "https://box/n", inline.elements))
    assert "InlineBinary" in first["7FE00010"]
    second = json.loads(metadata.metadata_text(rle.dataset, "https://box/r", rle.elements))
    assert second["7FE00010"] == {"vr": "OB", "BulkDataURI": "https://box/r/bulkdata/7FE00010"}


def test_a_uid_declared_with_another_vr_is_refused(tmp_path: Path) -> None:
    from pydicom import dcmread

    [source] = write_study(StudySpec(series=[(CT, "CT", 1)]), tmp_path / "src")
    ds = dcmread(source)
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    ds.add_new(0x00080018, "OB", (uid + "\x00" * (len(uid) % 2)).encode("ascii"))
    ds.save_as(tmp_path / "ob.dcm")
    with pytest.raises(InvalidInstance, match="SOPInstanceUID"):
        InstanceStore(tmp_path / "data").inspect(tmp_path / "ob.dcm")


def _known_start(source: Path) -> DataSetStart:
    """Where `source`'s data set begins: past its file meta group, whose length the group states."""
    data = source.read_bytes()
    (group_length,) = struct.unpack("<L", data[140:144])
    return DataSetStart(144 + group_length, str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID))


@pytest.mark.parametrize("rows", [64, 256])  # parsed whole / from the head of the file
@pytest.mark.parametrize(
    ("syntax", "plain"),
    [
        (ExplicitVRLittleEndian, True),
        (ImplicitVRLittleEndian, True),
        (DeflatedExplicitVRLittleEndian, True),  # (inflated by us, never by dcmread)
        (ExplicitVRBigEndian, False),
    ],
)
def test_a_known_data_set_start_reads_what_the_file_meta_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, plain: bool, rows: int
) -> None:
    """The receiver that wrote the file meta says where the data set begins: the same elements,
    values and UIDs as reading the meta, without it. A big endian data set is read as pydicom
    reads it, from the file meta; a deflated one is inflated by us, within bounds."""
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=rows, columns=rows), tmp_path / "src")
    ds = dcmread(source)
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:  # (pydicom converts to big endian only when forced)
        dcmwrite(source, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(source, enforce_file_format=True)
    start = _known_start(source)
    store = InstanceStore(tmp_path / "data")
    read = store.inspect(source)
    reads: list[object] = []
    monkeypatch.setattr(files, "dcmread", lambda *args, **kwargs: reads.append(args) or dcmread(*args, **kwargs))
    known = store.inspect(source, start)
    assert bool(reads) != plain  # (read by dcmread, from its own meta, only when not plain)
    assert known.elements == read.elements  # the raw elements: tags, VRs, values, positions in the file
    assert (known.study_uid, known.series_uid, known.sop_uid, known.sop_class_uid) == (
        read.study_uid,
        read.series_uid,
        read.sop_uid,
        read.sop_class_uid,
    )
    assert known.transfer_syntax_uid == read.transfer_syntax_uid == syntax
    assert known.dataset.file_meta.TransferSyntaxUID == syntax
    assert known.dataset.PatientName == ds.PatientName and known.dataset.PixelData == ds.PixelData


@pytest.mark.parametrize("offset", [150, 10**6])
def test_a_start_that_does_not_fit_the_file_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int
) -> None:
    """Inside an element of the meta group, or past the end: the file is read from its own meta."""
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=64, columns=64), tmp_path / "src")
    store = InstanceStore(tmp_path / "data")
    read = store.inspect(source)
    reads: list[object] = []
    monkeypatch.setattr(files, "dcmread", lambda *args, **kwargs: reads.append(args) or dcmread(*args, **kwargs))
    known = store.inspect(source, DataSetStart(offset, str(ExplicitVRLittleEndian)))
    assert len(reads) == 1 and known.elements == read.elements and known.sop_uid == read.sop_uid


def test_a_data_set_that_holds_file_meta_elements_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group 0002 where the data set begins (after the meta the receiver wrote): read as pydicom
    reads a file, they would join the meta, and could name the deflated syntax for a data set
    pydicom would then inflate whole. Never read: refused."""
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=64, columns=64), tmp_path / "src")
    data = source.read_bytes()
    start = _known_start(source)
    syntax = str(DeflatedExplicitVRLittleEndian).encode() + b"\x00"
    override = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(syntax)) + syntax
    source.write_bytes(data[: start.offset] + override + data[start.offset :])
    reads: list[object] = []
    monkeypatch.setattr(files, "dcmread", lambda *args, **kwargs: reads.append(args) or dcmread(*args, **kwargs))
    with pytest.raises(InvalidInstance, match="file meta elements"):
        InstanceStore(tmp_path / "data").inspect(source, start)
    assert reads == []


def test_a_deflated_data_set_is_inflated_from_where_pydicom_would_begin_it(tmp_path: Path) -> None:
    """Without a known start, the meta is read as pydicom reads it (every group 0002 element, not
    the stated group length): the bytes measured are the bytes parsed."""
    source = _deflated_ct(tmp_path)
    pixels = dcmread(source).PixelData
    data = source.read_bytes()
    (group_length,) = struct.unpack("<L", data[140:144])
    padding = struct.pack("<HH2sH", 0x0002, 0x0100, b"UI", 4) + b"1.2\x00"  # (PrivateInformationCreatorUID)
    end = 144 + group_length
    source.write_bytes(data[:end] + padding + data[end:])  # the group length now says less than there is
    inspected = InstanceStore(tmp_path / "data").inspect(source)
    assert inspected.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert inspected.dataset.PixelData == pixels


def test_a_deflated_data_set_cut_short_inside_is_refused(tmp_path: Path) -> None:
    """The deflate stream is whole, the data set in it is not: its Pixel Data says more bytes than
    it holds."""
    import zlib

    source = _deflated_ct(tmp_path)
    start = _known_start(source)
    data = source.read_bytes()
    plain = zlib.decompress(data[start.offset :], -zlib.MAX_WBITS)
    cut = plain[:-100]  # the last element's value loses 100 bytes; its length stays
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    source.write_bytes(data[: start.offset] + packer.compress(cut) + packer.flush())
    with pytest.raises(InvalidInstance, match="truncated"):
        InstanceStore(tmp_path / "data").inspect(source)


def _deflated_ct(tmp_path: Path, rows: int = 64) -> Path:
    [source] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=rows, columns=rows), tmp_path / "src")
    ds = dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(source, enforce_file_format=True)
    return source


def test_a_deflated_instance_is_read_whole(tmp_path: Path) -> None:
    """Its values cannot be read back from the file later (they are positions in the inflated
    stream): all are read now."""
    source = _deflated_ct(tmp_path, rows=256)
    inspected = InstanceStore(tmp_path / "data").inspect(source)
    assert inspected.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert all(getattr(element, "value", None) is not None for element in inspected.elements.values())
    assert inspected.dataset.PixelData == dcmread(source).PixelData


@pytest.mark.parametrize("large", [False, True])  # parsed from its head / by pydicom from the file
def test_a_deflated_data_set_that_inflates_too_far_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """Measured before pydicom reads it: pydicom would inflate it whole in memory, however large."""
    source = _deflated_ct(tmp_path)  # 8 KiB of pixels
    monkeypatch.setattr(files, "DEFLATED_MAX", 4096)
    if large:
        monkeypatch.setattr(files, "_READ_WHOLE", 1024)
    reads: list[object] = []
    monkeypatch.setattr(files, "dcmread", lambda *args, **kwargs: reads.append(args) or dcmread(*args, **kwargs))
    with pytest.raises(InvalidInstance, match="inflates beyond"):
        InstanceStore(tmp_path / "data").inspect(source)
    assert reads == []


def test_a_truncated_deflated_data_set_is_refused(tmp_path: Path) -> None:
    source = _deflated_ct(tmp_path)
    source.write_bytes(source.read_bytes()[:-200])
    with pytest.raises(InvalidInstance):
        InstanceStore(tmp_path / "data").inspect(source)
