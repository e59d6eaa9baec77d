"""Pixel data a codec cannot decode is refused (TranscodeError, RenderError), never the end of the box.

Found by the odd-instance fuzzing of test_api_schemathesis.py: an encapsulated JPEG (process 1,
2/4, 14, 14 SV1) whose Bits Allocated is 32 or 64 (or 1, in colour) makes GDCM throw a C++
exception it does not catch, and the process aborts: one such instance, received by C-STORE and then
asked for by any viewer (retrieve, rendered, thumbnail), would stop the whole drimbox. The decoding
runs in a child process here, so that an abort fails this test instead of ending the test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom.encaps import encapsulate

from tests.support.datasets import DBT, StudySpec, build_instance

JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
#: (Bits Allocated, Samples per Pixel) that GDCM 3.2 aborts on, for each JPEG transfer syntax above.
LAYOUTS = ((32, 1), (64, 1), (1, 3))
CHILD = """
import sys, warnings
from io import BytesIO
from pathlib import Path
from drimbox.errors import DrimboxError
from drimbox.store import pixels
warnings.simplefilter("ignore")
for name in sys.argv[1:]:
    for what, work in (("retrieve", lambda: pixels.transcode(Path(name), "1.2.840.10008.1.2.1", BytesIO())),
                       ("rendered", lambda: pixels.render(Path(name), None, 1, "image/jpeg", None, None, 90))):
        try:
            work()
        except DrimboxError as refused:
            print(Path(name).stem, what, type(refused).__name__, flush=True)
        else:
            print(Path(name).stem, what, "decoded", flush=True)
"""


def _instance(folder: Path, syntax: str, bits: int, samples: int) -> Path:
    ds = build_instance(StudySpec(frames=2), "1.2.3.4", DBT, "MG", 1, 1)
    ds.BitsAllocated, ds.SamplesPerPixel = bits, samples
    if samples == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\x00\x00", b"\xff\xd8\x00\x00"])
    ds["PixelData"].VR = "OB"
    path = folder / f"{syntax}-{bits}-{samples}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_undecodable_jpeg_layouts_are_refused_without_ending_the_process(tmp_path: Path) -> None:
    files = [str(_instance(tmp_path, syntax, bits, samples)) for syntax in JPEG for bits, samples in LAYOUTS]
    child = subprocess.run([sys.executable, "-c", CHILD, *files], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, check=False)  # fmt: skip
    outcomes = child.stdout.splitlines()
    assert child.returncode == 0, (
        f"the decoding process died ({child.returncode}) after {outcomes[-1:]}: "
        + (child.stderr.strip().splitlines() or ["no message"])[-1]
    )
    assert len(outcomes) == 2 * len(files)
    assert all(line.split()[-1] in ("TranscodeError", "RenderError", "FrameAccessUnsupported") for line in outcomes)
