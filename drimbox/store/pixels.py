"""Pixel work behind WADO-RS: transcoding an instance (PS3.18 §8.7.3) and rendering a frame (§8.3.5).

Everything goes frame by frame through `drimbox.store.frames`, so memory follows the size of one
frame, not of the instance: a 550 MB tomosynthesis instance is decoded one frame at a time, and
compressed frames wait in a spool file (on disk beyond a few MiB) until the offset table can be
written ahead of them. Codecs are pydicom's plugins (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls)
and Pillow for JPEG baseline and the rendered images; nothing here encodes pixels by hand.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import tempfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import ENCODING_PROFILES, get_encoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from drimbox.errors import DrimboxError
from drimbox.store.frames import FrameAccessUnsupported, FrameIndex, read_frame, read_header

Array = np.ndarray[Any, Any]
Window = tuple[float, float] | tuple[float, float, str]

NATIVE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
LOSSLESS_TARGETS = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
LOSSY_TARGETS = (JPEGBaseline8Bit,)
_NATIVE_SOURCES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
_NO_JPEG_LOSSLESS = (
    "no JPEG Lossless (ISO 10918-1 process 14) encoder is installed: pydicom 3 has none, "
    "pylibjpeg-libjpeg only decodes, pyjpegls writes JPEG-LS (ISO 14495-1) and Pillow only baseline JPEG"
)
_NOT_PRODUCED = {JPEGLosslessSV1: _NO_JPEG_LOSSLESS, JPEGLossless: _NO_JPEG_LOSSLESS}
_SPOOL_IN_MEMORY = 8 << 20
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_ENCAPSULATED_PIXEL_DATA = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
_CODEC_ERRORS = (RuntimeError, ValueError, NotImplementedError, AttributeError, KeyError, OSError)


class RenderError(DrimboxError):
    """A frame cannot be rendered as asked (unsupported photometric, media type, window...)."""


class TranscodeError(DrimboxError):
    """An instance cannot be produced in the asked transfer syntax; the message says why."""


def can_transcode(
    source_ts: str,
    target_ts: str,
    *,
    photometric_interpretation: str = "MONOCHROME2",
    samples_per_pixel: int = 1,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    pixel_representation: int = 0,
    has_pixels: bool = True,
    allow_lossy: bool = False,
) -> bool:
    """True when `transcode` can turn an instance with these pixels from `source_ts` into `target_ts`."""
    traits = (photometric_interpretation, samples_per_pixel, bits_allocated, bits_stored, pixel_representation)
    return _refusal(UID(source_ts), UID(target_ts), traits if has_pixels else None, allow_lossy) is None


def can_transcode_frames(
    index: FrameIndex | None, source_ts: str, target_ts: str, *, allow_lossy: bool = False
) -> bool:
    """`can_transcode` for an instance described by its frame index (None: no pixel data)."""
    if index is None:
        return can_transcode(source_ts, target_ts, has_pixels=False)
    return can_transcode(
        source_ts,
        target_ts,
        photometric_interpretation=index.photometric_interpretation,
        samples_per_pixel=index.samples_per_pixel,
        bits_allocated=index.bits_allocated,
        bits_stored=index.bits_stored,
        pixel_representation=index.pixel_representation,
        allow_lossy=allow_lossy,
    )


def transcode(
    path: Path,
    target_ts: str,
    out: BinaryIO,
    *,
    allow_lossy: bool = False,
    quality: int = 90,
    spool_dir: Path | None = None,
) -> None:
    """Write the instance at `path` to `out` as a complete Part 10 file in `target_ts`.

    Elements after the Pixel Data (trailing padding, digital signatures, which the new encoding
    would invalidate anyway) are dropped. `out` may be left half-written on error: write to a
    temporary file, not straight to a client. Lossy targets need `allow_lossy`; they keep the
    SOP Instance UID and set Lossy Image Compression (PS3.3 C.7.6.1.1.5).
    """
    target = UID(target_ts)
    if not 1 <= quality <= 100:
        raise TranscodeError(f"quality {quality} is outside 1..100")
    header, index = _open_source(path)
    source = UID(header.file_meta.TransferSyntaxUID)
    if source == target:
        with path.open("rb") as fp:
            shutil.copyfileobj(fp, out, 1 << 20)
        return
    traits = _traits(header) if index is not None or "Rows" in header else None
    reason = _refusal(source, target, traits, allow_lossy)
    if reason is not None:
        raise TranscodeError(f"cannot transcode {source.name} to {target.name}: {reason}")
    header.file_meta.TransferSyntaxUID = target
    for tag in (0x7FE00001, 0x7FE00002):
        header.pop(tag, None)
    if traits is None:
        _write_dataset(out, header)
    elif target in NATIVE_TARGETS and index is not None and not index.encapsulated:  # an index means little endian
        _copy_native(path, index, header, out)
    elif target in NATIVE_TARGETS:
        _write_native(_decoded_frames(path, header, index, raw=True), header, out)
    else:
        _write_encapsulated(path, header, index, target, out, quality, spool_dir)


def render(
    path: Path,
    frame_index: FrameIndex | None,
    frame: int,
    media_type: str = "image/jpeg",
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame as an 8-bit JPEG or PNG for display (PS3.18 §8.3.5).

    Grayscale: Modality LUT (rescale, per-frame functional groups first), then the VOI window
    asked, else the instance's own window or VOI LUT, else the frame's min/max; MONOCHROME1 is
    inverted. Colour: YBR and palette become RGB, and `window` is ignored. `viewport` (width,
    height) is fitted keeping the aspect ratio, scaling up or down.
    """
    if media_type not in ("image/jpeg", "image/png"):
        raise RenderError(f"rendered media type {media_type!r} is not supported (image/jpeg, image/png)")
    if not 1 <= quality <= 100:
        raise RenderError(f"quality {quality} is outside 1..100")
    header, index = _open_rendered(path, frame_index)
    pixels, photometric = _decode(read_frame(path, index, frame), header, index, raw=False, error=RenderError)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = _grayscale(pixels, header, frame, window, invert=photometric == "MONOCHROME1")
    else:
        image = _colour(pixels, header, photometric, index.bits_stored)
    return _encode_image(Image.fromarray(np.ascontiguousarray(image)), media_type, viewport, quality)


def thumbnail(
    path: Path,
    frame_index: FrameIndex | None = None,
    media_type: str = "image/jpeg",
    viewport: tuple[int, int] = (128, 128),
    quality: int = 90,
) -> bytes:
    """The middle frame (the first of a single frame) rendered into a small viewport (PS3.18 §9.5)."""
    _, index = _open_rendered(path, frame_index)
    return render(path, index, (index.number_of_frames + 1) // 2, media_type, None, viewport, quality)


def _refusal(source: UID, target: UID, traits: tuple[str, int, int, int | None, int] | None, lossy: bool) -> str | None:
    """Why `transcode` would refuse, or None when it can do it."""
    if source == target:
        return None
    if target not in NATIVE_TARGETS + LOSSLESS_TARGETS + LOSSY_TARGETS:
        return _NOT_PRODUCED.get(target, f"{target.name} is not a transfer syntax drimbox produces")
    if traits is None:
        return None if target in NATIVE_TARGETS else "the instance has no pixel data to compress"
    if not _decodable(source):
        return f"no decoder is installed for {source.name}"
    photometric, samples, allocated, stored, representation = traits
    if target in NATIVE_TARGETS:
        little = source not in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
        return None if little or allocated != 1 else "bit-packed pixels are only copied between little endian syntaxes"
    if target in LOSSY_TARGETS and not lossy:
        return f"{target.name} is lossy and lossy transcoding was not allowed"
    photometric = _decoded_photometric(photometric, raw=target not in LOSSY_TARGETS)
    if target != JPEGBaseline8Bit and not (encoder := get_encoder(target)).is_available:
        return f"the {target.name} encoder is missing: {'; '.join(encoder.missing_dependencies)}"
    for pi, spp, representations, allocations, stored_range in ENCODING_PROFILES[target]:
        fits = representation in representations and allocated in allocations and (stored or allocated) in stored_range
        if fits and (pi, spp) == (photometric, samples):
            return None
    return f"{target.name} cannot hold {photometric} {samples}x{stored or allocated}-bit pixels (PS3.5 §8.2)"


def _decodable(source: UID) -> bool:
    if source in _NATIVE_SOURCES:
        return True
    try:
        return bool(get_decoder(source).is_available)
    except NotImplementedError:
        return False


def _decoded_photometric(photometric: str, raw: bool) -> str:
    """What the decoder hands back: JPEG 2000 undoes its colour transform, YBR_FULL_422 is
    upsampled, and without `raw` YBR becomes RGB."""
    if photometric in ("YBR_RCT", "YBR_ICT"):
        return "RGB"
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        return "YBR_FULL" if raw else "RGB"
    return photometric


def _traits(header: Dataset) -> tuple[str, int, int, int | None, int]:
    return (
        str(header.get("PhotometricInterpretation") or "MONOCHROME2"),
        int(header.get("SamplesPerPixel") or 1),
        int(header.get("BitsAllocated") or 8),
        int(header.get("BitsStored") or 0) or None,
        int(header.get("PixelRepresentation") or 0),
    )


def _open_source(path: Path) -> tuple[Dataset, FrameIndex | None]:
    """Header and index; retired big endian and deflated files fall back to pydicom's whole-file read."""
    try:
        return read_header(path)
    except FrameAccessUnsupported:
        try:
            return dcmread(path, stop_before_pixels=True), None
        except (InvalidDicomError, EOFError, ValueError) as exc:
            raise TranscodeError(f"{path.name} is not readable: {exc}") from exc


def _open_rendered(path: Path, frame_index: FrameIndex | None) -> tuple[Dataset, FrameIndex]:
    """Header and index; a cached index is checked against the header, not recomputed."""
    try:
        header, index = read_header(path, with_index=frame_index is None)
    except FrameAccessUnsupported as exc:
        raise RenderError(f"cannot render a single frame: {exc}") from exc
    index = index or frame_index
    if index is None:
        raise RenderError("the instance has no pixel data to render")
    if index.pixel_tag != 0x7FE00010:
        raise RenderError("Float Pixel Data (parametric maps) is not rendered")
    if (str(header.file_meta.TransferSyntaxUID), int(header.get("NumberOfFrames") or 1)) != (
        index.transfer_syntax_uid,
        index.number_of_frames,
    ):
        raise RenderError("the cached frame index does not match the file")
    return header, index


# GDCM's JPEG codec aborts the whole process (an uncaught C++ exception) on layouts JPEG cannot
# hold; such a file is refused before any codec sees it.
_JPEG_FAMILY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                          "1.2.840.10008.1.2.4.70"})  # fmt: skip


def _check_codec_input(ts: str, header: Dataset, error: type[DrimboxError]) -> None:
    """Refuse pixel layouts a codec would crash on rather than decode (PS3.5 §8.2.1)."""
    if ts not in _JPEG_FAMILY:
        return
    try:
        allocated, samples = int(header.get("BitsAllocated") or 8), int(header.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise error(f"unusable pixel description: {exc}") from exc
    if allocated not in (8, 16) or samples not in (1, 3):
        raise error(f"a JPEG frame cannot hold {samples} samples of {allocated} bits (PS3.5 §8.2.1)")


def _decode(
    frame: bytes, header: Dataset, index: FrameIndex, raw: bool, error: type[DrimboxError]
) -> tuple[Array, str]:
    """One frame as an array and the photometric interpretation it now has."""
    ts = UID(index.transfer_syntax_uid)
    _check_codec_input(ts, header, error)
    try:
        source = encapsulate([frame]) if index.encapsulated else frame
        pixels, properties = get_decoder(ts).as_array(source, raw=raw, **_decode_options(header, index))
    except _CODEC_ERRORS as exc:
        raise error(f"cannot decode a {ts.name} frame: {exc}") from exc
    return pixels, str(properties.get("photometric_interpretation", index.photometric_interpretation))


def _decode_options(header: Dataset, index: FrameIndex) -> dict[str, Any]:
    """pydicom's decoding options for one frame cut out by `read_frame`."""
    options = as_pixel_options(header, number_of_frames=1, transfer_syntax_uid=UID(index.transfer_syntax_uid))
    options.pop("extended_offsets", None)
    options["pixel_keyword"] = "PixelData"
    return options


def _decoded_frames(
    path: Path, header: Dataset, index: FrameIndex | None, raw: bool
) -> Iterator[tuple[Array, dict[str, Any]]]:
    """Frames one at a time with their image pixel properties."""
    _check_codec_input(str(index.transfer_syntax_uid if index else header.file_meta.TransferSyntaxUID), header,
                       TranscodeError)  # fmt: skip
    if index is None:  # big endian or deflated: pydicom reads the whole file
        try:
            dataset = dcmread(path)
            for pixels, properties in get_decoder(dataset.file_meta.TransferSyntaxUID).iter_array(dataset, raw=raw):
                yield pixels, _upsampled(properties)
        except (*_CODEC_ERRORS, InvalidDicomError, EOFError) as exc:
            raise TranscodeError(f"cannot decode {path.name}: {exc}") from exc
        return
    if index.pixel_tag != 0x7FE00010:
        raise TranscodeError("Float Pixel Data is only copied between little endian syntaxes, never re-encoded")
    ts = UID(index.transfer_syntax_uid)
    options = _decode_options(header, index)
    decoder = get_decoder(ts)
    for number in range(1, index.number_of_frames + 1):
        frame = read_frame(path, index, number)
        try:
            pixels, properties = decoder.as_array(
                encapsulate([frame]) if index.encapsulated else frame, raw=raw, **options
            )
        except _CODEC_ERRORS as exc:
            raise TranscodeError(f"cannot decode frame {number} ({ts.name}): {exc}") from exc
        yield pixels, _upsampled(properties)


def _upsampled(properties: dict[str, Any]) -> dict[str, Any]:
    """Decoded arrays are never subsampled: YBR_FULL_422 comes out as YBR_FULL (PS3.3 C.7.6.3.1.2)."""
    if properties.get("photometric_interpretation") == "YBR_FULL_422":
        return {**properties, "photometric_interpretation": "YBR_FULL"}
    return properties


def _write_dataset(out: BinaryIO, header: Dataset) -> None:
    try:
        dcmwrite(out, header, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise TranscodeError(f"cannot write the data set in {header.file_meta.TransferSyntaxUID}: {exc}") from exc


def _pixel_element(header: Dataset, length: int, tag: int = 0x7FE00010) -> bytes:
    """The header of a native pixel data element in the output's encoding."""
    group, element = tag >> 16, tag & 0xFFFF
    if header.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
        return struct.pack("<HHI", group, element, length)
    vr = {0x7FE00008: b"OF", 0x7FE00009: b"OD"}.get(tag, b"OB" if int(header.BitsAllocated) <= 8 else b"OW")
    return struct.pack("<HH2sHI", group, element, vr, 0, length)


def _copy_native(path: Path, index: FrameIndex, header: Dataset, out: BinaryIO) -> None:
    """Little endian to little endian: the pixel bytes are the same, copy them without decoding."""
    start = index.frames[0][0][0]
    length = -(-index.frame_bits * index.number_of_frames // 8)
    _write_dataset(out, header)
    out.write(_pixel_element(header, length + length % 2, index.pixel_tag))
    with path.open("rb") as fp:
        fp.seek(start)
        remaining = length
        while remaining:
            chunk = fp.read(min(remaining, 1 << 20))
            if not chunk:
                raise TranscodeError(f"{path.name} ends inside its Pixel Data (truncated)")
            out.write(chunk)
            remaining -= len(chunk)
    out.write(b"\0" * (length % 2))


def _write_native(frames: Iterator[tuple[Array, dict[str, Any]]], header: Dataset, out: BinaryIO) -> None:
    """Decoded frames written as they come; the length is known from the first frame."""
    first, properties = next(frames)
    _apply_properties(header, properties)
    count = int(header.get("NumberOfFrames") or 1)
    size = first.nbytes
    if size * count >= 0xFFFFFFFF:
        raise TranscodeError("the decoded pixel data would exceed the 4 GiB limit of a native Pixel Data element")
    _write_dataset(out, header)
    out.write(_pixel_element(header, size * count + size * count % 2))
    written = 0
    for pixels, _ in _chain(first, properties, frames):
        if pixels.nbytes != size:
            raise TranscodeError("decoded frames differ in size")
        out.write(_little_endian(pixels).tobytes())
        written += 1
    if written != count:
        raise TranscodeError(f"decoded {written} frames, Number of Frames says {count}")
    out.write(b"\0" * (size * count % 2))


def _write_encapsulated(
    path: Path,
    header: Dataset,
    index: FrameIndex | None,
    target: UID,
    out: BinaryIO,
    quality: int,
    spool_dir: Path | None,
) -> None:
    """Encode frame by frame into a spool, then write header, offset table and fragments."""
    lossy = target in LOSSY_TARGETS
    lengths: list[int] = []
    raw_bytes = 0
    with tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, dir=str(spool_dir) if spool_dir else None) as spool:
        for pixels, properties in _decoded_frames(path, header, index, raw=not lossy):
            if not lengths:
                _apply_properties(header, properties)
            encoded = _encode_frame(pixels, properties, target, quality)
            padding = b"\0" * (len(encoded) % 2)
            spool.write(_ITEM + struct.pack("<I", len(encoded) + len(padding)) + encoded + padding)
            lengths.append(len(encoded))
            raw_bytes += pixels.nbytes
        if lossy:
            _mark_lossy(header, raw_bytes / max(1, sum(lengths)))
        bot = _offset_table(header, lengths)
        _write_dataset(out, header)
        out.write(_ENCAPSULATED_PIXEL_DATA + _ITEM + struct.pack("<I", len(bot)) + bot)
        spool.seek(0)
        shutil.copyfileobj(spool, out, 1 << 20)
        out.write(_SEQUENCE_END)


def _offset_table(header: Dataset, lengths: list[int]) -> bytes:
    """A Basic Offset Table, or the Extended one when offsets pass 4 GiB (PS3.5 A.4)."""
    offsets = np.cumsum([0] + [8 + n + n % 2 for n in lengths[:-1]], dtype=np.uint64)
    if int(offsets[-1]) <= 0xFFFFFFFF:
        return offsets.astype("<u4").tobytes()
    header.ExtendedOffsetTable = offsets.astype("<u8").tobytes()
    header.ExtendedOffsetTableLengths = np.asarray(lengths, dtype="<u8").tobytes()
    return b""


def _encode_frame(pixels: Array, properties: dict[str, Any], target: UID, quality: int) -> bytes:
    if target == JPEGBaseline8Bit:
        buffer = BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=quality, subsampling=1)
        return buffer.getvalue()
    options = {key: properties[key] for key in _ENCODER_OPTIONS if key in properties}
    options["number_of_frames"] = 1
    try:
        return bytes(get_encoder(target).encode(pixels, **options))
    except _CODEC_ERRORS as exc:
        raise TranscodeError(f"cannot encode a frame as {target.name}: {exc}") from exc


_ENCODER_OPTIONS = (
    "rows",
    "columns",
    "samples_per_pixel",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "photometric_interpretation",
    "planar_configuration",
)


def _apply_properties(header: Dataset, properties: dict[str, Any]) -> None:
    """Record what decoding changed (colour space, planar configuration), as pydicom's decompress does."""
    header.PhotometricInterpretation = str(properties["photometric_interpretation"])
    if int(properties.get("samples_per_pixel", 1)) > 1:
        header.PlanarConfiguration = int(properties.get("planar_configuration", 0))


def _mark_lossy(header: Dataset, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always flagged, with each step's method and ratio."""
    methods, ratios = _values(header, "LossyImageCompressionMethod"), _values(header, "LossyImageCompressionRatio")
    header.LossyImageCompression = "01"
    header.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]
    header.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    if int(header.get("SamplesPerPixel") or 1) == 3:
        header.PhotometricInterpretation = "YBR_FULL_422"  # Pillow writes YCbCr 4:2:2
        header.PlanarConfiguration = 0


def _values(header: Dataset, keyword: str) -> list[Any]:
    """A possibly multi-valued element as a list (pydicom gives a bare value when there is one)."""
    value = header.get(keyword)
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str | bytes | int | float) else list(value)


def _chain(
    first: Array, properties: dict[str, Any], rest: Iterator[tuple[Array, dict[str, Any]]]
) -> Iterator[tuple[Array, dict[str, Any]]]:
    yield first, properties
    yield from rest


def _little_endian(pixels: Array) -> Array:
    return pixels if pixels.dtype.byteorder in ("<", "|", "=") else pixels.astype(pixels.dtype.newbyteorder("<"))


def _grayscale(pixels: Array, header: Dataset, frame: int, window: Window | None, invert: bool) -> Array:
    values = _modality(pixels, header, frame)
    if window is not None:
        center, width, function = _parse_window(window)
        shown = _apply_window(values, center, width, function)
    elif (own := _dataset_window(header, frame)) is not None:
        shown = _apply_window(values, *own)
    elif "VOILUTSequence" in header:
        shown = _voi_lut(np.rint(values).astype(np.int32), header)
    else:
        low, high = float(values.min()), float(values.max())
        shown = _apply_window(values, (low + high) / 2, high - low, "LINEAR_EXACT")
    return 255 - shown if invert else shown


def _functional(header: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """An attribute from the frame's functional group, the shared one, or the top level (PS3.3 C.7.6.16)."""
    for groups, item in (("PerFrameFunctionalGroupsSequence", frame - 1), ("SharedFunctionalGroupsSequence", 0)):
        with contextlib.suppress(AttributeError, IndexError, KeyError):
            value = getattr(getattr(header, groups)[item], sequence)[0].get(keyword)
            if value is not None and value != "":
                return value
    return header.get(keyword)


def _modality(pixels: Array, header: Dataset, frame: int) -> Array:
    if "ModalityLUTSequence" in header:
        return np.asarray(apply_modality_lut(pixels, header), dtype=np.float32)
    slope = _first(_functional(header, frame, "PixelValueTransformationSequence", "RescaleSlope"), 1.0)
    intercept = _first(_functional(header, frame, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _dataset_window(header: Dataset, frame: int) -> tuple[float, float, str] | None:
    center = _functional(header, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _functional(header, frame, "FrameVOILUTSequence", "WindowWidth")
    if center is None or width is None:
        return None
    function = _functional(header, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
    return _parse_window((_first(center, 0.0), _first(width, 0.0), str(function)))


def _first(value: Any, default: float) -> float:
    """The first number of a (possibly multi-valued) DS/IS attribute; junk is a RenderError."""
    try:
        if value is None or value == "":
            return default
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return float(value)
        return float(value[0]) if len(value) else default
    except (ValueError, TypeError) as exc:
        raise RenderError(f"not a number where one is needed: {str(value)[:32]!r}") from exc


def _parse_window(window: Window) -> tuple[float, float, str]:
    """(center, width[, function]): PS3.18 §8.3.5.1.4 spells functions linear, linear-exact, sigmoid."""
    center, width, *rest = window
    center, width = float(center), float(width)
    function = str(rest[0] if rest else "LINEAR").strip().upper().replace("-", "_")
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise RenderError(f"VOI LUT function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if not np.isfinite(center) or not np.isfinite(width) or width < (1 if function == "LINEAR" else 0) or width == 0:
        raise RenderError(f"window width {width} is not allowed for {function} (PS3.3 C.11.2.1.2)")
    return center, width, function


def _apply_window(values: Array, center: float, width: float, function: str) -> Array:
    """PS3.3 C.11.2.1.2 onto 0..255; a flat frame (zero width from min/max) renders black."""
    if width <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled: Array
    if function == "SIGMOID":
        scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        scaled = ((values - center) / width + 0.5) * 255.0
    else:
        scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else (values >= center) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _voi_lut(pixels: Array, header: Dataset) -> Array:
    descriptor = header.VOILUTSequence[0].LUTDescriptor
    top = float((1 << int(descriptor[2])) - 1)
    looked_up: Array = apply_voi(pixels, header)
    return np.clip(np.rint(looked_up * (255.0 / top)), 0, 255).astype(np.uint8)


def _colour(pixels: Array, header: Dataset, photometric: str, bits_stored: int) -> Array:
    if photometric == "PALETTE COLOR":
        try:
            rgb: Array = apply_color_lut(pixels, header)
        except (ValueError, AttributeError, KeyError, IndexError, TypeError) as exc:
            raise RenderError(f"the palette colour lookup tables are missing or unusable: {exc}") from exc
        return (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb.astype(np.uint8)
    if photometric not in ("RGB", "YBR_RCT", "YBR_ICT") or pixels.ndim != 3:  # JPEG 2000 undoes RCT/ICT itself
        raise RenderError(f"photometric interpretation {photometric} is not rendered")
    if pixels.dtype.itemsize == 1:
        return pixels.astype(np.uint8, copy=False)
    shifted: Array = pixels >> max(0, bits_stored - 8)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def _encode_image(image: Image.Image, media_type: str, viewport: tuple[int, int] | None, quality: int) -> bytes:
    if viewport is not None:
        width, height = viewport
        if width < 1 or height < 1:
            raise RenderError(f"viewport {width}x{height} must be at least 1x1")
        scale = min(width / image.width, height / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = BytesIO()
    if media_type == "image/jpeg":
        image.save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()
