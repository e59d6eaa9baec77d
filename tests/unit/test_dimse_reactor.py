"""The DUL reactor that waits for work (drimbox/dimse/reactor.py), with real pynetdicom associations."""

from __future__ import annotations

import os
import select
import threading
from typing import Any

from pynetdicom import AE, evt
from pynetdicom import dul as _dul
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from drimbox.dimse import reactor
from drimbox.dimse.connection import configure_pynetdicom


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _echo_server() -> Any:
    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    return scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])


def test_installed_once_for_every_new_provider() -> None:
    configure_pynetdicom()
    reactor.install()  # again: no double wrapping
    assert _dul.DULServiceProvider.run_reactor is reactor.run_reactor
    assert getattr(_dul.DULServiceProvider.send_pdu, "__qualname__", "").startswith("install.")


def test_many_messages_and_associations_leave_no_descriptor_or_thread_behind() -> None:
    """Each association's wake-up pipe is closed with its reactor; every message is answered."""
    configure_pynetdicom()
    server = _echo_server()
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        first = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        first.release()  # pynetdicom's own first-use allocations out of the count
        before = _open_descriptors()
        statuses = []
        for _ in range(10):
            assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
            assert assoc.is_established
            statuses += [int(assoc.send_c_echo().Status) for _ in range(20)]
            assoc.release()
            assoc.dul.join(timeout=5)
            assert not assoc.dul.is_alive()
        assert statuses == [0] * 200
    finally:
        server.shutdown()
    assert _open_descriptors() <= before
    assert not [t for t in threading.enumerate() if isinstance(t, _dul.DULServiceProvider)]


def test_an_abort_from_another_thread_wakes_the_reactor() -> None:
    """kill_dul/send_pdu from a thread other than the reactor's end it without waiting on the socket."""
    configure_pynetdicom()
    server = _echo_server()
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        assoc.abort()
        assoc.dul.join(timeout=5)
        assert not assoc.dul.is_alive() and assoc.is_aborted
    finally:
        server.shutdown()


def test_a_wake_up_after_the_reactor_ended_is_harmless() -> None:
    waker = reactor._Waker()
    for _ in range(70_000):  # more wake-ups than the pipe holds (64 KiB): never blocks
        waker.wake()
    waker.drain()
    assert select.select([waker.read_fd], [], [], 0)[0] == []
    waker.close()
    waker.wake()  # a late send_pdu: no write to a closed (possibly reused) descriptor


def test_the_association_reactor_takes_no_message_while_a_send_pauses_it() -> None:
    """The non-blocking get (the association reactor's) leaves a response to the paused sender."""
    from types import SimpleNamespace

    from pynetdicom.dimse import DIMSEServiceProvider

    configure_pynetdicom()
    assoc = SimpleNamespace(_reactor_checkpoint=threading.Event(), dimse_timeout=1)
    provider = DIMSEServiceProvider(assoc)  # type: ignore[arg-type]
    provider.msg_queue.put((1, "C-ECHO-RSP"))
    assert provider.get_msg(block=False) == (None, None)  # paused: a send_*() waits for it
    assert provider.get_msg(block=True) == (1, "C-ECHO-RSP")
    assoc._reactor_checkpoint.set()
    provider.msg_queue.put((1, "C-STORE-RQ"))
    assert provider.get_msg(block=False) == (1, "C-STORE-RQ")  # running: the reactor serves requests
