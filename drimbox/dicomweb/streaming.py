"""A response body made of bytes and segments of open files, sent without copying the files when possible.

WADO-RS mostly sends files we hold, as stored. Those parts only open files: they are `ready`,
taken on the event loop itself. The rest of the body is produced by a synchronous iterator (it
reads the index, may transcode or wait on the PACS), so each of its steps runs in a worker
thread; pieces are taken in batches (up to 8 MiB of file data, or one at a time once the body
waits on the PACS, so a landed instance is never held back) to pay that thread hop per batch,
not per part. (With 8 clients on a CT of 500 slices, taking held parts through worker threads
cost a quarter of the throughput: the hops, and the workers taking the GIL from the event loop
at each of its system calls.) A
`FileSegment` goes out as `http.response.zerocopysend` when the server offers it (the daemon's
uvicorn does: `drimbox.httpd.zerocopy`), with the bytes just before it (a part's header) as its
`prefix`; else its bytes are read and sent as usual.

The response owns every segment it has taken: each file is closed once sent, and those of a
batch cut short (client gone, error) are closed too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

ZEROCOPY = "http.response.zerocopysend"
BATCH_BYTES = 8 << 20
BATCH_PIECES = 128
BATCH_FILES = 16  # open files held by one batch (each response holds at most this many)
READ_CHUNK = 1 << 20


@dataclass
class FileSegment:
    """`count` bytes of an open file from `offset`; whoever holds it closes the file."""

    file: BinaryIO
    offset: int
    count: int


Piece = bytes | FileSegment


def close_pieces(pieces: list[Piece]) -> None:
    for piece in pieces:
        if isinstance(piece, FileSegment):
            piece.file.close()


class PiecesResponse(StreamingResponse):
    """Streams `pieces`; `send_at_once()` true means each piece must go out as soon as it exists."""

    def __init__(self, pieces: Iterator[Piece], send_at_once: Callable[[], bool],
                 headers: Mapping[str, str] | None = None, media_type: str | None = None, *,
                 ready: Iterator[Piece] | None = None) -> None:  # fmt: skip
        """`ready` pieces go first, taken on the event loop: they must never wait (bytes, files we hold)."""
        super().__init__(_no_body(), headers=headers, media_type=media_type)
        self._ready: Iterator[Piece] = ready if ready is not None else iter(())
        self._pieces = pieces
        self._send_at_once = send_at_once
        self._zerocopy = False
        self._prefix = False  # the server's zero-copy send also takes the bytes before the file
        self._taken: list[Piece] = []  # the batch being sent: closed whatever happens
        self._error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extension = (scope.get("extensions") or {}).get(ZEROCOPY)
        self._zerocopy = extension is not None
        self._prefix = bool((extension or {}).get("prefix"))
        try:
            await super().__call__(scope, receive, send)
        finally:
            close_pieces(self._taken)
            self._taken = []
            self._error = None  # its traceback refers back here
            _close_producer(self._ready)  # releases what a part cut short holds (a pin, an open file)
            with anyio.CancelScope(shield=True):
                # A producer cut short still holds an open file, a cache pin, maybe a spool.
                await anyio.to_thread.run_sync(_close_producer, self._pieces)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for batch in self._batches():
            await self._send_batch(batch, send)
            close_pieces(batch)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _batches(self) -> AsyncIterator[list[Piece]]:
        ready = True
        while True:
            if ready:
                batch = self._take(self._ready, in_thread=False)
                if not batch and self._error is None:
                    ready = False
                    continue
            else:
                batch = await anyio.to_thread.run_sync(self._take, self._pieces, True)
            if not batch:
                if self._error is not None:
                    raise self._error
                return
            yield batch

    def _take(self, pieces: Iterator[Piece], in_thread: bool) -> list[Piece]:
        """The next batch of `pieces`. An error is raised after what came before it is sent."""
        batch: list[Piece] = []
        self._taken = batch
        if self._error is not None:
            return batch
        size = files = 0
        try:
            for piece in pieces:
                if isinstance(piece, FileSegment) and not self._zerocopy and in_thread and piece.count <= READ_CHUNK:
                    try:
                        data = os.pread(piece.file.fileno(), piece.count, piece.offset)  # read here: no extra hop
                    finally:
                        piece.file.close()
                    if len(data) != piece.count:
                        raise OSError("file shorter than announced: it changed while being sent")
                    piece = data
                batch.append(piece)
                if isinstance(piece, FileSegment):
                    size, files = size + piece.count, files + 1
                else:
                    size += len(piece)
                if size >= BATCH_BYTES or files >= BATCH_FILES or len(batch) >= BATCH_PIECES or self._send_at_once():
                    break
        except Exception as exc:
            self._error = exc
        return batch

    async def _send_batch(self, batch: list[Piece], send: Send) -> None:
        joined: list[bytes] = []
        for piece in batch:
            if not isinstance(piece, FileSegment):
                joined.append(piece)
                continue
            if self._prefix:  # the bytes before it (a part's header) go in the same chunk
                await send({"type": ZEROCOPY, "file": piece.file, "offset": piece.offset, "count": piece.count,
                            "prefix": b"".join(joined), "more_body": True})  # fmt: skip
                joined = []
                continue
            if joined:
                await send({"type": "http.response.body", "body": b"".join(joined), "more_body": True})
                joined = []
            if self._zerocopy:
                await send({"type": ZEROCOPY, "file": piece.file, "offset": piece.offset, "count": piece.count,
                            "more_body": True})  # fmt: skip
            else:
                await _send_read(piece, send)
        if joined:
            await send({"type": "http.response.body", "body": b"".join(joined), "more_body": True})


def _close_producer(pieces: Iterator[Piece]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()  # GeneratorExit runs its `finally` and `with` blocks


async def _send_read(segment: FileSegment, send: Send) -> None:
    position, left = segment.offset, segment.count
    while left > 0:
        data = await anyio.to_thread.run_sync(os.pread, segment.file.fileno(), min(left, READ_CHUNK), position)
        if not data:
            raise OSError("file shorter than announced: it changed while being sent")
        position += len(data)
        left -= len(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
