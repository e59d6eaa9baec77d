"""Transcoding and rendering: lossless round trips against the source pixels, windowing on a ramp."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from drimbox.store.frames import FrameNotFound, index_frames
from drimbox.store.pixels import (
    RenderError,
    TranscodeError,
    can_transcode,
    can_transcode_frames,
    render,
    thumbnail,
    transcode,
)
from tests.unit.test_frames import base_dataset, make_bit_packed, make_instance, ramp_frames

LOSSLESS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]


def transcoded(source: Path, target: str, tmp_path: Path, **options: object) -> Path:
    out = tmp_path / f"out-{target}.dcm"
    with out.open("wb") as fp:
        transcode(source, target, fp, **options)  # type: ignore[arg-type]
    return out


def assert_same_except_pixels(source: Path, output: Path, target: str) -> Dataset:
    """The output is a Part 10 file in `target` whose non-pixel elements are the source's."""
    before, after = dcmread(source), dcmread(output)
    assert after.file_meta.TransferSyntaxUID == target
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID == after.SOPInstanceUID
    skip = {0x7FE00010, 0x7FE00001, 0x7FE00002}
    kept = {elem.tag: elem.value for elem in before if elem.tag not in skip}
    assert {elem.tag: elem.value for elem in after if elem.tag not in skip} == kept
    return after


def rgb_frames(frames: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(frames, 32, 40, 3), dtype=np.uint8)


def smooth_frames(photometric: str) -> np.ndarray:
    """Gradients JPEG keeps well, 8-bit, 3 frames of 32x40."""
    y, x = np.mgrid[0:32, 0:40]
    planes = [x * 6, y * 7, (x + y) * 3] if photometric == "RGB" else [x * 6]
    frame = np.stack(planes, -1) if photometric == "RGB" else planes[0]
    return np.stack([frame + 10 * f for f in range(3)]).astype(np.uint8)


@pytest.mark.parametrize("source_ts", LOSSLESS)
@pytest.mark.parametrize("target_ts", LOSSLESS)
def test_lossless_round_trip(tmp_path: Path, source_ts: str, target_ts: str) -> None:
    arr = ramp_frames()
    source = make_instance(tmp_path / "src.dcm", arr, source_ts)
    output = transcoded(source, target_ts, tmp_path)
    after = assert_same_except_pixels(source, output, target_ts)
    assert np.array_equal(after.pixel_array, arr)
    assert can_transcode(source_ts, target_ts, bits_stored=12)


@pytest.mark.parametrize("target_ts", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_signed_and_multi_fragment_sources(tmp_path: Path, target_ts: str) -> None:
    arr = ramp_frames(signed=True)
    source = make_instance(tmp_path / "src.dcm", arr, JPEG2000Lossless, fragments_per_frame=3, has_bot=False)
    after = assert_same_except_pixels(source, transcoded(source, target_ts, tmp_path), target_ts)
    assert after.PixelRepresentation == 1 and np.array_equal(after.pixel_array, arr)


@pytest.mark.parametrize("source_ts", LOSSLESS)
@pytest.mark.parametrize("target_ts", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_rgb_round_trip(tmp_path: Path, source_ts: str, target_ts: str) -> None:
    arr = rgb_frames()
    source = make_instance(tmp_path / "src.dcm", arr, source_ts, photometric="RGB", stored=8)
    after = assert_same_except_pixels(source, transcoded(source, target_ts, tmp_path), target_ts)
    assert after.PhotometricInterpretation == "RGB" and np.array_equal(after.pixel_array, arr)


def test_big_endian_source_becomes_little_endian(tmp_path: Path) -> None:
    arr = ramp_frames(frames=2)
    source = make_instance(tmp_path / "be.dcm", arr, ExplicitVRBigEndian)
    after = dcmread(transcoded(source, ExplicitVRLittleEndian, tmp_path))
    assert np.array_equal(after.pixel_array, arr)


def test_bit_packed_pixels_are_copied_between_native_syntaxes(tmp_path: Path) -> None:
    source = tmp_path / "bits.dcm"
    make_bit_packed(source)
    after = dcmread(transcoded(source, ImplicitVRLittleEndian, tmp_path))
    assert after.PixelData == dcmread(source).PixelData
    assert not can_transcode(ExplicitVRLittleEndian, RLELossless, bits_allocated=1, bits_stored=1)


def test_same_syntax_is_a_copy(tmp_path: Path) -> None:
    source = make_instance(tmp_path / "src.dcm", ramp_frames(), RLELossless)
    assert transcoded(source, RLELossless, tmp_path).read_bytes() == source.read_bytes()


def test_instance_without_pixels_changes_encoding_only(tmp_path: Path) -> None:
    ds = base_dataset()
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert_same_except_pixels(
        tmp_path / "sr.dcm", transcoded(tmp_path / "sr.dcm", ImplicitVRLittleEndian, tmp_path), ImplicitVRLittleEndian
    )
    with pytest.raises(TranscodeError, match="no pixel data to compress"):
        transcoded(tmp_path / "sr.dcm", RLELossless, tmp_path)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB"])
def test_lossy_baseline_only_when_allowed(tmp_path: Path, photometric: str) -> None:
    arr = smooth_frames(photometric)
    source = make_instance(tmp_path / "src.dcm", arr, photometric=photometric, stored=8)
    with pytest.raises(TranscodeError, match="lossy"):
        transcoded(source, JPEGBaseline8Bit, tmp_path)
    after = dcmread(transcoded(source, JPEGBaseline8Bit, tmp_path, allow_lossy=True, quality=95))
    assert after.LossyImageCompression == "01" and after.LossyImageCompressionMethod == "ISO_10918_1"
    assert after.PhotometricInterpretation == ("YBR_FULL_422" if photometric == "RGB" else "MONOCHROME2")
    assert np.abs(after.pixel_array.astype(int) - arr).mean() < 2


@pytest.mark.parametrize("target_ts", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossy_source_adds_no_further_loss(tmp_path: Path, target_ts: str) -> None:
    """A JPEG baseline YBR_FULL_422 instance comes out as YBR_FULL with exactly the decoded values."""
    native = make_instance(tmp_path / "src.dcm", smooth_frames("RGB"), photometric="RGB", stored=8)
    source = transcoded(native, JPEGBaseline8Bit, tmp_path, allow_lossy=True)
    after = dcmread(transcoded(source, target_ts, tmp_path))
    assert after.PhotometricInterpretation == "YBR_FULL" and after.LossyImageCompression == "01"
    assert np.array_equal(after.pixel_array, dcmread(source).pixel_array)
    assert np.array_equal(png_pixels(render(source, None, 2, "image/png")), dcmread(source).pixel_array[1])
    again = dcmread(transcoded(tmp_path / f"out-{target_ts}.dcm", JPEGBaseline8Bit, tmp_path, allow_lossy=True))
    assert list(again.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert len(again.LossyImageCompressionRatio) == 2


def test_can_transcode_answers() -> None:
    assert can_transcode(ExplicitVRLittleEndian, JPEG2000Lossless, bits_stored=12)
    assert not can_transcode(ExplicitVRLittleEndian, JPEGLosslessSV1)  # no encoder installed
    assert can_transcode(JPEGLosslessSV1, ExplicitVRLittleEndian)  # GDCM decodes it (python-gdcm)
    assert not can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit, bits_allocated=8, bits_stored=8)
    assert can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit, bits_allocated=8, bits_stored=8, allow_lossy=True)
    assert not can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit, bits_stored=12, allow_lossy=True)
    assert not can_transcode(ExplicitVRLittleEndian, RLELossless, bits_allocated=32, bits_stored=32)
    assert not can_transcode(ExplicitVRLittleEndian, JPEGLSLossless, bits_allocated=16, bits_stored=1)
    assert can_transcode(
        JPEGBaseline8Bit, RLELossless, photometric_interpretation="YBR_FULL_422", samples_per_pixel=3, bits_allocated=8
    )
    assert can_transcode("1.2.3", "1.2.3")
    assert not can_transcode(ExplicitVRLittleEndian, "1.2.3")
    assert can_transcode(ExplicitVRLittleEndian, RLELossless, has_pixels=False) is False
    assert can_transcode(ExplicitVRLittleEndian, ImplicitVRLittleEndian, has_pixels=False)


def test_can_transcode_frames_uses_the_index(tmp_path: Path) -> None:
    index = index_frames(make_instance(tmp_path / "src.dcm", ramp_frames()))
    assert can_transcode_frames(index, ExplicitVRLittleEndian, JPEGLSLossless)
    assert not can_transcode_frames(index, ExplicitVRLittleEndian, JPEGBaseline8Bit, allow_lossy=True)
    assert not can_transcode_frames(None, ExplicitVRLittleEndian, JPEGLSLossless)


def test_refusal_says_why(tmp_path: Path) -> None:
    source = make_instance(tmp_path / "src.dcm", ramp_frames())
    with pytest.raises(TranscodeError, match=r"no JPEG Lossless .* encoder"):
        transcoded(source, JPEGLosslessSV1, tmp_path)


# -- rendering --------------------------------------------------------------------------------------------------


def ramp_instance(tmp_path: Path, ts: str = ExplicitVRLittleEndian, **elements: object) -> tuple[Path, np.ndarray]:
    """3 frames, 48x64: column c holds 16*c + 1000*frame, so each frame and each column is known."""
    columns = np.arange(64, dtype=np.uint16) * 16
    arr = np.stack([np.tile(columns + 1000 * f, (48, 1)) for f in range(3)]).astype(np.uint16)
    return make_instance(tmp_path / "ramp.dcm", arr, ts, **elements), arr  # type: ignore[arg-type]


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def linear_exact(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip(np.rint(((values - center) / width + 0.5) * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
def test_window_on_a_ramp(tmp_path: Path, ts: str) -> None:
    path, arr = ramp_instance(tmp_path, ts, RescaleSlope=2, RescaleIntercept=-100)
    shown = png_pixels(render(path, None, 2, "image/png", window=(2500, 1000, "linear-exact")))
    assert np.array_equal(shown, linear_exact(arr[1] * 2.0 - 100, 2500, 1000))
    assert shown[0, 0] == 0 and shown[0, -1] == 255  # 1900 below, 3916 above the window


def test_linear_window_matches_the_standard_formula(tmp_path: Path) -> None:
    path, arr = ramp_instance(tmp_path)
    shown = png_pixels(render(path, None, 1, "image/png", window=(500, 401)))
    x = arr[0].astype(float)
    expected = np.clip(np.rint(((x - 499.5) / 400 + 0.5) * 255), 0, 255)
    assert np.array_equal(shown, expected.astype(np.uint8))


def test_dataset_window_then_min_max(tmp_path: Path) -> None:
    path, arr = ramp_instance(tmp_path, WindowCenter=[1200, 40], WindowWidth=[400, 80], VOILUTFunction="LINEAR_EXACT")
    assert np.array_equal(png_pixels(render(path, None, 2, "image/png")), linear_exact(arr[1].astype(float), 1200, 400))
    (tmp_path / "plain").mkdir()
    plain, _ = ramp_instance(tmp_path / "plain")
    shown = png_pixels(render(plain, None, 3, "image/png"))
    assert shown.min() == 0 and shown.max() == 255 and np.all(np.diff(shown[0].astype(int)) >= 0)


def test_functional_group_rescale_wins(tmp_path: Path) -> None:
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 1000, "US"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transform]
    path, arr = ramp_instance(tmp_path, SharedFunctionalGroupsSequence=[shared], RescaleIntercept=0, RescaleSlope=1)
    shown = png_pixels(render(path, None, 1, "image/png", window=(1500, 1000, "LINEAR_EXACT")))
    assert np.array_equal(shown, linear_exact(arr[0] + 1000.0, 1500, 1000))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    two, _ = ramp_instance(tmp_path)
    one = make_instance(tmp_path / "one.dcm", dcmread(two).pixel_array, photometric="MONOCHROME1")
    window = (600.0, 800.0, "LINEAR_EXACT")
    assert np.array_equal(
        png_pixels(render(one, None, 1, "image/png", window)),
        255 - png_pixels(render(two, None, 1, "image/png", window)),
    )


def test_rgb_passes_through_and_viewport_keeps_aspect(tmp_path: Path) -> None:
    arr = rgb_frames()
    path = make_instance(tmp_path / "rgb.dcm", arr, JPEGLSLossless, photometric="RGB", stored=8)
    assert np.array_equal(png_pixels(render(path, None, 2, "image/png")), arr[1])
    jpeg = Image.open(BytesIO(render(path, index_frames(path), 1, "image/jpeg", viewport=(20, 20), quality=80)))
    assert jpeg.format == "JPEG" and jpeg.size == (20, 16) and jpeg.mode == "RGB"


def test_viewport_scales_up_and_thumbnail_takes_the_middle_frame(tmp_path: Path) -> None:
    path, _ = ramp_instance(tmp_path)
    assert Image.open(BytesIO(render(path, None, 1, "image/png", viewport=(256, 256)))).size == (256, 192)
    thumb = Image.open(BytesIO(thumbnail(path, media_type="image/png")))
    assert thumb.size == (128, 96)
    middle = Image.open(BytesIO(render(path, None, 2, "image/png", viewport=(128, 128))))
    assert thumb.tobytes() == middle.tobytes()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"media_type": "image/gif"}, "not supported"),
        ({"quality": 0}, "outside 1..100"),
        ({"window": (100, 0)}, "width 0"),
        ({"window": (100, 0.5, "linear")}, "width 0.5"),
        ({"window": (100, 10, "cubic")}, "CUBIC"),
        ({"viewport": (0, 10)}, "at least 1x1"),
    ],
)
def test_render_refusals(tmp_path: Path, options: dict[str, object], match: str) -> None:
    path, _ = ramp_instance(tmp_path)
    with pytest.raises(RenderError, match=match):
        render(path, None, 1, **options)  # type: ignore[arg-type]


def test_render_missing_frame_and_no_pixels(tmp_path: Path) -> None:
    path, _ = ramp_instance(tmp_path)
    with pytest.raises(FrameNotFound):
        render(path, None, 4)
    base_dataset().save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(RenderError, match="no pixel data"):
        render(tmp_path / "sr.dcm", None, 1)
