"""C-STORE sub-operations answered in the reactor thread (drimbox/dimse/suboperations.py).

Checked against pynetdicom itself: its encoder and decoder for the two commands, and a real
pynetdicom C-GET provider sending real studies to a real association.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import C_GET_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_GET, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from drimbox.dimse import suboperations
from drimbox.dimse.admissions import Admissions
from drimbox.dimse.connection import ReceivedFile, configure_pynetdicom, receive_into
from drimbox.dimse.fragments import pdv_items
from drimbox.dimse.storage import Admitted
from drimbox.index import db
from drimbox.index.repository import IndexRepository
from drimbox.ports import AuditEvent
from drimbox.store.files import DataSetStart, InstanceStore
from drimbox.store.intake import InstanceIntake
from tests.support.datasets import CT, StudySpec, write_study

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SOP_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890123"  # odd length: padded


def _pynetdicom_command(primitive: C_STORE | C_GET, context_id: int = 5) -> bytes:
    """The P-DATA-TF PDU pynetdicom itself sends for `primitive`'s command."""
    if isinstance(primitive, C_GET):
        message: Any = C_GET_RSP()
    else:
        message = (C_STORE_RSP if primitive.Status is not None else C_STORE_RQ)()
    message.primitive_to_message(primitive)
    [p_data, *_] = list(message.encode_msg(context_id, 16384))
    pdu = P_DATA_TF()
    pdu.from_primitive(p_data)
    return bytes(pdu.encode())


def test_the_response_is_what_pynetdicom_would_send() -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = SOP_CLASS
    response.AffectedSOPInstanceUID = SOP_UID
    response.Status = 0x0000
    ours = suboperations.response_pdu(5, 7, SOP_CLASS, SOP_UID)
    assert ours == _pynetdicom_command(response)


def test_the_request_command_is_read_as_pynetdicom_wrote_it() -> None:
    request = C_STORE()
    request.MessageID = 513
    request.AffectedSOPClassUID = SOP_CLASS
    request.AffectedSOPInstanceUID = SOP_UID
    request.Priority = 2
    request.MoveOriginatorApplicationEntityTitle = "ORIGIN"
    request.MoveOriginatorMessageID = 3
    request.DataSet = io.BytesIO(b"\x08\x00\x16\x00")  # "a data set follows"
    pdu = _pynetdicom_command(request)
    body = memoryview(pdu)[6:]
    [(context_id, control, start, stop)] = pdv_items(body)
    assert (context_id, control) == (5, 0x03)
    command = suboperations._command(body[start:stop])
    assert command is not None
    assert suboperations._us(command[0x0100]) == 0x0001 and suboperations._us(command[0x0110]) == 513
    assert suboperations._uid(command[0x0002]) == SOP_CLASS and suboperations._uid(command[0x1000]) == SOP_UID
    assert suboperations._us(command[0x0800]) != 0x0101


@pytest.mark.parametrize("sop_uid", [SOP_UID, SOP_UID + "4", "1.2.3"])
def test_the_file_meta_is_what_pynetdicom_writes(sop_uid: str) -> None:
    theirs = io.BytesIO()
    write_file_meta_info(theirs, create_file_meta(sop_class_uid=UID(SOP_CLASS), sop_instance_uid=UID(sop_uid),
                                                  transfer_syntax=ExplicitVRLittleEndian))  # fmt: skip
    assert suboperations.file_meta(SOP_CLASS, sop_uid, str(ExplicitVRLittleEndian)) == theirs.getvalue()


@pytest.mark.parametrize("status", [0xFF00, 0x0000, 0xB000, 0xA701])
def test_only_pending_get_responses_are_dropped(status: int) -> None:
    """Progress counts between instances are read and dropped; the final response is pynetdicom's."""
    response = C_GET()
    response.MessageIDBeingRespondedTo = 1
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    response.Status = status
    response.NumberOfRemainingSuboperations = 3 if status == 0xFF00 else None
    response.NumberOfCompletedSuboperations = 2
    response.NumberOfFailedSuboperations = 0
    response.NumberOfWarningSuboperations = 0
    fake = type("Assoc", (), {"acceptor": type("A", (), {"ae_title": "PACS"})(), "accepted_contexts": []})()
    receiver = suboperations.SubOperations(fake, None, Path("/nonexistent"))  # type: ignore[arg-type]
    taken = receiver.take(None, memoryview(_pynetdicom_command(response, context_id=1))[6:])
    receiver.close()
    assert (taken, receiver.pending) == ((True, 1) if status == 0xFF00 else (False, 0))


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x01\x05", b"\x00\x00\x00\x09\x05\x03abc"])
def test_malformed_pdvs_are_left_to_pynetdicom(body: bytes) -> None:
    assert pdv_items(memoryview(body)) == []


def test_uids_are_checked() -> None:
    for bad in (b"", b"1.2.x", b"1." * 40):
        with pytest.raises(ValueError):
            suboperations._uid(bad)
    assert suboperations._uid(b"1.2.3\x00") == "1.2.3"


# --- a real C-GET ------------------------------------------------------------------------------


class _Trail:
    def record(self, event: AuditEvent) -> None:
        pass


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[InstanceIntake]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    db.upgrade(engine)
    store = InstanceStore(tmp_path / "data")
    receive_into(store.incoming)
    yield InstanceIntake(store, IndexRepository(engine), _Trail(), "https://box/dicom-web")
    engine.dispose()


def _get_provider(files: list[Path]) -> Any:
    def handle_get(event: Any) -> Iterator[Any]:
        yield len(files)
        for path in files:
            yield 0xFF00, dcmread(path)

    scp = AE(ae_title="PACS")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    return scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, handle_get)])


def _retrieve(
    intake: InstanceIntake, files: list[Path], short_path: bool
) -> tuple[list[Admitted], Any, suboperations.SubOperations]:
    configure_pynetdicom()
    server = _get_provider(files)
    admitted: list[Admitted] = []
    try:
        scu = AE(ae_title="DRIMBOX")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        with Admissions(intake, "pacs", admitted.append) as admissions:
            assoc = scu.associate(
                "127.0.0.1",
                server.server_address[1],
                ae_title="PACS",
                ext_neg=[build_role(CTImageStorage, scp_role=True)],
                evt_handlers=[(evt.EVT_C_STORE, admissions.handle)],
            )
            assert assoc.is_established
            receiver = suboperations.SubOperations(assoc, admissions, intake.store.incoming)
            if short_path:  # else every message goes through pynetdicom, to the same Admissions
                receiver.attach(assoc)
            query = dcmread(files[0], stop_before_pixels=True)
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = query.StudyInstanceUID
            responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
            assoc.release()
            receiver.close()
    finally:
        server.shutdown()
    final = responses[-1][0]
    return admitted, final, receiver


@pytest.mark.parametrize("short_path", [True, False])
def test_a_real_cget_lands_every_instance_intact(intake: InstanceIntake, tmp_path: Path, short_path: bool) -> None:
    files = write_study(StudySpec(series=[(CT, "CT", 6)], rows=200, columns=200), tmp_path / "src")
    admitted, final, receiver = _retrieve(intake, files, short_path)
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 6  # the PACS saw 6 successes
    assert receiver.handled == (6 if short_path else 0)
    assert receiver.pending == (6 if short_path else 0)  # pynetdicom's provider: one pending response each
    assert sorted(a.sop_uid for a in admitted) == sorted(p.stem for p in files)
    for item in admitted:
        ours, source = dcmread(item.path), dcmread(tmp_path / "src" / f"{item.sop_uid}.dcm")
        assert ours.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ours.file_meta.MediaStorageSOPInstanceUID == item.sop_uid
        assert ours.PixelData == source.PixelData and ours.PatientName == source.PatientName
    assert list(intake.store.incoming.iterdir()) == []


def test_a_transfer_broken_off_leaves_no_partial_file(intake: InstanceIntake, tmp_path: Path) -> None:
    """Command taken, then the association ends: abandon() removes the partial file."""
    admissions = Admissions(intake, "pacs", lambda _a: None)
    fake = type("Assoc", (), {"acceptor": type("A", (), {"ae_title": "PACS"})(), "accepted_contexts": []})()
    receiver = suboperations.SubOperations(fake, admissions, intake.store.incoming)
    receiver._contexts[1] = (SOP_CLASS, str(ExplicitVRLittleEndian))
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = SOP_CLASS
    request.AffectedSOPInstanceUID = SOP_UID
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    command = _pynetdicom_command(request, context_id=1)
    assert receiver.take(None, memoryview(command)[6:])
    data = struct.pack(">LBB", 1 + 2, 1, 0x00) + b"x"  # a non-final data-set fragment
    assert receiver.take(None, memoryview(data))
    assert receiver._transfer is not None
    partial = Path(receiver._transfer.file.name)
    assert partial.parent == intake.store.incoming and partial.exists()
    receiver.abandon()
    assert not receiver.receiving and not partial.exists()
    receiver.close()
    assert list(intake.store.incoming.iterdir()) == []


def test_admission_is_told_where_each_data_set_begins(
    intake: InstanceIntake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short path wrote the file meta itself: admission parses from where the data set begins,
    the place the meta's group length gives."""
    seen: list[tuple[bytes, DataSetStart | None]] = []
    inspect = intake.store.inspect

    def spy(path: Path, start: DataSetStart | None = None) -> Any:
        seen.append((path.read_bytes(), start))
        return inspect(path, start)

    monkeypatch.setattr(intake.store, "inspect", spy)
    files = write_study(StudySpec(series=[(CT, "CT", 3)], rows=64, columns=64), tmp_path / "src")
    admitted, _, receiver = _retrieve(intake, files, short_path=True)
    assert receiver.handled == 3 and len(admitted) == 3 and len(seen) == 3
    for data, start in seen:
        (group_length,) = struct.unpack("<L", data[140:144])
        assert start == DataSetStart(132 + 12 + group_length, str(ExplicitVRLittleEndian))


def test_a_file_that_cannot_be_written_out_is_counted_failed(
    intake: InstanceIntake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer goes before the file is written out: an instance whose write then fails (the
    disk full) was answered "success", and is a failure of the retrieval, with no file left."""
    close = ReceivedFile.close
    closed: list[str] = []

    def close_or_fail(self: ReceivedFile) -> None:
        closed.append(self.name)
        close(self)
        if len(closed) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ReceivedFile, "close", close_or_fail)
    files = write_study(StudySpec(series=[(CT, "CT", 3)], rows=64, columns=64), tmp_path / "src")
    admitted, final, receiver = _retrieve(intake, files, short_path=True)
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3 and receiver.handled == 3
    [failure] = receiver._admissions.failures
    assert "could not be written: [Errno 28] No space left on device" in failure
    lost_uid = failure.split(":")[0]
    assert len(admitted) == 2 and sorted([a.sop_uid for a in admitted] + [lost_uid]) == sorted(p.stem for p in files)
    assert not Path(closed[1]).exists() and list(intake.store.incoming.iterdir()) == []
