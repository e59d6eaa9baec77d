"""DICOM files from peers: damaged KOS manifests give a Manifest or ManifestUnreadable, and a damaged
received instance is admitted or refused with InvalidInstance (the file removed), nothing else.

Seeds are real files: the DRIM-M sample KOS, the same manifest as we encode it, an IOCM rejection
note, and CT, mammography and tomosynthesis instances of sample_dicom/. Edits land mostly before
the pixel data, where the readers decide.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from pydicom import dcmread, dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from drimbox.config import load_settings
from drimbox.daemon import Node, build_node
from drimbox.errors import InvalidInstance
from drimbox.kos.build import encode_manifest
from drimbox.kos.parse import DICOM_ERRORS, ManifestUnreadable, read_manifest
from drimbox.kos.rejection import read_rejection, rejection_note
from drimbox.uids import is_valid_uid
from tests.conftest import write_config
from tests.fuzz.damage import budget, damaged
from tests.support.peers import free_port

ROOT = Path(__file__).parents[2]
SAMPLE_KOS = (ROOT / "tests" / "fixtures" / "drim-m" / "kos-manifest-example.dcm").read_bytes()
IMAGES = [ROOT / "sample_dicom" / "ct-000" / "CT0001.dcm", ROOT / "sample_dicom" / "ffdm-000" / "IM0001.dcm",
          ROOT / "sample_dicom" / "dbt-000" / "BTO0001.dcm"]  # fmt: skip
PIXEL_DATA = b"\xe0\x7f\x10\x00"
#: Byte strings the damage writes at random places: transfer syntax UIDs, lengths, the
#: KOS and rejection note codes, character sets.
SYNTAXES = (b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.4.50",
            b"1.2.840.10008.1.2.5\x00", b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.1\x00")  # fmt: skip
TOKENS = (*SYNTAXES, b"\x00" * 8, b"\xff\xff\xff\xff", b"DICM", b"1.2.840.10008.5.1.4.1.1.88.59\x00",
          b"113030", b"113001", b"DCM\x00", b"\\", b"ISO_IR 192", b"ISO 2022 IR 87", b"\x1b$B")  # fmt: skip


def _rejection_note() -> bytes:
    manifest = read_manifest(SAMPLE_KOS)
    series = {s.series_uid: [(i.sop_class_uid, i.sop_instance_uid) for i in s.instances] for s in manifest.series}
    buffer = BytesIO()
    rejection_note(manifest.study_uid, series, "113039", "IPP1", "NOM^Prenom").save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encoded(data: bytes, syntax: str) -> bytes:
    """The same file in another transfer syntax (a peer's KOS may come implicit, big endian, deflated)."""
    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    big = syntax == ExplicitVRBigEndian
    dcmwrite(buffer, ds, little_endian=not big, implicit_vr=syntax == ImplicitVRLittleEndian, force_encoding=True)
    return buffer.getvalue()


OWN_KOS = [SAMPLE_KOS, encode_manifest(read_manifest(SAMPLE_KOS)), _rejection_note()]
KOS_SEEDS = OWN_KOS + [
    _encoded(seed, syntax)
    for seed in OWN_KOS
    for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
]


def _header_length(data: bytes) -> int:
    at = data.find(PIXEL_DATA)
    return at if at > 0 else len(data)


def _kos(data: bytes) -> None:
    with warnings.catch_warnings():  # pydicom warns about odd values; only exceptions matter here
        warnings.simplefilter("ignore")
        try:
            manifest = read_manifest(data)
        except ManifestUnreadable as unreadable:
            assert str(unreadable)
            event(f"unreadable: {str(unreadable)[:40]}")
        else:
            event("read")
            assert manifest.series and all(series.instances for series in manifest.series)
            assert manifest.created.tzinfo is not None


@budget(300)
@given(st.binary(max_size=2000) | st.binary(max_size=2000).map(lambda tail: b"\x00" * 128 + b"DICM" + tail))
def test_random_bytes_are_no_manifest(data: bytes) -> None:
    with warnings.catch_warnings(), pytest.raises(ManifestUnreadable):
        warnings.simplefilter("ignore")
        read_manifest(data)


@budget(700)
@given(st.sampled_from(KOS_SEEDS).flatmap(lambda seed: damaged(seed, tokens=TOKENS, keep=132)))
def test_damaged_manifests_are_read_or_unreadable(data: bytes) -> None:
    _kos(data)


@budget(150)
@given(st.sampled_from(IMAGES[:2]).flatmap(lambda path: damaged(path.read_bytes()[:4096], tokens=TOKENS, keep=132)))
def test_damaged_images_are_no_manifest(data: bytes) -> None:
    with warnings.catch_warnings(), pytest.raises(ManifestUnreadable):
        warnings.simplefilter("ignore")
        read_manifest(data)


@budget(300)
@given(st.sampled_from(KOS_SEEDS).flatmap(lambda seed: damaged(seed, tokens=TOKENS, keep=132)))
def test_damaged_rejection_notes_are_read_or_unreadable(data: bytes) -> None:
    """What the C-STORE SCP does with a pushed KOS (storage.py): dcmread, then read_rejection.

    dcmread raises DICOM_ERRORS on a damaged file, and read_rejection ManifestUnreadable.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rejection = read_rejection(dcmread(BytesIO(data), stop_before_pixels=True))
        except ManifestUnreadable:
            event("unreadable")
        except DICOM_ERRORS:
            event("dcmread failed")  # the SCP answers "cannot understand" for these
        else:
            event("not a note" if rejection is None else "note")
            assert rejection is None or (rejection.study_uid and rejection.rejected)


# --- intake: what the C-STORE SCP and C-GET/C-MOVE do with each received file -----------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("intake")
    peer = {"ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}
    box = build_node(load_settings(write_config(folder, peers={"main": peer}, dimse_port=free_port(),
                                                http_port=free_port())))  # fmt: skip
    yield box
    box.close()


def _seed_and_hot(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data, _header_length(data) + 16


SEEDS = [_seed_and_hot(path) for path in IMAGES] + [(seed, len(seed)) for seed in KOS_SEEDS]


@budget(250)
@given(st.sampled_from(SEEDS).flatmap(lambda seed: damaged(seed[0], hot=seed[1], tokens=TOKENS, keep=132)))
def test_damaged_instances_are_admitted_or_refused(node: Node, data: bytes) -> None:
    received = node.store.incoming / "fuzz.part"
    received.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            entry = node.storage.intake.admit(received, sender="FUZZ")
        except InvalidInstance as refused:
            assert str(refused) and not received.exists()
            event(f"refused: {str(refused)[:40]}")
        else:
            event("admitted")
            assert Path(entry.file.path).is_file() and is_valid_uid(entry.instance.sop_uid)
