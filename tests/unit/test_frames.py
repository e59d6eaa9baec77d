"""Frame index and frame reads: byte ranges checked against pydicom's own decoding of each frame."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from drimbox.errors import InvalidInstance, StoreError
from drimbox.store.frames import (
    FrameAccessUnsupported,
    FrameIndex,
    FrameNotFound,
    InvalidFrameNumber,
    index_frames,
    iter_frame_chunks,
    parse_frame_numbers,
    read_frame,
)

COMPRESSED = [RLELossless, JPEGLSLossless, JPEG2000Lossless]


def base_dataset(ts: str = ExplicitVRLittleEndian) -> Dataset:
    """A secondary capture header with no pixels yet."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Frames", "P1", "OT"
    return ds


def ramp_frames(
    frames: int = 6, rows: int = 48, columns: int = 64, stored: int = 12, signed: bool = False
) -> np.ndarray:
    """Distinct frames of noisy data within `stored` bits, so a frame mix-up cannot pass."""
    rng = np.random.default_rng(frames * 1000 + rows)
    low, high = (-(1 << (stored - 1)), 1 << (stored - 1)) if signed else (0, 1 << stored)
    arr = rng.integers(low, high, size=(frames, rows, columns))
    return arr.astype(np.int16 if signed else np.uint16)


def make_instance(
    path: Path,
    arr: np.ndarray,
    ts: str = ExplicitVRLittleEndian,
    *,
    photometric: str = "MONOCHROME2",
    stored: int = 12,
    fragments_per_frame: int = 1,
    has_bot: bool = True,
    extended: bool = False,
    **elements: object,
) -> Path:
    """Write `arr` as an instance in `ts`, encapsulated as asked."""
    ds = base_dataset()
    ds.set_pixel_data(arr, photometric, stored, generate_instance_uid=False)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if UID(ts) in COMPRESSED:
        ds.compress(ts)
        if fragments_per_frame != 1 or not has_bot or extended:
            frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
            if extended:
                ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
            else:
                ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
            ds["PixelData"].is_undefined_length = True
    elif UID(ts) == ExplicitVRBigEndian:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = UID(ts)
    else:
        ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)
    return path


def encoded_frames(path: Path) -> list[bytes]:
    ds = dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_frames_are_the_stored_bytes(tmp_path: Path, ts: str) -> None:
    arr = ramp_frames()
    path = make_instance(tmp_path / "native.dcm", arr, ts)
    index = index_frames(path)
    assert index is not None and not index.encapsulated
    assert (index.number_of_frames, index.rows, index.columns, index.bits_allocated) == (6, 48, 64, 16)
    for number in range(1, 7):
        data = read_frame(path, index, number)
        assert data == arr[number - 1].tobytes() == pixel_array(path, index=number - 1).tobytes()


@pytest.mark.parametrize("ts", COMPRESSED)
@pytest.mark.parametrize(
    "layout",
    [
        {"fragments_per_frame": 1},
        {"fragments_per_frame": 2},
        {"fragments_per_frame": 2, "has_bot": False},
        {"fragments_per_frame": 1, "has_bot": False},
        {"extended": True},
    ],
    ids=["bot", "bot-2-fragments", "no-bot-2-fragments", "no-bot", "extended"],
)
def test_encapsulated_frames_are_the_codestreams(tmp_path: Path, ts: str, layout: dict[str, object]) -> None:
    arr = ramp_frames()
    path = make_instance(tmp_path / "enc.dcm", arr, ts, **layout)  # type: ignore[arg-type]
    index = index_frames(path)
    assert index is not None and index.encapsulated and index.transfer_syntax_uid == ts
    assert all(len(ranges) == layout.get("fragments_per_frame", 1) for ranges in index.frames)
    expected = encoded_frames(make_instance(tmp_path / "reference.dcm", arr, ts))  # pydicom splits these itself
    options = as_pixel_options(dcmread(path, stop_before_pixels=True), number_of_frames=1)
    options.pop("extended_offsets", None)
    for number in range(1, 7):
        data = read_frame(path, index, number)
        assert data.rstrip(b"\0") == expected[number - 1].rstrip(b"\0")
        decoded, _ = get_decoder(ts).as_array(encapsulate([data]), **options)
        assert np.array_equal(decoded, arr[number - 1])


@pytest.mark.parametrize("has_bot", [True, False])
def test_fragments_without_markers_need_the_offset_table(tmp_path: Path, has_bot: bool) -> None:
    frames = [bytes([n]) * 20 for n in range(3)]  # no codec start marker: only the table can group them
    ds = base_dataset(JPEG2000Lossless)
    ds.set_pixel_data(ramp_frames(frames=3), "MONOCHROME2", 12, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=has_bot)
    ds["PixelData"].is_undefined_length, ds["PixelData"].VR = True, "OB"
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    if not has_bot:
        with pytest.raises(FrameAccessUnsupported, match="cannot tell which of the 6 fragments"):
            index_frames(tmp_path / "odd.dcm")
        return
    index = index_frames(tmp_path / "odd.dcm")
    assert index is not None
    assert [read_frame(tmp_path / "odd.dcm", index, n) for n in (1, 2, 3)] == frames


def make_bit_packed(path: Path) -> np.ndarray:
    """3 frames of 5x5 1-bit pixels: 25 bits a frame, so frames 2 and 3 start mid-byte."""
    arr = np.random.default_rng(1).integers(0, 2, size=(3, 5, 5), dtype=np.uint8)
    ds = base_dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = 5, 5, 3, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pack_bits(arr)
    ds.save_as(path, enforce_file_format=True)
    return arr


def test_bit_packed_frames_are_realigned(tmp_path: Path) -> None:
    path = tmp_path / "bits.dcm"
    arr = make_bit_packed(path)
    index = index_frames(path)
    assert index is not None
    for number in range(1, 4):
        assert read_frame(path, index, number) == pack_bits(arr[number - 1])
        assert b"".join(iter_frame_chunks(path, index, number)) == pack_bits(arr[number - 1])
        assert np.array_equal(pixel_array(path, index=number - 1), arr[number - 1])


def test_chunks_join_to_the_frame(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "rle.dcm", ramp_frames(), RLELossless, fragments_per_frame=2)
    index = index_frames(path)
    assert index is not None
    chunks = list(iter_frame_chunks(path, index, 4, chunk_size=100))
    assert max(len(chunk) for chunk in chunks) <= 100
    assert b"".join(chunks) == read_frame(path, index, 4)


def test_bad_frame_numbers(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "native.dcm", ramp_frames())
    index = index_frames(path)
    assert index is not None
    for number in (0, 7, -1):
        with pytest.raises(FrameNotFound, match=f"frame {number} does not exist"):
            read_frame(path, index, number)
    for wrong in ("1", 1.5, True, None):
        with pytest.raises(InvalidFrameNumber, match="not an integer"):
            read_frame(path, index, wrong)  # type: ignore[arg-type]
    with pytest.raises(FrameNotFound):
        iter_frame_chunks(path, index, 7)  # refused before the first chunk


def test_parse_frame_numbers() -> None:
    assert parse_frame_numbers("3,1, 2") == (3, 1, 2)
    for wrong in ("", "1,,2", "a", "1.5", "-1", "٣"):
        with pytest.raises(InvalidFrameNumber):
            parse_frame_numbers(wrong)
    with pytest.raises(FrameNotFound):
        parse_frame_numbers("0")


def test_index_json_round_trip(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "j2k.dcm", ramp_frames(), JPEG2000Lossless, fragments_per_frame=2)
    index = index_frames(path)
    assert index is not None
    again = FrameIndex.from_json(index.to_json())
    assert again == index
    assert read_frame(path, again, 2) == read_frame(path, index, 2)
    for broken in ("{", '{"frames": []}', index.to_json().replace('"number_of_frames":6', '"number_of_frames":5')):
        with pytest.raises(StoreError, match="malformed"):
            FrameIndex.from_json(broken)


def test_no_pixel_data_gives_none(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert index_frames(tmp_path / "sr.dcm") is None


def test_big_endian_frames_are_refused(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "be.dcm", ramp_frames(), ExplicitVRBigEndian)
    with pytest.raises(FrameAccessUnsupported, match="big endian"):
        index_frames(path)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_pixel_data_is_refused(tmp_path: Path, ts: str, cut: float) -> None:
    path = make_instance(tmp_path / "cut.dcm", ramp_frames(), ts)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InvalidInstance, match="truncated"):
        index_frames(path)


def test_file_truncated_before_pixel_data(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "cut.dcm", ramp_frames())
    index = index_frames(path)
    assert index is not None
    first = index.frames[0][0][0]
    path.write_bytes(path.read_bytes()[: first - 12])
    with pytest.raises(InvalidInstance, match="truncated"):
        index_frames(path)


def test_file_shrunk_after_indexing(tmp_path: Path) -> None:
    path = make_instance(tmp_path / "native.dcm", ramp_frames())
    index = index_frames(path)
    assert index is not None
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InvalidInstance, match="shorter than its frame index"):
        read_frame(path, index, 6)


def test_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"hello")
    with pytest.raises(InvalidInstance, match="not a readable DICOM file"):
        index_frames(tmp_path / "x.dcm")


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def _header_only(path: Path, ts: str, frames: int, rows: int, columns: int) -> int:
    """Write a header whose Pixel Data element is added by hand; return where its value starts."""
    ds = base_dataset(ts)
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = rows, columns, frames, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("encapsulated", [False, True])
def test_big_sparse_instance_is_indexed_from_headers_only(tmp_path: Path, encapsulated: bool) -> None:
    """A 280 MB tomosynthesis-sized instance (sparse on disk) is indexed reading a few KiB."""
    path = tmp_path / "big.dcm"
    frames, rows, columns = 30, 2457, 1890
    frame_size = rows * columns * 2
    ts = JPEG2000Lossless if encapsulated else ExplicitVRLittleEndian
    start = _header_only(path, ts, frames, rows, columns)
    with path.open("r+b") as fp:
        fp.seek(start)
        if not encapsulated:
            fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame_size * frames))
            fp.truncate(fp.tell() + frame_size * frames)
        else:
            fp.write(
                struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
            )
            for _ in range(frames):
                fp.write(struct.pack("<HHI", 0xFFFE, 0xE000, frame_size // 2))
                fp.seek(frame_size // 2, os.SEEK_CUR)
            fp.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    assert path.stat().st_size > 130_000_000
    before, began = _bytes_read(), time.perf_counter()
    index = index_frames(path)
    elapsed, read = time.perf_counter() - began, _bytes_read() - before
    assert index is not None and index.number_of_frames == frames
    assert read < 256 * 1024, f"read {read} bytes to index"
    assert elapsed < 1.0
    value = start + 12
    if encapsulated:
        expected = [((value + 8 + i * (8 + frame_size // 2) + 8, frame_size // 2),) for i in range(frames)]
    else:
        expected = [((value + i * frame_size, frame_size),) for i in range(frames)]
    assert list(index.frames) == expected
    assert read_frame(path, index, frames) == b"\0" * (frame_size // (2 if encapsulated else 1))
