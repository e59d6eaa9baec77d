"""A short path for the bulk of a received C-STORE: data-set fragments go straight to their file.

pynetdicom turns every P-DATA-TF PDU into objects (PDU, PDV items, P-DATA primitive), runs it
through the state machine (Sta6 + Evt10 → DT-2, which changes nothing) and the DIMSE message
decoder, which appends the fragment to the data-set file: ~100-200 µs per 16 KiB PDU in Python,
i.e. a 27 MB mammogram costs 0.2-0.3 s of one core before any of our own work. Then the reactor
finds its event queue empty and sleeps a millisecond before it reads the next PDU.

Here, while a C-STORE data set is being received into a file (pynetdicom's chunked receive), a
P-DATA-TF PDU whose PDVs are all non-final data-set fragments of that message is written to the
file directly from one reusable buffer, and the next PDU is read at once if it has arrived. Any
other PDU (commands, the final fragment, A-RELEASE, A-ABORT, anything malformed) takes
pynetdicom's own path unchanged, after the fragments before it, so the order of the byte stream
and every protocol decision stay pynetdicom's.
"""

from __future__ import annotations

import logging
import select
import struct
from typing import Any

from pynetdicom import dul as _dul

log = logging.getLogger("pynetdicom.dul")  # the messages pynetdicom itself would log

_P_DATA_TF = 0x04
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
_HEADER = struct.Struct(">BBL")
ITEM = struct.Struct(">LBB")  # a PDV item's length, context ID and control header
#: PDUs (and bytes) handled in one go before the reactor gets a turn (to see its timers); it gets
#: one at once when something waits to be sent (a C-STORE response, an A-ABORT).
_BATCH = 256
_BATCH_BYTES = 16 << 20
#: How long to wait for the next PDU of a data set before handing back to the reactor.
_NEXT_PDU_WAIT = 0.005
#: The largest PDU read into the reusable buffer; a larger one takes pynetdicom's path.
MAX_FAST_PDU = 1 << 22


def install() -> None:
    """Replace `DULServiceProvider._read_pdu_data` (once per process)."""
    if getattr(_dul.DULServiceProvider._read_pdu_data, "_drimbox", False):
        return
    read_pdu_data._drimbox = True  # type: ignore[attr-defined]
    _dul.DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]


def read_pdu_data(self: Any) -> None:
    """pynetdicom's `_read_pdu_data`, with data-set fragments written straight to their file.

    The read of a short-path PDU's body also takes the next PDU's header when it has arrived
    (one system call where there were three: header, body, and select() for the next). A header
    read ahead is always handled here before returning, by this path or pynetdicom's: the reactor
    never sees bytes of a PDU it has not been given. (Except once the association is being
    aborted, for a PDU that broke a sub-operation: nothing after it is read as a PDU again.)
    """
    taken = 0
    ahead: tuple[int, int, bytes] | None = None
    for count in range(_BATCH + 1):
        header = ahead if ahead is not None else _read_header(self)
        ahead = None
        if header is None:
            return
        pdu_type, pdu_length, raw_header = header
        short = pdu_type == _P_DATA_TF and pdu_length <= MAX_FAST_PDU
        if not short and _transfer_broken(self, pdu_type):
            return
        suboperations = _suboperations(self) if short else None
        target = _data_set_file(self) if short and suboperations is None else None
        if suboperations is None and target is None:
            _standard(self, raw_header, pdu_length, None)
            return
        last = count >= _BATCH - 1 or taken >= _BATCH_BYTES or self._kill_thread or not self.to_provider_queue.empty()
        read = _read_body(self, pdu_length, look_ahead=not last)
        if read is None:
            return
        body, early = read
        if suboperations is not None:
            receiving = suboperations.receiving
            taken_whole = suboperations.take(self, body)
            if not taken_whole and receiving:  # (take() dropped the transfer)
                log.error("P-DATA-TF PDU that does not continue the C-STORE sub-operation being received")
                self.event_queue.put("Evt19")  # a broken message: A-ABORT, not its rest in memory
                return
        else:
            assert target is not None
            taken_whole = _write_fragments(body, target[1], target[0])
        if not taken_whole:
            _standard(self, raw_header, pdu_length, bytes(body))
        else:
            self._idle_timer.restart()
            taken += pdu_length
        if early:
            ahead = _complete_header(self, early)
            continue  # (handled even past the limits: it was read)
        if not taken_whole or last or not self.to_provider_queue.empty():
            return
        if not _next_pdu_arrives(self.socket):
            return


def _read_header(self: Any) -> tuple[int, int, bytes] | None:
    return _complete_header(self, b"")


def _complete_header(self: Any, start: bytes) -> tuple[int, int, bytes] | None:
    """The PDU header that begins with `start` (what a body read took beyond its PDU), read whole."""
    try:
        raw = start + bytes(self.socket.recv(6 - len(start))) if len(start) < 6 else start
    except (OSError, TimeoutError) as exc:
        _connection_lost(self, exc)
        return None
    try:
        pdu_type, _, pdu_length = _HEADER.unpack(raw)
    except struct.error:
        self.event_queue.put("Evt17")
        return None
    if pdu_type not in _KNOWN_PDU_TYPES:
        log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return None
    return pdu_type, pdu_length, raw


def _connection_lost(self: Any, exc: BaseException) -> None:
    """What pynetdicom does when the socket fails mid-PDU: log it, Evt17 (transport closed)."""
    log.error("Connection closed before the entire PDU was received")
    log.exception(exc)
    self.event_queue.put("Evt17")


def _data_set_file(self: Any) -> tuple[Any, int] | None:
    """The file and context of the C-STORE data set being received, if fragments may go straight to it.

    Only in Sta6 (data transfer) and only when no earlier PDU or event waits to be processed, so
    nothing received before this PDU is written after it.
    """
    if self.state_machine.current_state != "Sta6" or not self.event_queue.empty() or not self._recv_pdu.empty():
        return None
    message = self.assoc.dimse.message
    file = getattr(message, "_data_set_file", None)
    if file is None or message.context_id is None:
        return None
    return file, int(message.context_id)


def _transfer_broken(self: Any, pdu_type: int) -> bool:
    """A P-DATA-TF PDU above our buffer in the middle of a sub-operation's data set: the peer sends
    more than the maximum PDU length we announced (only then can it). pynetdicom cannot take the
    rest of a message it never saw begin: the transfer is dropped and the association aborted."""
    suboperations = getattr(self, "_drimbox_suboperations", None)
    if pdu_type != _P_DATA_TF or suboperations is None or not suboperations.receiving:
        return False
    suboperations.abandon()
    log.error("P-DATA-TF PDU larger than the maximum length announced, in a C-STORE sub-operation")
    self.event_queue.put("Evt19")  # unrecognised or invalid PDU: A-ABORT
    return True


def _suboperations(self: Any) -> Any:
    """The C-GET's SubOperations (suboperations.py) if this PDU is theirs to take or refuse.

    Mid-transfer every P-DATA-TF PDU is (in Sta6: after an abort, nothing more is answered);
    otherwise only in Sta6 with nothing received before it still waiting, and no message
    pynetdicom itself is assembling.
    """
    suboperations = getattr(self, "_drimbox_suboperations", None)
    if suboperations is None:
        return None
    if self.state_machine.current_state != "Sta6":
        if suboperations.receiving:
            suboperations.abandon()
        return None
    if suboperations.receiving:
        return suboperations
    if not self.event_queue.empty() or not self._recv_pdu.empty():
        return None
    if self.assoc.dimse.message is not None:
        return None
    return suboperations


def _read_body(self: Any, length: int, look_ahead: bool = False) -> tuple[memoryview, bytes] | None:
    """The PDU body, in the reusable buffer; with `look_ahead`, also the 0-6 bytes of the next
    PDU's header that had arrived with it (never waiting for them)."""
    wanted = length + 6 if look_ahead else length
    buffer: bytearray | None = getattr(self, "_drimbox_buffer", None)
    if buffer is None or len(buffer) < wanted:
        buffer = bytearray(max(wanted, 1 << 16))
        self._drimbox_buffer = buffer
    view = memoryview(buffer)
    received = 0
    try:
        while received < length:
            count = self.socket.socket.recv_into(view[received:wanted], wanted - received)
            if not count:
                break
            received += count
    except (OSError, TimeoutError) as exc:
        _connection_lost(self, exc)
        return None
    if received < length:
        log.error(f"The received PDU is shorter than expected ({6 + received} of {6 + length} bytes received)")
        self.event_queue.put("Evt17")
        return None
    return view[:length], bytes(view[length:received])


def pdv_items(body: memoryview) -> list[tuple[int, int, int, int]]:
    """(context ID, control header, start, stop) of each PDV of a P-DATA-TF body; [] if malformed."""
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < ITEM.size:
            return []
        length, context_id, control = ITEM.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            return []
        items.append((context_id, control, offset + ITEM.size, offset + 4 + length))
        offset += 4 + length
    return items


def _write_fragments(body: memoryview, context_id: int, file: Any) -> bool:
    """Write the PDVs of `body` if all are non-final data-set fragments of `context_id`; else write nothing."""
    items = pdv_items(body)
    if not items or any(item_context != context_id or control & 0x03 for item_context, control, _, _ in items):
        return False
    for _, _, start, stop in items:
        file.write(body[start:stop])
    return True


def _next_pdu_arrives(association_socket: Any) -> bool:
    sock = association_socket.socket
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)  # an SSLSocket may hold decrypted bytes select() cannot see
    if pending is not None and pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], _NEXT_PDU_WAIT)
    except (OSError, ValueError):
        return False
    return bool(ready)


def _standard(self: Any, raw_header: bytes, pdu_length: int, body: bytes | None) -> None:
    """The rest of pynetdicom's `_read_pdu_data` for a PDU whose header has been read."""
    if body is None:
        try:
            body = bytes(self.socket.recv(pdu_length))
        except (OSError, TimeoutError) as exc:
            _connection_lost(self, exc)
            return
        if len(body) != pdu_length:
            log.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + pdu_length} bytes received)")
            self.event_queue.put("Evt17")
            return
    try:
        pdu, event = self._decode_pdu(bytearray(raw_header + body))
        self.event_queue.put(event)
    except Exception as exc:
        log.error("Unable to decode the received PDU data")
        log.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)
