"""Where each frame of an instance file lies, so WADO-RS can serve one frame without reading the rest.

PS3.18 §10.4 lets a reader ask for frames of a multi-frame instance; a tomosynthesis instance can
be 550 MB, so serving one frame must not load the whole Pixel Data. `index_frames` reads the
header with pydicom (stopping before the pixels), then walks the Pixel Data element itself: for
native data the frames are fixed-size slices; for encapsulated data (PS3.5 Annex A.4) it reads
only the 8-byte item headers and seeks past fragment contents, then groups fragments into frames
with the Extended Offset Table, the Basic Offset Table, one fragment per frame, or the codec's
start-of-frame marker. The result is a small `FrameIndex` the caller may cache as JSON.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MPEGTransferSyntaxes,
    RLELossless,
)

from drimbox.errors import DrimboxError, InvalidInstance, StoreError
from drimbox.store.files import write_atomically

Range = tuple[int, int]
"""(offset in the file, length in bytes)."""

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float and Double Float Pixel Data
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_CHUNK = 1 << 20


class FrameNotFound(DrimboxError):
    """The instance has no frame of that number (HTTP 404)."""


class InvalidFrameNumber(DrimboxError, ValueError):
    """A frame number or frame list is not made of positive integers (HTTP 400)."""


class FrameAccessUnsupported(DrimboxError):
    """Frames of this instance cannot be cut out of the file as it is stored (serve the whole
    instance or transcode instead)."""


@dataclass(frozen=True)
class FrameIndex:
    """The pixel description of an instance and the byte range(s) of each of its frames.

    `frames[i]` holds the ranges of frame i+1: one range for native data, one per fragment for
    encapsulated data. For BitsAllocated 1 the range covers the bytes the frame's bits touch;
    `read_frame` realigns them (frames are packed back to back, PS3.5 §8.1.1).
    """

    transfer_syntax_uid: str
    number_of_frames: int
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar_configuration: int
    photometric_interpretation: str
    encapsulated: bool
    frames: tuple[tuple[Range, ...], ...]
    pixel_tag: int = 0x7FE00010  # (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data are native only

    @property
    def frame_bits(self) -> int:
        """Bits one native frame occupies (YBR_FULL_422 stores two samples per pixel, PS3.3 C.7.6.3.1.2)."""
        return _frame_bits(asdict(self))

    def to_json(self) -> str:
        """A compact JSON text, so an index computed once can be kept beside the instance row."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> FrameIndex:
        """The inverse of `to_json`; a damaged cache entry is a StoreError, never a wrong index."""
        try:
            data = json.loads(text)
            frames = tuple(tuple((int(o), int(n)) for o, n in ranges) for ranges in data.pop("frames"))
            index = cls(frames=frames, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(f"stored frame index is malformed: {exc}") from exc
        if len(index.frames) != index.number_of_frames:
            raise StoreError("stored frame index is malformed: frame count mismatch")
        return index


def index_frames(path: Path) -> FrameIndex | None:
    """The frame index of the instance at `path`, or None when it has no pixel data."""
    return read_header(path)[1]


def read_header(path: Path, *, with_index: bool = True) -> tuple[Dataset, FrameIndex | None]:
    """The data set up to (not including) the pixel data, and the frame index (None without
    `with_index`, for a caller that has it cached).

    Costs the header plus one 8-byte read per fragment, whatever the size of the pixels.
    """
    try:
        with path.open("rb") as fp:
            header = _read_dataset(fp, path)
            if not with_index:
                return header, None
            return header, _index_pixels(fp.fileno(), header, fp.tell())
    except OSError as exc:
        raise StoreError(f"cannot read {path.name}: {exc.strerror or exc}") from exc


def cached_frame_index(path: Path, work: Path | None = None) -> FrameIndex | None:
    """The frame index of an instance file, kept beside it (`<sop>.frames.json`) once computed.

    A sidecar older than the file (the instance was received again since) is recomputed.
    """
    sidecar = path.with_suffix(".frames.json")
    try:
        if sidecar.stat().st_mtime_ns >= path.stat().st_mtime_ns:
            return FrameIndex.from_json(sidecar.read_bytes())
    except FileNotFoundError:
        pass
    index = index_frames(path)
    if index is not None:
        write_atomically(sidecar, index.to_json().encode("ascii"), work)
    return index


def read_frame(path: Path, index: FrameIndex, number: int) -> bytes:
    """The bytes of frame `number` (1-based) as stored: native pixels or the frame's codestream."""
    ranges = frame_ranges(index, number)
    with path.open("rb", buffering=0) as fp:
        data = b"".join(_read_exact(fp.fileno(), offset, length) for offset, length in ranges)
    if index.bits_allocated == 1 and not index.encapsulated:
        return _realign_bits(data, (number - 1) * index.frame_bits % 8, index.frame_bits)
    return data


def iter_frame_chunks(path: Path, index: FrameIndex, number: int, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """Frame `number` in chunks of at most `chunk_size` bytes, for frames too big to hold.

    The number is checked now, before the first chunk, so a route can still answer 404.
    """
    ranges = frame_ranges(index, number)
    if index.bits_allocated == 1 and not index.encapsulated:
        return iter([read_frame(path, index, number)])  # bit-packed frames are small
    return _iter_ranges(path, ranges, chunk_size)


def frame_ranges(index: FrameIndex, number: int) -> tuple[Range, ...]:
    """The byte ranges of frame `number`, or FrameNotFound / InvalidFrameNumber."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidFrameNumber(f"frame number {number!r} is not an integer")
    if not 1 <= number <= index.number_of_frames:
        raise FrameNotFound(f"frame {number} does not exist: the instance has {index.number_of_frames} frame(s)")
    return index.frames[number - 1]


def parse_frame_numbers(text: str) -> tuple[int, ...]:
    """The frame list of a WADO-RS frames URL (PS3.18 §10.4.1.1.4: `1,3,5`), in the order given."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isascii() and part.isdigit() and len(part) <= 9 for part in parts):
        raise InvalidFrameNumber(f"frame list {text[:80]!r} is not a comma-separated list of frame numbers")
    numbers = tuple(int(part) for part in parts)
    if 0 in numbers:
        raise FrameNotFound("frame 0 does not exist: frames are numbered from 1")
    return numbers


def _read_dataset(fp: Any, path: Path) -> Dataset:
    try:
        header = dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise InvalidInstance(f"{path.name} is not a readable DICOM file: {exc}") from exc
    if not header.file_meta.get("TransferSyntaxUID"):
        raise InvalidInstance(f"{path.name} has no Transfer Syntax UID in its file meta information")
    return header


def _index_pixels(fd: int, header: Dataset, start: int) -> FrameIndex | None:
    """Parse the pixel data element header at `start` (where pydicom stopped) and index it."""
    ts = UID(header.file_meta.TransferSyntaxUID)
    if ts.is_transfer_syntax and ts.is_deflated:  # (`start` is a place in the inflated stream)
        raise FrameAccessUnsupported(f"{ts} is deflated: frame offsets in the file do not exist")
    head = os.pread(fd, 12, start)
    if len(head) < 8:
        if "Rows" in header and "BitsAllocated" in header:
            raise InvalidInstance("the file ends before its Pixel Data (truncated)")
        return None
    _refuse_unaddressable(ts, header)
    group, element = struct.unpack("<HH", head[:4])
    if (group << 16 | element) not in _PIXEL_TAGS:
        raise InvalidInstance(f"unexpected element ({group:04X},{element:04X}) where Pixel Data was expected")
    is_implicit, _ = header.original_encoding
    if is_implicit:
        value_at, length = start + 8, struct.unpack("<I", head[4:8])[0]
    elif head[4:6] in _LONG_VRS and len(head) == 12:
        value_at, length = start + 12, struct.unpack("<I", head[8:12])[0]
    else:
        value_at, length = start + 8, struct.unpack("<H", head[6:8])[0]
    size = os.fstat(fd).st_size
    geometry = _geometry(header, ts, encapsulated=length == _UNDEFINED)
    if length == _UNDEFINED:
        frames = _encapsulated_frames(fd, header, ts, value_at, size, geometry["number_of_frames"])
    else:
        frames = _native_frames(geometry, value_at, length, size)
    return FrameIndex(frames=frames, pixel_tag=group << 16 | element, **geometry)


def _refuse_unaddressable(ts: UID, header: Dataset) -> None:
    if not header.original_encoding[1]:
        raise FrameAccessUnsupported(f"{ts} is big endian (retired): frames are served only after transcoding")
    if ts in MPEGTransferSyntaxes:
        raise FrameAccessUnsupported(f"{ts} is a video stream: its frames are not separately stored")


def _geometry(header: Dataset, ts: UID, encapsulated: bool) -> dict[str, Any]:
    try:
        frames = int(header.get("NumberOfFrames") or 1)
        geometry: dict[str, Any] = {
            "transfer_syntax_uid": str(ts),
            "number_of_frames": frames,
            "rows": int(header.Rows),
            "columns": int(header.Columns),
            "samples_per_pixel": int(header.get("SamplesPerPixel") or 1),
            "bits_allocated": int(header.BitsAllocated),
            "bits_stored": int(header.get("BitsStored") or header.BitsAllocated),
            "pixel_representation": int(header.get("PixelRepresentation") or 0),
            "planar_configuration": int(header.get("PlanarConfiguration") or 0),
            "photometric_interpretation": str(header.get("PhotometricInterpretation") or "MONOCHROME2"),
            "encapsulated": encapsulated,
        }
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInstance(f"the image pixel description is incomplete or invalid: {exc}") from exc
    if min(frames, geometry["rows"], geometry["columns"], geometry["bits_allocated"]) < 1:
        raise InvalidInstance("Number of Frames, Rows, Columns and Bits Allocated must be positive")
    return geometry


def _native_frames(geometry: dict[str, Any], value_at: int, length: int, size: int) -> tuple[tuple[Range, ...], ...]:
    """Fixed-size slices; for BitsAllocated 1 each slice covers the bytes the frame's bits touch."""
    bits, count = _frame_bits(geometry), geometry["number_of_frames"]
    needed = -(-bits * count // 8)
    if length < needed:
        raise InvalidInstance(f"Pixel Data holds {length} bytes but {count} frame(s) need {needed}")
    if value_at + needed > size:
        raise InvalidInstance(f"the file ends {value_at + needed - size} bytes before its last frame (truncated)")
    ranges = []
    for i in range(count):
        first, end = i * bits // 8, -(-(i + 1) * bits // 8)
        ranges.append(((value_at + first, end - first),))
    return tuple(ranges)


def _frame_bits(geometry: dict[str, Any]) -> int:
    bits = int(geometry["rows"] * geometry["columns"] * geometry["samples_per_pixel"] * geometry["bits_allocated"])
    return bits * 2 // 3 if geometry["photometric_interpretation"] == "YBR_FULL_422" else bits


def _encapsulated_frames(
    fd: int, header: Dataset, ts: UID, value_at: int, size: int, count: int
) -> tuple[tuple[Range, ...], ...]:
    bot, fragments = _scan_items(fd, value_at, size)
    if not fragments:
        raise InvalidInstance("encapsulated Pixel Data has no fragment")
    base = fragments[0][0] - 8  # offsets count from the first fragment's item tag (PS3.5 A.4)
    eot = _extended_table(header)
    strategies: list[Callable[[], list[list[int]] | None]] = [
        lambda: _group_by_offsets(fragments, base, eot, count) if eot else None,
        lambda: _group_by_offsets(fragments, base, _unpack(bot, "<u4"), count) if bot else None,
        lambda: [[i] for i in range(count)] if len(fragments) == count else None,
        lambda: [list(range(len(fragments)))] if count == 1 else None,
        lambda: _group_by_markers(fd, fragments, ts, count),
    ]
    for strategy in strategies:
        groups = strategy()
        if groups is not None:
            return tuple(tuple(fragments[i] for i in group) for group in groups)
    raise FrameAccessUnsupported(
        f"cannot tell which of the {len(fragments)} fragments make each of the {count} frames "
        "(no usable offset table and no recognisable frame start)"
    )


def _scan_items(fd: int, value_at: int, size: int) -> tuple[bytes, list[Range]]:
    """The Basic Offset Table and the (value offset, length) of each fragment, from item headers only."""
    bot: bytes | None = None
    fragments: list[Range] = []
    position = value_at
    while True:
        head = os.pread(fd, 8, position)
        if len(head) < 8:
            raise InvalidInstance("encapsulated Pixel Data ends without its sequence delimiter (truncated)")
        group, element, length = struct.unpack("<HHI", head)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return bot or b"", fragments
        if tag != _ITEM or length == _UNDEFINED:
            raise InvalidInstance(f"unexpected ({group:04X},{element:04X}) inside encapsulated Pixel Data")
        if position + 8 + length > size:
            raise InvalidInstance("a Pixel Data fragment runs past the end of the file (truncated)")
        if bot is None:
            bot = os.pread(fd, length, position + 8) if length else b""
        else:
            fragments.append((position + 8, length))
        position += 8 + length


def _extended_table(header: Dataset) -> list[int] | None:
    """Extended Offset Table (7FE0,0001), PS3.3 C.7.6.3.1.8; its Lengths (7FE0,0002) are the items' own."""
    offsets = header.get((0x7FE0, 0x0001))
    return _unpack(offsets.value, "<u8") if offsets is not None and offsets.value else None


def _unpack(data: bytes, dtype: str) -> list[int]:
    width = np.dtype(dtype).itemsize
    usable = len(data) - len(data) % width
    return [int(v) for v in np.frombuffer(data[:usable], dtype=dtype)]


def _group_by_offsets(fragments: list[Range], base: int, offsets: list[int], count: int) -> list[list[int]] | None:
    """Fragments per frame from an offset table; None when the table contradicts the items."""
    where = {offset - 8 - base: i for i, (offset, _) in enumerate(fragments)}
    if len(offsets) != count or any(offset not in where for offset in offsets):
        return None
    firsts = [where[offset] for offset in offsets] + [len(fragments)]
    if firsts[0] != 0 or any(a >= b for a, b in itertools.pairwise(firsts)):
        return None
    return [list(range(a, b)) for a, b in itertools.pairwise(firsts)]


def _group_by_markers(fd: int, fragments: list[Range], ts: UID, count: int) -> list[list[int]] | None:
    """Without a table, a frame starts at each fragment that opens with its codec's start marker."""
    is_start = _frame_start_test(ts)
    if is_start is None:
        return None
    starts = [i for i, (offset, _) in enumerate(fragments) if is_start(os.pread(fd, 8, offset))]
    if len(starts) != count or not starts or starts[0] != 0:
        return None
    bounds = [*starts, len(fragments)]
    return [list(range(a, b)) for a, b in itertools.pairwise(bounds)]


def _frame_start_test(ts: UID) -> Callable[[bytes], bool] | None:
    if ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        return lambda head: head[:2] == b"\xff\xd8"  # SOI
    if ts in JPEG2000TransferSyntaxes:
        return lambda head: head[:4] == b"\xff\x4f\xff\x51" or head == b"\x00\x00\x00\x0cjP  "  # SOC+SIZ, JP2
    if ts == RLELossless:  # PS3.5 G.5: segment count 1..15, first segment at 64
        return lambda head: len(head) == 8 and 1 <= struct.unpack("<I", head[:4])[0] <= 15 and head[4:8] == b"@\0\0\0"
    return None


def _read_exact(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise InvalidInstance("the file is shorter than its frame index says (truncated or replaced)")
    return data


def _iter_ranges(path: Path, ranges: Sequence[Range], chunk_size: int) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as fp:
        for offset, length in ranges:
            for start in range(offset, offset + length, chunk_size):
                yield _read_exact(fp.fileno(), start, min(chunk_size, offset + length - start))


def _realign_bits(data: bytes, shift: int, bits: int) -> bytes:
    """Frame bits starting `shift` bits into `data`, repacked from bit 0 (DICOM packs LSB first)."""
    if shift == 0 and bits % 8 == 0:
        return data
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[shift : shift + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()
