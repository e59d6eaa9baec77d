"""Zero-copy file sending for uvicorn's HTTP/1.1 server (the ASGI `http.response.zerocopysend` extension).

Serving a study means sending files we hold. Through `http.response.body` every byte is read
into Python, framed by h11 (a joined copy), then copied into the transport's buffer: on a CT of
500 slices one process sent ~1.3 GB/s with one client and ~0.8 GB/s in all with eight, with the
CPU in those copies. With this extension (https://asgi.readthedocs.io/en/latest/extensions.html
#zero-copy-send) an application hands an open file, an offset and a count; the server frames the
chunk and asks the kernel to send the file's pages itself (`loop.sendfile`, i.e. sendfile(2);
asyncio falls back to reading and writing on a TLS transport).

uvicorn does not implement the extension; `install()` gives its h11 request cycle a subclass
that does, and advertises it in each request's scope. A response that cannot use it (another
server, a test client, a Content-Length-framed response) is unaffected: applications check the
scope's extensions and send bytes otherwise.

Ours adds an optional `prefix` (bytes sent just before the file, in the same chunk: a multipart
part's header; advertised as `{"prefix": True}` in the scope's extension, used only where
advertised) and writes a chunk's closing CRLF with whatever is sent next: a part of a CT slice
costs one write and one sendfile(2), where it cost three writes and one sendfile. A file of 4 MiB
or more is sent from a sender thread (sendfile(2) releases the GIL): the kernel's copy of a
mammogram or a tomosynthesis frame then runs on another core than the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
from typing import Any

from uvicorn.protocols.http import h11_impl

log = logging.getLogger(__name__)

EXTENSION = "http.response.zerocopysend"


class ZeroCopyCycle(h11_impl.RequestResponseCycle):
    """uvicorn's h11 request/response cycle, plus `http.response.zerocopysend`."""

    def __init__(self, scope: Any, *args: Any, **kwargs: Any) -> None:
        scope.setdefault("extensions", {})[EXTENSION] = {"prefix": True}  # (our addition: see above)
        super().__init__(scope, *args, **kwargs)
        self._crlf_owed = False  # the CRLF that closes the last file's chunk, not yet written

    async def send(self, message: Any) -> None:
        if message["type"] != EXTENSION:
            self._pay_crlf()
            await super().send(message)
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"ASGI message {EXTENSION!r} outside a response body")
        prefix: bytes = message.get("prefix") or b""
        framing = type(self.conn._writer).__name__  # h11 chooses it from the response headers
        if framing not in ("ChunkedWriter", "Http10Writer") or self.scope["method"] == "HEAD":
            if prefix:  # Content-Length framing: h11 must count the bytes
                await super().send({"type": "http.response.body", "body": prefix, "more_body": True})
            await self._send_read(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        offset, count = _span(message)
        if self.transport.is_closing():
            self.disconnected = True  # asyncio's sendfile refuses a closing transport
        if not self.disconnected and count + len(prefix) > 0:
            chunked = framing == "ChunkedWriter"
            try:
                self.transport.write(self._owed() + b"%x\r\n" % (len(prefix) + count) + prefix if chunked else prefix)
                sent = await _send_file(self.transport, message["file"], offset, count)
                if sent != count:
                    raise OSError(f"file shorter than announced: {sent} of {count} bytes")
                self._crlf_owed = chunked
            except (OSError, RuntimeError) as exc:
                # The client is gone, or the body can no longer be framed right: end the connection
                # (a response left half-sent would keep the client waiting on it).
                log.info("sendfile cut", extra={"event": "http.sendfile_cut", "reason": str(exc)})
                self.disconnected = True
                self.transport.close()
        if not message.get("more_body", False):
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _owed(self) -> bytes:
        owed, self._crlf_owed = self._crlf_owed, False
        return b"\r\n" if owed else b""

    def _pay_crlf(self) -> None:
        """Write the CRLF owed to the last chunk before anything else goes out."""
        owed = self._owed()
        if owed and not self.disconnected and not self.transport.is_closing():
            self.transport.write(owed)

    async def _send_read(self, message: Any) -> None:
        """The extension's effect through `http.response.body` (read here; 1 MiB at a time)."""
        handle = message["file"]
        position, left = _span(message)
        loop = asyncio.get_running_loop()
        while left > 0:
            data = await loop.run_in_executor(None, _pread, handle, min(left, 1 << 20), position)
            if not data:
                raise OSError("file shorter than announced: it changed while being sent")
            position += len(data)
            left -= len(data)
            await super().send({"type": "http.response.body", "body": data, "more_body": True})
        if not message.get("more_body", False):
            await super().send({"type": "http.response.body", "body": b"", "more_body": False})


#: The most sent straight from the handler: beyond, asyncio's sendfile lets other connections run.
_AT_ONCE = 4 << 20
#: A file this large leaves from a sender thread (FFDM, tomosynthesis): the kernel's copy of it
#: runs beside the event loop, on another core, instead of in it; a hop is nothing beside it.
_IN_THREAD = 4 << 20
#: A client that takes nothing for this long while a sender thread waits on it is cut.
_STALLED = 120.0


async def _send_file(transport: Any, file: Any, offset: int, count: int) -> int:
    """Send `count` bytes of `file` from `offset` (after what the transport holds); return the bytes sent."""
    if not count:
        return 0
    fd = _plain_socket(transport)
    if count >= _IN_THREAD and fd is not None:
        return await _in_sender_thread(fd, file.fileno(), offset, count)
    sent = _sent_at_once(transport, file, offset, count)
    if sent < count:
        sent += await asyncio.get_running_loop().sendfile(transport, file, offset + sent, count - sent)
    return sent


def _in_sender_thread(socket_fd: int, file_fd: int, offset: int, count: int) -> asyncio.Future[int]:
    """`_sendfile_waiting` in a thread of its own: a daemon thread (a pool's threads would hold
    the process at exit while a stalled client keeps one waiting), one per large file, which is
    nothing beside the file; as many as the connections sending one, no queue behind a pool."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    # Its own duplicates, made here before anything can close the originals: a descriptor closed
    # while the thread runs (the response cancelled, its files closed) may be reused at once by
    # another connection or file, which must never be written to or read from here.
    socket_fd, file_fd = os.dup(socket_fd), os.dup(file_fd)

    def settle(result: int | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or 0)

    def run() -> None:
        result, error = None, None
        try:
            result = _sendfile_waiting(socket_fd, file_fd, offset, count)
        except BaseException as exc:  # handed to the awaiting response, which ends the connection
            error = exc
        finally:
            os.close(socket_fd)
            os.close(file_fd)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    try:
        threading.Thread(target=run, name="drimbox-sendfile", daemon=True).start()
    except BaseException:
        os.close(socket_fd)
        os.close(file_fd)
        raise
    return done


def _sendfile_waiting(socket_fd: int, file_fd: int, offset: int, count: int) -> int:
    """sendfile(2) of the whole span, waiting for room (in a sender thread); the bytes sent."""
    room = select.poll()
    room.register(socket_fd, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(socket_fd, file_fd, offset + sent, count - sent)
        except (BlockingIOError, InterruptedError):
            if not room.poll(_STALLED * 1000):
                raise TimeoutError(f"the client took nothing for {_STALLED:.0f} s") from None
            continue
        if done == 0:  # the file is shorter than announced: the caller says so
            break
        sent += done
    return sent


def _sent_at_once(transport: Any, file: Any, offset: int, count: int) -> int:
    """What sendfile(2) sends right now, straight to the socket (0 when it cannot be used).

    asyncio's `loop.sendfile` costs a future, a writer registration and its removal (epoll
    system calls) and a pause of reading for every file, whatever its size: with 8 clients on a
    CT of 500 slices, half of the event loop's time. Most slices fit in the socket's buffer at
    once; only what does not goes through `loop.sendfile` (which also waits for room). Only on a
    plain socket transport with nothing buffered before it (the bytes must leave in order).
    """
    fd = _plain_socket(transport)
    if fd is None:
        return 0
    sent = 0
    budget = min(count, _AT_ONCE)  # a fast reader could otherwise take a whole DBT frame here
    try:
        while sent < budget:
            done = os.sendfile(fd, file.fileno(), offset + sent, budget - sent)
            if done == 0:  # the file is shorter than announced: loop.sendfile says so
                break
            sent += done
    except (BlockingIOError, InterruptedError):
        pass
    return sent


def _plain_socket(transport: Any) -> int | None:
    """The socket's descriptor when a file may be sent on it now: not TLS, nothing buffered before it."""
    if transport.get_write_buffer_size() or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


def _span(message: Any) -> tuple[int, int]:
    """(offset, count) of a zerocopysend message; no count means up to the end of the file."""
    offset = int(message.get("offset") or 0)
    count = message.get("count")
    if count is None:
        count = os.fstat(message["file"].fileno()).st_size - offset
    return offset, int(count)


def _pread(handle: Any, count: int, offset: int) -> bytes:
    return os.pread(handle.fileno(), count, offset)


def install() -> None:
    """Make uvicorn's h11 protocol (ours behind mutual TLS included) offer the extension, once per process."""
    if h11_impl.RequestResponseCycle is not ZeroCopyCycle:
        h11_impl.RequestResponseCycle = ZeroCopyCycle  # type: ignore[misc]
