"""Bodies of bytes and file segments (dicomweb.streaming) through real uvicorn with zero-copy
sending (httpd.zerocopy), and through an ASGI client that does not offer it."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx
import pytest

from drimbox.dicomweb.streaming import FileSegment, Piece, PiecesResponse
from drimbox.httpd import zerocopy
from drimbox.sandbox.http import serve_in_thread
from drimbox.sandbox.pki import create_pki


class Body:
    """Pieces over two files (one over 1 MiB), and what the client must receive."""

    def __init__(self, folder: Path, fail_after: int | None = None) -> None:
        self.big = folder / "big.bin"
        self.big.write_bytes(os.urandom(3 << 20))
        self.small = folder / "small.bin"
        self.small.write_bytes(os.urandom(4096))
        self.opened: list[BinaryIO] = []
        self.producer_closed = False
        self.fail_after = fail_after
        self.expected = b"head" + self.big.read_bytes() + b"mid" + self.small.read_bytes()[10:110] + b"tail"

    def _open(self, path: Path) -> BinaryIO:
        handle = open(path, "rb")  # noqa: SIM115 - the response closes it
        self.opened.append(handle)
        return handle

    def pieces(self) -> Iterator[Piece]:
        try:
            yield b"head"
            yield FileSegment(self._open(self.big), 0, 3 << 20)
            if self.fail_after == 1:
                raise OSError("the store went away")
            yield b"mid"
            yield FileSegment(self._open(self.small), 10, 100)
            yield b"tail"
        finally:
            self.producer_closed = True

    def all_closed(self) -> bool:
        return bool(self.opened) and all(handle.closed for handle in self.opened)


def app_for(body: Body, seen: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def recorded(message: Any) -> None:
            seen.append(message["type"])
            await send(message)

        response = PiecesResponse(body.pieces(), lambda: False, headers={"Content-Type": "application/octet-stream"})
        await response(scope, receive, recorded)

    return app


@pytest.fixture(autouse=True)
def installed() -> None:
    zerocopy.install()


@contextmanager
def serving(app: Any, **tls: Any) -> Iterator[int]:
    served = serve_in_thread(app, **tls)
    try:
        yield served.port
    finally:
        served.stop()


def _direct_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(bytes asked, bytes sent) of each send straight from the handler (`_sent_at_once`)."""
    calls: list[tuple[int, int]] = []
    direct = zerocopy._sent_at_once

    def spied(transport: Any, file: Any, offset: int, count: int) -> int:
        sent = direct(transport, file, offset, count)
        calls.append((count, sent))
        return sent

    monkeypatch.setattr(zerocopy, "_sent_at_once", spied)
    return calls


@contextmanager
def _slow_reader(port: int) -> Iterator[socket.socket]:
    """A client with a small receive window whose request for the body is sent."""
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield client


def _read_to_the_end(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(1 << 16):
        received += chunk
    return received


def _eventually(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def _cut_at_the_second_body(response: PiecesResponse) -> list[str]:
    """Runs `response` with a send that fails at its second body message; the messages sent."""
    sent: list[str] = []

    async def send(message: Any) -> None:
        sent.append(message["type"])
        if sent.count("http.response.body") == 2:
            raise OSError("connection reset")

    async def receive() -> Any:
        await anyio.sleep(3600)

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "extensions": {}}
    with pytest.raises(Exception):  # noqa: B017 - Starlette turns the OSError into ClientDisconnect
        anyio.run(response, scope, receive, send)
    return sent


def test_served_by_uvicorn_the_files_go_out_by_sendfile(tmp_path: Path) -> None:
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.status_code == 200 and answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == body.expected
    assert seen.count("http.response.zerocopysend") == 2
    assert body.all_closed()


def test_what_the_socket_cannot_take_at_once_goes_through_asyncio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file leaves by one sendfile(2) straight from the handler; a file larger than the
    socket's buffer, read by a slow client, is finished by asyncio's sendfile: same bytes."""
    calls = _direct_sends(monkeypatch)
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port, _slow_reader(port) as client:
        time.sleep(0.3)
        received = _read_to_the_end(client)
    head, _, chunked = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert _unchunked(chunked) == body.expected
    (big_count, big_sent), (small_count, small_sent) = calls
    assert big_count == 3 << 20 and 0 < big_sent < big_count, "the rest went through loop.sendfile"
    assert small_sent == small_count == 100
    assert body.all_closed()


def test_a_prefix_shares_the_file_chunk_and_a_last_file_closes_its_chunk(tmp_path: Path) -> None:
    """`prefix` (our addition to the extension) leaves in the file's chunk; when a file message ends
    the body, the CRLF owed to its chunk still comes before the last chunk."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(5000))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert zerocopy.EXTENSION in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x/y")]})
        with open(data, "rb", buffering=0) as first, open(data, "rb", buffering=0) as second:
            await send({"type": zerocopy.EXTENSION, "file": first, "offset": 0, "count": 10, "prefix": b"part-1|",
                        "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"|between|", "more_body": True})
            await send({"type": zerocopy.EXTENSION, "file": second, "offset": 100, "count": 4900, "prefix": b"part-2|",
                        "more_body": False})  # fmt: skip

    with serving(app) as port, socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := client.recv(1 << 16):
            received += chunk
    content = data.read_bytes()
    head, _, chunked = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert chunked.startswith(b"11\r\npart-1|")  # one chunk: 7 bytes of prefix + 10 of the file
    assert chunked.endswith(b"\r\n0\r\n\r\n")
    assert _unchunked(chunked) == b"part-1|" + content[:10] + b"|between|part-2|" + content[100:]


def test_a_server_offering_only_the_standard_extension_gets_no_prefix(tmp_path: Path) -> None:
    """`prefix` is ours: to a server that does not advertise it, the bytes before a file go as a body."""
    body, messages = Body(tmp_path), []

    async def send(message: Any) -> None:
        messages.append({k: v for k, v in message.items() if k != "file"})

    async def receive() -> Any:
        await anyio.sleep_forever()  # a client that stays

    scope = {"type": "http", "method": "GET", "extensions": {zerocopy.EXTENSION: {}}}
    response = PiecesResponse(body.pieces(), lambda: False, headers={"Content-Type": "application/octet-stream"})
    anyio.run(response, scope, receive, send)
    files = [m for m in messages if m["type"] == zerocopy.EXTENSION]
    assert len(files) == 2 and not any("prefix" in m for m in files)
    assert [m["body"] for m in messages if m["type"] == "http.response.body"] == [b"head", b"mid", b"tail", b""]


def test_a_large_file_is_sent_from_the_handler_only_up_to_a_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond `_AT_ONCE` bytes, asyncio's sendfile takes over (other connections get their turn)."""
    monkeypatch.setattr(zerocopy, "_AT_ONCE", 65536)
    calls = _direct_sends(monkeypatch)
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.content == body.expected
    assert calls[0][0] == 3 << 20 and calls[0][1] <= 65536


def test_a_large_file_is_sent_from_a_sender_thread_even_to_a_slow_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its kernel copy runs beside the event loop; a reader slower than the socket's buffer is waited for."""
    monkeypatch.setattr(zerocopy, "_IN_THREAD", 1 << 20)
    threads: list[str] = []
    waiting = zerocopy._sendfile_waiting

    def spied(socket_fd: int, file_fd: int, offset: int, count: int) -> int:
        threads.append(threading.current_thread().name)
        return waiting(socket_fd, file_fd, offset, count)

    monkeypatch.setattr(zerocopy, "_sendfile_waiting", spied)
    calls = _direct_sends(monkeypatch)
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port, _slow_reader(port) as client:
        time.sleep(0.3)  # the sender thread finds the socket full and waits for room
        received = _read_to_the_end(client)
    assert _unchunked(received.partition(b"\r\n\r\n")[2]) == body.expected
    assert threads == ["drimbox-sendfile"]
    ended = _eventually(lambda: "drimbox-sendfile" not in {t.name for t in threading.enumerate()}, 5)
    assert ended, "the sender thread ended"
    assert [count for count, _ in calls] == [100], "the small file went straight from the handler"
    assert body.all_closed()


def test_a_client_that_takes_nothing_is_cut_by_the_sender_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zerocopy, "_IN_THREAD", 1 << 20)
    monkeypatch.setattr(zerocopy, "_STALLED", 0.5)
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port, _slow_reader(port) as client:
        assert _eventually(body.all_closed), "the stalled response ended"
        client.settimeout(10)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            received = _read_to_the_end(client)
    assert len(received) < len(body.expected), "cut, not completed"


def _unchunked(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


def test_over_tls_the_files_are_read_and_written_by_asyncio(tmp_path: Path) -> None:
    """A TLS transport cannot sendfile(2): asyncio's fallback reads the file; the body is the same."""
    pki = create_pki(tmp_path / "pki", "499700367909006")
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen), certfile=pki.server_cert, keyfile=pki.server_key) as port:
        context = ssl.create_default_context(cafile=str(pki.ca_bundle))
        answer = httpx.get(f"https://localhost:{port}/", timeout=10, verify=context)
    assert answer.content == body.expected
    assert seen.count("http.response.zerocopysend") == 2
    assert body.all_closed()


def test_without_the_extension_the_bytes_are_read_and_sent(tmp_path: Path) -> None:
    body, seen = Body(tmp_path), []
    transport = httpx.ASGITransport(app=app_for(body, seen))

    async def fetch() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    answer = anyio.run(fetch)
    assert answer.content == body.expected
    assert "http.response.zerocopysend" not in seen
    assert body.all_closed()


def test_http_1_0_client_gets_a_close_delimited_body(tmp_path: Path) -> None:
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    head, _, content = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert content == body.expected
    assert seen.count("http.response.zerocopysend") == 2


def test_head_request_sends_no_body(tmp_path: Path) -> None:
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port:
        answer = httpx.head(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.status_code == 200 and answer.content == b""
    assert body.all_closed()


def test_a_failure_after_the_first_file_cuts_the_response_after_it(tmp_path: Path) -> None:
    body, seen = Body(tmp_path, fail_after=1), []
    received = b""
    with (
        serving(app_for(body, seen)) as port,
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", f"http://127.0.0.1:{port}/", timeout=10) as answer,
    ):
        for chunk in answer.iter_raw():
            received += chunk
    assert received == b"head" + body.big.read_bytes()  # all that came before the failure, then the cut
    assert body.all_closed()


def test_a_client_that_goes_away_leaves_no_file_open(tmp_path: Path) -> None:
    body, seen = Body(tmp_path), []
    with serving(app_for(body, seen)) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        _eventually(lambda: body.all_closed() and body.producer_closed)
    assert body.all_closed()
    assert body.producer_closed  # its `finally` ran: pins and spools of a real body are released


def test_a_response_cut_by_the_server_closes_its_producer_at_once(tmp_path: Path) -> None:
    """The send fails after the first part (the connection broke): the suspended producer is closed,
    not left to the garbage collector with its open file, pins and spools."""
    body = Body(tmp_path)
    pieces = body.pieces()
    response = PiecesResponse(pieces, lambda: True, headers={"Content-Type": "application/octet-stream"})
    sent = _cut_at_the_second_body(response)  # within the 3 MiB file
    assert sent == ["http.response.start", "http.response.body", "http.response.body"]
    assert body.producer_closed and body.all_closed()


def test_a_file_shorter_than_announced_ends_the_connection_instead_of_hanging(tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(b"x" * 4096)
    handle = open(short, "rb")  # noqa: SIM115 - the response closes it

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pieces = iter([b"head", FileSegment(handle, 0, 10_000), b"tail"])
        await PiecesResponse(pieces, lambda: False)(scope, receive, send)

    with serving(app) as port, pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert handle.closed


def test_ready_pieces_are_taken_on_the_event_loop_and_the_rest_in_a_worker_thread(tmp_path: Path) -> None:
    """Held files sent as stored need no thread hop; what may wait (the index, the PACS) gets one."""
    body = Body(tmp_path)
    taken_in: dict[str, int] = {}

    def ready() -> Iterator[Piece]:
        taken_in["ready"] = threading.get_ident()
        yield from body.pieces()

    def rest() -> Iterator[Piece]:
        taken_in["rest"] = threading.get_ident()
        yield b"+rest"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        taken_in["loop"] = threading.get_ident()
        await PiecesResponse(rest(), lambda: False, ready=ready())(scope, receive, send)

    with serving(app) as port:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.content == body.expected + b"+rest"
    assert taken_in["ready"] == taken_in["loop"] != taken_in["rest"]
    assert body.all_closed() and body.producer_closed


def test_a_response_cut_in_its_ready_pieces_closes_them_and_never_starts_the_rest(tmp_path: Path) -> None:
    (tmp_path / "later").mkdir()
    body, later = Body(tmp_path), Body(tmp_path / "later")
    _cut_at_the_second_body(PiecesResponse(later.pieces(), lambda: False, ready=body.pieces()))
    assert body.producer_closed and body.all_closed()
    assert not later.opened, "the rest was never started"
