"""multipart/related bodies (RFC 2387, PS3.18 §8.6.1.2), written as they are sent.

Each part carries its own Content-Type (with `transfer-syntax` for DICOM parts) and a
Content-Length, so a client can allocate or stream without scanning for the boundary. The body
is produced chunk by chunk: a 550 MB instance never sits in memory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from drimbox.dicomweb.streaming import FileSegment

CHUNK = 1 << 20


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM data by accident (128 random bits)."""
    return f"drimbox-{secrets.token_hex(16)}"


def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """The response's Content-Type: `type` quoted as RFC 2387 requires."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def part_header(boundary: str, part_type: str, length: int, *, transfer_syntax: str | None = None,
                location: str | None = None) -> bytes:  # fmt: skip
    """The delimiter and headers that open one part."""
    media = f"{part_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else part_type
    lines = [f"--{boundary}", f"Content-Type: {media}", f"Content-Length: {length}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter that ends the body."""
    return f"--{boundary}--\r\n".encode("ascii")


def file_chunks(handle: BinaryIO, length: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """`length` bytes of an open file, in chunks; an early end means the file changed under us."""
    left = length
    while left > 0:
        data = handle.read(min(chunk, left))
        if not data:
            raise OSError("file shorter than announced: it changed while being sent")
        left -= len(data)
        yield data


def file_part_segments(boundary: str, part_type: str, path: Path, *, transfer_syntax: str | None = None,
                       location: str | None = None) -> Iterator[bytes | FileSegment]:  # fmt: skip
    """One part whose body is a file on disk, handed over as an open `FileSegment` (the response
    sends it, with zero copy when it can, and closes it). The file is opened before anything is
    yielded: an eviction that unlinks it afterwards does not cut the transfer."""
    # Unbuffered: the segment is sent by sendfile(2) or pread(2), never read through a buffer
    # (a buffered open costs an lseek and an isatty ioctl more per part).
    handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by whoever takes the segment, or below
    handed = False
    try:
        length = os.fstat(handle.fileno()).st_size
        yield part_header(boundary, part_type, length, transfer_syntax=transfer_syntax, location=location)
        handed = True
        yield FileSegment(handle, 0, length)
    finally:
        if not handed:
            handle.close()
    yield b"\r\n"


def bytes_part(boundary: str, part_type: str, data: bytes, *, transfer_syntax: str | None = None,
               location: str | None = None) -> Iterator[bytes]:  # fmt: skip
    """One part held in memory (a frame, a bulk data value)."""
    yield part_header(boundary, part_type, len(data), transfer_syntax=transfer_syntax, location=location)
    yield data
    yield b"\r\n"
