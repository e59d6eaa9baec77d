"""The short path for C-STORE data-set fragments (drimbox.dimse.fragments).

A fake DUL reads real PDU bytes from a socket pair: non-final data-set fragments must reach the
data-set file in order and nothing else; every other PDU (the final fragment, a command, another
context, a malformed PDV list, a truncated PDU) must take pynetdicom's own path, after what was
written before it.
"""

from __future__ import annotations

import io
import queue
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from drimbox.dimse import fragments
from drimbox.dimse.connection import ReceivedFile, configure_pynetdicom
from tests.support.datasets import CT, StudySpec, write_study


def pdv(context: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context, control) + data


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


class _Timer:
    restarts = 0

    def restart(self) -> None:
        self.restarts += 1


class _Sock:
    """What the DUL calls `self.socket` (pynetdicom's AssociationSocket): recv(n) and .socket."""

    def __init__(self, raw: socket.socket) -> None:
        self.socket = raw

    def recv(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.socket.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data


@dataclass
class _Message:
    _data_set_file: Any
    context_id: int | None = 1


@dataclass
class FakeDul:
    socket: _Sock
    message: _Message
    state: str = "Sta6"
    event_queue: queue.Queue[str] = field(default_factory=queue.Queue)
    to_provider_queue: queue.Queue[Any] = field(default_factory=queue.Queue)
    _recv_pdu: queue.Queue[Any] = field(default_factory=queue.Queue)
    _idle_timer: _Timer = field(default_factory=_Timer)
    _kill_thread: bool = False
    decoded: list[bytes] = field(default_factory=list)

    @property
    def state_machine(self) -> Any:
        return type("SM", (), {"current_state": self.state})()

    @property
    def assoc(self) -> Any:
        return type("A", (), {"dimse": type("D", (), {"message": self.message})()})()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        self.decoded.append(bytes(bytestream))
        if bytestream[0] != 0x04:
            raise ValueError("not a P-DATA-TF")
        return object(), "Evt10"


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, FakeDul]]:
    ours, theirs = socket.socketpair()
    dul = FakeDul(_Sock(ours), _Message(io.BytesIO()))
    yield theirs, dul
    ours.close()
    theirs.close()


def test_non_final_fragments_go_to_the_file_and_the_final_one_to_pynetdicom(wire: Any) -> None:
    theirs, dul = wire
    final = p_data(pdv(1, 0x02, b"END"))
    theirs.sendall(p_data(pdv(1, 0x00, b"abc"), pdv(1, 0x00, b"def")) + p_data(pdv(1, 0x00, b"ghi")) + final)
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b"abcdefghi"
    assert dul.decoded == [final]  # the final fragment took pynetdicom's path
    assert dul.event_queue.get_nowait() == "Evt10" and dul._recv_pdu.qsize() == 1
    assert dul._idle_timer.restarts == 2


def test_a_primitive_waiting_to_be_sent_gets_the_reactor_back_at_once(wire: Any) -> None:
    theirs, dul = wire
    dul.to_provider_queue.put("a C-STORE response")
    theirs.sendall(p_data(pdv(1, 0x00, b"one")) + p_data(pdv(1, 0x00, b"two")))
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b"one"  # the second PDU waits for the next turn
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b"onetwo"


def test_a_header_read_with_the_body_before_it_is_handled_in_the_same_turn(wire: Any) -> None:
    """The next PDU's header arrives with a body: that PDU is handled before the reactor gets its
    turn, by pynetdicom's path when it is not a fragment (here an A-RELEASE-RQ), nothing lost."""
    theirs, dul = wire
    release = struct.pack(">BBL", 0x05, 0, 4) + b"\x00\x00\x00\x00"
    theirs.sendall(p_data(pdv(1, 0x00, b"one")) + release)
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b"one"
    assert dul.decoded == [release]
    theirs.setblocking(False)
    ours = dul.socket.socket
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):
        ours.recv(1)  # every byte sent was handled


def test_a_header_split_across_reads_is_completed(wire: Any) -> None:
    theirs, dul = wire
    second = p_data(pdv(1, 0x00, b"two"))
    theirs.sendall(p_data(pdv(1, 0x00, b"one")) + second[:3])
    sender = threading.Timer(0.2, theirs.sendall, args=(second[3:],))
    sender.start()
    fragments.read_pdu_data(dul)
    sender.join()
    assert dul.message._data_set_file.getvalue() == b"onetwo"
    assert dul.decoded == [] and dul.event_queue.empty()


@pytest.mark.parametrize(
    "pdu",
    [
        p_data(pdv(1, 0x01, b"command")),  # command fragment
        p_data(pdv(1, 0x00, b"ok"), pdv(1, 0x02, b"last")),  # a final fragment among others
        p_data(pdv(3, 0x00, b"other context")),
        p_data(struct.pack(">LBB", 1, 1, 0)),  # item length below 2
        p_data(struct.pack(">LBB", 99, 1, 0) + b"short"),  # item longer than the PDU
        p_data(b"\x00\x00"),  # not even an item header
        p_data(),  # no PDV at all
    ],
    ids=["command", "final-among", "other-context", "tiny-item", "item-overflows", "no-header", "empty"],
)
def test_anything_else_takes_pynetdicoms_path_whole(wire: Any, pdu: bytes) -> None:
    theirs, dul = wire
    theirs.sendall(pdu)
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b""
    assert dul.decoded == [pdu]


def test_order_is_kept_when_an_earlier_pdu_is_still_queued(wire: Any) -> None:
    theirs, dul = wire
    dul.event_queue.put("Evt10")  # a PDU read before has not been processed yet
    pdu = p_data(pdv(1, 0x00, b"later"))
    theirs.sendall(pdu)
    fragments.read_pdu_data(dul)
    assert dul.message._data_set_file.getvalue() == b"" and dul.decoded == [pdu]


@pytest.mark.parametrize("state", ["Sta7", "Sta13"])
def test_only_during_data_transfer(wire: Any, state: str) -> None:
    theirs, dul = wire
    dul.state = state
    pdu = p_data(pdv(1, 0x00, b"x"))
    theirs.sendall(pdu)
    fragments.read_pdu_data(dul)
    assert dul.decoded == [pdu]


def test_truncated_pdu_closes_the_transport(wire: Any) -> None:
    theirs, dul = wire
    whole = p_data(pdv(1, 0x00, b"0123456789"))
    theirs.sendall(whole[:-4])
    theirs.shutdown(socket.SHUT_WR)
    fragments.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt17"
    assert dul.message._data_set_file.getvalue() == b"" and dul.decoded == []


def test_unknown_pdu_type_is_evt19(wire: Any) -> None:
    theirs, dul = wire
    theirs.sendall(struct.pack(">BBL", 0x09, 0, 0))
    fragments.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt19"


def test_a_real_association_in_small_pdus_stores_the_exact_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom SCU → pynetdicom SCP with the short path, 4 KiB PDUs: the data set arrives intact."""
    configure_pynetdicom()
    short: list[bool] = []
    original = fragments._write_fragments

    def counted(*args: Any) -> bool:
        short.append(original(*args))
        return short[-1]

    monkeypatch.setattr(fragments, "_write_fragments", counted)
    [path] = write_study(StudySpec(series=[(CT, "CT", 1)], rows=300, columns=300), tmp_path / "src")
    received: list[bytes] = []

    def handle(event: Any) -> int:
        ReceivedFile.finish(event.dataset_path)  # when an earlier test made ours the receiving file class
        received.append(event.dataset_path.read_bytes())
        event.dataset_path.unlink()
        return 0x0000

    scp = AE(ae_title="SCP")
    scp.add_supported_context(CTImageStorage, "1.2.840.10008.1.2.1")
    scp.maximum_pdu_size = 4096  # the sender splits the data set into ~70 PDUs
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's own bytes
        try:
            status = assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    finally:
        server.shutdown()
    assert int(status.Status) == 0
    [stored] = received
    source = path.read_bytes()
    assert len(source) > 150_000
    assert short.count(True) > 30  # most PDUs took the short path
    assert _data_set(stored) == _data_set(source)


def _data_set(file: bytes) -> bytes:
    """The bytes after the file meta group (preamble, DICM, then (0002,0000) UL giving its length)."""
    assert file[128:132] == b"DICM" and file[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<L", file, 140)
    return file[144 + group_length :]


class _Receiving:
    """A SubOperations in the middle of a data set (suboperations.py), as the dispatch sees it."""

    receiving = True
    abandoned = False

    def abandon(self) -> None:
        self.abandoned, self.receiving = True, False

    def take(self, dul: Any, body: memoryview) -> bool:
        raise AssertionError("must not be offered this PDU")


def test_an_oversized_pdu_mid_transfer_aborts_instead_of_leaving_a_hole(wire: Any) -> None:
    """More than the PDU length we announced, in the middle of a sub-operation's data set: the
    partial file goes and the association is aborted (Evt19); pynetdicom never sees the PDU."""
    theirs, dul = wire
    dul._drimbox_suboperations = _Receiving()
    theirs.sendall(struct.pack(">BBL", 0x04, 0, fragments.MAX_FAST_PDU + 1))
    fragments.read_pdu_data(dul)
    assert dul._drimbox_suboperations.abandoned
    assert dul.event_queue.get_nowait() == "Evt19" and dul.decoded == []


def test_after_an_abort_a_transfer_is_dropped_not_answered(wire: Any) -> None:
    """Out of Sta6 (an A-ABORT sent), data for a sub-operation goes nowhere near it."""
    theirs, dul = wire
    dul.state = "Sta13"
    dul._drimbox_suboperations = _Receiving()
    theirs.sendall(p_data(pdv(1, 0x00, b"x" * 100)))
    fragments.read_pdu_data(dul)
    assert dul._drimbox_suboperations.abandoned
    assert len(dul.decoded) == 1  # pynetdicom's own path: in Sta13 it ignores it


def test_a_pdu_breaking_a_transfer_aborts_the_association(wire: Any, tmp_path: Path) -> None:
    """A command in the middle of a sub-operation's data set: the partial file goes and the
    association is aborted; pynetdicom is not handed the rest of a message it never saw begin."""
    from pydicom.uid import ExplicitVRLittleEndian

    from drimbox.dimse.suboperations import SubOperations

    theirs, dul = wire
    fake = type("Assoc", (), {"acceptor": type("A", (), {"ae_title": "PACS"})(), "accepted_contexts": []})()
    receiver = SubOperations(fake, None, tmp_path)  # type: ignore[arg-type]
    receiver._contexts[1] = ("1.2.840.10008.5.1.4.1.1.2", str(ExplicitVRLittleEndian))
    command = _store_command(1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    dul._drimbox_suboperations = receiver
    dul.message = None  # type: ignore[assignment]  # pynetdicom assembles no message of its own
    theirs.sendall(p_data(pdv(1, 0x03, command)))
    fragments.read_pdu_data(dul)
    assert receiver._transfer is not None
    partial = Path(receiver._transfer.file.name)
    assert partial.parent == tmp_path and partial.exists()
    theirs.sendall(p_data(pdv(1, 0x03, command)))  # another command where data was due
    fragments.read_pdu_data(dul)
    assert not receiver.receiving and not partial.exists()
    assert dul.event_queue.get_nowait() == "Evt19" and dul.decoded == []
    receiver.close()
    assert list(tmp_path.iterdir()) == [], "the files made ahead go with the association"


def _store_command(message_id: int, sop_class: str, sop_uid: str) -> bytes:
    """A C-STORE-RQ command set with a data set to follow, as pynetdicom encodes it."""
    import io

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    [p_data_primitive, *_] = list(message.encode_msg(1, 16384))
    [(_context, data)] = p_data_primitive.presentation_data_value_list
    return bytes(data[1:])  # without the control header byte
