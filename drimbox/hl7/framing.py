"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): <VT> message <FS><CR>.

A pure decoder fed with whatever the socket gives, used by the server and the client alike.
python-hl7's `hl7.mllp` streams are not used: a frame preceded by stray bytes makes them raise
and lose the frame, and an oversize frame empties their buffer without telling which message
it was. Here bytes outside frames are counted and dropped, a new <VT> inside a frame restarts
it (the sender gave up on the previous one), and an oversize frame is reported with its first
bytes, enough to read MSH and address the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"
#: How much of an oversize frame is kept to salvage its MSH.
HEAD_BYTES = 4096


def frame(payload: bytes) -> bytes:
    """`payload` wrapped for the wire."""
    return START + payload + END


@dataclass(frozen=True)
class Frame:
    """One complete message, without its framing bytes."""

    payload: bytes


@dataclass(frozen=True)
class Oversize:
    """A frame that grew past the limit; `head` is its beginning. Nothing after it is decoded."""

    head: bytes


class FrameDecoder:
    """Feed bytes, get the frames they complete, in order; memory stays under `max_bytes` + one chunk."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.discarded = 0
        self.restarted = 0
        self._buffer = bytearray()
        self._inside = False
        self._failed = False

    @property
    def pending(self) -> bool:
        """True while a frame has started and not ended (a close now would truncate it)."""
        return self._inside

    def feed(self, data: bytes) -> list[Frame | Oversize]:
        if self._failed:
            return []
        out: list[Frame | Oversize] = []
        view = memoryview(data)
        while view:
            if not self._inside:
                start = bytes(view).find(START)
                if start < 0:
                    self.discarded += len(view)
                    break
                self.discarded += start
                view = view[start + 1 :]
                self._inside = True
                self._buffer.clear()
                continue
            view = self._fill(view, out)
            if self._failed:
                break
        return out

    def _fill(self, view: memoryview, out: list[Frame | Oversize]) -> memoryview:
        """Append to the current frame up to its end (or a restart); emit it when complete."""
        scan_from = max(len(self._buffer) - 1, 0)  # an <FS> may have ended the previous chunk
        self._buffer += view
        end = self._buffer.find(END, scan_from)
        restart = self._buffer.find(START, scan_from)
        if restart >= 0 and (end < 0 or restart < end):
            self.restarted += 1
            rest = memoryview(bytes(self._buffer[restart + 1 :]))
            self._buffer.clear()
            return rest
        if end > self.max_bytes or (end < 0 and len(self._buffer) > self.max_bytes):
            out.append(Oversize(bytes(self._buffer[: min(HEAD_BYTES, end if end >= 0 else len(self._buffer))])))
            self._buffer.clear()
            self._failed = True
            return memoryview(b"")
        if end >= 0:
            out.append(Frame(bytes(self._buffer[:end])))
            rest = memoryview(bytes(self._buffer[end + len(END) :]))
            self._buffer.clear()
            self._inside = False
            return rest
        return memoryview(b"")
