"""Associations with PACS peers: one place for AE settings, timeouts, socket options and caps.

Timeouts are idle timeouts: pynetdicom's network timeout restarts on every PDU, and we leave the
DIMSE timeout unset so a single 2 GB tomosynthesis instance may take as long as it needs while
bytes keep flowing. Each peer has a cap on concurrent associations we open (a semaphore), so a
burst of retrievals never floods a PACS.
"""

from __future__ import annotations

import functools
import logging
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

from pynetdicom import AE, _config, build_context
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import transport as _transport
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from drimbox.config import DimseSettings, PacsPeer
from drimbox.dimse import fragments, reactor
from drimbox.dimse.contexts import VERIFICATION
from drimbox.errors import PeerUnreachable

log = logging.getLogger(__name__)

_configured = False
_RECV_STEP = 1 << 20


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings every drimbox association relies on.

    - chunked receive: a C-STORE data set goes to a file as it arrives, never into memory;
    - TCP_NODELAY on every socket: without it each DIMSE message waits ~40 ms for delayed ACKs
      (measured: 100 C-STOREs to Orthanc 10.1 s → 1.3 s); pynetdicom 3 never sets it;
    - context variables follow into pynetdicom's threads, so log records keep their request id;
    - a socket whose connection was refused is closed: pynetdicom 3.0.4 calls shutdown() first,
      which raises on an unconnected socket, and skips close(), leaking a descriptor per attempt;
    - PDUs are read with recv_into() into one buffer instead of 4 KiB recv() calls appended to a
      bytearray: the receive path of a 16 KiB PDU drops from 4 system calls and copies to ~1;
    - data-set fragments of a C-STORE go straight to their file (`fragments.py`);
    - the reactor thread waits for work instead of polling every millisecond (`reactor.py`).
    """
    global _configured
    if _configured:
        return
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.PASS_CONTEXTVARS = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    cls = _transport.AssociationSocket
    original_init = cls.__init__

    def init_with_nodelay(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        sock = self.socket
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def shutdown_then_close(self: Any) -> None:
        sock = self.socket
        if sock is None:
            return
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def recv_whole(self: Any, nr_bytes: int) -> bytearray:
        # The length comes from the peer: grow the buffer only as bytes actually arrive, so a
        # header announcing 4 GiB costs nothing until 4 GiB are sent.
        buffer = bytearray(min(nr_bytes, _RECV_STEP))
        received = 0
        while received < nr_bytes:
            if received == len(buffer):
                buffer.extend(bytes(min(nr_bytes - received, _RECV_STEP)))
            with memoryview(buffer) as view:
                count = self.socket.recv_into(view[received:], len(buffer) - received)
            if not count:  # connection broken: return what arrived, as pynetdicom does
                del buffer[received:]
                return buffer
            received += count
        return buffer

    cls.__init__ = init_with_nodelay  # type: ignore[method-assign]
    cls.recv = recv_whole  # type: ignore[method-assign]
    cls._shutdown_socket = shutdown_then_close  # type: ignore[method-assign]
    _dimse.DIMSEServiceProvider.get_msg = _get_msg_unless_paused  # type: ignore[method-assign]
    fragments.install()
    reactor.install()
    _configured = True


_get_msg = _dimse.DIMSEServiceProvider.get_msg


def _get_msg_unless_paused(self: Any, block: bool = False) -> Any:
    """pynetdicom's `get_msg`, except that the association's own reactor (its only non-blocking
    caller) takes nothing while a `send_*()` is pausing it.

    pynetdicom's pause hand-shake has a window: the reactor may pass its checkpoint just before
    `send_c_echo()` clears it, and `send_c_echo()` may still read the reactor's "paused" flag as
    set; the reactor then takes the response off the queue as an "unexpected" message and the
    sender waits out its DIMSE timeout. Rare with pynetdicom's 1 ms polling, it happened once in
    a thousand associations of our tests with our reactor (dimse/reactor.py), which hands a
    response over within microseconds."""
    if not block and not self.assoc._reactor_checkpoint.is_set():
        return None, None
    return _get_msg(self, block)


def receive_into(folder: Path) -> None:
    """Make pynetdicom's chunked receive write C-STORE data sets into `folder`.

    It writes them with `NamedTemporaryFile` in the system temporary folder, which may be another
    filesystem (or RAM): next to our store, admitting a file is a rename, not a copy of up to
    2 GB. Only pynetdicom's own use is replaced; the rest of the process keeps its temp folder.
    The setting is per process: the last node built in a process receives for all of them.
    """
    _dimse_messages.NamedTemporaryFile = functools.partial(ReceivedFile, folder)  # type: ignore[attr-defined,assignment]


class _NoFlush:
    """pynetdicom calls `file.flush()` after every fragment: deliberately nothing."""

    def flush(self) -> None:
        pass


_NO_FLUSH = _NoFlush()


class ReceivedFile:
    """What pynetdicom's chunked receive writes a C-STORE data set into (replaces NamedTemporaryFile).

    pynetdicom calls `write()` then `file.flush()` for every PDU fragment: through
    NamedTemporaryFile's wrapper that is a write system call per 16 KiB. Here writes go to a
    1 MiB buffer, `file.flush()` does nothing, and the C-STORE handler calls `finish(path)`
    before reading the file, which flushes it.
    """

    # Weak: when pynetdicom drops a transfer that never completed (association aborted), the
    # file object goes with it and its descriptor is closed; the partial file stays in incoming/
    # until the daemon's sweep or next start removes it.
    _open: ClassVar[weakref.WeakValueDictionary[str, ReceivedFile]] = weakref.WeakValueDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, folder: Path, made: tuple[int, str] | None = None, **_options: object) -> None:
        """A new file in `folder`, or `made` (descriptor, name: an empty file made ahead, readyfiles.py)."""
        descriptor, self.name = made or tempfile.mkstemp(dir=folder, prefix="cstore-", suffix=".dcm")
        self._buffered = open(descriptor, "wb", buffering=1 << 20)  # noqa: SIM115 - closed by finish/close
        self.write = self._buffered.write
        self.file = _NO_FLUSH  # pynetdicom flushes `file` after each fragment
        with self._lock:
            self._open[self.name] = self

    def close(self) -> None:
        with self._lock:
            self._open.pop(self.name, None)
        self._buffered.close()

    @classmethod
    def finish(cls, path: Path | str) -> None:
        """Write out what is still buffered for `path` (the C-STORE handler calls this first)."""
        with cls._lock:
            received = cls._open.get(str(path))
        if received is not None:
            received.close()


def make_ae(settings: DimseSettings) -> AE:
    """An AE with our title and the configured timeouts and PDU size."""
    configure_pynetdicom()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.connect_timeout
    ae.connection_timeout = settings.connect_timeout
    ae.network_timeout = settings.idle_timeout
    ae.dimse_timeout = None
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    return ae


class PeerConnector:
    """Opens associations to configured PACS peers, within each peer's cap."""

    def __init__(self, settings: DimseSettings, peers: dict[str, PacsPeer]) -> None:
        self.settings = settings
        self.peers = peers
        self._slots = {name: threading.BoundedSemaphore(peer.max_associations) for name, peer in peers.items()}

    @contextmanager
    def associate(
        self,
        peer_name: str,
        contexts: Sequence[PresentationContext],
        ext_neg: Sequence[Any] = (),
        evt_handlers: Sequence[Any] = (),
    ) -> Iterator[Association]:
        """An established association with `peer_name`, released (or aborted) on exit."""
        peer = self.peers[peer_name]
        slot = self._slots[peer_name]
        if not slot.acquire(timeout=self.settings.idle_timeout):
            raise PeerUnreachable(f"{peer_name}: all {peer.max_associations} associations busy")
        try:
            ae = make_ae(self.settings)
            ae.requested_contexts = list(contexts)
            assoc = ae.associate(
                peer.host,
                peer.port,
                ae_title=peer.ae_title,
                ext_neg=list(ext_neg) or None,
                evt_handlers=list(evt_handlers) or None,
            )
            if not assoc.is_established:
                raise PeerUnreachable(_why_not_established(peer_name, peer, assoc))
            _watch_idle(assoc, peer_name)
            try:
                yield assoc
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.kill()
        finally:
            slot.release()

    def echo(self, peer_name: str) -> int:
        """C-ECHO `peer_name`; return the status (0x0000 is success)."""
        with self.associate(peer_name, [build_context(VERIFICATION)]) as assoc:
            status = assoc.send_c_echo()
        if "Status" not in status:
            raise PeerUnreachable(f"{peer_name}: no answer to C-ECHO (association lost)")
        return int(status.Status)


def _watch_idle(assoc: Association, peer_name: str) -> None:
    """Abort the association once nothing has arrived for the network (idle) timeout.

    pynetdicom checks its idle timer in the association reactor, which is paused while a
    C-FIND/C-GET/C-MOVE waits for responses; with no DIMSE timeout (we want none: one 2 GB
    instance may take minutes), a PACS that goes silent would hang the request forever.
    """

    def watch() -> None:
        while assoc.is_established:
            if assoc.dul.idle_timer_expired():
                log.warning("association idle, aborted", extra={"event": "dimse.idle_abort", "peer": peer_name})
                assoc.abort()
                break
            time.sleep(0.1)
        # However the association ended (idle abort here, or pynetdicom's DUL thread dying on an
        # exception, which aborts without telling a waiting request), wake a request still waiting:
        # it reads this as "association lost". After a normal release nobody reads it.
        assoc.dimse.msg_queue.put((None, None))

    threading.Thread(target=watch, name=f"idle-{peer_name}", daemon=True).start()


def _why_not_established(name: str, peer: PacsPeer, assoc: Association) -> str:
    where = f"{name} ({peer.ae_title}@{peer.host}:{peer.port})"
    if assoc.is_rejected:
        return f"{where} rejected the association (check that our AE title is declared in the PACS)"
    return f"{where} did not accept the association (connection refused, timed out or aborted)"
