"""The MLLP listener and client on real 127.0.0.1 sockets, with an in-memory inbox; the frame decoder."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drimbox.config import Hl7Settings
from drimbox.hl7 import MllpError, MllpServer, send_message, send_messages
from drimbox.hl7.er7 import Segment, parse
from drimbox.hl7.framing import END, START, Frame, FrameDecoder, Oversize, frame
from drimbox.report.message import Acceptance, ReportMessage
from tests.unit.test_hl7_reading import oru

TIMEOUT = 10.0


class FakeInbox:
    """Records calls; `gate` makes accept() wait, `error` makes it (or refuse()) raise."""

    def __init__(self) -> None:
        self.accepted: list[ReportMessage] = []
        self.refused: list[tuple[bytes, str, Acceptance]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.error: Exception | None = None
        self.refuse_error: Exception | None = None
        self._lock = threading.Lock()

    def accept(self, message: ReportMessage) -> Acceptance:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        if self.error is not None:
            raise self.error
        with self._lock:
            self.accepted.append(message)
        return Acceptance("AA", f"stored {message.control_id}", publications=(len(self.accepted),))

    def refuse(self, raw: bytes, control_id: str, acceptance: Acceptance) -> None:
        if self.refuse_error is not None:
            raise self.refuse_error
        with self._lock:
            self.refused.append((raw, control_id, acceptance))


def message(control_id: str) -> bytes:
    return oru().replace(b"|42|", f"|{control_id}|".encode())


def ack_fields(ack: bytes) -> dict[str, Segment]:
    return {segment.name: segment for segment in parse(ack).segments}


def msa(ack: bytes) -> tuple[str, str]:
    segment = ack_fields(ack)["MSA"]
    return segment.get(1), segment.get(2)


@pytest.fixture
def inbox() -> FakeInbox:
    return FakeInbox()


@pytest.fixture
def serve(inbox: FakeInbox) -> Iterator[Any]:
    servers: list[MllpServer] = []

    def start(**overrides: Any) -> MllpServer:
        hl7 = Hl7Settings().model_copy(update={"port": 0, **overrides})  # port 0: the validator wants >= 1
        server = MllpServer(hl7, inbox)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve: Any) -> MllpServer:
    started: MllpServer = serve()
    return started


class Peer:
    """A raw socket client that can misbehave."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self, timeout: float = TIMEOUT) -> bytes:
        self.sock.settimeout(timeout)
        while not self.frames:
            data = self.sock.recv(65536)
            assert data, "connection closed before the ACK"
            self.frames += [item.payload for item in self.decoder.feed(data) if isinstance(item, Frame)]
        return self.frames.pop(0)

    def closed(self) -> bool:
        """True when the server closes the connection (reads EOF) within the timeout."""
        self.sock.settimeout(TIMEOUT)
        try:
            while data := self.sock.recv(65536):
                self.frames += [item.payload for item in self.decoder.feed(data) if isinstance(item, Frame)]
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers(server: MllpServer) -> Iterator[Any]:
    opened: list[Peer] = []

    def connect(address: tuple[str, int] | None = None) -> Peer:
        peer = Peer(address or server.address)
        opened.append(peer)
        return peer

    yield connect
    for peer in opened:
        peer.close()


# --- the conversation ---------------------------------------------------------------------------


def test_several_messages_on_one_connection(server: MllpServer, inbox: FakeInbox) -> None:
    acks = send_messages(*server.address, [message("1"), message("2"), message("3")], timeout=TIMEOUT)
    assert [msa(ack) for ack in acks] == [("AA", "1"), ("AA", "2"), ("AA", "3")]
    assert [m.control_id for m in inbox.accepted] == ["1", "2", "3"]
    assert ack_fields(acks[0])["MSA"].get(3) == "stored 1"


def test_pipelined_frames_in_one_write_are_answered_in_order(peers: Any, inbox: FakeInbox) -> None:
    peer = peers()
    peer.send(b"".join(frame(message(str(i))) for i in range(5)))
    assert [msa(peer.ack())[1] for _ in range(5)] == ["0", "1", "2", "3", "4"]


def test_eight_concurrent_connections(server: MllpServer, inbox: FakeInbox) -> None:
    results: dict[int, list[bytes]] = {}

    def client(n: int) -> None:
        results[n] = send_messages(*server.address, [message(f"{n}-{i}") for i in range(3)], timeout=TIMEOUT)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(results) == list(range(8))
    for n, acks in results.items():
        assert [msa(ack) for ack in acks] == [("AA", f"{n}-{i}") for i in range(3)]
    assert len(inbox.accepted) == 24


def test_ack_only_after_the_inbox_returned(peers: Any, inbox: FakeInbox) -> None:
    inbox.gate = threading.Event()
    peer = peers()
    peer.send(frame(message("slow")))
    assert inbox.entered.wait(TIMEOUT)
    with pytest.raises(TimeoutError):
        peer.ack(timeout=0.5)
    assert inbox.accepted == []
    inbox.gate.set()
    assert msa(peer.ack()) == ("AA", "slow")
    assert [m.control_id for m in inbox.accepted] == ["slow"]


def test_garbage_between_frames_is_ignored(peers: Any, inbox: FakeInbox) -> None:
    peer = peers()
    peer.send(b"hello\r\n" + frame(message("a")) + b"\x00\xff\r\n\x1c\r" + frame(message("b")) + b"junk")
    assert [msa(peer.ack()), msa(peer.ack())] == [("AA", "a"), ("AA", "b")]
    peer.send(frame(message("c")))
    assert msa(peer.ack()) == ("AA", "c")


def test_truncated_frame_then_eof_processes_nothing(server: MllpServer, peers: Any, inbox: FakeInbox) -> None:
    peer = peers()
    peer.send(START + message("cut")[:200])
    peer.close()
    assert msa(send_message(*server.address, message("next"), timeout=TIMEOUT)) == ("AA", "next")
    assert [m.control_id for m in inbox.accepted] == ["next"]
    assert inbox.refused == []


def test_peer_gone_before_its_ack(server: MllpServer, peers: Any, inbox: FakeInbox) -> None:
    """The message is stored (the RIS will resend it without an ACK: the inbox sees the control id again)."""
    peer = peers()
    peer.send(frame(message("gone")))
    peer.close()
    deadline = time.monotonic() + TIMEOUT
    while not inbox.accepted:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert msa(send_message(*server.address, message("next"), timeout=TIMEOUT)) == ("AA", "next")
    assert [m.control_id for m in inbox.accepted] == ["gone", "next"]


def test_oversize_frame_is_refused_and_closed(serve: Any, inbox: FakeInbox) -> None:
    server = serve(max_message_bytes=1024)
    peer = Peer(server.address)
    try:
        big = message("big").replace(b"OBX|2|", b"NTE|1||" + b"x" * 3000 + b"\rOBX|2|")
        peer.send(frame(big))
        ack = ack_fields(peer.ack())
        assert (ack["MSA"].get(1), ack["MSA"].get(2)) == ("AR", "big")
        assert ack["ERR"].get(3) == "207"
        assert peer.closed()
    finally:
        peer.close()
    assert inbox.accepted == [] and inbox.refused == []
    assert msa(send_message(*server.address, message("small"), timeout=TIMEOUT)) == ("AA", "small")


def test_inbox_failure_answers_ae_207_and_keeps_the_connection(
    peers: Any, inbox: FakeInbox, caplog: pytest.LogCaptureFixture
) -> None:
    inbox.error = RuntimeError("database is gone")
    peer = peers()
    with caplog.at_level(logging.ERROR, logger="drimbox.hl7"):
        peer.send(frame(message("1")))
        ack = ack_fields(peer.ack())
    assert (ack["MSA"].get(1), ack["MSA"].get(2)) == ("AE", "1")
    assert ack["ERR"].joined(3) == "207^Application internal error^HL70357"
    assert any(r.exc_info and "database is gone" in str(r.exc_info[1]) for r in caplog.records)
    inbox.error = None
    peer.send(frame(message("2")))
    assert msa(peer.ack()) == ("AA", "2")


def test_unreadable_message_is_refused_through_the_inbox(peers: Any, inbox: FakeInbox) -> None:
    raw = oru(message_type="ADT^A01^ADT_A01")
    peer = peers()
    peer.send(frame(raw) + frame(b"not hl7 at all"))
    first, second = ack_fields(peer.ack()), ack_fields(peer.ack())
    assert (first["MSA"].get(1), first["MSA"].get(2), first["ERR"].get(3)) == ("AR", "42", "200")
    assert (second["MSA"].get(1), second["MSA"].get(2), second["ERR"].get(3)) == ("AR", "", "100")
    assert [(r[0], r[1], r[2].code, r[2].error_code) for r in inbox.refused] == [
        (raw, "42", "AR", "200"),
        (b"not hl7 at all", "", "AR", "100"),
    ]
    assert inbox.accepted == []


def test_refuse_failure_answers_ae_207_quoting_the_reason(peers: Any, inbox: FakeInbox) -> None:
    inbox.refuse_error = OSError("disk full")
    peer = peers()
    peer.send(frame(oru(message_type="ADT^A01^ADT_A01")))
    ack = ack_fields(peer.ack())
    assert (ack["MSA"].get(1), ack["ERR"].get(3)) == ("AE", "207")
    assert "ADT^A01" in ack["MSA"].get(3)


# --- who may talk, and for how long ------------------------------------------------------------


def test_accept_from_refuses_other_addresses(serve: Any, inbox: FakeInbox, caplog: pytest.LogCaptureFixture) -> None:
    refused = serve(accept_from=["10.9.8.7"])
    peer = Peer(refused.address)
    try:
        with caplog.at_level(logging.WARNING, logger="drimbox.hl7"):
            peer.send(frame(message("1")))
            assert peer.closed()
        assert peer.frames == []
    finally:
        peer.close()
    assert inbox.accepted == []
    assert any(getattr(r, "event", "") == "hl7.refused_peer" and r.peer == "127.0.0.1" for r in caplog.records)
    allowed = serve(accept_from=["127.0.0.1"])
    assert msa(send_message(*allowed.address, message("2"), timeout=TIMEOUT)) == ("AA", "2")


def test_connections_beyond_the_limit_are_closed(serve: Any) -> None:
    server = serve(max_connections=1)
    first = Peer(server.address)
    try:
        first.send(frame(message("1")))
        assert msa(first.ack()) == ("AA", "1")
        second = Peer(server.address)
        try:
            assert second.closed()
        finally:
            second.close()
    finally:
        first.close()
    deadline = time.monotonic() + TIMEOUT
    while True:  # the server notices the first close asynchronously
        try:
            assert msa(send_message(*server.address, message("3"), timeout=TIMEOUT)) == ("AA", "3")
            break
        except MllpError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_idle_connections_are_closed(serve: Any) -> None:
    server = serve(idle_timeout=0.3)
    peer = Peer(server.address)
    try:
        started = time.monotonic()
        assert peer.closed()
        assert 0.2 < time.monotonic() - started < TIMEOUT
    finally:
        peer.close()


def test_start_on_a_busy_port_raises(server: MllpServer, inbox: FakeInbox) -> None:
    hl7 = Hl7Settings(port=server.address[1])
    with pytest.raises(OSError):
        MllpServer(hl7, inbox).start()


def test_logs_name_the_message_not_the_patient(peers: Any, caplog: pytest.LogCaptureFixture) -> None:
    peer = peers()
    with caplog.at_level(logging.INFO, logger="drimbox.hl7"):
        peer.send(frame(message("logged")))
        peer.ack()
    records = [r for r in caplog.records if getattr(r, "event", "") == "hl7.message"]
    fields = [(getattr(r, "control_id", ""), getattr(r, "ack", ""), getattr(r, "message_type", "")) for r in records]
    assert fields == [("logged", "AA", "ORU^R01^ORU_R01")]
    assert not any("279035121518989" in str(r.__dict__) for r in caplog.records)


# --- client -------------------------------------------------------------------------------------


def test_client_errors_are_mllp_errors(server: MllpServer) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(MllpError):
        send_message("127.0.0.1", port, message("1"), timeout=2)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        accepted: list[socket.socket] = []
        closer = threading.Thread(target=lambda: accepted.append(silent.accept()[0]))
        closer.start()
        with pytest.raises(MllpError, match="timed out"):
            send_message("127.0.0.1", silent.getsockname()[1], message("1"), timeout=0.3)
        closer.join(TIMEOUT)
        for sock in accepted:
            sock.close()


# --- framing --------------------------------------------------------------------------------------


def test_decoder_frames_restarts_and_oversize() -> None:
    decoder = FrameDecoder(16)
    assert decoder.feed(b"xx" + START + b"abc") == []
    assert decoder.pending
    assert decoder.feed(b"\x1c") == []
    assert decoder.feed(b"\r" + START + b"half" + START + b"whole" + END) == [Frame(b"abc"), Frame(b"whole")]
    assert (decoder.discarded, decoder.restarted, decoder.pending) == (2, 1, False)
    assert decoder.feed(START + b"y" * 17 + END + START + b"z" + END) == [Oversize(b"y" * 17)]
    assert decoder.feed(START + b"z" + END) == []  # nothing after an oversize frame


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=6),
    st.lists(st.integers(1, 30), min_size=1, max_size=20),
)
def test_decoder_is_indifferent_to_chunking(parts: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    def clean(data: bytes) -> bytes:
        return data.replace(START, b"").replace(b"\x1c", b"")

    stream = b"".join(clean(garbage) + frame(clean(payload)) for garbage, payload in parts)
    decoder = FrameDecoder(1 << 16)
    got: list[Frame | Oversize] = []
    position = 0
    for cut in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        got += decoder.feed(stream[position : position + cut])
        position += cut
    got += decoder.feed(stream[position:])
    assert got == [Frame(clean(payload)) for _, payload in parts]
    assert not decoder.pending
